// SPDX-License-Identifier: MIT

package balancer

import (
	"container/heap"
	"fmt"
	"hash/fnv"
	"math"
	"net/netip"
	"slices"

	"github.com/icmplb/icmplb/config"
)

// Maglev is a weighted consistent-hashing lookup table (Eisenbud et al.,
// NSDI 2016): slot i serves the sessions whose hash modulo len(Slots) is i.
//
// A table whose pool has no backend of positive weight has no Backends and
// Slots all zero, an index into nothing: callers check len(Backends) == 0
// before reading a slot.
type Maglev struct {
	// Backends are the backends owning slots, sorted by address (weight > 0
	// only: every backend of positive weight owns at least one slot).
	Backends []netip.Addr
	// Slots holds, per slot, an index into Backends. uint16: config.MaxBackends
	// (1024) fits, and a table of 65537 slots stays 128 KiB, so 256 services'
	// tables are 32 MiB, not 400 MiB of netip.Addr.
	Slots []uint16
}

// Owner is the backend serving slot, or the invalid address if the table has
// no backend.
func (m *Maglev) Owner(slot int) netip.Addr {
	if len(m.Backends) == 0 {
		return netip.Addr{}
	}
	return m.Backends[m.Slots[slot]]
}

// Shares counts the slots of each backend.
func (m *Maglev) Shares() map[netip.Addr]int {
	c := make(map[netip.Addr]int, len(m.Backends))
	if len(m.Backends) == 0 {
		return c
	}
	for _, i := range m.Slots {
		c[m.Backends[i]]++
	}
	return c
}

// NewMaglev computes the table for a pool of backends and their weights. The
// result depends only on the pool, not on the map's order.
func NewMaglev(weights map[netip.Addr]int, size int) (*Maglev, error) {
	return UpdateMaglev(nil, weights, size)
}

// UpdateMaglev computes the table for a pool starting from prev (nil for
// none). Each backend's number of slots depends on the weights alone (see
// quotas); a backend that stays keeps its slots of prev, up to that number, so
// that a change moves only the slots that the changed backends lose or gain.
func UpdateMaglev(prev *Maglev, weights map[netip.Addr]int, size int) (*Maglev, error) {
	if !config.IsPrime(size) {
		return nil, fmt.Errorf("maglev table size %d is not a prime", size)
	}
	set := make([]netip.Addr, 0, len(weights))
	for b, w := range weights {
		if !b.IsValid() {
			return nil, fmt.Errorf("maglev backend with an invalid address")
		}
		if w < 0 || w > config.MaxWeight {
			return nil, fmt.Errorf("maglev backend %s weight %d is not in 0..%d", b, w, config.MaxWeight)
		}
		if w > 0 {
			set = append(set, b)
		}
	}
	slices.SortFunc(set, func(a, b netip.Addr) int { return a.Compare(b) })
	n := len(set)
	if n > size || n > math.MaxUint16+1 {
		return nil, fmt.Errorf("%d backends of positive weight do not fit a maglev table of %d slots", n, size)
	}
	slots := make([]uint16, size)
	if n == 0 {
		return &Maglev{Slots: slots}, nil
	}
	w := make([]int, n)
	for i, b := range set {
		w[i] = weights[b]
	}
	quota := quotas(w, size)

	taken := make([]int, n)
	free := make([]bool, size)
	filled := 0
	if prev != nil && len(prev.Slots) == size && len(prev.Backends) > 0 {
		pos := make(map[netip.Addr]int, n)
		for i, b := range set {
			pos[b] = i
		}
		remap := make([]int, len(prev.Backends))
		for j, b := range prev.Backends {
			remap[j] = -1
			if i, ok := pos[b]; ok {
				remap[j] = i
			}
		}
		for s, j := range prev.Slots {
			i := remap[j]
			if i >= 0 && taken[i] < quota[i] {
				slots[s] = uint16(i)
				taken[i]++
				filled++
			} else {
				free[s] = true
			}
		}
	} else {
		for s := range free {
			free[s] = true
		}
	}

	// Each backend short of its quota walks its own permutation of the slots
	// and claims the next free one in turn: the round-robin fill of the
	// Maglev paper, bounded by the quotas so that shares are exact. The
	// backends still short are kept in a list so that a heavy backend
	// filling alone does not pay a pass over the full ones per slot.
	var active []int
	for i := range set {
		if taken[i] < quota[i] {
			active = append(active, i)
		}
	}
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n)
	for _, i := range active {
		offset[i] = hashAddr(set[i], 0x9e) % uint64(size)
		skip[i] = hashAddr(set[i], 0x5c)%uint64(size-1) + 1
	}
	for filled < size {
		k := 0
		for _, i := range active {
			for {
				s := (offset[i] + next[i]*skip[i]) % uint64(size)
				next[i]++
				if free[s] {
					free[s] = false
					slots[s] = uint16(i)
					taken[i]++
					filled++
					break
				}
			}
			if taken[i] < quota[i] {
				active[k] = i
				k++
			}
		}
		active = active[:k]
	}
	return &Maglev{Backends: set, Slots: slots}, nil
}

