// SPDX-License-Identifier: MIT

package bpf

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// natPermute is the tests' model of nat_permute in icmplb.c: a 4-round
// Feistel network on the two bytes of x, round i mixing the right byte with
// key[i]. The kernel tests below check the program against it id for id.
func natPermute(key [4]uint32, x uint16) uint16 {
	l, r := uint8(x>>8), uint8(x)
	for i := 0; i < 4; i++ {
		l, r = r, l^natRound(key[i], r)
	}
	return uint16(l)<<8 | uint16(r)
}

// natUnpermute inverts natPermute: it gives the counter value a pool must
// hold to hand out id next.
func natUnpermute(key [4]uint32, id uint16) uint16 {
	l, r := uint8(id>>8), uint8(id)
	for i := 3; i >= 0; i-- {
		l, r = r^natRound(key[i], l), l
	}
	return uint16(l)<<8 | uint16(r)
}

func natRound(k uint32, r uint8) uint8 {
	return uint8(((uint32(r) + k) * 0x9e3779b1) >> 24)
}

func randomKey(rng *rand.Rand) [4]uint32 {
	return [4]uint32{rng.Uint32(), rng.Uint32(), rng.Uint32(), rng.Uint32()}
}

// consecutiveRuns counts the neighbours in ids that a counter would have
// given: id[i+1] == id[i]+1.
func consecutiveRuns(ids []uint16) int {
	n := 0
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1]+1 {
			n++
		}
	}
	return n
}

// TestNATPermuteModel checks the properties the allocator relies on, on the
// model: a bijection of the 16-bit ids (a counter walks all of them before
// one repeats) whose order depends on the key and does not follow the
// counter. TestNATIDsFollowModel ties the model to the kernel.
func TestNATPermuteModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	keys := [][4]uint32{{}, {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {1, 2, 3, 4}}
	for i := 0; i < 5; i++ {
		keys = append(keys, randomKey(rng))
	}
	sequences := map[[16]uint16][4]uint32{}
	for _, key := range keys {
		var seen [65536]bool
		ids := make([]uint16, 0, 65536)
		for x := range 65536 {
			id := natPermute(key, uint16(x))
			if seen[id] {
				t.Fatalf("key %#08x: id %#04x given twice within 65536 counter values", key, id)
			}
			seen[id] = true
			ids = append(ids, id)
			if back := natUnpermute(key, id); back != uint16(x) {
				t.Fatalf("key %#08x: unpermute(permute(%#04x)) = %#04x", key, x, back)
			}
		}
		// A counter gives 65535 neighbours. The permutation gives a few:
		// over 20,000 random keys the mean was 3 and the most 17, so 64
		// tells a counter-like order apart without failing on a rare key.
		if n := consecutiveRuns(ids); n > 64 {
			t.Errorf("key %#08x: %d of 65535 consecutive counter values give consecutive ids", key, n)
		}
		first := [16]uint16(ids[:16])
		if other, dup := sequences[first]; dup {
			t.Errorf("keys %#08x and %#08x give the same first 16 ids %#04x", other, key, first)
		}
		sequences[first] = key
	}
}

// TestNATIDsFollowModel checks the kernel's ids against the model, that
// sessions opened one after another get unrelated ids, and that two pools
// with other keys walk other sequences from the same counter.
func TestNATIDsFollowModel(t *testing.T) {
	h := newHarness(t, testConfig(vip))
	h.setBackend(t, backendA, backendReady)
	h.setBackend(t, backendB, backendReady)
	if h.pools[backendA.idx].Key == h.pools[backendB.idx].Key {
		t.Fatal("test bug: two backends drew the same random keys")
	}
	const n = 64
	sessions := func(be backendInfo, echoID uint16) []uint16 {
		h.pointMaglev(t, be.idx)
		const start = 0xfff0 // across the 16-bit wrap of the counter
		h.setNATNext(t, be.idx, start)
		var ids []uint16
		for i := range uint32(n) {
			client := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
			got, id := h.forward(t, echoRequest(client, hop1MAC, echoID, 1))
			if got != be {
				t.Fatalf("session went to %v, want %v", got.addr, be.addr)
			}
			if want := h.natID(t, be.idx, start+i); id != want {
				t.Fatalf("session %d at %v: NAT id %#04x, model says %#04x", i, be.addr, id, want)
			}
			ids = append(ids, id)
		}
		if next := h.poolNext(t, be.idx); next != start+n {
			t.Errorf("pool counter %d after %d sessions from %d, want %d", next, n, start, start+n)
		}
		return ids
	}
	idsA := sessions(backendA, 1)
	idsB := sessions(backendB, 2)
	t.Logf("NAT ids at %v: %#04x", backendA.addr, idsA)
	t.Logf("NAT ids at %v: %#04x", backendB.addr, idsB)
	for name, ids := range map[string][]uint16{"A": idsA, "B": idsB} {
		if c := consecutiveRuns(ids); c > 2 {
			t.Errorf("backend %s: %d of %d successive sessions got the next id after the previous one's", name, c, n-1)
		}
	}
	if slices.Equal(idsA, idsB) {
		t.Errorf("pools with different keys handed out the same ids from the same counter")
	}
}

