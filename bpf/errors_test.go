// SPDX-License-Identifier: MIT

package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// router is a hop between the balancer and backendA: backendA's next hop,
// so its frames come from backendA's MAC, from an address of its own.
var router = netip.MustParseAddr("10.0.0.50")

// icmpError describes an ICMPv4 error message: quote is the start of the
// datagram it is about. frame() builds it from scratch, checksums included.
type icmpError struct {
	ethDst, ethSrc mac
	src, dst       netip.Addr
	ttl            uint8
	typ, code      uint8
	rest           uint32 // the header's second word: unused, or the next-hop MTU
	quote          []byte
}

func (e icmpError) frame() []byte {
	msg := make([]byte, 8, 8+len(e.quote))
	msg[0], msg[1] = e.typ, e.code
	binary.BigEndian.PutUint32(msg[4:], e.rest)
	msg = append(msg, e.quote...)
	binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	return packet{ethDst: e.ethDst, ethSrc: e.ethSrc, ipID: 0x5151, ttl: e.ttl, proto: unix.IPPROTO_ICMP,
		src: e.src, dst: e.dst, l4: msg}.frame()
}

// quoteOf is the first n bytes of a frame's IP datagram, as an error quotes it.
func quoteOf(frame []byte, n int) []byte {
	d := frame[14:]
	return append([]byte(nil), d[:min(n, len(d))]...)
}

// errorAbout is the error the router sends the balancer about req as the
// balancer forwarded it to be with natID, quoting n bytes of it.
func (h *harness) errorAbout(req packet, be backendInfo, natID uint16, typ, code uint8, rest uint32, n int) icmpError {
	return icmpError{
		ethDst: lbMAC, ethSrc: be.mac, src: router, dst: h.cfg.SNAT, ttl: 64,
		typ: typ, code: code, rest: rest, quote: quoteOf(h.forwardedFrame(req, be, natID), n),
	}
}

// translated is what the client must get for e, an error about its request
// req: from the VIP, to the client's MAC, about the client's own request as
// it sent it.
func (h *harness) translated(e icmpError, req packet) icmpError {
	e.ethDst, e.ethSrc = req.ethSrc, lbMAC
	e.src, e.dst = h.cfg.VIP, req.src
	e.quote = quoteOf(req.frame(), len(e.quote))
	return e
}

func (h *harness) requireErrorReturned(t *testing.T, e icmpError, req packet) {
	t.Helper()
	in := e.frame()
	out := h.run(t, in, xdpTX, IcmplbReasonREASON_ERROR_RETURNED)
	requireChecksumsVerify(t, out)
	if len(out) != len(in) {
		t.Fatalf("output is %d bytes, input %d", len(out), len(in))
	}
	requireFrame(t, "returned error", h.translated(e, req).frame(), out)
}

