// SPDX-License-Identifier: MIT

package balancer

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/internal/testenv"
)

var (
	vipA  = netip.MustParseAddr("10.0.0.100")
	vipB  = netip.MustParseAddr("10.0.0.101")
	snatB = netip.MustParseAddr("10.0.0.102")
	beX   = netip.MustParseAddr("10.1.0.2")
	beY   = netip.MustParseAddr("10.1.0.3")
	beZ   = netip.MustParseAddr("10.1.0.4")
)

func svc(vip, snat netip.Addr, bes ...config.Backend) config.Service {
	return config.Service{VIP: vip, SNAT: snat, Backends: bes}
}

func be(a netip.Addr, w int) config.Backend { return config.Backend{Addr: a, Weight: w} }

// loaded is the data plane loaded without an interface, nothing applied.
func loaded(t *testing.T, maglevSize int) *Balancer {
	t.Helper()
	testenv.Privileged(t)
	cfg := config.Default()
	cfg.Iface, cfg.MaglevSize = "none", maglevSize
	b := newBalancer(cfg, slog.New(slog.DiscardHandler))
	if err := b.load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := b.adopt(); err != nil {
		t.Fatal(err)
	}
	return b
}

// know makes svcs' backend hosts known and resolved, so that apply looks no
// route up (there is no interface).
func know(b *Balancer, svcs ...config.Service) {
	for _, s := range svcs {
		for _, x := range s.Backends {
			ip := x.Addr.AsSlice()
			b.hosts[x.Addr] = &backendState{nextHop: x.Addr, up: true, mac: []byte{2, 0, 0, 0, 0, ip[len(ip)-1]}}
		}
	}
}

