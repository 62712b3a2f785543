// SPDX-License-Identifier: MIT

package frames

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
	ipA  = netip.MustParseAddr("10.9.0.1")
	ipB  = netip.MustParseAddr("10.9.0.2")
)

func TestMarshalParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		e    Echo
	}{
		{"request", Echo{DstMAC: macB, SrcMAC: macA, Src: ipA, Dst: ipB, Type: ICMPEchoReq, ID: 7, Seq: 9, Payload: []byte("hello")}},
		{"reply", Echo{DstMAC: macB, SrcMAC: macA, Src: ipA, Dst: ipB, Type: ICMPEchoReply, ID: 0xffff, Seq: 0}},
		{"qinq", Echo{DstMAC: macB, SrcMAC: macA, Src: ipA, Dst: ipB, Type: ICMPEchoReq, ID: 1, Seq: 2,
			VLANs: []VLAN{{EtherTypeQinQ, 30}, {EtherTypeVLAN, 10}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.e.Marshal()
			f, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if !f.IsEcho || !f.ChecksumOK || f.Type != tc.e.Type || f.ID != tc.e.ID || f.Seq != tc.e.Seq ||
				f.Src != ipA || f.Dst != ipB || f.TTL != defaultTTL || !bytes.Equal(f.Payload, tc.e.Payload) ||
				!bytes.Equal(f.SrcMAC, macA) || !bytes.Equal(f.DstMAC, macB) || len(f.VLANs) != len(tc.e.VLANs) {
				t.Fatalf("parsed %+v from %+v", f, tc.e)
			}
			for i := range f.VLANs {
				if f.VLANs[i] != tc.e.VLANs[i] {
					t.Errorf("tag %d = %+v, want %+v", i, f.VLANs[i], tc.e.VLANs[i])
				}
			}
			// The IP header checksum verifies too.
			ip := b[len(b)-len(tc.e.Payload)-icmpHeaderLen-ipv4HeaderLen:]
			if Checksum(ip[:ipv4HeaderLen]) != 0 {
				t.Errorf("IP header checksum does not verify")
			}
		})
	}
}

func TestMarshalOddities(t *testing.T) {
	e := Echo{DstMAC: macB, SrcMAC: macA, Src: ipA, Dst: ipB, Type: ICMPEchoReq, ZeroTTL: true, BadChecksum: true, Payload: []byte("odd")}
	f, err := Parse(e.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if f.TTL != 0 || f.ChecksumOK {
		t.Errorf("TTL %d, checksum ok %v: want TTL 0 and a bad checksum", f.TTL, f.ChecksumOK)
	}
	if _, err := Parse(e.Marshal()[:20]); !errors.Is(err, ErrShort) {
		t.Errorf("truncated frame: err %v, want ErrShort", err)
	}
}

// TestSendCapture sends frames between two namespaces and captures them:
// untagged frames arrive as sent, and a tag the receiving kernel moved into
// skb metadata is put back from PACKET_AUXDATA.
func TestSendCapture(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Spec{Hosts: []topology.HostSpec{
		{Name: "a", Addr: netip.PrefixFrom(ipA, 24)},
		{Name: "b", Addr: netip.PrefixFrom(ipB, 24)},
	}})
	a, b := topo.Host("a"), topo.Host("b")
	var s *Sender
	var atB, atA *Capture
	if err := topo.InNS("a", func() (err error) {
		if s, err = NewSender("eth0"); err != nil {
			return err
		}
		atA, err = NewCapture("eth0", CaptureOptions{Filter: ICMPOrVLAN, Outgoing: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer atA.Close()
	if err := topo.InNS("b", func() (err error) {
		atB, err = NewCapture("eth0", CaptureOptions{Filter: ICMPOrVLAN})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer atB.Close()

	plain := Echo{DstMAC: b.MAC, SrcMAC: a.MAC, Src: ipA, Dst: ipB, Type: ICMPEchoReq, ID: 1, Seq: 1, Payload: []byte("plain")}
	tagged := plain
	tagged.Seq, tagged.VLANs = 2, []VLAN{{EtherTypeVLAN, 10}}
	for _, e := range []Echo{plain, tagged} {
		if err := s.Send(e.Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	next := func(c *Capture, want uint16) Packet {
		t.Helper()
		for {
			p, err := c.Next(2 * time.Second)
			if err != nil {
				t.Fatalf("waiting for seq %d: %v", want, err)
			}
			if f, err := Parse(p.Data); err == nil && f.IsEcho && f.Seq == want {
				return p
			}
		}
	}
	if p := next(atB, 1); !bytes.Equal(p.Data, plain.Marshal()) || p.TagFromMeta || p.Outgoing {
		t.Errorf("untagged frame captured as %x (tag from metadata %v, outgoing %v), sent %x", p.Data, p.TagFromMeta, p.Outgoing, plain.Marshal())
	}
	if p := next(atB, 2); !bytes.Equal(p.Data, tagged.Marshal()) || !p.TagFromMeta {
		t.Errorf("tagged frame captured as %x (tag from metadata %v), sent %x", p.Data, p.TagFromMeta, tagged.Marshal())
	}
	// The sender's side sees its own frames only when asked to.
	if p := next(atA, 1); !p.Outgoing {
		t.Errorf("own frame at the sender not marked outgoing")
	}
	if p := next(atA, 2); !bytes.Equal(p.Data, tagged.Marshal()) || p.TagFromMeta {
		t.Errorf("own tagged frame captured as %x (tag from metadata %v), sent %x", p.Data, p.TagFromMeta, tagged.Marshal())
	}
	for _, c := range []*Capture{atA, atB} {
		if d, err := c.Drops(); err != nil || d != 0 {
			t.Errorf("drops %d, err %v", d, err)
		}
	}
	// Close wakes a blocked reader.
	done := make(chan error, 1)
	go func() { _, err := atB.Next(0); done <- err }()
	time.Sleep(50 * time.Millisecond)
	atB.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Next after Close: %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not wake a blocked Next")
	}
	if _, err := atA.Next(10 * time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Next on a quiet capture: %v, want a deadline error", err)
	}
}
