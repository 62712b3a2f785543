// SPDX-License-Identifier: MIT

package bpf

import (
	"math/big"
)

// RTTBounds returns the upper bounds, in nanoseconds, of the data plane's RTT
// histogram buckets: bound[k] = floor(1e9 * 2^((k - RTTBucketOffset) / 8)).
// An RTT of v ns lies in the schema-3 native histogram bucket with upper
// bound 2^(i/8) s exactly when v <= bound[i+RTTBucketOffset], since v is an
// integer; computing the bounds with 256-bit floats makes the floors exact.
func RTTBounds() [RTTBuckets]uint64 {
	var out [RTTBuckets]uint64
	const prec = 256
	// 2^(1/8) by Newton's method on x^8 = 2.
	root := new(big.Float).SetPrec(prec).SetFloat64(1.0905077326652577)
	two := new(big.Float).SetPrec(prec).SetInt64(2)
	for i := 0; i < 8; i++ {
		x7 := new(big.Float).SetPrec(prec).SetInt64(1)
		for j := 0; j < 7; j++ {
			x7.Mul(x7, root)
		}
		x8 := new(big.Float).SetPrec(prec).Mul(x7, root)
		// root -= (x^8 - 2) / (8 x^7)
		num := new(big.Float).SetPrec(prec).Sub(x8, two)
		den := new(big.Float).SetPrec(prec).Mul(x7, big.NewFloat(8).SetPrec(prec))
		root.Sub(root, num.Quo(num, den))
	}
	// root^r for r in 0..7; powers of two are applied exactly through the
	// exponent, so bounds that are integers (r == 0) come out exact.
	var roots [8]*big.Float
	roots[0] = new(big.Float).SetPrec(prec).SetInt64(1)
	for r := 1; r < 8; r++ {
		roots[r] = new(big.Float).SetPrec(prec).Mul(roots[r-1], root)
	}
	for k := range out {
		e := k - RTTBucketOffset
		q, r := e>>3, e&7 // floor division: e = 8q + r with 0 <= r < 8
		v := new(big.Float).SetPrec(prec).SetInt64(1_000_000_000)
		v.Mul(v, roots[r])
		v.SetMantExp(v, q)
		n, _ := v.Int(nil) // truncates towards zero: floor for positive v
		out[k] = n.Uint64()
	}
	return out
}