// newServices is loaded with svcs applied.
func newServices(t *testing.T, svcs ...config.Service) *Balancer {
	t.Helper()
	b := loaded(t, 251)
	know(b, svcs...)
	if err := b.apply(svcs, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// kernelTable reads a service's Maglev table from the data plane, as slot
// keys.
func kernelTable(t *testing.T, b *Balancer, vip netip.Addr) ([]slotKey, ebpf.MapID) {
	t.Helper()
	var sv bpf.IcmplbService
	if err := b.objs.Services.Lookup(bpf.Addr(vip), &sv); err != nil {
		t.Fatalf("services[%s]: %v", vip, err)
	}
	var inner *ebpf.Map
	if err := b.objs.MaglevTables.Lookup(sv.Table, &inner); err != nil {
		t.Fatalf("maglev_tables[%d]: %v", sv.Table, err)
	}
	defer inner.Close()
	info, err := inner.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	out := make([]slotKey, b.cfg.MaglevSize)
	for s := range out {
		var idx uint32
		if err := inner.Lookup(uint32(s), &idx); err != nil {
			t.Fatal(err)
		}
		var v bpf.IcmplbBackend
		if err := b.objs.Backends.Lookup(idx, &v); err != nil {
			t.Fatalf("slot %d points at backend %d: %v", s, idx, err)
		}
		out[s] = slotKey{bpf.AddrFrom(v.Vip), bpf.AddrFrom(v.Addr)}
	}
	return out, id
}

func sharesOf(table []slotKey) map[slotKey]int {
	c := map[slotKey]int{}
	for _, k := range table {
		c[k]++
	}
	return c
}

// Two services sharing a backend: a slot per pair, a table per service
// pointing only at its own pairs, with the weights' shares.
func TestApplyServicesShareABackend(t *testing.T) {
	b := newServices(t,
		svc(vipA, vipA, be(beX, 1)),
		svc(vipB, snatB, be(beX, 1), be(beY, 3)))
	if len(b.slots) != 3 {
		t.Fatalf("%d slots, want one per (service, backend): 3", len(b.slots))
	}
	if b.slots[slotKey{vipA, beX}].idx == b.slots[slotKey{vipB, beX}].idx {
		t.Error("a backend of two services has one slot: their counters would mix")
	}
	a, _ := kernelTable(t, b, vipA)
	if c := sharesOf(a); c[slotKey{vipA, beX}] != len(a) {
		t.Errorf("table of %s: %v, want every slot on its only backend", vipA, c)
	}
	tb, _ := kernelTable(t, b, vipB)
	c := sharesOf(tb)
	t.Logf("table of %s: %v", vipB, c)
	if c[slotKey{vipB, beX}]+c[slotKey{vipB, beY}] != len(tb) {
		t.Fatalf("table of %s points outside its service: %v", vipB, c)
	}
	// Weights 1:3 of 251 slots: 63 and 188 (Webster rounding).
	if x, y := c[slotKey{vipB, beX}], c[slotKey{vipB, beY}]; x != 63 || y != 188 {
		t.Errorf("shares %d:%d, want 63:188 for weights 1:3", x, y)
	}
	for _, snat := range []netip.Addr{vipA, snatB} {
		var n uint32
		if err := b.objs.SnatAddrs.Lookup(bpf.Addr(snat), &n); err != nil || n != 1 {
			t.Errorf("snat_addrs[%s] = %d, %v; want 1", snat, n, err)
		}
	}
	snap, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Services) != 2 || len(snap.Backends) != 3 || snap.Backends[2].Weight != 3 {
		t.Errorf("snapshot: %d services, backends %+v", len(snap.Services), snap.Backends)
	}
}

// An IPv4 and an IPv6 service side by side: each table points only at its
// own family's backends, whose slots hold their addresses and VIP
// unchanged, and both families' SNAT and front addresses reach the maps.
func TestApplyDualStack(t *testing.T) {
	vip6, snat6 := netip.MustParseAddr("fd00:1cb::100"), netip.MustParseAddr("fd00:1cb::101")
	be6X, be6Y := netip.MustParseAddr("fd00:1cb::2"), netip.MustParseAddr("fd00:1cb::3")
	b := newServices(t, svc(vipA, vipA, be(beX, 1)), svc(vip6, snat6, be(be6X, 1), be(be6Y, 1)))
	if len(b.slots) != 3 {
		t.Fatalf("%d slots, want 3", len(b.slots))
	}
	a, _ := kernelTable(t, b, vipA)
	if c := sharesOf(a); c[slotKey{vipA, beX}] != len(a) {
		t.Errorf("table of %s: %v, want every slot on %s", vipA, c, beX)
	}
	t6, _ := kernelTable(t, b, vip6)
	c := sharesOf(t6)
	if x, y := c[slotKey{vip6, be6X}], c[slotKey{vip6, be6Y}]; x+y != len(t6) || x == 0 || y == 0 {
		t.Errorf("table of %s: %v, want it shared by %s and %s only", vip6, c, be6X, be6Y)
	}
	for _, snat := range []netip.Addr{vipA, snat6} {
		var n uint32
		if err := b.objs.SnatAddrs.Lookup(bpf.Addr(snat), &n); err != nil || n != 1 {
			t.Errorf("snat_addrs[%s] = %d, %v; want 1", snat, n, err)
		}
	}
	requireDenied(t, b, map[netip.Addr]bool{vipA: true, vip6: true, snat6: true, be6X: false})
	snap, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var vips []string
	for _, s := range snap.Services {
		vips = append(vips, s.VIP.String())
	}
	if !slices.Equal(vips, []string{"10.0.0.100", "fd00:1cb::100"}) || len(snap.Backends) != 3 {
		t.Errorf("snapshot: VIPs %v, %d backends; want 10.0.0.100 and fd00:1cb::100, 3 backends", vips, len(snap.Backends))
	}
}

// A weight change swaps in a new table for that service only, and moves
// only slots to or from the changed backend.
func TestApplyWeightChangeSwapsOneTable(t *testing.T) {
	svcA := svc(vipA, vipA, be(beX, 1), be(beY, 1))
	svcB := svc(vipB, vipB, be(beX, 1), be(beY, 1), be(beZ, 1))
	b := newServices(t, svcA, svcB)
	beforeA, idA := kernelTable(t, b, vipA)
	beforeB, idB := kernelTable(t, b, vipB)

	svcB.Backends[1].Weight = 4
	if err := b.apply([]config.Service{svcA, svcB}, 0); err != nil {
		t.Fatal(err)
	}
	afterA, idA2 := kernelTable(t, b, vipA)
	afterB, idB2 := kernelTable(t, b, vipB)
	if idA2 != idA {
		t.Errorf("the table of %s, unchanged, was replaced (map %d -> %d)", vipA, idA, idA2)
	}
	if idB2 == idB {
		t.Errorf("the table of %s was written in place (map %d): a packet could see it half written", vipB, idB)
	}
	for s := range afterA {
		if afterA[s] != beforeA[s] {
			t.Fatalf("slot %d of %s moved", s, vipA)
		}
	}
	changed := slotKey{vipB, beY}
	moved := 0
	for s := range afterB {
		if afterB[s] == beforeB[s] {
			continue
		}
		moved++
		if afterB[s] != changed {
			t.Errorf("slot %d of %s moved %v -> %v, not to the reweighted backend", s, vipB, beforeB[s], afterB[s])
		}
	}
	gain := sharesOf(afterB)[changed] - sharesOf(beforeB)[changed]
	t.Logf("weight 1 -> 4 of %s in %s: %d slots moved, its share grew by %d", beY, vipB, moved, gain)
	if moved != gain {
		t.Errorf("%d slots moved, want the %d its share grew by", moved, gain)
	}
}

// A removed backend keeps its slot, active, out of the table, until a
// sweep finds none of its sessions; then it is retired and leaves the
// snapshot.
func TestApplyRemovedBackendDrains(t *testing.T) {
	b := newServices(t, svc(vipA, vipA, be(beX, 1), be(beY, 1)))
	x := b.slots[slotKey{vipA, beX}].idx
	if err := b.apply([]config.Service{svc(vipA, vipA, be(beY, 1))}, 0); err != nil {
		t.Fatal(err)
	}
	table, _ := kernelTable(t, b, vipA)
	if c := sharesOf(table); c[slotKey{vipA, beX}] != 0 {
		t.Errorf("the removed backend keeps %d slots of the table", c[slotKey{vipA, beX}])
	}
	var v bpf.IcmplbBackend
	if err := b.objs.Backends.Lookup(x, &v); err != nil || v.Flags != bpf.IcmplbBackendFlagsBACKEND_F_UP {
		t.Fatalf("backends[%d] = %+v, %v: want it up while it drains", x, v, err)
	}
	// One live session on it.
	rk := bpf.IcmplbRevKey{Backend: bpf.Addr(beX), NatId: bpf.Net16(7)}
	if err := b.objs.CtRev.Put(rk, bpf.IcmplbRevVal{Client: bpf.Addr(netip.MustParseAddr("10.0.0.1")), BackendIdx: x,
		Vip: bpf.Addr(vipA), LastSeenNs: monotonic()}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := b.sweepSessions(); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, bs := range snap.Backends {
		if bs.Addr == beX {
			found = true
			if !bs.Removed || bs.Weight != 0 || bs.Sessions != 1 {
				t.Errorf("draining backend in the snapshot: %+v, want removed, weight 0, 1 session", bs)
			}
		}
	}
	if !found {
		t.Fatal("the removed backend left the snapshot while it had a session")
	}
	if err := b.objs.CtRev.Delete(rk); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := b.sweepSessions(); err != nil {
			t.Fatal(err)
		}
	}
	if snap, _ = b.Snapshot(); len(snap.Backends) != 1 || snap.Backends[0].Addr != beY {
		t.Errorf("after its last session the snapshot still has %+v", snap.Backends)
	}
	if err := b.objs.Backends.Lookup(x, &v); err != nil || v.Flags != 0 || bpf.AddrFrom(v.Addr) != beX {
		t.Errorf("backends[%d] = %+v, %v: want it retired, keeping its address", x, v, err)
	}
}

// A removed service goes at once: its VIP, its table and its SNAT address.
func TestApplyRemovedService(t *testing.T) {
	b := newServices(t, svc(vipA, vipA, be(beX, 1)), svc(vipB, snatB, be(beY, 1)))
	tableB := b.services[vipB].table
	if err := b.apply([]config.Service{svc(vipA, vipA, be(beX, 1))}, 0); err != nil {
		t.Fatal(err)
	}
	var sv bpf.IcmplbService
	if err := b.objs.Services.Lookup(bpf.Addr(vipB), &sv); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("services[%s] after its removal: %+v, %v", vipB, sv, err)
	}
	var inner *ebpf.Map
	if err := b.objs.MaglevTables.Lookup(tableB, &inner); err == nil {
		inner.Close()
		t.Errorf("maglev_tables[%d] kept after its service's removal", tableB)
	}
	// Its SNAT address stays while replies to it may still come, then goes.
	var n uint32
	if err := b.objs.SnatAddrs.Lookup(bpf.Addr(snatB), &n); err != nil {
		t.Errorf("snat_addrs[%s] gone at once: replies in flight to it would be lost (%v)", snatB, err)
	}
	until, ok := b.staleSNATs[bpf.Addr(snatB)]
	if !ok || time.Until(until) < 2*b.cfg.LossTimeout {
		t.Errorf("%s retires at %v, want twice the loss timeout (%v) from now", snatB, until, 2*b.cfg.LossTimeout)
	}
	b.staleSNATs[bpf.Addr(snatB)] = time.Now().Add(-time.Second)
	if err := b.sweepSessions(); err != nil {
		t.Fatal(err)
	}
	if err := b.objs.SnatAddrs.Lookup(bpf.Addr(snatB), &n); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("snat_addrs[%s] once retired: %d, %v", snatB, n, err)
	}
	requireDenied(t, b, map[netip.Addr]bool{vipA: true, vipB: false, snatB: false})
}

