// SPDX-License-Identifier: MIT

package balancer

import (
	"bytes"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
)

// A neighbour entry in one of these states has a MAC address worth sending to.
const usableNUD = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY |
	netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP

// resolveAll asks the kernel to resolve every backend's next hop and waits up
// to timeout for the answers, so that the first pings are not passed.
func (b *Balancer) resolveAll(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		if err := b.refreshNeighbours(); err != nil {
			b.log.Warn("resolve backends", "err", err)
		}
		if b.upCount() == len(b.states) || time.Now().After(deadline) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// refreshNeighbours reads the kernel's neighbour table for the interface,
// pushes changed MACs to the data plane, takes backends whose neighbour
// failed out of the Maglev table (and puts them back when they answer), and
// asks the kernel to (re)resolve entries that are missing or stale: XDP
// traffic does not confirm neighbours the way the kernel's own traffic does.
func (b *Balancer) refreshNeighbours() error {
	neighs, err := netlink.NeighList(b.iface.Index, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", b.iface.Name, err)
	}
	byIP := make(map[netip.Addr]netlink.Neigh, len(neighs))
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP); ok {
			byIP[a.Unmap()] = n
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	changed := false
	var errs []error
	for addr, st := range b.states {
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
		if err := b.writeBackend(addr); err != nil {
			errs = append(errs, err)
		}
		changed = changed || wasUp != st.up
	}
	if changed {
		if err := b.rebuildTable(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// solicit makes the kernel resolve addr as if it had a packet for it
// (NTF_USE), without adding a permanent entry to the neighbour table.
func (b *Balancer) solicit(addr netip.Addr) error {
	err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: b.iface.Index,
		Family:    netlink.FAMILY_V4,
		IP:        addr.AsSlice(),
		Flags:     netlink.NTF_USE,
	})
	if err != nil {
		return fmt.Errorf("resolve neighbour %s on %s: %w", addr, b.iface.Name, err)
	}
	return nil
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
