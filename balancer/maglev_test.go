// SPDX-License-Identifier: MIT

package balancer

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/icmplb/icmplb/config"
)

func pool(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	return out
}

// weighted pairs pool(len(w)) with the weights w.
func weighted(w ...int) map[netip.Addr]int {
	out := map[netip.Addr]int{}
	for i, b := range pool(len(w)) {
		out[b] = w[i]
	}
	return out
}

func equal(n int) map[netip.Addr]int {
	return weighted(slices.Repeat([]int{1}, n)...)
}

func mustMaglev(t testing.TB, prev *Maglev, weights map[netip.Addr]int, size int) *Maglev {
	t.Helper()
	m, err := UpdateMaglev(prev, weights, size)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type move struct {
	slot     int
	from, to netip.Addr
}

func moves(before, after *Maglev) []move {
	var out []move
	for s := range before.Slots {
		if from, to := before.Owner(s), after.Owner(s); from != to {
			out = append(out, move{s, from, to})
		}
	}
	return out
}

// checkShares checks that every backend of positive weight owns slots in
// proportion to its weight, within tolerance relative to the ideal
// size*w/W, that the shares add up to size and that Backends lists exactly
// the backends of positive weight. It returns the largest relative deviation.
func checkShares(t *testing.T, m *Maglev, weights map[netip.Addr]int, tolerance float64) float64 {
	t.Helper()
	total, positive := 0, 0
	for _, w := range weights {
		total += w
		if w > 0 {
			positive++
		}
	}
	if len(m.Backends) != positive {
		t.Fatalf("%d backends in the table, want the %d of positive weight", len(m.Backends), positive)
	}
	sum, worst := 0, 0.0
	for b, k := range m.Shares() {
		sum += k
		ideal := float64(len(m.Slots)) * float64(weights[b]) / float64(total)
		dev := (float64(k) - ideal) / ideal
		worst = max(worst, math.Abs(dev))
		if math.Abs(dev) > tolerance {
			t.Errorf("backend %s of weight %d owns %d slots, %.3f%% off its ideal %.2f", b, weights[b], k, dev*100, ideal)
		}
	}
	if sum != len(m.Slots) {
		t.Fatalf("shares add up to %d, want %d", sum, len(m.Slots))
	}
	return worst
}

func TestMaglevShares(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7, 10, 64, 100, 1024} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			size := config.DefaultMaglevSize
			m := mustMaglev(t, nil, equal(n), size)
			if n <= 100 {
				checkShares(t, m, equal(n), 0.01)
			}
			// Equal weights split exactly: size/n each, one more for the
			// first size%n backends by address.
			c := m.Shares()
			for i, b := range m.Backends {
				want := size / n
				if i < size%n {
					want++
				}
				if got := c[b]; got != want {
					t.Fatalf("backend %d (%s) owns %d slots, want %d", i, b, got, want)
				}
			}
		})
	}
}

func TestMaglevWeightedShares(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []int
	}{
		{"1..10", []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{"1..30", []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30}},
		{"1,1000", []int{1, 1000}},
		{"1,2", []int{1, 2}},
		{"10 mixed", []int{5, 1000, 20, 25, 50, 80, 10, 150, 300, 100}},
		{"10 mixed with drained", []int{5, 1000, 0, 25, 50, 0, 10, 150, 300, 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			weights := weighted(tc.weights...)
			m := mustMaglev(t, nil, weights, config.DefaultMaglevSize)
			worst := checkShares(t, m, weights, 0.01)
			t.Logf("%d backends, largest deviation from size*w/W: %.4f%%", len(m.Backends), worst*100)
		})
	}
}

// TestMaglevTwiceTheWeightTwiceTheSlots checks the ratio directly: a backend
// of weight 2 gets twice the slots of one of weight 1, within 1%.
func TestMaglevTwiceTheWeightTwiceTheSlots(t *testing.T) {
	weights := weighted(1, 2, 1, 2, 1, 2, 1, 2, 1, 2)
	m := mustMaglev(t, nil, weights, config.DefaultMaglevSize)
	c := m.Shares()
	for _, heavy := range m.Backends {
		if weights[heavy] != 2 {
			continue
		}
		for _, light := range m.Backends {
			if weights[light] != 1 {
				continue
			}
			if r := float64(c[heavy]) / float64(c[light]); math.Abs(r-2) > 0.02 {
				t.Errorf("%s of weight 2 owns %d slots, %s of weight 1 owns %d: ratio %.4f", heavy, c[heavy], light, c[light], r)
			}
		}
	}
}

