// SPDX-License-Identifier: MIT

package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/icmplb/icmplb/internal/frames"
	"github.com/icmplb/icmplb/internal/topology"
)

// wire runs the program on a real interface: a veth in a namespace of its
// own, in generic (SKB) mode, which hands the program every frame in one
// piece however long it is. A test run cannot: it splits frames longer
// than runLinearMax into fragments the program does not read.
type wire struct {
	h      *harness
	send   *frames.Sender  // into the LB's interface
	txCap  *frames.Capture // what the program sent back out (XDP_TX)
	passed *frames.Capture // what the program passed to the LB's kernel
}

func newWire(t *testing.T, h *harness, mtu int) *wire {
	t.Helper()
	topo := topology.NewT(t, topology.Spec{Hosts: []topology.HostSpec{
		{Name: "lb", Addr: netip.MustParsePrefix("10.9.0.50/24")},
	}})
	lb := topo.Host("lb")
	// Without IPv6, no router solicitation or MLD report of the new links
	// reaches the program in the middle of an exchange (not_unicast or not_echo +1).
	for _, run := range []func(string, ...string) (string, error){
		func(n string, a ...string) (string, error) { return topo.Run("lb", n, a...) }, topo.SwitchRun} {
		if out, err := run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
			t.Fatalf("disable IPv6: %v %s", err, out)
		}
	}
	m := fmt.Sprint(mtu)
	// The frames are addressed to lbMAC, as in the test runs; with it on
	// the interface they are the host's, not PACKET_OTHERHOST.
	if _, err := topo.Run("lb", "ip", "link", "set", "dev", lb.Iface, "mtu", m, "address", lbMAC.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.SwitchRun("ip", "link", "set", "dev", lb.Port, "mtu", m); err != nil {
		t.Fatal(err)
	}
	w := &wire{h: h}
	err := topo.InNS("lb", func() error {
		ifc, err := net.InterfaceByName(lb.Iface)
		if err != nil {
			return err
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: h.objs.Icmplb, Interface: ifc.Index, Flags: link.XDPGenericMode})
		if err != nil {
			return fmt.Errorf("attach XDP in generic mode to %s: %w", lb.Iface, err)
		}
		t.Cleanup(func() { l.Close() })
		w.passed, err = frames.NewCapture(lb.Iface, frames.CaptureOptions{Filter: frames.ICMPOrVLAN})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.passed.Close() })
	err = topo.InSwitch(func() error {
		var err error
		if w.txCap, err = frames.NewCapture(lb.Port, frames.CaptureOptions{Filter: frames.ICMPOrVLAN}); err != nil {
			return err
		}
		w.send, err = frames.NewSender(lb.Port)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.txCap.Close(); w.send.Close() })
	return w
}

// exchange sends in and returns the frame that came out where the verdict
// sends it, checking that exactly the wanted reason counter moved.
func (w *wire) exchange(t *testing.T, in []byte, wantVerdict uint32, wantReason IcmplbReason) []byte {
	t.Helper()
	before := w.h.stats(t)
	if err := w.send.Send(in); err != nil {
		t.Fatal(err)
	}
	c, where := w.txCap, "sent back out (XDP_TX)"
	if wantVerdict == xdpPass {
		c, where = w.passed, "passed to the kernel"
	}
	p, err := c.Next(5 * time.Second)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("no frame %s within 5s; stats moved %v", where, statsDelta(before, w.h.stats(t)))
	}
	if err != nil {
		t.Fatal(err)
	}
	after := w.h.stats(t)
	for r := range IcmplbReasonREASON_MAX {
		want := uint64(0)
		if r == wantReason {
			want = 1
		}
		if d := after[r] - before[r]; d != want {
			t.Errorf("stats[%s] moved by %d, want %d", reasonTable[r].name, d, want)
		}
	}
	if p.TagFromMeta {
		t.Errorf("frame %s carries a VLAN tag in metadata", where)
	}
	return p.Data
}

func statsDelta(before, after [IcmplbReasonREASON_MAX]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for r := range IcmplbReasonREASON_MAX {
		if n := after[r] - before[r]; n != 0 {
			d[reasonTable[r].name] = n
		}
	}
	return d
}

// TestJumboFrames sends echo exchanges of up to ICMP_MAX_LEN bytes of ICMP
// message through the program on a veth with a jumbo MTU, byte for byte
// against frames built here, and single-byte changes deep in them.
func TestJumboFrames(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	w := newWire(t, h, 9100)

	payload := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i*13 + 5)
		}
		return p
	}
	// ICMP message lengths: the largest on a 9000-byte MTU, odd, and the
	// program's limit.
	limit := int(IcmplbLayoutICMP_MAX_LEN)
	for i, icmpLen := range []int{8980, 8999, limit} {
		t.Run(fmt.Sprintf("ICMP message of %d bytes", icmpLen), func(t *testing.T) {
			req := echoRequest(client1, hop1MAC, uint16(0x900+i), 1)
			req.payload = payload(icmpLen - 8)
			in := req.frame()

			// One byte changed near the end, checksum left alone.
			bad := bytes.Clone(in)
			bad[len(bad)-5] ^= 0x04
			requireFrame(t, "passed corrupt request", bad, w.exchange(t, bad, xdpPass, IcmplbReasonREASON_MALFORMED))

			natID := uint16(0x5000 + i)
			h.forceNATID(t, backendA.idx, natID, req)
			out := w.exchange(t, in, xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED)
			requireChecksumsVerify(t, out)
			requireFrame(t, "forwarded request", h.forwardedFrame(req, backendA, natID), out)
			h.requireInflight(t, req, backendA, natID)

			rep := replyTo(req, backendA, vip, natID)
			// The backend's answer to another request: one byte of data
			// differs deep in it, checksum correct.
			other := rep
			other.payload = bytes.Clone(rep.payload)
			other.payload[len(other.payload)-5] ^= 0x04
			otherIn := other.frame()
			requireFrame(t, "passed mismatching reply", otherIn, w.exchange(t, otherIn, xdpPass, IcmplbReasonREASON_REPLY_MISMATCH))

			out = w.exchange(t, rep.frame(), xdpTX, IcmplbReasonREASON_REPLY_RETURNED)
			requireChecksumsVerify(t, out)
			requireFrame(t, "returned reply", h.returnedFrame(rep, client1, req.echoID, hop1MAC), out)
		})
	}
	t.Run("ICMP message over the limit", func(t *testing.T) {
		req := echoRequest(client1, hop1MAC, 0x9ff, 1)
		req.payload = payload(limit + 1 - 8)
		in := req.frame()
		requireFrame(t, "passed request", in, w.exchange(t, in, xdpPass, IcmplbReasonREASON_MALFORMED))
	})
	if c := h.backendCounters(t, backendA.idx); c.Requests != 3 || c.Replies != 3 || c.Unmatched != 0 {
		t.Errorf("backend_stats %+v, want 3 requests and 3 replies", c)
	}
}
