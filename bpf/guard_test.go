// SPDX-License-Identifier: MIT

package bpf

import (
	"net/netip"
	"testing"
)

var (
	// attackerMAC is another station on the LB's segment.
	attackerMAC = mac{0x02, 0, 0, 0, 0, 0xee}
	subnetNet   = netip.MustParseAddr("10.0.0.0")
	subnetBcast = netip.MustParseAddr("10.0.0.255")
)

// requireNotMeasured checks that nothing counted a reply of backend be: no
// reply, no RTT, no answer, no unmatched reply.
func requireNotMeasured(t *testing.T, h *harness, be backendInfo) {
	t.Helper()
	c := h.backendCounters(t, be.idx)
	if c.Replies != 0 || c.ReplyBytes != 0 || c.RttSumNs != 0 || c.Late != 0 || c.Unmatched != 0 {
		t.Errorf("backend_stats[%d] = %+v: a reply was counted", be.idx, c)
	}
	if hist := histogram(t, h, be.idx); len(hist) != 0 {
		t.Errorf("RTT histogram %v, want empty", hist)
	}
	if _, answered := epochTotals(t, h, be.idx); answered != 0 {
		t.Errorf("%d requests answered, want 0", answered)
	}
}

func TestBogusSource(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name  string
		mut   func(p *packet)
		bogus bool
	}{
		{"broadcast source MAC", func(p *packet) { p.ethSrc = mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} }, true},
		{"multicast source MAC", func(p *packet) { p.ethSrc = mac{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01} }, true},
		{"group bit alone", func(p *packet) { p.ethSrc = mac{0x01, 0, 0, 0, 0, 0} }, true},
		{"zero source MAC", func(p *packet) { p.ethSrc = mac{} }, true},
		{"0.0.0.0", func(p *packet) { p.src = netip.MustParseAddr("0.0.0.0") }, true},
		{"0.255.255.255", func(p *packet) { p.src = netip.MustParseAddr("0.255.255.255") }, true},
		{"127.0.0.1", func(p *packet) { p.src = netip.MustParseAddr("127.0.0.1") }, true},
		{"127.255.255.255", func(p *packet) { p.src = netip.MustParseAddr("127.255.255.255") }, true},
		{"224.0.0.1", func(p *packet) { p.src = netip.MustParseAddr("224.0.0.1") }, true},
		{"239.255.255.255", func(p *packet) { p.src = netip.MustParseAddr("239.255.255.255") }, true},
		{"240.0.0.1", func(p *packet) { p.src = netip.MustParseAddr("240.0.0.1") }, true},
		{"255.255.255.255", func(p *packet) { p.src = netip.MustParseAddr("255.255.255.255") }, true},
		{"the VIP", func(p *packet) { p.src = vip }, true},
		{"the SNAT address", func(p *packet) { p.src = snatAlt }, true},
		{"subnet network address (src_deny)", func(p *packet) { p.src = subnetNet }, true},
		{"subnet broadcast address (src_deny)", func(p *packet) { p.src = subnetBcast }, true},
		// Next to every boundary: ordinary clients.
		{"1.0.0.0", func(p *packet) { p.src = netip.MustParseAddr("1.0.0.0") }, false},
		{"126.255.255.255", func(p *packet) { p.src = netip.MustParseAddr("126.255.255.255") }, false},
		{"128.0.0.0", func(p *packet) { p.src = netip.MustParseAddr("128.0.0.0") }, false},
		{"223.255.255.255", func(p *packet) { p.src = netip.MustParseAddr("223.255.255.255") }, false},
		{"first host of the subnet", func(p *packet) { p.src = netip.MustParseAddr("10.0.0.1") }, false},
		{"last host of the subnet", func(p *packet) { p.src = netip.MustParseAddr("10.0.0.254") }, false},
		{"another subnet's network address", func(p *packet) { p.src = netip.MustParseAddr("10.0.1.0") }, false},
		{"source MAC 00:00:00:00:00:01", func(p *packet) { p.ethSrc = mac{0, 0, 0, 0, 0, 1} }, false},
		{"source MAC fe:ff:ff:ff:ff:ff", func(p *packet) { p.ethSrc = mac{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := readyHarness(t, testConfig(snatAlt))
			for _, a := range []netip.Addr{subnetNet, subnetBcast} {
				mustPut(t, h.objs.SrcDeny, Addr(a), uint8(1))
			}
			req := echoRequest(client1, hop1MAC, 0x0b0b, 1)
			tt.mut(&req)
			if !tt.bogus {
				_, natID := h.forward(t, req)
				h.requireConntrack(t, req.src, req.echoID, req.ethSrc, backendA, natID)
				return
			}
			h.requireUntouched(t, req.frame(), xdpPass, IcmplbReasonREASON_BOGUS_SOURCE)
			h.requireNoSession(t, req.src, req.echoID)
			if n := h.inflightCount(t); n != 0 {
				t.Errorf("%d requests in flight, want 0", n)
			}
			if c := h.backendCounters(t, backendA.idx); c.Requests != 0 {
				t.Errorf("backend_stats requests %d, want 0", c.Requests)
			}
		})
	}
}