// checkOnly checks that a change of backend changed moved the theoretical
// minimum, |its new share - its old share| slots, and that each moved slot
// went to or came from changed: no slot passed between two other backends.
func checkOnly(t *testing.T, before, after *Maglev, changed netip.Addr) int {
	t.Helper()
	mv := moves(before, after)
	for _, m := range mv {
		if m.from != changed && m.to != changed {
			t.Fatalf("slot %d moved from %s to %s, neither of them the changed backend %s", m.slot, m.from, m.to, changed)
		}
	}
	old, now := before.Shares()[changed], after.Shares()[changed]
	if want := max(old-now, now-old); len(mv) != want {
		t.Fatalf("%d slots moved, want the minimum %d (the changed backend %s went from %d to %d slots)", len(mv), want, changed, old, now)
	}
	return len(mv)
}

func TestMaglevRemovalMovesOnlyRemovedBackend(t *testing.T) {
	for _, n := range []int{2, 3, 10, 50} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			weights := equal(n)
			before := mustMaglev(t, nil, weights, config.DefaultMaglevSize)
			gone := pool(n)[n/2]
			delete(weights, gone)
			after := mustMaglev(t, before, weights, config.DefaultMaglevSize)
			if after.Shares()[gone] != 0 {
				t.Fatalf("removed backend %s still owns slots", gone)
			}
			for _, m := range moves(before, after) {
				if m.from != gone {
					t.Fatalf("slot %d moved from %s to %s although %s stayed", m.slot, m.from, m.to, m.from)
				}
			}
			if moved := checkOnly(t, before, after, gone); moved == 0 {
				t.Fatal("the removed backend owned no slot")
			}
			// The removed backend's slots are spread, not dumped on one
			// survivor.
			checkShares(t, after, weights, 0.01)
		})
	}
	t.Run("weighted", func(t *testing.T) {
		weights := weighted(5, 1000, 20, 25, 50, 80, 10, 150, 300, 100)
		before := mustMaglev(t, nil, weights, config.DefaultMaglevSize)
		gone := pool(10)[8]
		delete(weights, gone)
		after := mustMaglev(t, before, weights, config.DefaultMaglevSize)
		for _, m := range moves(before, after) {
			if m.from != gone {
				t.Fatalf("slot %d moved from %s to %s although %s stayed", m.slot, m.from, m.to, m.from)
			}
		}
		moved := checkOnly(t, before, after, gone)
		worst := checkShares(t, after, weights, 0.01)
		t.Logf("removing %s of weight 300 (%d slots): %d slots moved, the minimum; largest deviation after %.4f%%", gone, before.Shares()[gone], moved, worst*100)
	})
}

func TestMaglevWeightChangeMovesOnlyItsDifference(t *testing.T) {
	base := []int{3, 7, 2, 10, 4, 6, 1, 8, 9, 5}
	changed := pool(10)[2]
	for _, step := range []struct{ from, to int }{{2, 5}, {5, 1}, {2, 1000}, {1000, 1}} {
		t.Run(fmt.Sprintf("%d→%d", step.from, step.to), func(t *testing.T) {
			weights := weighted(base...)
			weights[changed] = step.from
			before := mustMaglev(t, nil, weights, config.DefaultMaglevSize)
			weights[changed] = step.to
			after := mustMaglev(t, before, weights, config.DefaultMaglevSize)
			moved := checkOnly(t, before, after, changed)
			for _, m := range moves(before, after) {
				if (step.to > step.from) != (m.to == changed) {
					t.Fatalf("slot %d moved from %s to %s: the wrong way for a weight going %d→%d", m.slot, m.from, m.to, step.from, step.to)
				}
			}
			worst := checkShares(t, after, weights, 0.01)
			t.Logf("weight %d→%d: %d→%d slots, %d moved, the minimum; largest deviation after %.4f%%",
				step.from, step.to, before.Shares()[changed], after.Shares()[changed], moved, worst*100)
		})
	}
}

func TestMaglevDrain(t *testing.T) {
	weights := weighted(3, 7, 2, 10, 4, 6, 1, 8, 9, 5)
	before := mustMaglev(t, nil, weights, config.DefaultMaglevSize)
	drained := pool(10)[3]
	weights[drained] = 0
	after := mustMaglev(t, before, weights, config.DefaultMaglevSize)
	if slices.Contains(after.Backends, drained) || after.Shares()[drained] != 0 {
		t.Fatalf("drained backend %s still owns %d slots", drained, after.Shares()[drained])
	}
	for _, m := range moves(before, after) {
		if m.from != drained {
			t.Fatalf("slot %d moved from %s to %s although %s was not drained", m.slot, m.from, m.to, m.from)
		}
	}
	moved := checkOnly(t, before, after, drained)
	checkShares(t, after, weights, 0.01)
	t.Logf("draining a backend of weight 10 (%d slots): %d slots moved", before.Shares()[drained], moved)
}

