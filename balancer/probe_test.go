// SPDX-License-Identifier: MIT

package balancer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// echo is an ICMP(v6) echo message with its checksum left zero, which the
// filters do not read.
func echo(t *testing.T, typ icmp.Type, id int, data []byte) []byte {
	t.Helper()
	b, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: 7, Data: data}}).Marshal(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ipv4Header is an IPv4 header of ihl 32-bit words (options zeroed) before
// payload, as a raw IPv4 socket's filter sees a packet.
func ipv4Header(ihl int, payload []byte) []byte {
	h := make([]byte, ihl*4)
	h[0] = 0x40 | byte(ihl)
	binary.BigEndian.PutUint16(h[2:], uint16(len(h)+len(payload)))
	h[8], h[9] = 64, 1
	return append(h, payload...)
}

// The socket filters run in x/net's BPF interpreter, which reads packets
// as the kernel's does: past the end reads as a rejection.
func TestProbeFilters(t *testing.T) {
	token := bytes.Repeat([]byte{0xa5}, probeToken)
	for _, tc := range []struct {
		name   string
		filter []bpf.Instruction
		packet []byte
		keep   bool
	}{
		{"v4 probe reply", probeFilter4, ipv4Header(5, echo(t, ipv4.ICMPTypeEchoReply, probeID, token)), true},
		{"v4 probe reply, IP options", probeFilter4, ipv4Header(7, echo(t, ipv4.ICMPTypeEchoReply, probeID, token)), true},
		{"v4 other id", probeFilter4, ipv4Header(5, echo(t, ipv4.ICMPTypeEchoReply, probeID-1, token)), false},
		{"v4 echo request", probeFilter4, ipv4Header(5, echo(t, ipv4.ICMPTypeEcho, probeID, token)), false},
		{"v4 truncated", probeFilter4, ipv4Header(5, []byte{0, 0, 0, 0, 0xff}), false},
		// A raw ICMPv6 socket gets no IP header: type at 0, id at 4.
		{"v6 probe reply", probeFilter6, echo(t, ipv6.ICMPTypeEchoReply, probeID, token), true},
		{"v6 other id", probeFilter6, echo(t, ipv6.ICMPTypeEchoReply, 1, token), false},
		{"v6 echo request", probeFilter6, echo(t, ipv6.ICMPTypeEchoRequest, probeID, token), false},
		{"v6 ICMPv4's reply type", probeFilter6, echo(t, ipv4.ICMPTypeEchoReply, probeID, token), false},
		{"v6 neighbour advertisement", probeFilter6, append([]byte{136, 0, 0, 0}, make([]byte, 20)...), false},
		{"v6 truncated", probeFilter6, []byte{129, 0, 0, 0, 0xff}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm, err := bpf.NewVM(tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			n, err := vm.Run(tc.packet)
			if err != nil {
				t.Fatal(err)
			}
			if (n > 0) != tc.keep {
				t.Errorf("filter returns %d for % x; want kept %v", n, tc.packet, tc.keep)
			}
		})
	}
}

// A probe is an echo request of its family with the probes' id; only a
// reply of the same family with that id is read back, seq and data intact.
func TestProbeMessages(t *testing.T) {
	token := []byte("0123456789abcdef")
	for _, f := range []*probeFamily{probeV4, probeV6} {
		t.Run(f.name, func(t *testing.T) {
			req, err := f.echoRequest(513, token)
			if err != nil {
				t.Fatal(err)
			}
			m, err := icmp.ParseMessage(f.proto, req)
			if err != nil {
				t.Fatal(err)
			}
			if e, ok := m.Body.(*icmp.Echo); m.Type != f.request || !ok || e.ID != probeID || e.Seq != 513 || !bytes.Equal(e.Data, token) {
				t.Errorf("request %+v %+v, want type %v id %d seq 513 data %q", m, m.Body, f.request, probeID, token)
			}
			if _, _, ok := f.echoReply(req); ok {
				t.Error("the request itself is read as a reply")
			}
			seq, data, ok := f.echoReply(echo(t, f.reply, probeID, token))
			if !ok || seq != 7 || !bytes.Equal(data, token) {
				t.Errorf("reply read as seq %d data %q ok %v, want 7 %q true", seq, data, ok, token)
			}
			if _, _, ok := f.echoReply(echo(t, f.reply, probeID+1, token)); ok {
				t.Error("a reply with another id is read as a probe's")
			}
			other := probeV6
			if f == probeV6 {
				other = probeV4
			}
			if _, _, ok := f.echoReply(echo(t, other.reply, probeID, token)); ok {
				t.Errorf("the other family's echo reply (type %v) is read as a probe's", other.reply)
			}
		})
	}
}

func TestProbeFamilyOf(t *testing.T) {
	for a, want := range map[string]*probeFamily{
		"10.0.0.2": probeV4, "::ffff:10.0.0.2": probeV4, "fd00:1cb::2": probeV6, "2001:db8::1": probeV6,
	} {
		if got := probeFamilyOf(netip.MustParseAddr(a)); got != want {
			t.Errorf("%s probed over %s, want %s", a, got.name, want.name)
		}
	}
}

// TestProbeBothFamilies probes the seed's backend h2 on both of its
// addresses from the balancer's namespace: each family's socket sends its
// echo and reads the kernel's reply through its filter, and an address
// nobody holds times out. Without a socket of its family a probe fails
// rather than sending over the other.
func TestProbeBothFamilies(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	p := newProber(func(slotKey, bool, time.Duration) {})
	if err := topo.InNS(topology.SeedBalancer, func() error {
		return p.open(topology.SeedH2v6)
	}); err != nil {
		t.Fatal(err)
	}
	defer p.close()
	ctx := context.Background()
	if _, err := p.probe(ctx, topology.SeedH2, time.Second); err == nil {
		t.Error("an IPv4 probe succeeded with only the ICMPv6 socket open")
	}
	if err := topo.InNS(topology.SeedBalancer, func() error { return p.open(topology.SeedH2) }); err != nil {
		t.Fatal(err)
	}
	for _, to := range []netip.Addr{topology.SeedH2, topology.SeedH2v6} {
		if rtt, err := p.probe(ctx, to, 2*time.Second); err != nil || rtt <= 0 {
			t.Errorf("probe %s: rtt %v, error %v", to, rtt, err)
		}
	}
	absent := netip.MustParseAddr("fd00:1cb::99")
	if _, err := p.probe(ctx, absent, 200*time.Millisecond); !errors.Is(err, errProbeTimeout) {
		t.Errorf("probe %s (no such host): error %v, want a timeout", absent, err)
	}
}
