// SPDX-License-Identifier: MIT

package balancer

import (
	"net/netip"
	"slices"
	"testing"
)

func TestDeniedSources(t *testing.T) {
	got := deniedSources([]netip.Prefix{
		netip.MustParsePrefix("10.0.0.100/24"),
		netip.MustParsePrefix("192.168.7.9/30"),
		netip.MustParsePrefix("172.16.0.1/31"),
		netip.MustParsePrefix("fd00::1/64"),
	})
	var list []string
	for a := range got {
		list = append(list, a.String())
	}
	slices.Sort(list)
	want := []string{"10.0.0.0", "10.0.0.100", "10.0.0.255", "172.16.0.1", "192.168.7.11", "192.168.7.8", "192.168.7.9"}
	if !slices.Equal(list, want) {
		t.Errorf("denied %v, want %v", list, want)
	}
}
