// SPDX-License-Identifier: MIT

package balancer

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
)

// A neighbour entry in one of these states has a MAC address worth sending to.
const usableNUD = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY |
	netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP

// resolveLocked asks the kernel to resolve the next hops of addrs and waits
// up to timeout for the answers, so that new backends' first requests are
// not passed to the kernel. b.mu is held.
func (b *Balancer) resolveLocked(addrs []netip.Addr, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		byIP, err := b.neighbours()
		if err == nil {
			err = b.refreshLocked(byIP, addrs)
		}
		if err != nil {
			b.log.Warn("resolve backends", "err", err)
		}
		up := 0
		for _, a := range addrs {
			if b.hosts[a].up {
				up++
			}
		}
		if up == len(addrs) || time.Now().After(deadline) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *Balancer) neighbours() (map[netip.Addr]netlink.Neigh, error) {
	byIP, err := neighboursOf(b.iface.Index)
	if err != nil {
		return nil, fmt.Errorf("list neighbours of %s: %w", b.iface.Name, err)
	}
	return byIP, nil
}

// neighboursOf reads the ARP and the NDP entries of an interface in one
// dump: a next hop is of either family, whatever its backend's (an IPv4
// route may go via an IPv6 router).
func neighboursOf(ifindex int) (map[netip.Addr]netlink.Neigh, error) {
	neighs, err := netlink.NeighList(ifindex, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	byIP := make(map[netip.Addr]netlink.Neigh, len(neighs))
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP); ok {
			byIP[a.Unmap()] = n
		}
	}
	return byIP, nil
}

// neighFamily is the neighbour table addr is resolved in: ARP's or NDP's.
func neighFamily(addr netip.Addr) int {
	if addr.Unmap().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// refreshNeighbours reads the kernel's neighbour table for the interface,
// pushes changed MACs to the data plane, takes backends whose neighbour
// failed out of the Maglev tables (and puts them back when they answer), and
// asks the kernel to (re)resolve entries that are missing or stale: XDP
// traffic does not confirm neighbours the way the kernel's own traffic does.
func (b *Balancer) refreshNeighbours() error {
	byIP, err := b.neighbours()
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refreshLocked(byIP, nil)
}

// refreshLocked refreshes the hosts in only (all when nil). b.mu is held.
func (b *Balancer) refreshLocked(byIP map[netip.Addr]netlink.Neigh, only []netip.Addr) error {
	if only == nil {
		only = slices.Collect(maps.Keys(b.hosts))
	}
	rebuild := map[netip.Addr]bool{}
	var errs []error
	for _, addr := range only {
		st := b.hosts[addr]
		n, found := byIP[st.nextHop]
		if !found || n.State&(netlink.NUD_STALE|netlink.NUD_FAILED) != 0 || n.State == netlink.NUD_NONE {
			if err := b.solicit(st.nextHop); err != nil {
				errs = append(errs, err)
			}
		}
		wasUp := st.up
		switch {
		case found && n.State&usableNUD != 0 && len(n.HardwareAddr) == 6:
			if wasUp && bytes.Equal(st.mac, n.HardwareAddr) {
				continue
			}
			st.mac, st.up = n.HardwareAddr, true
			b.log.Info("backend neighbour resolved", "backend", addr, "next_hop", st.nextHop, "mac", st.mac.String())
		case found && n.State&netlink.NUD_INCOMPLETE != 0 && wasUp:
			// Being re-resolved: the last MAC is still the best guess.
			continue
		case wasUp:
			st.up = false
			b.log.Warn("backend neighbour lost; backend taken out of the table", "backend", addr,
				"next_hop", st.nextHop, "state", neighState(n, found))
		default:
			continue
		}
		for k := range b.slots {
			if k.addr == addr {
				if err := b.writeSlot(k); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if wasUp != st.up {
			for _, vip := range b.servicesOf(addr) {
				rebuild[vip] = true
			}
		}
	}
	for vip := range rebuild {
		if err := b.refreshService(vip); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// solicit makes the kernel resolve addr as if it had a packet for it
// (NTF_USE: an ARP request or an NDP neighbour solicitation), without
// adding a permanent entry to the neighbour table.
func (b *Balancer) solicit(addr netip.Addr) error {
	if err := solicitOn(b.iface.Index, addr); err != nil {
		return fmt.Errorf("resolve neighbour %s on %s: %w", addr, b.iface.Name, err)
	}
	return nil
}

func solicitOn(ifindex int, addr netip.Addr) error {
	addr = addr.Unmap()
	return netlink.NeighSet(&netlink.Neigh{
		LinkIndex: ifindex,
		Family:    neighFamily(addr),
		IP:        addr.AsSlice(),
		Flags:     netlink.NTF_USE,
	})
}

func neighState(n netlink.Neigh, found bool) string {
	if !found {
		return "absent"
	}
	names := []struct {
		bit  int
		name string
	}{
		{netlink.NUD_INCOMPLETE, "incomplete"}, {netlink.NUD_REACHABLE, "reachable"},
		{netlink.NUD_STALE, "stale"}, {netlink.NUD_DELAY, "delay"}, {netlink.NUD_PROBE, "probe"},
		{netlink.NUD_FAILED, "failed"}, {netlink.NUD_NOARP, "noarp"}, {netlink.NUD_PERMANENT, "permanent"},
	}
	for _, s := range names {
		if n.State&s.bit != 0 {
			return s.name
		}
	}
	return "none"
}
