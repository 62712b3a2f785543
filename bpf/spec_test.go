// SPDX-License-Identifier: MIT

package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// Addr stores an address as the program's struct ipaddr holds it: the 16
// bytes of IPv6 or of IPv4 mapped into IPv6, in network order in memory,
// which is what the program compares with the packet's own bytes.
func TestAddrLayout(t *testing.T) {
	for _, s := range []string{"10.0.0.1", "255.255.255.255", "fd00:1cb::100", "2001:db8::ffff:0:1", "::ffff:1.2.3.4"} {
		a := netip.MustParseAddr(s)
		v := Addr(a)
		var mem [16]byte
		for i, w := range v.W {
			binary.NativeEndian.PutUint32(mem[4*i:], w)
		}
		if want := a.As16(); mem != want {
			t.Errorf("Addr(%s) holds % x, want % x", s, mem, want)
		}
		if back := AddrFrom(v); back != a.Unmap() {
			t.Errorf("AddrFrom(Addr(%s)) = %s, want %s", s, back, a.Unmap())
		}
	}
	if got := AddrFrom(Addr(netip.Addr{})); got.IsValid() {
		t.Errorf("the zero address came back as %s", got)
	}
}