func TestErrorReturned(t *testing.T) {
	tests := []struct {
		name      string
		typ, code uint8
		rest      uint32
		quote     int
		from      netip.Addr // zero: the router
		kind      IcmplbIcmpError
		snat      netip.Addr
	}{
		{"host unreachable, whole datagram", 3, 1, 0, 576, netip.Addr{}, IcmplbIcmpErrorICMP_ERROR_UNREACHABLE, vip},
		{"net unreachable, 8 bytes of the message", 3, 0, 0, 28, netip.Addr{}, IcmplbIcmpErrorICMP_ERROR_UNREACHABLE, vip},
		{"administratively prohibited by the backend", 3, 13, 0, 576, backendA.addr, IcmplbIcmpErrorICMP_ERROR_UNREACHABLE, vip},
		{"fragmentation needed, MTU 1400", 3, 4, 1400, 28, netip.Addr{}, IcmplbIcmpErrorICMP_ERROR_PACKET_TOO_BIG, vip},
		{"TTL exceeded", 11, 0, 0, 44, netip.Addr{}, IcmplbIcmpErrorICMP_ERROR_TIME_EXCEEDED, vip},
		{"reassembly time exceeded", 11, 1, 0, 576, netip.Addr{}, IcmplbIcmpErrorICMP_ERROR_TIME_EXCEEDED, vip},
		{"TTL exceeded, SNAT apart from the VIP", 11, 0, 0, 576, netip.Addr{}, IcmplbIcmpErrorICMP_ERROR_TIME_EXCEEDED, snatAlt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := readyHarness(t, testConfig(tt.snat))
			req := echoRequest(client1, hop1MAC, 0x1234, 3)
			_, natID := h.forward(t, req)
			e := h.errorAbout(req, backendA, natID, tt.typ, tt.code, tt.rest, tt.quote)
			if tt.from.IsValid() {
				e.src = tt.from
			}
			h.requireErrorReturned(t, e, req)

			c := h.backendCounters(t, backendA.idx)
			var want [3]uint64
			want[tt.kind] = 1
			if c.Errors != want || c.Replies != 0 || c.Late != 0 || c.Unmatched != 0 || c.RttSumNs != 0 {
				t.Errorf("backend_stats = %+v, want errors %v and no reply", c, want)
			}
			// An answer, not a loss; not a round trip of the backend.
			if sent, answered := epochTotals(t, h, backendA.idx); sent != 1 || answered != 1 {
				t.Errorf("epochs count %d sent, %d answered; want 1, 1", sent, answered)
			}
			if hist := histogram(t, h, backendA.idx); len(hist) != 0 {
				t.Errorf("RTT histogram %v, want empty", hist)
			}
			// The error took the request: a second copy and a late
			// reply answer nothing.
			if _, _, ok := h.ringOf(t, backendA, natID, req.seq); ok {
				t.Errorf("request still awaited after its error")
			}
			h.requireUntouched(t, e.frame(), xdpPass, IcmplbReasonREASON_ERROR_UNMATCHED)
			h.requireUntouched(t, replyTo(req, backendA, tt.snat, natID).frame(), xdpPass, IcmplbReasonREASON_CONNTRACK_MISS)
			if c := h.backendCounters(t, backendA.idx); c.Errors != want || c.Unmatched != 1 {
				t.Errorf("after the copies: backend_stats = %+v, want errors %v and 1 unmatched", c, want)
			}
			// The session goes on.
			next := echoRequest(client1, hop1MAC, 0x1234, 4)
			if _, again := h.forward(t, next); again != natID {
				t.Errorf("the session's next request got NAT id %#04x, want %#04x", again, natID)
			}
			h.returnReply(t, replyTo(next, backendA, tt.snat, natID), client1, 0x1234, hop1MAC)
		})
	}
}

// An error about a request that waits in the inflight map (its ring slot
// was taken) is returned the same way.
func TestErrorAboutOverflowedRequest(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	first := echoRequest(client1, hop1MAC, 0x0909, 1)
	_, natID := h.forward(t, first)
	over := echoRequest(client1, hop1MAC, 0x0909, 1+uint16(IcmplbLayoutINFLIGHT_RING))
	h.forward(t, over)
	if _, ok := h.overflowed(t, backendA, natID, over.seq); !ok {
		t.Fatalf("seq %d is not in the inflight map: the test does not test the overflow", over.seq)
	}
	h.requireErrorReturned(t, h.errorAbout(over, backendA, natID, 3, 1, 0, 576), over)
	if _, ok := h.overflowed(t, backendA, natID, over.seq); ok {
		t.Errorf("the answered request is still in the inflight map")
	}
	// The request of the ring is still the reply's.
	h.returnReply(t, replyTo(first, backendA, vip, natID), client1, 0x0909, hop1MAC)
}

