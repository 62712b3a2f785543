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

// A ct_rev entry is what a packet of a session out of the cache reads
// whole (struct rev_val): with the kernel's 48-byte element header (struct
// htab_elem, x86-64) and the key, it fills three cache lines exactly, and
// entries stay aligned to lines. A field added to either must come with a
// field taken out, or a line more per packet, decided by measurement.
func TestSessionEntrySize(t *testing.T) {
	spec, err := LoadIcmplb()
	if err != nil {
		t.Fatal(err)
	}
	m := spec.Maps["ct_rev"]
	round := func(n uint32) uint32 { return (n + 7) &^ 7 }
	const header = 48
	if got := header + round(m.KeySize) + round(m.ValueSize); got != 3*64 {
		t.Errorf("a ct_rev entry is %d bytes (%d-byte key, %d-byte value), want 192: three cache lines", got, m.KeySize, m.ValueSize)
	}
}