// TestNATIDPermutationInKernel opens 65536 sessions on one backend: the
// kernel must hand out every 16-bit id exactly once, with no id found busy
// (a repeat would have been skipped and shown up as a gap in the counter).
func TestNATIDPermutationInKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("65536 program runs; skipped in -short mode")
	}
	cfg := testConfig(vip)
	// LRU maps evict before they are full; room to spare keeps every
	// session's NAT id held, so a repeated id would be skipped.
	cfg.ConntrackSize = 1 << 17
	cfg.InflightSize = 1 << 17
	h := readyHarness(t, cfg)
	start := h.poolNext(t, backendA.idx)
	var seen [65536]bool
	// Every id but the probes' (PROBE_ECHO_ID), which the pool skips.
	n := start
	for i := range uint32(65535) {
		client := netip.AddrFrom4([4]byte{10, 3, byte(i >> 8), byte(i)})
		verdict, out := h.runRaw(t, echoRequest(client, hop1MAC, 9, 1).frame())
		if verdict != xdpTX {
			t.Fatalf("session %d: verdict %d, want XDP_TX; stats %v", i, verdict, h.stats(t))
		}
		id := uint16(out[38])<<8 | uint16(out[39])
		want := h.natID(t, backendA.idx, n)
		if want == uint16(IcmplbLayoutPROBE_ECHO_ID) {
			n++
			want = h.natID(t, backendA.idx, n)
		}
		n++
		if id != want {
			t.Fatalf("session %d: NAT id %#04x, model says %#04x", i, id, want)
		}
		if seen[id] {
			t.Fatalf("session %d: NAT id %#04x handed out twice", i, id)
		}
		seen[id] = true
	}
	if seen[IcmplbLayoutPROBE_ECHO_ID] {
		t.Errorf("the probes' echo id %#04x was handed out as a NAT id", IcmplbLayoutPROBE_ECHO_ID)
	}
	if next := h.poolNext(t, backendA.idx); next != start+65536 {
		t.Errorf("pool counter moved by %d for 65535 sessions, want 65536 (the probes' id skipped, no id found busy)", next-start)
	}
	if s := h.stats(t); s[IcmplbReasonREASON_REQUEST_FORWARDED] != 65535 {
		t.Errorf("%d requests forwarded, want 65535", s[IcmplbReasonREASON_REQUEST_FORWARDED])
	}
}

func TestNATIDWraps(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	// The counter is 32 bits wide; ids come from its low 16 bits.
	h.setNATNext(t, backendA.idx, 0xffffffff)

	req1 := echoRequest(client1, hop1MAC, 1, 1)
	req2 := echoRequest(client2, hop2MAC, 1, 1)
	nat1, nat2 := h.natID(t, backendA.idx, 0xffff), h.natID(t, backendA.idx, 0)
	if _, nat := h.forward(t, req1); nat != nat1 {
		t.Errorf("first NAT id %#04x, want %#04x (counter 0xffffffff)", nat, nat1)
	}
	if _, nat := h.forward(t, req2); nat != nat2 {
		t.Errorf("NAT id %#04x after the counter wrapped, want %#04x (counter 0)", nat, nat2)
	}
	if next := h.poolNext(t, backendA.idx); next != 1 {
		t.Errorf("counter %d, want 1", next)
	}
	h.returnReply(t, replyTo(req1, backendA, vip, nat1), client1, 1, hop1MAC)
	h.returnReply(t, replyTo(req2, backendA, vip, nat2), client2, 1, hop2MAC)
}

func TestNATIDSkipsBusyReusesIdle(t *testing.T) {
	cfg := testConfig(vip)
	cfg.NATIdle = 10 * time.Second
	h := readyHarness(t, cfg)

	now := monotonicNow(t)
	if now < uint64(3*cfg.NATIdle) {
		t.Skipf("uptime %v is too short to fake an idle session", time.Duration(now))
	}
	const start = 100
	h.setNATNext(t, backendA.idx, start)
	busy := IcmplbRevVal{Client: Addr(client2), EchoId: Net16(77), BackendIdx: backendA.idx, Vip: Addr(vip), LastSeenNs: now}
	for n := uint32(start); n < start+3; n++ {
		v := busy
		if n == start+1 {
			// Stamped by another CPU after this packet read the clock.
			v.LastSeenNs = now + uint64(time.Second)
		}
		mustPut(t, h.objs.CtRev, IcmplbRevKey{Backend: Addr(backendA.addr), NatId: Net16(h.natID(t, backendA.idx, n))}, v)
	}
	idle := busy
	idle.LastSeenNs = now - uint64(2*cfg.NATIdle)
	idleID := h.natID(t, backendA.idx, start+3)
	mustPut(t, h.objs.CtRev, IcmplbRevKey{Backend: Addr(backendA.addr), NatId: Net16(idleID)}, idle)

	req := echoRequest(client1, hop1MAC, 5, 1)
	if _, nat := h.forward(t, req); nat != idleID {
		t.Fatalf("NAT id %#04x, want %#04x (the first three candidates busy, the fourth idle)", nat, idleID)
	}
	h.requireConntrack(t, client1, 5, hop1MAC, backendA, idleID)
	h.returnReply(t, replyTo(req, backendA, vip, idleID), client1, 5, hop1MAC)
}

