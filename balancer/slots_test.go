// SPDX-License-Identifier: MIT

package balancer

import (
	"net/netip"
	"testing"
)

func TestAssignSlots(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	cases := []struct {
		name     string
		old      map[uint32]netip.Addr
		backends []netip.Addr
		want     map[netip.Addr]uint32
		renewed  int
	}{
		{name: "fresh map", backends: []netip.Addr{a("10.0.0.2"), a("10.0.0.3")},
			want: map[netip.Addr]uint32{a("10.0.0.2"): 0, a("10.0.0.3"): 1}, renewed: 2},
		// The restart of issue 7 defect 8: .3 keeps slot 1, .4 must not take
		// .2's slot 0 while a never-used slot is free.
		{name: "restart with another set", old: map[uint32]netip.Addr{0: a("10.0.0.2"), 1: a("10.0.0.3")},
			backends: []netip.Addr{a("10.0.0.3"), a("10.0.0.4")},
			want:     map[netip.Addr]uint32{a("10.0.0.3"): 1, a("10.0.0.4"): 2}, renewed: 1},
		{name: "retired slot reused last", old: map[uint32]netip.Addr{0: a("10.0.0.2"), 1: a("10.0.0.3")},
			backends: []netip.Addr{a("10.0.0.5"), a("10.0.0.6"), a("10.0.0.7")},
			want:     map[netip.Addr]uint32{a("10.0.0.5"): 2, a("10.0.0.6"): 3, a("10.0.0.7"): 0}, renewed: 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, renewed, err := assignSlots(c.old, c.backends, 4)
			if err != nil {
				t.Fatal(err)
			}
			for addr, idx := range c.want {
				if got[addr] != idx {
					t.Errorf("%s: slot %d, want %d", addr, got[addr], idx)
				}
			}
			if len(renewed) != c.renewed {
				t.Errorf("renewed %v, want %d slots", renewed, c.renewed)
			}
		})
	}
	if _, _, err := assignSlots(nil, []netip.Addr{a("10.0.0.2"), a("10.0.0.3")}, 1); err == nil {
		t.Error("2 backends in 1 slot: no error")
	}
}
