// SPDX-License-Identifier: MIT

package balancer

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"

	"github.com/icmplb/icmplb/config"
)

// Maglev is a consistent-hashing lookup table (Eisenbud et al., NSDI 2016):
// slot i serves the sessions whose hash modulo len(Slots) is i.
type Maglev struct {
	// Slots maps each slot to the address of the backend serving it.
	Slots []netip.Addr
}

// NewMaglev computes the table for a backend set. The result depends only on
// the set, not on the order of backends.
func NewMaglev(backends []netip.Addr, size int) (*Maglev, error) {
	return UpdateMaglev(nil, backends, size)
}

// UpdateMaglev computes the table for a new backend set starting from prev (nil
// for none). Every backend gets size/n or size/n+1 slots. Slots of a backend
// that stays keep it, up to its share, so removing a backend moves only the
// sessions it served and adding one takes only what its share needs.
func UpdateMaglev(prev *Maglev, backends []netip.Addr, size int) (*Maglev, error) {
	if !config.IsPrime(size) {
		return nil, fmt.Errorf("maglev table size %d is not a prime", size)
	}
	set := slices.Clone(backends)
	slices.SortFunc(set, func(a, b netip.Addr) int { return a.Compare(b) })
	set = slices.Compact(set)
	n := len(set)
	if n == 0 {
		return &Maglev{Slots: make([]netip.Addr, size)}, nil
	}
	if n > size {
		return nil, fmt.Errorf("%d backends do not fit a maglev table of %d slots", n, size)
	}

	pos := make(map[netip.Addr]int, n)
	quota := make([]int, n)
	for i, b := range set {
		pos[b] = i
		quota[i] = size / n
		if i < size%n {
			quota[i]++
		}
	}

	slots := make([]netip.Addr, size)
	owner := make([]int, size)
	taken := make([]int, n)
	for s := range owner {
		owner[s] = -1
	}
	filled := 0
	if prev != nil && len(prev.Slots) == size {
		for s, b := range prev.Slots {
			i, ok := pos[b]
			if ok && taken[i] < quota[i] {
				owner[s], slots[s] = i, b
				taken[i]++
				filled++
			}
		}
	}

	// Each backend walks its own permutation of the slots and claims the next
	// free one in turn: the round-robin fill of the Maglev paper, bounded by
	// the quotas so that shares are exact.
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n)
	for i, b := range set {
		offset[i] = hashAddr(b, 0x9e) % uint64(size)
		skip[i] = hashAddr(b, 0x5c)%uint64(size-1) + 1
	}
	for filled < size {
		for i := range set {
			if taken[i] >= quota[i] {
				continue
			}
			for {
				s := (offset[i] + next[i]*skip[i]) % uint64(size)
				next[i]++
				if owner[s] < 0 {
					owner[s], slots[s] = i, set[i]
					taken[i]++
					filled++
					break
				}
			}
		}
	}
	return &Maglev{Slots: slots}, nil
}

func hashAddr(a netip.Addr, seed byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte{seed})
	b, _ := a.MarshalBinary()
	h.Write(b)
	x := h.Sum64()
	// FNV of a few bytes is weak in its low bits, which the modulo uses.
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return x
}
