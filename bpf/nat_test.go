// SPDX-License-Identifier: MIT

package bpf

import (
	"encoding/binary"
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

// natHomes is NAT_HOMES, the first permuted value of the counter's half.
const natHomes = uint16(IcmplbLayoutNAT_HOMES)

// natCounted is the id a pool of key counts out for counter value n: the
// counter's half of the permutation (values from NAT_HOMES on).
func natCounted(key [4]uint32, n uint32) uint16 {
	return natPermute(key, natHomes|uint16(n)&(natHomes-1))
}

// sessionHash is the tests' model of session_hash in icmplb.c (Maglev's
// and the homes' hash of a session), on the words as the program loads
// them: in the machine's order from network-order memory.
func sessionHash(client netip.Addr, echoID uint16) uint32 {
	a := client.As16()
	w := func(i int) uint64 { return uint64(binary.NativeEndian.Uint32(a[4*i:])) }
	id := binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, echoID))
	h := w(3)<<16 | uint64(id)
	if !client.Unmap().Is4() {
		h ^= (w(0)<<32 | w(1)) ^ (w(2) << 23)
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return uint32(h)
}

// natHomeValue is the value a session's home is the permutation of, in
// the home half (below NAT_HOMES), by nat_home's rule.
func natHomeValue(pool IcmplbNatPool, vip, client netip.Addr, echoID uint16) (uint16, uint32) {
	h := sessionHash(client, echoID)
	a := vip.As16()
	x := h ^ pool.Salt
	for i := range 4 {
		x ^= binary.NativeEndian.Uint32(a[4*i:])
	}
	x ^= x >> 16
	x *= 0x85ebca6b
	x ^= x >> 13
	x *= 0xc2b2ae35
	x ^= x >> 16
	return uint16(x) & (natHomes - 1), h
}