// quotas splits size slots among backends of weights w (all positive, in
// address order) by a divisor method: with a divisor D, a backend of weight w
// gets w/D slots rounded at the half (Webster/Sainte-Laguë) but at least one,
// D chosen so that the slots add up to size.
//
// Why a divisor method and not largest remainders: a change should move only
// slots to or from the changed backend. The slots a backend loses or gains are
// the difference of its quotas, so when backend c changes, every other
// backend's quota must move opposite to c's, or a slot would pass between two
// backends that did not change. Largest remainders break this (the Alabama
// paradox's cousin, the population paradox): c's weight moves the remainders
// of all the others, and a +1 can pass from one of them to another. A divisor
// method is population-monotone (Balinski and Young): the quota is the number
// of a backend's claims w/d(0), w/d(1), w/d(2)... (d below) among the size
// largest claims of all backends, ties broken by address, a fixed order. Raising c's
// weight (or adding c) lifts only c's claims, which can push others' claims
// out of the top size but never in; lowering it (or removing c) does the
// reverse. So the quotas depend on the weights alone, not on history, and the
// update keeps every unchanged backend on one side of the change.
//
// Why Webster, d(s) = s + 1/2: it is the divisor method without bias towards
// heavy or light backends, and a share is within half a slot of w/D, where size/W (W the
// weights' sum) and 1/D differ by at most n/size relatively: 1% at the
// 100 slots per backend the table size is sized for, far less in practice as
// the roundings cancel. The first claim of every backend wins outright
// (threshold 0, not 1/2) so that a backend of positive weight always owns a
// slot (at most one more than w/D): a weight is a promise of some traffic, and Backends lists exactly the
// backends that serve. Equal weights give every backend size/n slots and the
// first size%n backends by address one more.
func quotas(w []int, size int) []int {
	n := len(w)
	total := 0
	for _, x := range w {
		total += x
	}
	// 1/D >= (size-n)/W: every quota is at most w/D + 1, and they add up to
	// size. The claims below w(size-n)/W - 1 are thus certainly among the
	// largest, so the heap starts after them and pops at most 3n claims.
	q := make([]int, n)
	h := &claims{w: w, q: q}
	left := size
	for i, x := range w {
		q[i] = max(1, x*(size-n)/total-1)
		left -= q[i]
		heap.Push(h, i)
	}
	for ; left > 0; left-- {
		q[h.i[0]]++
		heap.Fix(h, 0)
	}
	return q
}

// claims is a max-heap of each backend's next claim: backend i's claim for
// its slot number q[i]+1 is w[i]/d(q[i]), d(0) = 0, d(s) = s + 1/2.
type claims struct {
	w, q, i []int
}

func (h *claims) Len() int      { return len(h.i) }
func (h *claims) Swap(a, b int) { h.i[a], h.i[b] = h.i[b], h.i[a] }
func (h *claims) Less(a, b int) bool {
	x, y := h.i[a], h.i[b]
	// w[x]/d(q[x]) > w[y]/d(q[y]), cross-multiplied by 2d to stay in integers.
	l, r := h.w[x]*twoD(h.q[y]), h.w[y]*twoD(h.q[x])
	if l != r {
		return l > r
	}
	return x < y
}
func (h *claims) Push(x any) { h.i = append(h.i, x.(int)) }
func (h *claims) Pop() any {
	x := h.i[len(h.i)-1]
	h.i = h.i[:len(h.i)-1]
	return x
}

func twoD(s int) int {
	if s == 0 {
		return 0
	}
	return 2*s + 1
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