// Errors the balancer must leave to the kernel, untouched, without taking
// the request they seem to be about.
func TestErrorPassedUntouched(t *testing.T) {
	req := echoRequest(client1, hop1MAC, 0x4242, 8)
	tests := []struct {
		name   string
		snat   netip.Addr
		reason IcmplbReason
		// frame builds the error from what the router would send about
		// the forwarded request.
		frame func(h *harness, e icmpError, natID uint16) []byte
	}{
		{"quote shorter than 8 bytes of the message", vip, IcmplbReasonREASON_ERROR_TRUNCATED,
			func(h *harness, e icmpError, natID uint16) []byte { e.quote = e.quote[:27]; return e.frame() }},
		{"quote of the IP header only", vip, IcmplbReasonREASON_ERROR_TRUNCATED,
			func(h *harness, e icmpError, natID uint16) []byte { e.quote = e.quote[:20]; return e.frame() }},
		{"no quote", vip, IcmplbReasonREASON_ERROR_TRUNCATED,
			func(h *harness, e icmpError, natID uint16) []byte { e.quote = nil; return e.frame() }},
		{"quote of a UDP datagram", vip, IcmplbReasonREASON_ERROR_FOREIGN,
			func(h *harness, e icmpError, natID uint16) []byte {
				e.quote = quoteOf(packet{ethDst: lbMAC, ttl: 64, proto: unix.IPPROTO_UDP, src: h.cfg.SNAT, dst: backendA.addr,
					l4: []byte{0x9c, 0x40, 0, 53, 0, 12, 0, 0, 'p', 'i', 'n', 'g'}}.frame(), 576)
				return e.frame()
			}},
		{"quote of a reply the balancer returned", vip, IcmplbReasonREASON_ERROR_FOREIGN,
			func(h *harness, e icmpError, natID uint16) []byte {
				rep := h.returnedFrame(replyTo(req, backendA, vip, natID), client1, req.echoID, hop1MAC)
				e.quote = quoteOf(rep, 576)
				return e.frame()
			}},
		{"quote with IP options", vip, IcmplbReasonREASON_ERROR_FOREIGN,
			func(h *harness, e icmpError, natID uint16) []byte {
				fw := req
				fw.src, fw.dst, fw.echoID, fw.options = h.cfg.SNAT, backendA.addr, natID, []byte{1, 1, 1, 0}
				e.quote = quoteOf(fw.frame(), 576)
				return e.frame()
			}},
		{"quote of a fragment", vip, IcmplbReasonREASON_ERROR_FOREIGN,
			func(h *harness, e icmpError, natID uint16) []byte {
				fw := req
				fw.src, fw.dst, fw.echoID, fw.frag = h.cfg.SNAT, backendA.addr, natID, 0x0010
				e.quote = quoteOf(fw.frame(), 576)
				return e.frame()
			}},
		{"quote from another source than the error's destination", snatAlt, IcmplbReasonREASON_ERROR_FOREIGN,
			func(h *harness, e icmpError, natID uint16) []byte {
				fw := req
				fw.src, fw.dst, fw.echoID = vip, backendA.addr, natID
				e.quote = quoteOf(fw.frame(), 576)
				return e.frame()
			}},
		{"quote of a NAT id no session holds", vip, IcmplbReasonREASON_ERROR_UNMATCHED,
			func(h *harness, e icmpError, natID uint16) []byte {
				return h.errorAbout(req, backendA, natID^0x0101, 3, 1, 0, 576).frame()
			}},
		{"quote of a sequence not sent", vip, IcmplbReasonREASON_ERROR_UNMATCHED,
			func(h *harness, e icmpError, natID uint16) []byte {
				other := req
				other.seq++
				return h.errorAbout(other, backendA, natID, 3, 1, 0, 576).frame()
			}},
		{"from a MAC other than the backend's next hop", vip, IcmplbReasonREASON_REPLY_SPOOFED,
			func(h *harness, e icmpError, natID uint16) []byte { e.ethSrc = hop2MAC; return e.frame() }},
		{"quote of other data", vip, IcmplbReasonREASON_REPLY_MISMATCH,
			func(h *harness, e icmpError, natID uint16) []byte {
				fw := req
				fw.src, fw.dst, fw.echoID = h.cfg.SNAT, backendA.addr, natID
				fw.payload = append([]byte{0xee}, defaultPayload()[1:]...)
				e.quote = quoteOf(fw.frame(), 576)
				return e.frame()
			}},
		{"to the VIP, not the SNAT address", snatAlt, IcmplbReasonREASON_NOT_VIP,
			func(h *harness, e icmpError, natID uint16) []byte { e.dst = vip; return e.frame() }},
		{"TTL 0", vip, IcmplbReasonREASON_TTL_ZERO,
			func(h *harness, e icmpError, natID uint16) []byte { e.ttl = 0; return e.frame() }},
		{"bad ICMP checksum", vip, IcmplbReasonREASON_MALFORMED,
			func(h *harness, e icmpError, natID uint16) []byte {
				f := e.frame()
				f[len(f)-1] ^= 0x40
				return f
			}},
		{"about the agent's probe", vip, IcmplbReasonREASON_PROBE_REPLY,
			func(h *harness, e icmpError, natID uint16) []byte {
				return h.errorAbout(req, backendA, uint16(IcmplbLayoutPROBE_ECHO_ID), 3, 1, 0, 576).frame()
			}},
		{"parameter problem", vip, IcmplbReasonREASON_NOT_ECHO,
			func(h *harness, e icmpError, natID uint16) []byte { e.typ, e.code = 12, 0; return e.frame() }},
		{"redirect", vip, IcmplbReasonREASON_NOT_ECHO,
			func(h *harness, e icmpError, natID uint16) []byte {
				e.typ, e.code, e.rest = 5, 1, binary.BigEndian.Uint32(router.AsSlice())
				return e.frame()
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := readyHarness(t, testConfig(tt.snat))
			_, natID := h.forward(t, req)
			e := h.errorAbout(req, backendA, natID, 3, 1, 0, 576)
			h.requireUntouched(t, tt.frame(h, e, natID), xdpPass, tt.reason)
			if c := h.backendCounters(t, backendA.idx); c.Errors != [3]uint64{} {
				t.Errorf("errors counted: %v", c.Errors)
			}
			// The request still waits for its answer.
			h.returnReply(t, replyTo(req, backendA, tt.snat, natID), client1, req.echoID, hop1MAC)
		})
	}
}