// natHome is the tests' model of nat_home in nat.h: the session's home
// NAT id, unless that would be the probes' echo id.
func natHome(pool IcmplbNatPool, vip, client netip.Addr, echoID uint16) (uint16, bool) {
	x, _ := natHomeValue(pool, vip, client, echoID)
	id := natPermute(pool.Key, x)
	return id, id != uint16(IcmplbLayoutPROBE_ECHO_ID)
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

// natAlloc is the tests' model of nat_alloc for sessions that never go
// idle: the session's home unless taken, else the counter's next ids,
// skipping taken ones and the probes' id.
type natAlloc struct {
	pool  IcmplbNatPool
	taken map[uint16]bool
}

func (m *natAlloc) open(vip, client netip.Addr, echoID uint16) (uint16, bool) {
	if home, ok := natHome(m.pool, vip, client, echoID); ok && !m.taken[home] {
		m.taken[home] = true
		return home, true
	}
	for range natTries {
		id := natCounted(m.pool.Key, m.pool.Next)
		m.pool.Next++
		if id == uint16(IcmplbLayoutPROBE_ECHO_ID) || m.taken[id] {
			continue
		}
		m.taken[id] = true
		return id, true
	}
	return 0, false
}

// natTries is NAT_ID_TRIES in nat.h: counted ids tried per new session.
const natTries = 8

// TestNATIDsFollowModel checks the kernel's ids against the model, as
// sessions pile up on two backends until many homes are taken, that
// successive sessions get unrelated ids, and that two pools with other
// keys give other ids to the same sessions.
func TestNATIDsFollowModel(t *testing.T) {
	cfg := testConfig(vip)
	cfg.ConntrackSize = 1 << 16
	h := newHarness(t, cfg)
	h.setBackend(t, backendA, backendReady)
	h.setBackend(t, backendB, backendReady)
	if h.pools[backendA.idx].Key == h.pools[backendB.idx].Key {
		t.Fatal("test bug: two backends drew the same random keys")
	}
	const n = 4096
	sessions := func(be backendInfo, echoID uint16) []uint16 {
		h.pointMaglev(t, be.idx)
		const start = 0xfff0 // across the 16-bit wrap of the counter
		h.setNATNext(t, be.idx, start)
		m := natAlloc{pool: h.pool(t, be.idx), taken: map[uint16]bool{}}
		var ids []uint16
		counted := 0
		for i := range uint32(n) {
			client := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
			want, ok := m.open(vip, client, echoID)
			if !ok {
				t.Fatalf("test bug: the model found no id for session %d", i)
			}
			if home, _ := natHome(m.pool, vip, client, echoID); want != home {
				counted++
			}
			verdict, out := h.runRaw(t, echoRequest(client, hop1MAC, echoID, 1).frame())
			if verdict != xdpTX {
				t.Fatalf("session %d: verdict %d; stats %v", i, verdict, h.stats(t))
			}
			if id := binary.BigEndian.Uint16(out[38:40]); id != want {
				t.Fatalf("session %d at %v: NAT id %#04x, model says %#04x", i, be.addr, id, want)
			}
			ids = append(ids, want)
		}
		// Sessions whose home was taken: about n^2 / (2 x 32768).
		t.Logf("%v: %d of %d sessions away from their home", be.addr, counted, n)
		if counted == 0 || counted > n/4 {
			t.Errorf("%v: %d of %d sessions got a counted id, want a few percent", be.addr, counted, n)
		}
		if next := h.poolNext(t, be.idx); next != m.pool.Next {
			t.Errorf("pool counter %d after %d sessions from %d, want %d", next, n, start, m.pool.Next)
		}
		return ids
	}
	idsA := sessions(backendA, 1)
	idsB := sessions(backendB, 2)
	for name, ids := range map[string][]uint16{"A": idsA, "B": idsB} {
		if c := consecutiveRuns(ids); c > 8 {
			t.Errorf("backend %s: %d of %d successive sessions got the next id after the previous one's", name, c, n-1)
		}
	}
	if slices.Equal(idsA, idsB) {
		t.Errorf("pools with different keys handed out the same ids")
	}
}

// TestNATIDsInKernel opens 40000 sessions on one backend, more than its
// 32768 homes: every id is handed out at most once, never the probes',
// each the model's, and the counter moves only for sessions whose home was
// taken (the counted half never collides with a home).
func TestNATIDsInKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("40000 program runs; skipped in -short mode")
	}
	cfg := testConfig(vip)
	// LRU maps evict before they are full; room to spare keeps every
	// session's NAT id held.
	cfg.ConntrackSize = 1 << 17
	cfg.InflightSize = 1 << 17
	h := readyHarness(t, cfg)
	m := natAlloc{pool: h.pool(t, backendA.idx), taken: map[uint16]bool{}}
	start := m.pool.Next
	seen := map[uint16]bool{}
	homes := 0
	const n = 40000
	for i := range uint32(n) {
		client := netip.AddrFrom4([4]byte{10, 3, byte(i >> 8), byte(i)})
		verdict, out := h.runRaw(t, echoRequest(client, hop1MAC, 9, 1).frame())
		if verdict != xdpTX {
			t.Fatalf("session %d: verdict %d, want XDP_TX; stats %v", i, verdict, h.stats(t))
		}
		id := binary.BigEndian.Uint16(out[38:40])
		want, _ := m.open(vip, client, 9)
		if id != want {
			t.Fatalf("session %d: NAT id %#04x, model says %#04x", i, id, want)
		}
		if seen[id] {
			t.Fatalf("session %d: NAT id %#04x handed out twice", i, id)
		}
		seen[id] = true
		if natUnpermute(m.pool.Key, id) < natHomes {
			homes++
		}
	}
	if seen[uint16(IcmplbLayoutPROBE_ECHO_ID)] {
		t.Errorf("the probes' echo id %#04x was handed out as a NAT id", IcmplbLayoutPROBE_ECHO_ID)
	}
	counted := n - homes
	moved := h.poolNext(t, backendA.idx) - start
	// The probes' id, if in the counted half, is skipped once.
	if moved != uint32(counted) && moved != uint32(counted)+1 {
		t.Errorf("pool counter moved by %d for %d counted ids: a counted id was found busy", moved, counted)
	}
	t.Logf("%d sessions: %d at their home, %d counted", n, homes, counted)
	if s := h.stats(t); s[IcmplbReasonREASON_REQUEST_FORWARDED] != n {
		t.Errorf("%d requests forwarded, want %d", s[IcmplbReasonREASON_REQUEST_FORWARDED], n)
	}
}

// A session's requests find it at its home with no ct_fwd entry at all,
// and a session away from its home (its home taken when it opened) is
// found through ct_fwd.
func TestNATIDHome(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	req := echoRequest(client1, hop1MAC, 0x61, 1)
	home, _ := h.homeID(t, backendA.idx, vip, client1, 0x61)
	if _, got := h.forward(t, req); got != home {
		t.Fatalf("first NAT id %#04x, want the session's home %#04x", got, home)
	}
	if err := h.objs.CtFwd.Delete(IcmplbFwdKey{Client: Addr(client1), Vip: Addr(vip), EchoId: Net16(0x61)}); err != nil {
		t.Fatal(err)
	}
	req.seq = 2
	if _, got := h.forward(t, req); got != home {
		t.Fatalf("with no ct_fwd entry, NAT id %#04x, want its home %#04x", got, home)
	}
	h.returnReply(t, replyTo(req, backendA, vip, home), client1, 0x61, hop1MAC)

	away := echoRequest(client2, hop2MAC, 0x62, 1)
	h.holdHome(t, backendA.idx, away)
	_, id := h.forward(t, away)
	if awayHome, _ := h.homeID(t, backendA.idx, vip, client2, 0x62); id == awayHome {
		t.Fatalf("a session whose home is held got its home %#04x", id)
	}
	away.seq = 2
	if _, got := h.forward(t, away); got != id {
		t.Fatalf("the session away from its home: NAT id %#04x, then %#04x", id, got)
	}
	h.returnReply(t, replyTo(away, backendA, vip, id), client2, 0x62, hop2MAC)
	if c := h.backendCounters(t, backendA.idx); c.Requests != 4 || c.Replies != 2 {
		t.Errorf("backend_stats %+v, want 4 requests, 2 replies", traffic(c))
	}
}