// requireDenied checks which addresses src_deny holds: the data plane
// refuses requests from every VIP and SNAT address with its one lookup.
func requireDenied(t *testing.T, b *Balancer, want map[netip.Addr]bool) {
	t.Helper()
	for a, denied := range want {
		var v uint8
		err := b.objs.SrcDeny.Lookup(bpf.Addr(a), &v)
		if denied && err != nil {
			t.Errorf("src_deny[%s]: %v, want it denied", a, err)
		}
		if !denied && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Errorf("src_deny[%s]: %d, %v, want it allowed", a, v, err)
		}
	}
}

// A reload that changes a service's SNAT address lists the new address
// (apply writes it before the service that sends from it) and keeps the old
// one while replies to it may still come.
func TestApplySNATChange(t *testing.T) {
	b := newServices(t, svc(vipA, vipA, be(beX, 1)))
	newSNAT := netip.MustParseAddr("10.0.0.103")
	if err := b.apply([]config.Service{svc(vipA, newSNAT, be(beX, 1))}, 0); err != nil {
		t.Fatal(err)
	}
	var n uint32
	for _, a := range []netip.Addr{newSNAT, vipA} {
		if err := b.objs.SnatAddrs.Lookup(bpf.Addr(a), &n); err != nil {
			t.Errorf("snat_addrs[%s] after the reload: %v", a, err)
		}
	}
	requireDenied(t, b, map[netip.Addr]bool{vipA: true, newSNAT: true})
}

