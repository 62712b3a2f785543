// Package histquant reads Prometheus native histograms in tests: it decodes
// their sparse buckets and interpolates quantiles from them as Prometheus's
// histogram_quantile does.
package histquant

import (
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