func TestMaglevAdditionMovesOnlyItsShare(t *testing.T) {
	added := netip.MustParseAddr("192.168.7.7")
	for name, weights := range map[string]map[netip.Addr]int{
		"equal":    equal(9),
		"weighted": weighted(3, 7, 2, 10, 4, 6, 1, 8, 9),
	} {
		t.Run(name, func(t *testing.T) {
			before := mustMaglev(t, nil, weights, config.DefaultMaglevSize)
			weights[added] = 5
			after := mustMaglev(t, before, weights, config.DefaultMaglevSize)
			for _, m := range moves(before, after) {
				if m.to != added {
					t.Fatalf("slot %d moved from %s to %s, not to the added backend", m.slot, m.from, m.to)
				}
			}
			moved := checkOnly(t, before, after, added)
			checkShares(t, after, weights, 0.01)
			t.Logf("adding a backend of weight 5: %d slots moved, all to it", moved)
		})
	}
}

func TestMaglevOrderIndependent(t *testing.T) {
	addrs := pool(17)
	w := []int{1, 5, 1000, 3, 0, 7, 7, 7, 2, 9, 40, 1, 1, 100, 3, 0, 12}
	build := func(order []int) map[netip.Addr]int {
		m := map[netip.Addr]int{}
		for _, i := range order {
			m[addrs[i]] = w[i]
		}
		return m
	}
	order := make([]int, len(addrs))
	for i := range order {
		order[i] = i
	}
	want := mustMaglev(t, nil, build(order), 251)
	r := rand.New(rand.NewPCG(1, 2))
	for range 10 {
		r.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
		got := mustMaglev(t, nil, build(order), 251)
		if !slices.Equal(got.Backends, want.Backends) {
			t.Fatalf("order %v: backends %v, want %v", order, got.Backends, want.Backends)
		}
		for s := range want.Slots {
			if got.Owner(s) != want.Owner(s) {
				t.Fatalf("order %v: slot %d is %s, want %s", order, s, got.Owner(s), want.Owner(s))
			}
		}
	}
}

func TestMaglevSpreadsNeighbouringSlots(t *testing.T) {
	// Plain modulo striping would also pass the share test; Maglev must not
	// hand runs of neighbouring slots to one backend. The bound is twice the
	// longest run expected of slots dealt at random to a backend owning a
	// fraction p of them, log(size(1-p))/log(1/p): 15 at p = 1/2, 34 at
	// p = 3/4, 80 at p = 9/10.
	for name, weights := range map[string]map[netip.Addr]int{
		"equal": equal(2), "1,3": weighted(1, 3), "1,9": weighted(1, 9), "10 mixed": weighted(5, 1000, 20, 25, 50, 80, 10, 150, 300, 100),
	} {
		m := mustMaglev(t, nil, weights, config.DefaultMaglevSize)
		size := float64(len(m.Slots))
		p := float64(slices.Max(slices.Collect(maps.Values(m.Shares())))) / size
		bound := int(2 * math.Log(size*(1-p)) / math.Log(1/p))
		longest, run := 0, 0
		for s := 1; s < len(m.Slots); s++ {
			if m.Slots[s] == m.Slots[s-1] {
				run++
			} else {
				run = 0
			}
			longest = max(longest, run)
		}
		if longest > bound {
			t.Errorf("%s: a run of %d neighbouring slots has one backend, more than %d", name, longest, bound)
		}
		t.Logf("%s: longest run %d, bound %d", name, longest, bound)
	}
}

func TestMaglevErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights map[netip.Addr]int
		size    int
	}{
		{"size not a prime", equal(2), 100},
		{"more backends than slots", equal(20), 13},
		{"negative weight", weighted(1, -1), 13},
		{"weight above MaxWeight", weighted(1, config.MaxWeight+1), 13},
		{"invalid address", map[netip.Addr]int{{}: 1}, 13},
	} {
		if _, err := NewMaglev(tc.weights, tc.size); err == nil {
			t.Errorf("%s: accepted, want an error", tc.name)
		}
	}
	// Drained backends take no slot, so they do not count against the size.
	w := equal(20)
	for _, b := range pool(20)[13:] {
		w[b] = 0
	}
	if _, err := NewMaglev(w, 13); err != nil {
		t.Errorf("13 backends of positive weight and 7 drained in 13 slots: %v", err)
	}
	if _, err := NewMaglev(weighted(config.MaxWeight, 1), 13); err != nil {
		t.Errorf("weight MaxWeight: %v", err)
	}

	for name, weights := range map[string]map[netip.Addr]int{"empty": nil, "all drained": weighted(0, 0, 0)} {
		prev := mustMaglev(t, nil, equal(3), 13)
		for _, p := range []*Maglev{nil, prev} {
			m := mustMaglev(t, p, weights, 13)
			if len(m.Backends) != 0 || len(m.Shares()) != 0 || m.Owner(0).IsValid() {
				t.Fatalf("%s pool: backends %v, shares %v, slot 0 -> %s", name, m.Backends, m.Shares(), m.Owner(0))
			}
			if len(m.Slots) != 13 || slices.ContainsFunc(m.Slots, func(i uint16) bool { return i != 0 }) {
				t.Fatalf("%s pool: slots %v, want 13 zeros", name, m.Slots)
			}
		}
	}
}