// A reload that needs more slots than are free (removed backends keep
// theirs while they drain) is refused before anything changes.
func TestApplyRefusedChangesNothing(t *testing.T) {
	var bes []config.Backend
	for i := range config.MaxBackends {
		bes = append(bes, be(netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), 1))
	}
	b := loaded(t, config.DefaultMaglevSize)
	full := svc(vipA, vipA, bes...)
	know(b, full, svc(vipA, vipA, be(beZ, 1)))
	if err := b.apply([]config.Service{full}, 0); err != nil {
		t.Fatal(err)
	}
	_, id := kernelTable(t, b, vipA)
	// Swap one backend for a new one: the removed one still holds its slot.
	swapped := svc(vipA, vipA, append(append([]config.Backend{}, bes[1:]...), be(beZ, 1))...)
	err := b.apply([]config.Service{swapped}, 0)
	t.Logf("refusal: %v", err)
	if err == nil || !strings.Contains(err.Error(), "do not fit in 1024 slots") || !strings.Contains(err.Error(), "reload again") {
		t.Fatalf("apply = %v, want a refusal for want of slots", err)
	}
	if _, id2 := kernelTable(t, b, vipA); id2 != id {
		t.Error("the refused reload replaced the table")
	}
	if s := b.slots[slotKey{vipA, bes[0].Addr}]; s == nil || s.removed {
		t.Errorf("the refused reload marked %s removed", bes[0].Addr)
	}
	if _, ok := b.slots[slotKey{vipA, beZ}]; ok {
		t.Error("the refused reload gave the new backend a slot")
	}
}

// The documented limits fit: config.MaxServices services with
// config.MaxBackends backends in all, each table pointing at its own.
func TestApplyAtTheLimits(t *testing.T) {
	per := config.MaxBackends / config.MaxServices
	var svcs []config.Service
	for i := range config.MaxServices {
		v := netip.AddrFrom4([4]byte{10, 3, byte(i), 1})
		s := svc(v, v)
		for j := range per {
			s.Backends = append(s.Backends, be(netip.AddrFrom4([4]byte{10, 4, byte(i), byte(10 + j)}), j+1))
		}
		svcs = append(svcs, s)
	}
	b := newServices(t, svcs...)
	for _, s := range []config.Service{svcs[0], svcs[len(svcs)-1]} {
		table, _ := kernelTable(t, b, s.VIP)
		c := sharesOf(table)
		if len(c) != per {
			t.Errorf("table of %s: %v, want its %d backends", s.VIP, c, per)
		}
		for k := range c {
			if k.vip != s.VIP {
				t.Errorf("table of %s points at %v", s.VIP, k)
			}
		}
	}
	snap, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Services) != config.MaxServices || len(snap.Backends) != config.MaxBackends {
		t.Errorf("snapshot of %d services, %d backends; want %d, %d", len(snap.Services), len(snap.Backends), config.MaxServices, config.MaxBackends)
	}
}

// sweepSessions sweeps every map now, whatever is due.
func (b *Balancer) sweepSessions() error {
	b.mu.Lock()
	b.nextInflightSweep, b.nextSessionSweep = time.Time{}, time.Time{}
	b.mu.Unlock()
	return b.sweep(time.Now())
}
