// SPDX-License-Identifier: MIT

package histquant

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// nativeOf observes xs in a schema-3 native histogram, as the exporter
// exports them.
func nativeOf(t *testing.T, xs []float64) *dto.Histogram {
	t.Helper()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:                         "x",
		NativeHistogramBucketFactor:  math.Exp2(1.0 / 8),
		NativeHistogramZeroThreshold: math.Ldexp(1, -20),
	})
	for _, x := range xs {
		h.Observe(x)
	}
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	if s := m.GetHistogram().GetSchema(); s != 3 {
		t.Fatalf("schema %d, want 3", s)
	}
	return m.GetHistogram()
}

func scaled(xs []float64, f float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = x * f
	}
	return out
}

func TestCheck(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	xs := make([]float64, 1001)
	for i := range xs {
		xs[i] = 0.002 * math.Exp(rng.Float64()) // 2 to 5.4 ms, log-uniform
	}
	h := nativeOf(t, xs)
	for _, q := range []float64{0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 1} {
		// The exact values: their quantile's bucket is the histogram's.
		if err := Check(q, h, xs, xs); err != nil {
			t.Errorf("q %g, exact truth: %v", q, err)
		}
		lo, hi, ok := Bucket(q, h)
		if v := Nth(Rank(q, uint64(len(xs))), xs); !ok || v <= lo || v > hi {
			t.Errorf("q %g: true value %g outside the bucket (%g, %g]", q, v, lo, hi)
		}
		if v := Quantile(q, h); v < lo*(1-1e-12) || v > hi*(1+1e-12) {
			t.Errorf("q %g: Quantile %g outside its bucket (%g, %g]", q, v, lo, hi)
		}
		// Bounds around the truth.
		if err := Check(q, h, scaled(xs, 0.8), scaled(xs, 1.5)); err != nil {
			t.Errorf("q %g, truth within [0.8x, 1.5x]: %v", q, err)
		}
		// Bounds that exclude the histogram's bucket: two buckets off.
		if err := Check(q, h, scaled(xs, 1.2), scaled(xs, 1.3)); err == nil {
			t.Errorf("q %g: truth 20-30%% above the observations accepted", q)
		} else {
			t.Logf("q %g, shifted: %v", q, err)
		}
		if err := Check(q, h, scaled(xs, 0.7), scaled(xs, 0.8)); err == nil {
			t.Errorf("q %g: truth 20-30%% below the observations accepted", q)
		}
	}
	// More bounds than observations: extra values above all others (late
	// replies) leave the ranks unchanged.
	more := append(scaled(xs, 1), 10, 11, 12)
	if err := Check(0.99, h, more, more); err != nil {
		t.Errorf("with larger extras: %v", err)
	}
	if err := Check(0.5, h, xs[:10], xs); err == nil {
		t.Error("fewer lower bounds than observations accepted")
	}
	if err := Check(0.5, nativeOf(t, nil), nil, nil); err == nil {
		t.Error("empty histogram accepted")
	}
}

func TestRankAndNth(t *testing.T) {
	for _, c := range []struct {
		q    float64
		n, k uint64
	}{{0.5, 100, 50}, {0.5, 101, 51}, {0.99, 100, 99}, {0, 10, 1}, {1, 10, 10}, {0.001, 10, 1}} {
		if k := Rank(c.q, c.n); k != c.k {
			t.Errorf("Rank(%g, %d) = %d, want %d", c.q, c.n, k, c.k)
		}
	}
	xs := []float64{3, 1, 2}
	if Nth(1, xs) != 1 || Nth(3, xs) != 3 || !math.IsNaN(Nth(4, xs)) || xs[0] != 3 {
		t.Errorf("Nth wrong or changed its input: %v", xs)
	}
}