func TestNATIDWraps(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	// The counter is 32 bits wide; ids come from its low 15 bits.
	h.setNATNext(t, backendA.idx, 0xffffffff)

	req1 := echoRequest(client1, hop1MAC, 1, 1)
	req2 := echoRequest(client2, hop2MAC, 1, 1)
	h.holdHome(t, backendA.idx, req1)
	h.holdHome(t, backendA.idx, req2)
	nat1, nat2 := h.natID(t, backendA.idx, 0xffffffff), h.natID(t, backendA.idx, 0)
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
	req := echoRequest(client1, hop1MAC, 5, 1)
	h.holdHome(t, backendA.idx, req)
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

	if _, nat := h.forward(t, req); nat != idleID {
		t.Fatalf("NAT id %#04x, want %#04x (the home and the first three counted ids busy, the fourth idle)", nat, idleID)
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

			// A counted id: a home is never taken over (TestNATHomeNeverTakenOver).
			natID := h.natID(t, backendA.idx, 40)
			first := echoRequest(client1, hop1MAC, 5, 1)
			h.forceNATID(t, backendA.idx, natID, first)
			h.forward(t, first)
			early := echoRequest(netip.MustParseAddr("10.4.0.9"), hop2MAC, 9, 1)
			h.forceNATID(t, backendA.idx, natID, early)
			if _, got := h.forward(t, early); got == natID {
				t.Fatalf("a session got NAT id %d while its idle holder awaits a reply", natID)
			}
			h.returnReply(t, replyTo(first, backendA, vip, natID), client1, 5, hop1MAC)

			thiefReq := echoRequest(tt.thief, tt.thiefHop, tt.thiefEchoID, 2)
			h.forceNATID(t, backendA.idx, natID, thiefReq)
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
	h.holdHome(t, backendA.idx, echoRequest(client1, hop1MAC, 5, 1))
	held := h.inflightCount(t) // the home's holder awaits a reply
	busy := IcmplbRevVal{Client: Addr(client2), EchoId: Net16(77), BackendIdx: backendA.idx, Vip: Addr(vip), LastSeenNs: now}
	// The allocator tries the home, then 8 counted ids per packet.
	for n := uint32(start); n < start+8; n++ {
		mustPut(t, h.objs.CtRev, IcmplbRevKey{Backend: Addr(backendA.addr), NatId: Net16(h.natID(t, backendA.idx, n))}, busy)
	}
	h.requireUntouched(t, echoRequest(client1, hop1MAC, 5, 1).frame(), xdpPass, IcmplbReasonREASON_NAT_EXHAUSTED)
	var fv IcmplbFwdVal
	if err := h.objs.CtFwd.Lookup(IcmplbFwdKey{Client: Addr(client1), Vip: Addr(vip), EchoId: Net16(5)}, &fv); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("ct_fwd entry after failed allocation: %+v, %v", fv, err)
	}
	if n := h.inflightCount(t); n != held {
		t.Errorf("%d in-flight entries after failed allocation, want the home holder's %d", n, held)
	}
	if c := h.backendCounters(t, backendA.idx); c.Requests != 0 {
		t.Errorf("backend_stats requests %d after failed allocation, want 0", c.Requests)
	}
	want := h.natID(t, backendA.idx, start+8)
	if _, nat := h.forward(t, echoRequest(client1, hop1MAC, 5, 2)); nat != want {
		t.Errorf("NAT id %#04x after exhaustion, want %#04x (the ninth counted id)", nat, want)
	}
}

// TestNATCapacityModel measures, on the model, how many sessions a backend
// holds before a new one finds neither its home nor a counted id free
// (docs/design.md says about 60,000): the counted half fills as homes are
// found taken, so the first refusals come when the 32768 counted ids are
// all held.
func TestNATCapacityModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for run := range 3 {
		m := natAlloc{pool: IcmplbNatPool{Key: randomKey(rng), Next: rng.Uint32(), Salt: rng.Uint32()}, taken: map[uint16]bool{}}
		n := 0
		for {
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], rng.Uint32())
			if _, ok := m.open(vip, netip.AddrFrom4(b), uint16(rng.Uint32())); !ok {
				break
			}
			n++
		}
		t.Logf("run %d: first refusal after %d sessions", run, n)
		if n < 55000 || n > 65535 {
			t.Errorf("run %d: first refusal after %d sessions, want about 60,000", run, n)
		}
	}
}
