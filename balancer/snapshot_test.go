// SPDX-License-Identifier: MIT

package balancer

import (
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"testing"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/internal/testenv"
)

// newDetached loads the data plane for n backends without an interface:
// enough to read and write its maps.
func newDetached(tb testing.TB, n int, opts ...func(*config.Config)) *Balancer {
	tb.Helper()
	testenv.Privileged(tb)
	cfg := config.Default()
	cfg.Iface, cfg.VIP, cfg.MaglevSize = "none", netip.MustParseAddr("10.0.0.100"), 251
	// No probes: they would leave from the test's (root) namespace.
	cfg.Probe.Interval = 0
	for i := range n {
		cfg.Backends = append(cfg.Backends, config.Backend{Addr: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Weight: 1})
	}
	if n > 251 {
		cfg.MaglevSize = config.DefaultMaglevSize
	}
	for _, o := range opts {
		o(&cfg)
	}
	cfg = cfg.WithDefaults()
	b := newBalancer(cfg, slog.New(slog.DiscardHandler))
	if err := b.load(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Close() })
	if err := b.adopt(); err != nil {
		tb.Fatal(err)
	}
	// Known hosts: apply looks no route up for them (there is no interface).
	for _, be := range cfg.Backends {
		b.hosts[be.Addr] = &backendState{nextHop: be.Addr, up: true}
	}
	if err := b.apply(cfg.ServiceList(), 0); err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestSnapshotReadsMaps(t *testing.T) {
	b := newDetached(t, 3)
	// Counts as the data plane would leave them, spread over CPUs.
	for i := range 3 {
		if b.ncpu < 1 {
			t.Fatal("no CPUs")
		}
		perCPU := make([]uint64, b.ncpu)
		perCPU[b.ncpu-1] = uint64(i + 1)
		perCPU[0] += 10
		if err := b.objs.RttHist.Put(uint32(bpf.RTTKey(i, 170)), perCPU); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Backends) != 3 || len(snap.Verdicts) != len(Verdicts) {
		t.Fatalf("snapshot has %d backends, %d verdicts", len(snap.Backends), len(snap.Verdicts))
	}
	for i, bs := range snap.Backends {
		want := uint64(i + 1 + 10)
		if b.ncpu == 1 {
			want = uint64(i + 1)
		}
		if bs.RTT.Buckets[170] != want || bs.RTT.Count() != want {
			t.Errorf("backend %d bucket 170 = %d (count %d), want %d summed over CPUs", i, bs.RTT.Buckets[170], bs.RTT.Count(), want)
		}
		if !bs.Up || bs.Addr != b.cfg.Backends[i].Addr || bs.VIP != b.cfg.VIP {
			t.Errorf("backend %d is %s of %s up=%v", i, bs.Addr, bs.VIP, bs.Up)
		}
	}
	if !snap.Conntrack.Known || snap.Conntrack.Sessions != 0 || snap.Conntrack.Capacity != config.DefaultConntrackSize {
		t.Errorf("conntrack %+v", snap.Conntrack)
	}
}

// BenchmarkSnapshot measures the map reads of one scrape for 1, 100 and
// 1000 backends.
func BenchmarkSnapshot(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			bal := newDetached(b, n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bal.Snapshot(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The histogram layout the snapshot carries is the data plane's: its
// bounds are the kernel's bucket bounds (bpf.RTTBounds, exact in ns).
func TestSnapshotHistogramLayout(t *testing.T) {
	b := newDetached(t, 1)
	snap, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	h := &snap.Backends[0].RTT
	bounds := bpf.RTTBounds()
	if len(h.Buckets) != len(bounds) {
		t.Fatalf("%d buckets, the kernel has %d", len(h.Buckets), len(bounds))
	}
	for k, ns := range bounds {
		if got := h.UpperBound(k) * 1e9; math.Abs(got-float64(ns)) > 1 {
			t.Errorf("bucket %d: bound %.1f ns, kernel %d ns", k, got, ns)
		}
	}
}
