// SPDX-License-Identifier: MIT

package bpf

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// forget removes a session's ct_rev entry while requests of it still wait
// in the inflight map: a state the agent never makes (its sweeper frees an
// entry only after --nat-idle, at least twice the loss timeout, by when
// those requests are past waiting for), made here to test the guard that
// holds if it ever arises.
func (h *harness) forget(t testing.TB, be backendInfo, natID uint16) {
	t.Helper()
	if err := h.objs.CtRev.Delete(IcmplbRevKey{Backend: Addr(be.addr), NatId: Net16(natID)}); err != nil {
		t.Fatalf("forget ct_rev[%v, %#04x]: %v", be.addr, natID, err)
	}
}

// TestNATCollision: a session that got the NAT id of a forgotten session,
// whose request still awaits a reply in the inflight map, must not take
// that request over: the reply would go to the new session.
func TestNATCollision(t *testing.T) {
	cfg := testConfig(vip)
	h := readyHarness(t, cfg)

	natID := h.aHome(t, backendA.idx, 0x4242)
	owner := echoRequest(client1, hop1MAC, 0x0101, 1)
	h.forceNATID(t, backendA.idx, natID, owner)
	h.forward(t, owner)
	// Sequence 5 finds slot 1 of the ring taken by sequence 1.
	owner5 := echoRequest(client1, hop1MAC, 0x0101, 5)
	h.forward(t, owner5)
	if _, ok := h.overflowed(t, backendA, natID, 5); !ok {
		t.Fatal("setup: sequence 5 is not in the inflight map")
	}
	h.forget(t, backendA, natID)

	newcomer := echoRequest(client2, hop2MAC, 0x0202, 1)
	h.forceNATID(t, backendA.idx, natID, newcomer)
	if _, got := h.forward(t, newcomer); got != natID {
		t.Fatalf("setup: newcomer got NAT id %#04x, want the forgotten %#04x", got, natID)
	}
	newcomer5 := echoRequest(client2, hop2MAC, 0x0202, 5)
	h.run(t, newcomer5.frame(), xdpDrop, IcmplbReasonREASON_NAT_COLLISION)
	h.requireInflight(t, owner5, backendA, natID)
	requireRequests(t, h, backendA, 3)

	h.returnReply(t, replyTo(owner5, backendA, vip, natID), client1, 0x0101, hop1MAC)
	h.returnReply(t, replyTo(newcomer, backendA, vip, natID), client2, 0x0202, hop2MAC)

	// A request older than twice the loss timeout is lost for good: its
	// key may be taken over.
	owner9 := echoRequest(client1, hop1MAC, 0x0303, 9)
	h.forceNATID(t, backendA.idx, h.aHome(t, backendA.idx, 0x4243), owner9)
	_, ownerNAT := h.forward(t, owner9)
	owner13 := echoRequest(client1, hop1MAC, 0x0303, 13)
	h.forward(t, owner13)
	h.backdate(t, backendA, ownerNAT, 13, 2*cfg.LossTimeout+time.Second)
	h.backdate(t, backendA, ownerNAT, 9, 2*cfg.LossTimeout+time.Second)
	h.forget(t, backendA, ownerNAT)
	taker := echoRequest(client2, hop2MAC, 0x0404, 9)
	h.forceNATID(t, backendA.idx, ownerNAT, taker)
	h.forward(t, taker)
	taker13 := echoRequest(client2, hop2MAC, 0x0404, 13)
	h.forward(t, taker13)
	h.requireInflight(t, taker13, backendA, ownerNAT)
	h.returnReply(t, replyTo(taker13, backendA, vip, ownerNAT), client2, 0x0404, hop2MAC)
}

