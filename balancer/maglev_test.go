// SPDX-License-Identifier: MIT

package balancer

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
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

func shares(m *Maglev) map[netip.Addr]int {
	c := map[netip.Addr]int{}
	for _, b := range m.Slots {
		c[b]++
	}
	return c
}

func TestMaglevShares(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7, 10, 64, 100} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			m, err := NewMaglev(pool(n), config.DefaultMaglevSize)
			if err != nil {
				t.Fatal(err)
			}
			c := shares(m)
			if len(c) != n {
				t.Fatalf("%d backends own slots, want %d", len(c), n)
			}
			even := float64(config.DefaultMaglevSize) / float64(n)
			for b, k := range c {
				if dev := (float64(k) - even) / even; dev > 0.01 || dev < -0.01 {
					t.Errorf("backend %s owns %d slots, %.2f%% off the even share %.1f", b, k, dev*100, even)
				}
			}
		})
	}
}

func TestMaglevRemovalMovesOnlyRemovedBackend(t *testing.T) {
	for _, n := range []int{2, 3, 10, 50} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			backends := pool(n)
			before, err := NewMaglev(backends, config.DefaultMaglevSize)
			if err != nil {
				t.Fatal(err)
			}
			gone := backends[n/2]
			rest := append(append([]netip.Addr{}, backends[:n/2]...), backends[n/2+1:]...)
			after, err := UpdateMaglev(before, rest, config.DefaultMaglevSize)
			if err != nil {
				t.Fatal(err)
			}
			moved := 0
			for s := range before.Slots {
				switch {
				case before.Slots[s] == gone:
					if after.Slots[s] == gone {
						t.Fatalf("slot %d still points to removed backend %s", s, gone)
					}
					moved++
				case after.Slots[s] != before.Slots[s]:
					t.Fatalf("slot %d moved from %s to %s although %s stayed", s, before.Slots[s], after.Slots[s], before.Slots[s])
				}
			}
			if moved == 0 {
				t.Fatal("the removed backend owned no slot")
			}
			// The removed backend's slots are spread, not dumped on one survivor.
			even := float64(config.DefaultMaglevSize) / float64(n-1)
			for b, k := range shares(after) {
				if dev := (float64(k) - even) / even; dev > 0.01 || dev < -0.01 {
					t.Errorf("after removal %s owns %d slots, %.2f%% off even", b, k, dev*100)
				}
			}
		})
	}
}

func TestMaglevAdditionMovesOnlyItsShare(t *testing.T) {
	backends := pool(9)
	before, err := NewMaglev(backends, config.DefaultMaglevSize)
	if err != nil {
		t.Fatal(err)
	}
	added := netip.MustParseAddr("192.168.7.7")
	after, err := UpdateMaglev(before, append(backends, added), config.DefaultMaglevSize)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for s := range before.Slots {
		if after.Slots[s] != before.Slots[s] {
			if after.Slots[s] != added {
				t.Fatalf("slot %d moved from %s to %s, not to the added backend", s, before.Slots[s], after.Slots[s])
			}
			moved++
		}
	}
	if want := shares(after)[added]; moved != want {
		t.Fatalf("%d slots moved, want exactly the new backend's share %d", moved, want)
	}
}

func TestMaglevOrderIndependent(t *testing.T) {
	backends := pool(17)
	want, err := NewMaglev(backends, 251)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 10; i++ {
		shuffled := append([]netip.Addr{}, backends...)
		r.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		got, err := NewMaglev(shuffled, 251)
		if err != nil {
			t.Fatal(err)
		}
		for s := range want.Slots {
			if got.Slots[s] != want.Slots[s] {
				t.Fatalf("order %v: slot %d is %s, want %s", shuffled, s, got.Slots[s], want.Slots[s])
			}
		}
	}
}

func TestMaglevSpreadsNeighbouringSlots(t *testing.T) {
	// Plain modulo striping would also pass the share test; Maglev must not
	// hand runs of neighbouring slots to one backend.
	m, err := NewMaglev(pool(2), config.DefaultMaglevSize)
	if err != nil {
		t.Fatal(err)
	}
	longest, run := 0, 0
	for s := 1; s < len(m.Slots); s++ {
		if m.Slots[s] == m.Slots[s-1] {
			run++
		} else {
			run = 0
		}
		longest = max(longest, run)
	}
	if longest > 40 {
		t.Fatalf("a run of %d neighbouring slots has one backend", longest)
	}
}

func TestMaglevErrors(t *testing.T) {
	if _, err := NewMaglev(pool(2), 100); err == nil {
		t.Error("size 100 accepted, want an error: not a prime")
	}
	if _, err := NewMaglev(pool(20), 13); err == nil {
		t.Error("20 backends in 13 slots accepted")
	}
	m, err := NewMaglev(nil, 13)
	if err != nil {
		t.Fatal(err)
	}
	for s, b := range m.Slots {
		if b.IsValid() {
			t.Fatalf("empty pool has slot %d -> %s", s, b)
		}
	}
}