// referenceQuotas is the divisor method of quotas computed the slow way: the
// next slot goes to the largest claim w/d(s), d(0) = 0, d(s) = s + 1/2, ties
// to the lower address.
func referenceQuotas(w []int, size int) []int {
	q := make([]int, len(w))
	for range size {
		best := -1
		for i := range w {
			if best < 0 || w[i]*twoD(q[best]) > w[best]*twoD(q[i]) {
				best = i
			}
		}
		q[best]++
	}
	return q
}

func TestMaglevQuotasMatchReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 300 {
		size := []int{2, 3, 13, 101, 1009, 65537}[round%6]
		n := 1 + r.IntN(min(size, 60))
		w := make([]int, n)
		for i := range w {
			// Mostly small weights, so that many claims tie.
			if r.IntN(2) == 0 {
				w[i] = 1 + r.IntN(4)
			} else {
				w[i] = 1 + r.IntN(config.MaxWeight)
			}
		}
		if got, want := quotas(w, size), referenceQuotas(w, size); !slices.Equal(got, want) {
			t.Fatalf("weights %v, size %d: quotas %v, want %v", w, size, got, want)
		}
	}
}

// TestMaglevRandomChanges applies random single changes (a weight changed,
// drained, a backend added or removed) to random pools and checks each move
// against the theoretical minimum, and the shares against those of a table
// built afresh: the quotas do not depend on history.
func TestMaglevRandomChanges(t *testing.T) {
	const size = 1009
	r := rand.New(rand.NewPCG(5, 6))
	randomWeight := func() int {
		if r.IntN(3) == 0 {
			return 1 + r.IntN(5)
		}
		return 1 + r.IntN(config.MaxWeight)
	}
	rounds, moved, worst, worstSlots := 0, 0, 0.0, 0.0
	for range 20 {
		n := 2 + r.IntN(49)
		weights := map[netip.Addr]int{}
		for _, b := range pool(n) {
			weights[b] = randomWeight()
		}
		m := mustMaglev(t, nil, weights, size)
		next := n
		for range 20 {
			addrs := slices.SortedFunc(maps.Keys(weights), netip.Addr.Compare)
			var changed netip.Addr
			switch k := r.IntN(5); {
			case k == 0 && len(weights) < 50:
				changed = pool(next + 1)[next]
				next++
				weights[changed] = randomWeight()
			case k == 1 && len(weights) > 2:
				changed = addrs[r.IntN(len(addrs))]
				delete(weights, changed)
			case k == 2:
				changed = addrs[r.IntN(len(addrs))]
				weights[changed] = 0
			default:
				changed = addrs[r.IntN(len(addrs))]
				weights[changed] = randomWeight()
			}
			after := mustMaglev(t, m, weights, size)
			moved += checkOnly(t, m, after, changed)
			fresh := mustMaglev(t, nil, weights, size)
			if !maps.Equal(after.Shares(), fresh.Shares()) {
				t.Fatalf("round %d: shares after the update %v differ from a fresh table's %v", rounds, after.Shares(), fresh.Shares())
			}
			total := 0
			for _, w := range weights {
				total += w
			}
			for b, k := range after.Shares() {
				// Half a slot of rounding, plus the divisor's error of at
				// most n/size; one slot for a backend whose weight
				// rounds below it.
				ideal := float64(size) * float64(weights[b]) / float64(total)
				dev := math.Abs(float64(k) - ideal)
				worstSlots = max(worstSlots, dev)
				if ideal >= 100 {
					worst = max(worst, dev/ideal)
				}
				if dev > max(1, 0.5+ideal*float64(len(after.Backends))/size) {
					t.Fatalf("round %d: %s of weight %d owns %d slots, ideal %.2f", rounds, b, weights[b], k, ideal)
				}
			}
			m = after
			rounds++
		}
	}
	t.Logf("%d random single changes in a table of %d slots: %d slots moved, each the minimum; largest deviation of a share from its ideal %.2f slots, %.2f%% relative for shares of 100 slots or more", rounds, size, moved, worstSlots, worst*100)
}
