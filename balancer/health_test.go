// SPDX-License-Identifier: MIT

package balancer

import (
	"testing"
	"time"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/exporter/telemetry"
)

func flagsOf(t *testing.T, b *Balancer, k slotKey) bpf.IcmplbBackendFlags {
	t.Helper()
	var v bpf.IcmplbBackend
	if err := b.objs.Backends.Lookup(b.slots[k].idx, &v); err != nil {
		t.Fatal(err)
	}
	return v.Flags
}

func serviceFlags(t *testing.T, b *Balancer, vip slotKey) bpf.IcmplbServiceFlags {
	t.Helper()
	var v bpf.IcmplbService
	if err := b.objs.Services.Lookup(bpf.Addr(vip.vip), &v); err != nil {
		t.Fatal(err)
	}
	return v.Flags
}

// An unhealthy backend leaves the table and loses its health flag (so its
// sessions move); with every backend unhealthy, fail-open brings them all
// back, flagged healthy, and pass empties the table and flags the service.
func TestHealthPool(t *testing.T) {
	s := svc(vipA, vipA, be(beX, 1), be(beY, 1))
	s.AllDown = config.AllDownFailOpen
	b := newServices(t, s)
	x, y := slotKey{vipA, beX}, slotKey{vipA, beY}
	healthy := bpf.IcmplbBackendFlagsBACKEND_F_UP

	b.mu.Lock()
	b.slots[x].out.eject(config.DefaultOutlier(), time.Now(), telemetry.EjectLoss, "test")
	if err := b.refreshService(vipA); err != nil {
		t.Fatal(err)
	}
	b.mu.Unlock()
	table, _ := kernelTable(t, b, vipA)
	if c := sharesOf(table); c[x] != 0 || c[y] != len(table) {
		t.Errorf("with %s ejected the table is %v, want all on %s", beX, c, beY)
	}
	if f := flagsOf(t, b, x); f&bpf.IcmplbBackendFlagsBACKEND_F_HEALTHY != 0 {
		t.Errorf("ejected backend flags %#x: still healthy, its sessions would stay", f)
	}
	if st, why := b.stateOf(x, b.slots[x]); st != telemetry.StateEjected || why == "" {
		t.Errorf("state %q (%q), want ejected with a reason", st, why)
	}

	// Both unhealthy: fail open.
	b.mu.Lock()
	b.slots[y].probeUp, b.slots[y].probeWhy = false, "test"
	if err := b.refreshService(vipA); err != nil {
		t.Fatal(err)
	}
	b.mu.Unlock()
	table, _ = kernelTable(t, b, vipA)
	if c := sharesOf(table); c[x] == 0 || c[y] == 0 {
		t.Errorf("failing open, the table is %v, want both backends", c)
	}
	for _, k := range []slotKey{x, y} {
		if f := flagsOf(t, b, k); f != healthy {
			t.Errorf("failing open, %s has flags %#x, want %#x: its sessions would move back and forth", k, f, healthy)
		}
	}
	if !b.services[vipA].allDown || serviceFlags(t, b, x) != 0 {
		t.Errorf("fail-open: all down %v, service flags %#x", b.services[vipA].allDown, serviceFlags(t, b, x))
	}

	// Pass: no table, the service flagged.
	s.AllDown = config.AllDownPass
	b.mu.Lock()
	b.services[vipA].cfg = s
	if err := b.refreshService(vipA); err != nil {
		t.Fatal(err)
	}
	b.mu.Unlock()
	if f := serviceFlags(t, b, x); f != bpf.IcmplbServiceFlagsSERVICE_F_PASS {
		t.Errorf("pass: service flags %#x, want SERVICE_F_PASS", f)
	}
	snap, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Services[0].AllDown {
		t.Error("the snapshot does not say the service is all down")
	}

	// Healthy again: back in the table, the pass flag gone.
	b.mu.Lock()
	b.slots[y].probeUp = true
	if err := b.refreshService(vipA); err != nil {
		t.Fatal(err)
	}
	b.mu.Unlock()
	if f := serviceFlags(t, b, x); f != 0 {
		t.Errorf("with a backend healthy again, service flags %#x", f)
	}
	if f := flagsOf(t, b, y); f != healthy {
		t.Errorf("%s back: flags %#x", beY, f)
	}
}

// Probe results move a backend by its fall and rise counts, and count the
// probes, their losses and RTTs in the data plane's buckets.
func TestProbeResults(t *testing.T) {
	s := svc(vipA, vipA, be(beX, 1), be(beY, 1))
	s.Probe = config.Probe{Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	b := loaded(t, 251)
	know(b, s)
	// apply would open the probe socket: the services go in without it.
	s.Probe.Interval = 0
	if err := b.apply([]config.Service{s}, 0); err != nil {
		t.Fatal(err)
	}
	b.services[vipA].cfg.Probe = config.Probe{Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	x := slotKey{vipA, beX}
	steps := []struct {
		ok   bool
		want string
	}{
		{true, telemetry.StateUp}, {false, telemetry.StateUp}, {false, telemetry.StateUp},
		{true, telemetry.StateUp}, // the failures must be in a row
		{false, telemetry.StateUp}, {false, telemetry.StateUp}, {false, telemetry.StateProbeFailed},
		{true, telemetry.StateProbeFailed}, {false, telemetry.StateProbeFailed}, {true, telemetry.StateProbeFailed},
		{true, telemetry.StateUp},
	}
	for i, st := range steps {
		b.probeResult(x, st.ok, 3*time.Millisecond)
		if got, _ := b.stateOf(x, b.slots[x]); got != st.want {
			t.Fatalf("after probe %d (ok %v): %s, want %s", i+1, st.ok, got, st.want)
		}
	}
	p := b.slots[x].probe
	if p.Requests != uint64(len(steps)) || p.Replies != 5 || p.Lost != 6 || p.RTT.Count() != 5 || p.RTT.Sum != 15*time.Millisecond {
		t.Errorf("probe counts %+v (RTT count %d, sum %v)", p, p.RTT.Count(), p.RTT.Sum)
	}
	if q, _ := p.RTT.Quantile(0.5); q < 0.003 || q > 0.003*1.1 {
		t.Errorf("probe p50 %v s, want the 3 ms of every probe within a bucket", q)
	}
	if n := b.slots[x].ejections[telemetry.EjectProbe]; n != 1 {
		t.Errorf("%d probe ejections, want 1", n)
	}
}