func TestTTLZero(t *testing.T) {
	h := readyHarness(t, testConfig(vip))

	req := echoRequest(client1, hop1MAC, 0x7171, 1)
	req.ttl = 0
	h.requireUntouched(t, req.frame(), xdpPass, IcmplbReasonREASON_TTL_ZERO)
	h.requireNoSession(t, client1, 0x7171)

	// The balancer is no router: the TTL goes through as it came.
	req.ttl = 1
	_, natID := h.forward(t, req)

	rep := replyTo(req, backendA, vip, natID)
	rep.ttl = 0
	h.requireUntouched(t, rep.frame(), xdpPass, IcmplbReasonREASON_TTL_ZERO)
	requireNotMeasured(t, h, backendA)
	h.requireInflight(t, req, backendA, natID)

	rep.ttl = 1
	h.returnReply(t, rep, client1, 0x7171, hop1MAC)
}

// TestSessionMACMismatch: a station that sends a request with a victim's
// address and echo id must neither take over the session nor get its
// replies; the victim's replies still go to the victim's MAC.
func TestSessionMACMismatch(t *testing.T) {
	h := readyHarness(t, testConfig(vip))

	const echoID = 0x5151
	victim := echoRequest(client1, hop1MAC, echoID, 1)
	_, natID := h.forward(t, victim)

	for _, seq := range []uint16{1, 2} { // in flight, and new
		forged := echoRequest(client1, attackerMAC, echoID, seq)
		h.run(t, forged.frame(), xdpDrop, IcmplbReasonREASON_SESSION_MAC_MISMATCH)
	}
	h.requireConntrack(t, client1, echoID, hop1MAC, backendA, natID)
	h.requireInflight(t, victim, backendA, natID)
	if _, ok := h.inflight(t, backendA, natID, 2); ok {
		t.Error("the forged request of sequence 2 is in flight")
	}
	if c := h.backendCounters(t, backendA.idx); c.Requests != 1 {
		t.Errorf("backend_stats requests %d, want the victim's 1", c.Requests)
	}

	h.returnReply(t, replyTo(victim, backendA, vip, natID), client1, echoID, hop1MAC)
	next := echoRequest(client1, hop1MAC, echoID, 2)
	if _, got := h.forward(t, next); got != natID {
		t.Errorf("victim's next request got NAT id %#04x, want its session's %#04x", got, natID)
	}
	h.returnReply(t, replyTo(next, backendA, vip, natID), client1, echoID, hop1MAC)
}

// A client whose traffic moves to another next hop gets a new session once
// its old one has been idle and swept; the old one's reply in flight still
// goes to the old MAC.
func TestSessionMACFreedAfterIdle(t *testing.T) {
	cfg := testConfig(vip)
	cfg.NATIdle = 0
	h := readyHarness(t, cfg)

	old := echoRequest(client1, hop1MAC, 0x6161, 1)
	_, oldNAT := h.forward(t, old)
	moved := echoRequest(client1, hop2MAC, 0x6161, 2)
	h.run(t, moved.frame(), xdpDrop, IcmplbReasonREASON_SESSION_MAC_MISMATCH)

	h.sweep(t)
	h.requireNoSession(t, client1, 0x6161)
	_, natID := h.forward(t, moved)
	h.requireConntrack(t, client1, 0x6161, hop2MAC, backendA, natID)
	h.returnReply(t, replyTo(old, backendA, vip, oldNAT), client1, 0x6161, hop1MAC)
	h.returnReply(t, replyTo(moved, backendA, vip, natID), client1, 0x6161, hop2MAC)
}