// TestSessionsFull: when the sessions map is full, a new session is
// refused (passed to the kernel and counted as the balancer's own loss)
// while running sessions go on, their requests in flight answered to their
// own clients; sessions freed by the sweeper make room again.
func TestSessionsFull(t *testing.T) {
	// A forward LRU map this small hands its free entries to each CPU in
	// batches: run on a CPU of its own, the test keeps a CPU switch from
	// evicting session A's forward entry (it would then open anew, and the
	// full sessions map refuse it), which is the LRU's doing, not this test's.
	pinCPU(t)
	cfg := testConfig(vip)
	cfg.ConntrackSize = 64
	cfg.NATIdle = 0
	cfg.LossTimeout = 100 * time.Millisecond
	h := readyHarness(t, cfg)

	a := echoRequest(client1, hop1MAC, 0x0a0a, 1)
	_, natA := h.forward(t, a)
	for i := 1; i < int(cfg.ConntrackSize); i++ {
		client := netip.AddrFrom4([4]byte{10, 4, byte(i >> 8), byte(i)})
		h.forward(t, echoRequest(client, hop2MAC, 1, 1))
	}
	refused := echoRequest(client2, hop2MAC, 0x0b0b, 1)
	h.requireUntouched(t, refused.frame(), xdpPass, IcmplbReasonREASON_NAT_EXHAUSTED)
	h.requireNoSession(t, client2, 0x0b0b)

	a2 := echoRequest(client1, hop1MAC, 0x0a0a, 2)
	if _, nat := h.forward(t, a2); nat != natA {
		t.Fatalf("running session A changed NAT id from %#04x to %#04x", natA, nat)
	}
	h.returnReply(t, replyTo(a, backendA, vip, natA), client1, 0x0a0a, hop1MAC)
	h.returnReply(t, replyTo(a2, backendA, vip, natA), client1, 0x0a0a, hop1MAC)

	// Idle past the NAT idle time, nothing awaited any more: swept.
	time.Sleep(3 * cfg.LossTimeout)
	h.sweep(t)
	h.forward(t, refused)
}

// TestInflightFull: a session's requests beyond its ring wait in the
// inflight map; when it is full, such a request is not sent, so a reply
// never arrives that could not be matched, and none is counted. Sessions
// with room in their rings go on.
func TestInflightFull(t *testing.T) {
	cfg := testConfig(vip)
	cfg.InflightSize = 4
	h := readyHarness(t, cfg)

	var natID uint16
	reqs := map[uint16]packet{}
	ring := uint16(IcmplbLayoutINFLIGHT_RING)
	for seq := uint16(1); seq <= ring+4; seq++ {
		reqs[seq] = echoRequest(client1, hop1MAC, 0x3c3c, seq)
		_, natID = h.forward(t, reqs[seq])
	}
	for seq := ring + 1; seq <= ring+4; seq++ {
		if _, ok := h.overflowed(t, backendA, natID, seq); !ok {
			t.Fatalf("sequence %d is not in the inflight map", seq)
		}
	}
	h.run(t, echoRequest(client1, hop1MAC, 0x3c3c, ring+5).frame(), xdpDrop, IcmplbReasonREASON_INFLIGHT_FULL)
	requireRequests(t, h, backendA, uint64(ring)+4)
	// A resent request needs no room: its first copy holds it, in the
	// ring or in the map.
	h.forward(t, reqs[2])
	h.forward(t, reqs[ring+2])
	requireRequests(t, h, backendA, uint64(ring)+4)
	if n := h.inflightCount(t); n != int(ring)+4 {
		t.Errorf("%d requests in flight, want %d", n, ring+4)
	}
	h.forward(t, echoRequest(client2, hop2MAC, 0x3c3c, 1))
	requireRequests(t, h, backendA, uint64(ring)+5)

	h.returnReply(t, replyTo(reqs[ring+1], backendA, vip, natID), client1, 0x3c3c, hop1MAC)
	h.forward(t, echoRequest(client1, hop1MAC, 0x3c3c, ring+5))
	requireRequests(t, h, backendA, uint64(ring)+6)
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

// pinCPU keeps the test's goroutine on one thread and that thread on one
// CPU until the test ends: BPF_PROG_TEST_RUN runs the program on the
// calling thread's CPU, and per-CPU state then stays on one CPU.
func pinCPU(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatalf("read CPU affinity: %v", err)
	}
	var one unix.CPUSet
	for cpu := 0; cpu < 1024; cpu++ {
		if old.IsSet(cpu) {
			one.Set(cpu)
			break
		}
	}
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatalf("pin to one CPU: %v", err)
	}
	t.Cleanup(func() {
		unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	})
}
