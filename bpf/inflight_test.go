// SPDX-License-Identifier: MIT

package bpf

import (
	"net/netip"
	"testing"
	"time"
)

// requireRequests checks how many requests backend be counted, in its
// counters and in its epochs: only requests remembered in flight count.
func requireRequests(t *testing.T, h *harness, be backendInfo, want uint64) {
	t.Helper()
	if c := h.backendCounters(t, be.idx); c.Requests != want {
		t.Errorf("backend_stats[%d].requests = %d, want %d", be.idx, c.Requests, want)
	}
	if sent, _ := epochTotals(t, h, be.idx); sent != want {
		t.Errorf("epochs of backend %d count %d sent, want %d", be.idx, sent, want)
	}
}

// A request resent while its first copy is in flight (ping -W shorter than
// the RTT, a retransmitting client) goes out again but is one request.
func TestRequestResentInFlight(t *testing.T) {
	h := readyHarness(t, testConfig(vip))

	req := echoRequest(client1, hop1MAC, 0x2a2a, 5)
	_, natID := h.forward(t, req)
	first := h.requireInflight(t, req, backendA, natID)
	if _, again := h.forward(t, req); again != natID {
		t.Fatalf("resent request got NAT id %#04x, first %#04x", again, natID)
	}
	requireRequests(t, h, backendA, 1)
	if c := h.backendCounters(t, backendA.idx); c.RequestBytes != uint64(len(req.frame())) {
		t.Errorf("request bytes %d, want one frame's %d", c.RequestBytes, len(req.frame()))
	}
	if iv := h.requireInflight(t, req, backendA, natID); iv.SentNs != first.SentNs {
		t.Errorf("in-flight send time moved from %d to %d: the RTT runs from the first copy", first.SentNs, iv.SentNs)
	}

	rep := replyTo(req, backendA, vip, natID)
	h.returnReply(t, rep, client1, 0x2a2a, hop1MAC)
	// The answer to the second copy: the request was answered already.
	h.requireUntouched(t, rep.frame(), xdpPass, IcmplbReasonREASON_CONNTRACK_MISS)
	c := h.backendCounters(t, backendA.idx)
	if c.Replies != 1 || c.Unmatched != 1 {
		t.Errorf("backend_stats %+v, want 1 reply and 1 unmatched", c)
	}
	if _, answered := epochTotals(t, h, backendA.idx); answered != 1 {
		t.Errorf("%d answered, want 1", answered)
	}
}

// TestNATCollision: a session that got a NAT id whose previous owner still
// awaits a reply for some sequence number must not take that request over:
// the reply would go to the new session.
func TestNATCollision(t *testing.T) {
	cfg := testConfig(vip)
	cfg.NATIdle = 0 // ids are free to reuse at once; requests in flight are not
	h := readyHarness(t, cfg)

	const natID = 0x4242
	h.forceNATID(t, backendA.idx, natID)
	owner := echoRequest(client1, hop1MAC, 0x0101, 1)
	h.forward(t, owner)

	h.forceNATID(t, backendA.idx, natID)
	newcomer := echoRequest(client2, hop2MAC, 0x0202, 1)
	h.run(t, newcomer.frame(), xdpDrop, IcmplbReasonREASON_NAT_COLLISION)
	h.requireConntrack(t, client2, 0x0202, hop2MAC, backendA, natID)
	h.requireInflight(t, owner, backendA, natID)
	requireRequests(t, h, backendA, 1)

	// Other sequence numbers of the same NAT id are free.
	next := echoRequest(client2, hop2MAC, 0x0202, 2)
	if _, got := h.forward(t, next); got != natID {
		t.Fatalf("newcomer's next request got NAT id %#04x, want %#04x", got, natID)
	}
	h.returnReply(t, replyTo(owner, backendA, vip, natID), client1, 0x0101, hop1MAC)
	h.returnReply(t, replyTo(next, backendA, vip, natID), client2, 0x0202, hop2MAC)

	// A request older than twice the loss timeout is lost for good: its
	// key may be taken over.
	stale := echoRequest(client1, hop1MAC, 0x0303, 7)
	h.forceNATID(t, backendA.idx, natID)
	h.forward(t, stale)
	h.backdate(t, backendA, natID, 7, 2*cfg.LossTimeout+time.Second)
	taker := echoRequest(client2, hop2MAC, 0x0202, 7)
	h.forceNATID(t, backendA.idx, natID)
	h.forward(t, taker)
	h.requireInflight(t, taker, backendA, natID)
	h.returnReply(t, replyTo(taker, backendA, vip, natID), client2, 0x0202, hop2MAC)
}

