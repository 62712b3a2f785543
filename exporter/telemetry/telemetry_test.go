// SPDX-License-Identifier: MIT

package telemetry

import (
	"math"
	"testing"
)

func TestHistogramLayout(t *testing.T) {
	h := Histogram{Schema: 3, Offset: 160, Buckets: make([]uint64, 256)}
	if got := h.ZeroThreshold(); got != math.Exp2(-20) {
		t.Errorf("zero threshold %g, want 2^-20", got)
	}
	for k, want := range map[int]float64{160: 1, 168: 2, 152: 0.5, 164: math.Sqrt2} {
		if got := h.UpperBound(k); math.Abs(got-want) > 1e-12 {
			t.Errorf("UpperBound(%d) = %g, want %g", k, got, want)
		}
	}
	h.Buckets[0], h.Buckets[200] = 2, 3
	if h.Count() != 5 {
		t.Errorf("Count %d, want 5", h.Count())
	}
}
