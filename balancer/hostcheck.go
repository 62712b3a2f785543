// SPDX-License-Identifier: MIT

package balancer

import (
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/icmplb/icmplb/config"
)

// hostAddrs is what the address checks need to know of the host.
type hostAddrs struct {
	iface   string
	subnets []netip.Prefix      // IPv4 and IPv6 prefixes configured on the interface
	local   map[netip.Addr]bool // IPv4 and IPv6 addresses of the host, any interface
}

// checkHost checks the configured addresses against the host's before
// anything is loaded: what no network can make work is an error, what the
// network may yet make work (a VIP brought here later) a warning.
func checkHost(cfg config.Config, iface *net.Interface, log *slog.Logger) error {
	subnets, err := ifacePrefixes(iface.Index)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", iface.Name, err)
	}
	all, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list the host's addresses: %w", err)
	}
	h := hostAddrs{iface: iface.Name, subnets: subnets, local: map[netip.Addr]bool{}}
	for _, a := range all {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			h.local[ip.Unmap()] = true
		}
	}
	warnings, err := checkAddrs(cfg, h)
	for _, w := range warnings {
		log.Warn(w)
	}
	return err
}

// checkAddrs refuses addresses that cannot be a single host: the network or
// broadcast address of an IPv4 subnet of the interface (a backend there gets
// every request broadcast to the whole segment) or the subnet-router anycast
// address of an IPv6 one (every router of the link answers it), or, for a
// backend, this host itself. A VIP or SNAT address that is not this host's
// but lies in one of the interface's subnets is only warned about:
// neighbours find it by ARP or NDP and nobody here answers, but a standby
// balancer runs like that until a failover (keepalived) moves the address
// to it. A VIP outside those subnets
// is reached by routing (docs/configuration.md), which the agent cannot see, so it says
// nothing.
func checkAddrs(cfg config.Config, h hostAddrs) (warnings []string, err error) {
	cfg = cfg.WithDefaults()
	for _, svc := range cfg.ServiceList() {
		w, err := checkServiceAddrs(svc, h)
		if err != nil {
			if cfg.ConfigFile != "" {
				return nil, fmt.Errorf("%s: service %s: %w", cfg.ConfigFile, svc.VIP, err)
			}
			return nil, err
		}
		warnings = append(warnings, w...)
	}
	return warnings, nil
}

func checkServiceAddrs(svc config.Service, h hostAddrs) (warnings []string, err error) {
	for _, be := range svc.Backends {
		b := be.Addr
		if err := notSubnetSpecial("backend", config.SetBackend, b, h); err != nil {
			return nil, err
		}
		if h.local[b] {
			return nil, fmt.Errorf("backend %s is an address of this host (%s, %s); a backend must be another host",
				b, config.SetBackend.Flag, config.SetBackend.Env)
		}
	}
	addrs := []struct {
		what string
		s    config.Setting
		a    netip.Addr
		who  string // who must find it here
	}{
		{"VIP", config.SetVIP, svc.VIP, "clients' pings"},
		{"SNAT address", config.SetSNAT, svc.SNAT, "backends' replies"},
	}
	for _, x := range addrs {
		if x.what == "SNAT address" && x.a == svc.VIP {
			continue // checked as the VIP
		}
		if err := notSubnetSpecial(x.what, x.s, x.a, h); err != nil {
			return nil, err
		}
		if h.local[x.a] {
			continue
		}
		for _, p := range h.subnets {
			if p.Bits() < x.a.BitLen() && p.Contains(x.a) {
				warnings = append(warnings, fmt.Sprintf(
					"%s %s is in %s's subnet %s but not an address of this host: its neighbours find it by %s and nobody here answers, so %s do not reach the balancer; unless a failover brings it here, add it: ip addr add %s dev %s",
					x.what, x.a, h.iface, p.Masked(), resolvedBy(x.a), x.who, netip.PrefixFrom(x.a, x.a.BitLen()), h.iface))
				break
			}
		}
	}
	return warnings, nil
}

// notSubnetSpecial refuses a that is the network or broadcast address of one
// of the interface's IPv4 subnets (/31 and /32 have neither), or the
// subnet-router anycast address of one of its IPv6 subnets (RFC 4291
// 2.6.1; /127 and /128 have none, RFC 6164).
func notSubnetSpecial(what string, s config.Setting, a netip.Addr, h hostAddrs) error {
	for _, p := range h.subnets {
		if !p.Contains(a) {
			continue
		}
		if p.Addr().Is6() {
			if p.Bits() >= 127 || a != p.Masked().Addr() {
				continue
			}
			return fmt.Errorf("%s %s is the subnet-router anycast address of %s on %s (%s, %s), not a host's: every router of the link answers it; give a host's address",
				what, a, p.Masked(), h.iface, s.Flag, s.Env)
		}
		if p.Bits() > 30 {
			continue
		}
		network := p.Masked().Addr()
		kind := ""
		switch a {
		case network:
			kind = "network"
		case broadcastOf(p):
			kind = "broadcast"
		default:
			continue
		}
		return fmt.Errorf("%s %s is the %s address of %s on %s (%s, %s), not a host's: packets to it reach every host of the subnet or none; give a host's address",
			what, a, kind, p.Masked(), h.iface, s.Flag, s.Env)
	}
	return nil
}

// resolvedBy names how neighbours find a's MAC address, for messages.
func resolvedBy(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "ARP"
	}
	return "NDP"
}

// broadcastOf is the last address of an IPv4 prefix.
func broadcastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	for i := range 4 {
		b[i] |= byte(host >> (24 - 8*i))
	}
	return netip.AddrFrom4(b)
}

// warnUnresolved names, after the startup wait, each backend whose next hop
// did not answer ARP or NDP. It is a warning, not an error: backends that start
// after the balancer (a reboot of the rack, a rollout) are normal, and the
// agent takes each one in as soon as it answers. Addresses that can never
// answer (no route out of the interface, a subnet's broadcast, this host)
// are refused before: see checkAddrs and initBackends.
func (b *Balancer) warnUnresolved() {
	// Without the table the warnings still name the backends, as absent.
	byIP, _ := neighboursOf(b.iface.Index)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, addr := range slices.SortedFunc(maps.Keys(b.hosts), netip.Addr.Compare) {
		st := b.hosts[addr]
		if st == nil || st.up {
			continue
		}
		n, found := byIP[st.nextHop]
		b.log.Warn("backend did not answer "+resolvedBy(st.nextHop)+" at startup; it takes no sessions until it does: check that it is up and that its address is right",
			"backend", addr, "next_hop", st.nextHop, "state", neighState(n, found))
	}
}