// TestWrongClientUnderEviction: conntrack pressure evicts session A while
// its request is in flight, and a new session B is given A's NAT id. A's
// reply must still go to A, and B must not take over A's request.
func TestWrongClientUnderEviction(t *testing.T) {
	cfg := testConfig(vip)
	cfg.ConntrackSize = 64
	cfg.InflightSize = 64 * 64 // the fillers' requests stay in flight
	h := readyHarness(t, cfg)

	a := echoRequest(client1, hop1MAC, 0x0a0a, 1)
	_, natA := h.forward(t, a)
	revA := IcmplbRevKey{Backend: Addr(backendA.addr), NatId: Net16(natA)}
	evicted := false
	for i := 0; i < 64*int(cfg.ConntrackSize) && !evicted; i++ {
		client := netip.AddrFrom4([4]byte{10, 4, byte(i >> 8), byte(i)})
		if v, _ := h.runRaw(t, echoRequest(client, hop2MAC, 1, 1).frame()); v != xdpTX {
			t.Fatalf("filler session %d: verdict %d, stats %v", i, v, h.stats(t))
		}
		if b, err := h.objs.CtRev.LookupBytes(revA); err != nil {
			t.Fatal(err)
		} else {
			evicted = b == nil
		}
	}
	if !evicted {
		t.Fatalf("session A's ct_rev entry survived %d new sessions in a map of %d", 64*cfg.ConntrackSize, cfg.ConntrackSize)
	}
	h.requireInflight(t, a, backendA, natA)

	h.forceNATID(t, backendA.idx, natA)
	b := echoRequest(client2, hop2MAC, 0x0b0b, 2)
	if _, natB := h.forward(t, b); natB != natA {
		t.Fatalf("setup: session B got NAT id %#04x, want A's %#04x", natB, natA)
	}
	h.requireConntrack(t, client2, 0x0b0b, hop2MAC, backendA, natA)
	h.run(t, echoRequest(client2, hop2MAC, 0x0b0b, 1).frame(), xdpDrop, IcmplbReasonREASON_NAT_COLLISION)

	h.returnReply(t, replyTo(a, backendA, vip, natA), client1, 0x0a0a, hop1MAC)
	h.returnReply(t, replyTo(b, backendA, vip, natA), client2, 0x0b0b, hop2MAC)

	// A comes back: its NAT id is B's now, so it gets another.
	a2 := echoRequest(client1, hop1MAC, 0x0a0a, 2)
	_, natA2 := h.forward(t, a2)
	if natA2 == natA {
		t.Fatalf("returning session A took NAT id %#04x from B", natA)
	}
	h.returnReply(t, replyTo(a2, backendA, vip, natA2), client1, 0x0a0a, hop1MAC)
}

// TestInflightFull: when no request can be remembered, none is sent, so a
// reply never arrives that could not be matched, and none is counted.
func TestInflightFull(t *testing.T) {
	cfg := testConfig(vip)
	cfg.InflightSize = 4
	h := readyHarness(t, cfg)

	var natID uint16
	reqs := map[uint16]packet{}
	for seq := uint16(1); seq <= 4; seq++ {
		reqs[seq] = echoRequest(client1, hop1MAC, 0x3c3c, seq)
		_, natID = h.forward(t, reqs[seq])
	}
	h.run(t, echoRequest(client1, hop1MAC, 0x3c3c, 5).frame(), xdpDrop, IcmplbReasonREASON_INFLIGHT_FULL)
	h.run(t, echoRequest(client2, hop2MAC, 0x3c3c, 1).frame(), xdpDrop, IcmplbReasonREASON_INFLIGHT_FULL)
	requireRequests(t, h, backendA, 4)
	// A resent request needs no room: its first copy holds it.
	h.forward(t, reqs[2])
	requireRequests(t, h, backendA, 4)
	if n := h.inflightCount(t); n != 4 {
		t.Errorf("%d requests in flight, want 4", n)
	}

	h.returnReply(t, replyTo(reqs[1], backendA, vip, natID), client1, 0x3c3c, hop1MAC)
	h.forward(t, echoRequest(client1, hop1MAC, 0x3c3c, 5))
	requireRequests(t, h, backendA, 5)
}

// A session's request of a sequence number whose previous request is older
// than twice the loss timeout (the sequence wrapped; the sweeper has not
// run yet) is a new request: counted, measured and answered to the client.
func TestStaleOwnRequestRenewed(t *testing.T) {
	h := readyHarness(t, testConfig(vip))

	req := echoRequest(client1, hop1MAC, 0x4d4d, 9)
	_, natID := h.forward(t, req)
	h.backdate(t, backendA, natID, 9, 2*h.cfg.LossTimeout+time.Second)
	before := monotonicNow(t)
	h.forward(t, req)
	requireRequests(t, h, backendA, 2)
	if iv := h.requireInflight(t, req, backendA, natID); iv.SentNs < before {
		t.Errorf("in-flight send time %d is older than the renewed request (%d)", iv.SentNs, before)
	}
	h.returnReply(t, replyTo(req, backendA, vip, natID), client1, 0x4d4d, hop1MAC)
}
