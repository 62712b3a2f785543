// SPDX-License-Identifier: MIT

// Package histquant reads Prometheus native histograms in tests: it decodes
// their sparse buckets, interpolates quantiles from them as Prometheus's
// histogram_quantile does, and judges a quantile against bounds of the
// truth measured in the same run (Check) at the histogram's resolution: a
// schema-3 bucket is 2^(1/8), about 9%, wide.
package histquant

import (
	"fmt"
	"math"
	"slices"

	dto "github.com/prometheus/client_model/go"
)

// Buckets decodes the positive buckets of a native histogram into bucket
// index -> count; bucket i covers (2^((i-1)/2^schema), 2^(i/2^schema)].
func Buckets(h *dto.Histogram) map[int]uint64 {
	out := map[int]uint64{}
	idx, d := 0, 0
	var count int64
	for i, s := range h.GetPositiveSpan() {
		if i == 0 {
			idx = int(s.GetOffset())
		} else {
			idx += int(s.GetOffset())
		}
		for j := uint32(0); j < s.GetLength(); j++ {
			count += h.GetPositiveDelta()[d]
			d++
			if count != 0 {
				out[idx] = uint64(count)
			}
			idx++
		}
	}
	return out
}

// Quantile returns the q-quantile of a native histogram: it finds the bucket
// holding rank q·count and interpolates exponentially within it, which is
// exact for values spread evenly on a log scale.
func Quantile(q float64, h *dto.Histogram) float64 {
	buckets := Buckets(h)
	rank := q * float64(h.GetSampleCount())
	seen := float64(h.GetZeroCount())
	if rank <= seen {
		return h.GetZeroThreshold()
	}
	idxs := make([]int, 0, len(buckets))
	for i := range buckets {
		idxs = append(idxs, i)
	}
	slices.Sort(idxs)
	base := math.Exp2(math.Exp2(-float64(h.GetSchema())))
	for _, i := range idxs {
		n := float64(buckets[i])
		if seen+n >= rank {
			hi := math.Pow(base, float64(i))
			lo := hi / base
			return lo * math.Pow(base, (rank-seen)/n)
		}
		seen += n
	}
	return math.NaN()
}

// Rank is the 1-based rank of the q-quantile among n values as Quantile
// locates it: the ceil(q·n)-th smallest value, at least the first.
func Rank(q float64, n uint64) uint64 {
	return max(uint64(math.Ceil(q*float64(n))), 1)
}

// Nth returns the k-th smallest (1-based) of xs, or NaN if xs has fewer
// than k values; xs is not changed.
func Nth(k uint64, xs []float64) float64 {
	if k < 1 || k > uint64(len(xs)) {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[k-1]
}

// Bucket returns the bounds (lo, hi] of the bucket in which Quantile
// interpolates the q-quantile: the one holding the value of rank
// Rank(q, count). The zero bucket is [0, zero threshold]. ok is false for an
// empty histogram.
func Bucket(q float64, h *dto.Histogram) (lo, hi float64, ok bool) {
	if h.GetSampleCount() == 0 {
		return 0, 0, false
	}
	rank := q * float64(h.GetSampleCount())
	seen := float64(h.GetZeroCount())
	if rank <= seen {
		return 0, h.GetZeroThreshold(), true
	}
	buckets := Buckets(h)
	idxs := make([]int, 0, len(buckets))
	for i := range buckets {
		idxs = append(idxs, i)
	}
	slices.Sort(idxs)
	base := math.Exp2(math.Exp2(-float64(h.GetSchema())))
	for _, i := range idxs {
		seen += float64(buckets[i])
		if seen >= rank {
			hi := math.Pow(base, float64(i))
			return hi / base, hi, true
		}
	}
	return 0, 0, false
}

// Check judges a histogram's q-quantile against the truth of the same run.
// The histogram observed some values it does not keep; what the test knows
// is, for every one of them, a value no larger (lower) and one no smaller
// (upper), measured independently: a backend's hold time of a request is at
// most the round trip a balancer measured for it, and the round trip the
// client saw is at least that. The order statistics inherit those bounds,
// so the true value of rank Rank(q, count) lies between the same-rank
// values of lower and upper; the histogram can place it only within one
// bucket, so Check returns nil when the bucket Quantile interpolates in
// overlaps that interval, and otherwise an error saying how far off it is.
//
// lower and upper may hold more values than the histogram counted when the
// extra ones are the largest of the run (replies the balancer counted late,
// say): the ranks that count are then unchanged. Bounds are compared with a
// relative slack of 1e-9 for the floating-point bucket bounds.
func Check(q float64, h *dto.Histogram, lower, upper []float64) error {
	n := h.GetSampleCount()
	if n == 0 {
		return fmt.Errorf("histogram is empty")
	}
	if uint64(len(lower)) < n || uint64(len(upper)) < n {
		return fmt.Errorf("histogram counts %d values, the truth has only %d lower and %d upper bounds: they do not describe the same observations",
			n, len(lower), len(upper))
	}
	k := Rank(q, n)
	lo, hi, _ := Bucket(q, h)
	tlo, thi := Nth(k, lower), Nth(k, upper)
	const slack = 1e-9
	if hi*(1+slack) >= tlo && lo*(1-slack) <= thi {
		return nil
	}
	base := math.Exp2(math.Exp2(-float64(h.GetSchema())))
	off := math.Log(tlo/hi) / math.Log(base)
	if lo > thi {
		off = math.Log(lo/thi) / math.Log(base)
	}
	return fmt.Errorf("p%g %.4g s is in bucket (%.4g, %.4g] s, but the true value of rank %d of %d lies in [%.4g, %.4g] s (%.2f buckets away)",
		q*100, Quantile(q, h), lo, hi, k, n, tlo, thi, off)
}
