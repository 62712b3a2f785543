// SPDX-License-Identifier: MIT

package exporter

import (
	"fmt"
	"io"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/icmplb/icmplb/exporter/telemetry"
)

func bigSnapshot(n int) *telemetry.Snapshot {
	snap := &telemetry.Snapshot{Verdicts: testVerdicts, Services: []telemetry.Service{{VIP: testVIP, SNAT: testVIP}}}
	for i := range n {
		b := telemetry.Backend{VIP: testVIP, Addr: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Up: true,
			Requests: 1e6, Replies: 1e6, Lost: 10, RTT: newRTT()}
		// A realistic spread: RTTs over two decades fill about 55 buckets.
		for k := 120; k < 175; k++ {
			b.RTT.Buckets[k] = uint64(1000 + k)
		}
		b.RTT.Sum = time.Duration(n) * time.Millisecond
		snap.Backends = append(snap.Backends, b)
	}
	return snap
}

// BenchmarkScrape measures a whole /metrics request in the text format,
// collector and encoding, against an in-memory snapshot: the exporter's own
// cost per scrape. balancer.BenchmarkSnapshot measures the map reads.
func BenchmarkScrape(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			reg := prometheus.NewRegistry()
			reg.MustRegister(NewCollector(&fakeSource{snap: bigSnapshot(n)}, nil, "bench"))
			ready := &atomic.Bool{}
			ready.Store(true)
			h := Handler(reg, ready, "bench", nil)
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
				if rec.Code != 200 {
					b.Fatalf("status %d", rec.Code)
				}
				io.Copy(io.Discard, rec.Body)
			}
		})
	}
}
