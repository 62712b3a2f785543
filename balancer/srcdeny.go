// SPDX-License-Identifier: MIT

package balancer

import (
	"fmt"
	"maps"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
)

// deniedSources are the addresses of the interface's own subnets that no
// client can send from: the interface's own addresses (a reply to one would
// come back to the balancer), each IPv4 subnet's network and broadcast
// addresses (a reply to either reaches every host of the segment) and each
// IPv6 subnet's subnet-router anycast address (RFC 4291 2.6.1: the
// routers').
func deniedSources(addrs []netip.Prefix) map[netip.Addr]bool {
	deny := map[netip.Addr]bool{}
	for _, p := range addrs {
		deny[p.Addr()] = true
		if p.Addr().Is6() {
			if p.Bits() < 127 {
				deny[p.Masked().Addr()] = true
			}
			continue
		}
		if p.Bits() > 30 {
			continue // /31 and /32 have no network or broadcast address
		}
		network := p.Masked().Addr()
		b := network.As4()
		host := uint32(1)<<(32-p.Bits()) - 1
		for i := range 4 {
			b[i] |= byte(host >> (24 - 8*i))
		}
		deny[network] = true
		deny[netip.AddrFrom4(b)] = true
	}
	return deny
}

// ifacePrefixes lists the IPv4 and IPv6 prefixes configured on the
// interface.
func ifacePrefixes(ifindex int) ([]netip.Prefix, error) {
	// The dump filters on the index alone: asking for the link first would
	// cost a second netlink dump every second of an idle agent.
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}
	list, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range list {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		ip = ip.Unmap()
		if ip.Is4() && ones > 32 {
			ones -= 96
		}
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

// refreshSrcDeny brings the data plane's src_deny map in line with the
// interface's addresses, which may change while the agent runs; it takes
// b.mu for the services' addresses.
func (b *Balancer) refreshSrcDeny() error {
	prefixes, err := ifacePrefixes(b.iface.Index)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", b.iface.Name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ifaceDeny = deniedSources(prefixes)
	return b.writeSrcDeny(nil)
}

// writeSrcDeny makes src_deny the interface's denied sources and the
// addresses of the balancer itself: every VIP and SNAT address, of the
// services and of incoming (a reload's, denied before they go live), and
// the SNAT addresses still kept for late replies. The data plane then
// checks a request's source with one lookup. Called with b.mu held.
func (b *Balancer) writeSrcDeny(incoming []config.Service) error {
	want := maps.Clone(b.ifaceDeny)
	if want == nil {
		want = map[netip.Addr]bool{}
	}
	for _, s := range incoming {
		want[s.VIP], want[s.SNAT] = true, true
	}
	for vip, s := range b.services {
		want[vip], want[s.cfg.SNAT] = true, true
	}
	for a := range b.staleSNATs {
		want[bpf.AddrFrom(a)] = true
	}
	for a := range want {
		if !b.srcDeny[a] {
			if err := b.objs.SrcDeny.Put(bpf.Addr(a), uint8(1)); err != nil {
				return fmt.Errorf("deny source %s: %w", a, err)
			}
		}
	}
	for a := range b.srcDeny {
		if !want[a] {
			if err := b.objs.SrcDeny.Delete(bpf.Addr(a)); err != nil {
				return fmt.Errorf("allow source %s: %w", a, err)
			}
		}
	}
	b.srcDeny = want
	return nil
}