// TestReplySpoofed: a reply from a backend's address but not from its MAC
// is someone else's; it must not be returned or measured, nor consume the
// request it claims to answer.
func TestReplySpoofed(t *testing.T) {
	h := readyHarness(t, testConfig(vip))

	req := echoRequest(client1, hop1MAC, 0x0f0f, 3)
	_, natID := h.forward(t, req)
	forged := replyTo(req, backendA, vip, natID)
	forged.ethSrc = attackerMAC
	h.requireUntouched(t, forged.frame(), xdpPass, IcmplbReasonREASON_REPLY_SPOOFED)
	// A forger who also knows the client's MAC.
	forged.ethSrc = hop1MAC
	h.requireUntouched(t, forged.frame(), xdpPass, IcmplbReasonREASON_REPLY_SPOOFED)
	requireNotMeasured(t, h, backendA)
	h.requireInflight(t, req, backendA, natID)

	h.returnReply(t, replyTo(req, backendA, vip, natID), client1, 0x0f0f, hop1MAC)
	if hist := histogram(t, h, backendA.idx); len(hist) != 1 {
		t.Errorf("RTT histogram %v, want the real reply alone", hist)
	}

	// Without a request in flight: still the forger's, not the backend's.
	forged.ethSrc = attackerMAC
	h.requireUntouched(t, forged.frame(), xdpPass, IcmplbReasonREASON_REPLY_SPOOFED)
	h.requireUntouched(t, replyTo(req, backendA, vip, natID^0x5555).frameWith(func(p *packet) { p.ethSrc = attackerMAC }),
		xdpPass, IcmplbReasonREASON_REPLY_SPOOFED)
	if c := h.backendCounters(t, backendA.idx); c.Replies != 1 || c.Unmatched != 0 {
		t.Errorf("backend_stats %+v, want 1 reply and no unmatched one", c)
	}
	// From an address that is no backend: no one to protect or blame.
	stray := replyTo(req, backendInfo{addr: stranger, mac: attackerMAC}, vip, natID)
	h.requireUntouched(t, stray.frame(), xdpPass, IcmplbReasonREASON_CONNTRACK_MISS)
}

// TestReplyMismatch: a reply from the right backend for the right NAT id
// and sequence whose data is not the request's answers something else.
func TestReplyMismatch(t *testing.T) {
	h := readyHarness(t, testConfig(vip))

	req := echoRequest(client1, hop1MAC, 0x1e1e, 4)
	_, natID := h.forward(t, req)
	good := replyTo(req, backendA, vip, natID)
	// The program compares checksums, not data: a change that keeps the
	// ones'-complement sum (zero bytes appended, 16-bit words swapped)
	// cannot be told from the request's data and is not tried here.
	for _, tt := range []struct {
		name string
		mut  func(p *packet)
	}{
		{"first payload byte", func(p *packet) { p.payload[0] ^= 0x01 }},
		{"last payload byte", func(p *packet) { p.payload[len(p.payload)-1] ^= 0x80 }},
		{"payload one byte less", func(p *packet) { p.payload = p.payload[:len(p.payload)-1] }},
		{"payload one byte more", func(p *packet) { p.payload = append(p.payload, 0x01) }},
		{"no payload", func(p *packet) { p.payload = nil }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad := good
			bad.payload = append([]byte(nil), good.payload...)
			tt.mut(&bad)
			h.requireUntouched(t, bad.frame(), xdpPass, IcmplbReasonREASON_REPLY_MISMATCH)
		})
	}
	requireNotMeasured(t, h, backendA)
	h.requireInflight(t, req, backendA, natID)
	h.returnReply(t, good, client1, 0x1e1e, hop1MAC)
}
