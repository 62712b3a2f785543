// SPDX-License-Identifier: MIT

package balancer

import (
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/icmplb/icmplb/bpf"
)

// The layout fingerprint is what a newer agent compares before it takes
// pinned maps over: the same for the same object and sizes, different for
// any change the kernel's own size check would miss.
func TestLayoutFingerprint(t *testing.T) {
	spec := func(maglev uint32) uint64 {
		t.Helper()
		s, err := bpf.NewSpec(bpf.Config{MaglevSize: maglev, MaxServices: 4, MaxBackends: 16, ConntrackSize: 1024,
			InflightSize: 1024, TraceBufferSize: 4096})
		if err != nil {
			t.Fatal(err)
		}
		return layoutFingerprint(s)
	}
	base := spec(251)
	if base == 0 || spec(251) != base {
		t.Fatalf("fingerprint %#x, then %#x: want one stable, non-zero value", base, spec(251))
	}
	if spec(257) == base {
		t.Error("a Maglev table of another size has the same fingerprint")
	}

	// Two fields of the same size swapped: the sizes all stay, the layout
	// does not.
	s, err := bpf.NewSpec(bpf.Config{MaglevSize: 251, MaxServices: 4, MaxBackends: 16, ConntrackSize: 1024,
		InflightSize: 1024, TraceBufferSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	m := s.Maps[bpf.IcmplbMapCtFwd]
	key := btf.Copy(m.Key).(*btf.Struct)
	key.Members[0].Name, key.Members[1].Name = key.Members[1].Name, key.Members[0].Name
	m.Key = key
	if layoutFingerprint(s) == base {
		t.Errorf("swapping %s and %s of struct %s left the fingerprint alone", key.Members[0].Name, key.Members[1].Name, key.Name)
	}
}