// An idle session's NAT id may go to a new session once no request of it
// awaits a reply (the reply would be taken for the new session's); when the
// old session wakes up it must get a fresh id instead of hijacking the new
// owner's.
func TestNATIDReusedByAnotherSession(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name        string
		thief       netip.Addr
		thiefHop    mac
		thiefEchoID uint16
	}{
		{"other client, same echo id", client2, hop2MAC, 5},
		{"same client, other echo id", client1, hop1MAC, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(vip)
			cfg.NATIdle = 0
			h := readyHarness(t, cfg)

			const natID = 40
			h.forceNATID(t, backendA.idx, natID)
			first := echoRequest(client1, hop1MAC, 5, 1)
			h.forward(t, first)
			h.forceNATID(t, backendA.idx, natID)
			early := echoRequest(netip.MustParseAddr("10.4.0.9"), hop2MAC, 9, 1)
			if _, got := h.forward(t, early); got == natID {
				t.Fatalf("a session got NAT id %d while its idle holder awaits a reply", natID)
			}
			h.returnReply(t, replyTo(first, backendA, vip, natID), client1, 5, hop1MAC)

			h.forceNATID(t, backendA.idx, natID)
			thiefReq := echoRequest(tt.thief, tt.thiefHop, tt.thiefEchoID, 2)
			if _, got := h.forward(t, thiefReq); got != natID {
				t.Fatalf("setup: second session got NAT id %d, want the idle %d", got, natID)
			}
			// The idle session ends with its NAT id: no forward entry of
			// it is left pointing at the id.
			h.requireNoSession(t, client1, 5)

			req := echoRequest(client1, hop1MAC, 5, 3)
			_, got := h.forward(t, req)
			if got == natID {
				t.Fatalf("returning session took NAT id %d, now owned by %v id %d", natID, tt.thief, tt.thiefEchoID)
			}
			h.requireConntrack(t, client1, 5, hop1MAC, backendA, got)
			h.requireConntrack(t, tt.thief, tt.thiefEchoID, tt.thiefHop, backendA, natID)
			h.returnReply(t, replyTo(thiefReq, backendA, vip, natID), tt.thief, tt.thiefEchoID, tt.thiefHop)
			h.returnReply(t, replyTo(req, backendA, vip, got), client1, 5, hop1MAC)
		})
	}
}

func TestNATExhausted(t *testing.T) {
	h := readyHarness(t, testConfig(vip))

	now := monotonicNow(t)
	const start = 1000
	h.setNATNext(t, backendA.idx, start)
	busy := IcmplbRevVal{Client: Addr(client2), EchoId: Net16(77), BackendIdx: backendA.idx, Vip: Addr(vip), LastSeenNs: now}
	// The allocator tries 8 candidates per packet.
	for n := uint32(start); n < start+8; n++ {
		mustPut(t, h.objs.CtRev, IcmplbRevKey{Backend: Addr(backendA.addr), NatId: Net16(h.natID(t, backendA.idx, n))}, busy)
	}
	h.requireUntouched(t, echoRequest(client1, hop1MAC, 5, 1).frame(), xdpPass, IcmplbReasonREASON_NAT_EXHAUSTED)
	var fv IcmplbFwdVal
	if err := h.objs.CtFwd.Lookup(IcmplbFwdKey{Client: Addr(client1), Vip: Addr(vip), EchoId: Net16(5)}, &fv); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("ct_fwd entry after failed allocation: %+v, %v", fv, err)
	}
	if n := h.inflightCount(t); n != 0 {
		t.Errorf("%d in-flight entries after failed allocation, want 0", n)
	}
	if c := h.backendCounters(t, backendA.idx); c.Requests != 0 {
		t.Errorf("backend_stats requests %d after failed allocation, want 0", c.Requests)
	}
	want := h.natID(t, backendA.idx, start+8)
	if _, nat := h.forward(t, echoRequest(client1, hop1MAC, 5, 2)); nat != want {
		t.Errorf("NAT id %#04x after exhaustion, want %#04x (the ninth candidate)", nat, want)
	}
}