// An error after its request stopped being awaited (twice the loss
// timeout) answers nothing.
func TestErrorAfterRequestForgotten(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	req := echoRequest(client1, hop1MAC, 0x5555, 2)
	_, natID := h.forward(t, req)
	h.backdate(t, backendA, natID, req.seq, 2*h.cfg.LossTimeout+time.Second)
	h.requireUntouched(t, h.errorAbout(req, backendA, natID, 11, 0, 0, 576).frame(), xdpPass, IcmplbReasonREASON_ERROR_UNMATCHED)
	if c := h.backendCounters(t, backendA.idx); c.Errors != [3]uint64{} {
		t.Errorf("errors counted: %v", c.Errors)
	}
}

// An error after the loss timeout, before the request is forgotten, reaches
// its client but does not undo the loss.
func TestErrorLate(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	req := echoRequest(client1, hop1MAC, 0x6666, 2)
	_, natID := h.forward(t, req)
	h.backdate(t, backendA, natID, req.seq, h.cfg.LossTimeout+100*time.Millisecond)
	h.requireErrorReturned(t, h.errorAbout(req, backendA, natID, 3, 1, 0, 576), req)
	if _, answered := epochTotals(t, h, backendA.idx); answered != 0 {
		t.Errorf("%d answered, want 0: the error came after the loss timeout", answered)
	}
	if c := h.backendCounters(t, backendA.idx); c.Errors[IcmplbIcmpErrorICMP_ERROR_UNREACHABLE] != 1 {
		t.Errorf("errors %v, want 1 unreachable", c.Errors)
	}
}
