// SPDX-License-Identifier: MIT

package balancer

import (
	"net/netip"
	"testing"

	"github.com/icmplb/icmplb/config"
)

// BenchmarkUpdateMaglev is the rebuild that a weight change costs at the
// largest pool: config.MaxBackends backends of mixed weights, the default
// table size.
func BenchmarkUpdateMaglev(b *testing.B) {
	weights := map[netip.Addr]int{}
	for i, a := range pool(config.MaxBackends) {
		weights[a] = 1 + i*37%config.MaxWeight
	}
	prev, err := NewMaglev(weights, config.DefaultMaglevSize)
	if err != nil {
		b.Fatal(err)
	}
	weights[pool(1)[0]] *= 3
	for b.Loop() {
		if _, err := UpdateMaglev(prev, weights, config.DefaultMaglevSize); err != nil {
			b.Fatal(err)
		}
	}
}
