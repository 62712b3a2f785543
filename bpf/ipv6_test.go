// SPDX-License-Identifier: MIT

package bpf

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// The IPv6 side of the tests: a service of its own family, frames built
// from scratch with the ICMPv6 checksum over its pseudo-header.
var (
	vip6      = netip.MustParseAddr("fd00:1cb::100")
	snat6Alt  = netip.MustParseAddr("fd00:1cb::10")
	client6a  = netip.MustParseAddr("fd00:1cb::1")
	client6b  = netip.MustParseAddr("2001:db8:77::4")
	router6   = netip.MustParseAddr("fd00:1cb::50")
	backend6A = backendInfo{idx: 3, addr: netip.MustParseAddr("fd00:1cb::2"), mac: mac{0x02, 0, 0, 0, 0, 0x2b}}
)

// packet6 describes an Ethernet + IPv6 frame carrying an ICMPv6 message (or
// ext, extension headers, then the message).
type packet6 struct {
	ethDst, ethSrc mac
	hopLimit       uint8
	src, dst       netip.Addr
	ext            []byte // extension headers; ext[0] names the first one
	extFirst       uint8
	icmpType       uint8
	icmpCode       uint8
	echoID, seq    uint16
	payload        []byte
	// body replaces the echo header and payload (errors: the 4-byte
	// parameter and the quote).
	body []byte
}

// checksum6 is the ICMPv6 checksum of msg between src and dst (RFC 4443
// 2.3, RFC 8200 8.1).
func checksum6(src, dst netip.Addr, msg []byte) uint16 {
	s, d := src.As16(), dst.As16()
	ph := append(append(append([]byte(nil), s[:]...), d[:]...), 0, 0, 0, 0, 0, 0, 0, 58)
	binary.BigEndian.PutUint32(ph[32:], uint32(len(msg)))
	return checksum(append(ph, msg...))
}

func (p packet6) message() []byte {
	msg := []byte{p.icmpType, p.icmpCode, 0, 0}
	if p.body != nil {
		msg = append(msg, p.body...)
	} else {
		msg = binary.BigEndian.AppendUint16(msg, p.echoID)
		msg = binary.BigEndian.AppendUint16(msg, p.seq)
		msg = append(msg, p.payload...)
	}
	binary.BigEndian.PutUint16(msg[2:], checksum6(p.src, p.dst, msg))
	return msg
}

func (p packet6) frame() []byte {
	msg := p.message()
	ip := make([]byte, 40)
	ip[0] = 0x60
	ip[1] = 0x0a // a traffic class and flow label the NAT must keep
	ip[3] = 0x42
	binary.BigEndian.PutUint16(ip[4:], uint16(len(p.ext)+len(msg)))
	ip[6] = 58
	if p.ext != nil {
		ip[6] = p.extFirst
	}
	ip[7] = p.hopLimit
	s, d := p.src.As16(), p.dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	f := ethHeader(p.ethDst, p.ethSrc, 0x86dd)
	f = append(f, ip...)
	f = append(f, p.ext...)
	return append(f, msg...)
}

func echoRequest6(from netip.Addr, hop mac, echoID, seq uint16) packet6 {
	return packet6{ethDst: lbMAC, ethSrc: hop, hopLimit: 63, src: from, dst: vip6, icmpType: 128,
		echoID: echoID, seq: seq, payload: defaultPayload()}
}

// replyTo6 is what backend be answers to req after NAT.
func replyTo6(req packet6, be backendInfo, snat netip.Addr, natID uint16) packet6 {
	r := req
	r.ethDst, r.ethSrc = lbMAC, be.mac
	r.hopLimit = 64
	r.src, r.dst = be.addr, snat
	r.icmpType = 129
	r.echoID = natID
	return r
}

func testConfig6(snat netip.Addr) testCfg {
	c := testConfig(snat)
	c.VIP = vip6
	return c
}

func readyHarness6(t testing.TB, snat netip.Addr) *harness {
	h := newHarness(t, testConfig6(snat))
	h.setBackend(t, backend6A, backendReady)
	h.pointMaglev(t, backend6A.idx)
	return h
}

// forward6 sends req and checks it left byte for byte for backend6A: from
// the SNAT address, with a NAT id, every checksum right; it returns the
// NAT id.
func (h *harness) forward6(t *testing.T, req packet6) uint16 {
	t.Helper()
	in := req.frame()
	out := h.run(t, in, xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED)
	if len(out) != len(in) {
		t.Fatalf("output is %d bytes, input %d", len(out), len(in))
	}
	natID := binary.BigEndian.Uint16(out[14+40+4:])
	want := req
	want.ethSrc, want.ethDst = req.ethDst, backend6A.mac
	want.src, want.dst = h.cfg.SNAT, backend6A.addr
	want.echoID = natID
	requireFrame(t, "forwarded IPv6 request", want.frame(), out)
	return natID
}

func (h *harness) returnReply6(t *testing.T, rep packet6, req packet6) {
	t.Helper()
	in := rep.frame()
	out := h.run(t, in, xdpTX, IcmplbReasonREASON_REPLY_RETURNED)
	want := rep
	want.ethSrc, want.ethDst = rep.ethDst, req.ethSrc
	want.src, want.dst = h.cfg.VIP, req.src
	want.echoID = req.echoID
	requireFrame(t, "returned IPv6 reply", want.frame(), out)
}

func TestIPv6EchoExchange(t *testing.T) {
	for _, snat := range []netip.Addr{vip6, snat6Alt} {
		t.Run("SNAT "+snat.String(), func(t *testing.T) {
			h := readyHarness6(t, snat)
			req := echoRequest6(client6a, hop1MAC, 0x1234, 1)
			natID := h.forward6(t, req)
			h.returnReply6(t, replyTo6(req, backend6A, snat, natID), req)
			// The session stays: same NAT id for its next request.
			next := echoRequest6(client6a, hop1MAC, 0x1234, 2)
			if again := h.forward6(t, next); again != natID {
				t.Errorf("second request got NAT id %#04x, first %#04x", again, natID)
			}
			h.returnReply6(t, replyTo6(next, backend6A, snat, natID), next)
			c := h.backendCounters(t, backend6A.idx)
			if c.Requests != 2 || c.Replies != 2 || c.Unmatched != 0 {
				t.Errorf("backend_stats %+v, want 2 requests and 2 replies", c)
			}
			if hist := histogram(t, h, backend6A.idx); len(hist) == 0 {
				t.Errorf("no RTT measured")
			}
		})
	}
}

// Two clients with the same echo id get NAT ids of their own, and each
// reply goes to its own client.
func TestIPv6TwoClientsSameEchoID(t *testing.T) {
	h := readyHarness6(t, vip6)
	reqA := echoRequest6(client6a, hop1MAC, 0x0042, 7)
	reqB := echoRequest6(client6b, hop2MAC, 0x0042, 7)
	natA := h.forward6(t, reqA)
	natB := h.forward6(t, reqB)
	if natA == natB {
		t.Fatalf("both clients got NAT id %#04x", natA)
	}
	h.returnReply6(t, replyTo6(reqB, backend6A, vip6, natB), reqB)
	h.returnReply6(t, replyTo6(reqA, backend6A, vip6, natA), reqA)
}

// One agent, both families: an IPv4 service and an IPv6 one side by side,
// each with its own table, its replies from its own VIP.
func TestIPv4AndIPv6Services(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	addService2(t, h, backend6A.idx)
	h.addService(t, vip6, vip6, 1)
	v := IcmplbBackend{Addr: Addr(backend6A.addr), Mac: backend6A.mac, Flags: backendReady, Vip: Addr(vip6)}
	if err := h.objs.Backends.Put(backend6A.idx, v); err != nil {
		t.Fatal(err)
	}
	h.setPool(t, backend6A.idx, IcmplbNatPool{Key: [4]uint32{5, 6, 7, 8}, Next: 10})

	req4 := echoRequest(client1, hop1MAC, 0x0101, 1)
	be, nat4 := h.forward(t, req4)
	h.returnReply(t, replyTo(req4, be, vip, nat4), client1, 0x0101, hop1MAC)
	h6 := *h
	h6.cfg.VIP, h6.cfg.SNAT = vip6, vip6
	req6 := echoRequest6(client6a, hop1MAC, 0x0101, 1)
	nat6 := h6.forward6(t, req6)
	h6.returnReply6(t, replyTo6(req6, backend6A, vip6, nat6), req6)
	// An IPv4 backend in the IPv6 service's table is a frame of neither
	// family: refused, whatever the agent wrote.
	v.Addr = Addr(backendA.addr)
	if err := h.objs.Backends.Put(backend6A.idx, v); err != nil {
		t.Fatal(err)
	}
	h.requireUntouched(t, echoRequest6(client6b, hop2MAC, 0x0202, 1).frame(), xdpDrop, IcmplbReasonREASON_NO_BACKEND)
}

// icmp6Error is an ICMPv6 error from router6 (behind backend6A's MAC) to
// the SNAT address, quoting the first n bytes of a packet.
func (h *harness) icmp6ErrorAbout(quoted []byte, typ, code uint8, param uint32, n int) packet6 {
	body := binary.BigEndian.AppendUint32(nil, param)
	body = append(body, quoted[14:14+min(n, len(quoted)-14)]...)
	return packet6{ethDst: lbMAC, ethSrc: backend6A.mac, hopLimit: 64, src: router6, dst: h.cfg.SNAT,
		icmpType: typ, icmpCode: code, body: body}
}

func TestIPv6ErrorReturned(t *testing.T) {
	for _, tt := range []struct {
		name        string
		typ, code   uint8
		param       uint32
		quote       int
		kind        IcmplbIcmpError
		snat        netip.Addr
		fromBackend bool
	}{
		{"address unreachable, whole packet", 1, 3, 0, 1232, IcmplbIcmpErrorICMP_ERROR_UNREACHABLE, vip6, false},
		{"no route, 8 bytes of the message", 1, 0, 0, 48, IcmplbIcmpErrorICMP_ERROR_UNREACHABLE, snat6Alt, false},
		{"administratively prohibited by the backend", 1, 1, 0, 1232, IcmplbIcmpErrorICMP_ERROR_UNREACHABLE, vip6, true},
		{"packet too big, MTU 1280", 2, 0, 1280, 1232, IcmplbIcmpErrorICMP_ERROR_PACKET_TOO_BIG, vip6, false},
		{"hop limit exceeded", 3, 0, 0, 1232, IcmplbIcmpErrorICMP_ERROR_TIME_EXCEEDED, snat6Alt, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := readyHarness6(t, tt.snat)
			req := echoRequest6(client6a, hop1MAC, 0x7777, 5)
			natID := h.forward6(t, req)
			fw := req
			fw.ethSrc, fw.ethDst = req.ethDst, backend6A.mac
			fw.src, fw.dst, fw.echoID = tt.snat, backend6A.addr, natID
			e := h.icmp6ErrorAbout(fw.frame(), tt.typ, tt.code, tt.param, tt.quote)
			if tt.fromBackend {
				e.src = backend6A.addr
			}
			out := h.run(t, e.frame(), xdpTX, IcmplbReasonREASON_ERROR_RETURNED)
			want := e
			want.ethDst, want.ethSrc = req.ethSrc, lbMAC
			want.src, want.dst = vip6, req.src
			want.body = append(binary.BigEndian.AppendUint32(nil, tt.param), req.frame()[14:14+min(tt.quote, len(req.frame())-14)]...)
			requireFrame(t, "returned ICMPv6 error", want.frame(), out)

			c := h.backendCounters(t, backend6A.idx)
			var wantErrs [3]uint64
			wantErrs[tt.kind] = 1
			if c.Errors != wantErrs || c.Replies != 0 {
				t.Errorf("backend_stats %+v, want errors %v and no reply", c, wantErrs)
			}
			if _, answered := epochTotals(t, h, backend6A.idx); answered != 1 {
				t.Errorf("%d answered, want the error's 1", answered)
			}
			h.requireUntouched(t, e.frame(), xdpPass, IcmplbReasonREASON_ERROR_UNMATCHED)
		})
	}
}

// IPv6 frames the balancer must leave to the kernel, untouched.
func TestIPv6PassUntouched(t *testing.T) {
	req := echoRequest6(client6a, hop1MAC, 0x4242, 3)
	with := func(mut func(p *packet6)) func(h *harness) []byte {
		return func(*harness) []byte {
			p := req
			mut(&p)
			return p.frame()
		}
	}
	// hbh is a hop-by-hop options header (next header ICMPv6) with one
	// PadN option: 8 bytes.
	hbh := []byte{58, 0, 1, 4, 0, 0, 0, 0}
	solicited := netip.MustParseAddr("ff02::1:ff00:100")
	for _, tt := range []struct {
		name    string
		reason  IcmplbReason
		verdict uint32
		frame   func(h *harness) []byte
	}{
		{"neighbour solicitation to the VIP", IcmplbReasonREASON_NOT_ECHO, xdpPass, with(func(p *packet6) {
			p.hopLimit, p.icmpType = 255, 135
			v := vip6.As16()
			p.body = append(make([]byte, 4), v[:]...)
		})},
		{"neighbour solicitation to its multicast group", IcmplbReasonREASON_NOT_UNICAST, xdpPass, with(func(p *packet6) {
			p.ethDst = mac{0x33, 0x33, 0xff, 0, 1, 0}
			p.dst, p.hopLimit, p.icmpType = solicited, 255, 135
			v := vip6.As16()
			p.body = append(make([]byte, 4), v[:]...)
		})},
		{"neighbour advertisement from a backend", IcmplbReasonREASON_NOT_ECHO, xdpPass, with(func(p *packet6) {
			p.ethSrc, p.src, p.dst, p.hopLimit, p.icmpType = backend6A.mac, backend6A.addr, vip6, 255, 136
			v := backend6A.addr.As16()
			p.body = append([]byte{0x60, 0, 0, 0}, v[:]...)
		})},
		{"echo behind a hop-by-hop header", IcmplbReasonREASON_IP_OPTIONS, xdpPass, with(func(p *packet6) {
			p.ext, p.extFirst = hbh, 0
		})},
		{"echo behind a routing header", IcmplbReasonREASON_IP_OPTIONS, xdpPass, with(func(p *packet6) {
			p.ext, p.extFirst = []byte{58, 0, 4, 0, 0, 0, 0, 0}, 43
		})},
		{"echo in a fragment", IcmplbReasonREASON_FRAGMENT, xdpPass, with(func(p *packet6) {
			p.ext, p.extFirst = []byte{58, 0, 0, 1, 0, 0, 0, 9}, 44
		})},
		{"UDP to the VIP", IcmplbReasonREASON_NOT_ICMP, xdpPass, func(*harness) []byte {
			f := req.frame()
			f[14+6] = 17
			return f
		}},
		{"bad ICMPv6 checksum", IcmplbReasonREASON_MALFORMED, xdpPass, func(*harness) []byte {
			f := req.frame()
			f[len(f)-1] ^= 0x10
			return f
		}},
		{"ICMPv4-style checksum (no pseudo-header)", IcmplbReasonREASON_MALFORMED, xdpPass, func(*harness) []byte {
			f := req.frame()
			msg := f[54:]
			msg[2], msg[3] = 0, 0
			binary.BigEndian.PutUint16(msg[2:], checksum(msg))
			return f
		}},
		{"payload length beyond the frame", IcmplbReasonREASON_MALFORMED, xdpPass, func(*harness) []byte {
			f := req.frame()
			binary.BigEndian.PutUint16(f[18:], uint16(len(f)-54+1))
			return f
		}},
		{"cut in the IPv6 header", IcmplbReasonREASON_MALFORMED, xdpPass, func(*harness) []byte { return req.frame()[:14+39] }},
		{"version 4 in an IPv6 frame", IcmplbReasonREASON_MALFORMED, xdpPass, func(*harness) []byte {
			f := req.frame()
			f[14] = 0x40
			return f
		}},
		{"hop limit 0", IcmplbReasonREASON_TTL_ZERO, xdpPass, with(func(p *packet6) { p.hopLimit = 0 })},
		{"from the unspecified address", IcmplbReasonREASON_BOGUS_SOURCE, xdpPass, with(func(p *packet6) { p.src = netip.IPv6Unspecified() })},
		{"from loopback", IcmplbReasonREASON_BOGUS_SOURCE, xdpPass, with(func(p *packet6) { p.src = netip.IPv6Loopback() })},
		{"from a multicast address", IcmplbReasonREASON_BOGUS_SOURCE, xdpPass, with(func(p *packet6) { p.src = netip.MustParseAddr("ff02::1") })},
		// Never on the wire (RFC 4291 2.5.5.2), and the maps' form of IPv4
		// addresses: such a packet must not pass for an IPv4 session's.
		{"from an IPv4-mapped address", IcmplbReasonREASON_MALFORMED, xdpPass, with(func(p *packet6) { p.src = netip.MustParseAddr("::ffff:10.0.0.1") })},
		{"to an IPv4-mapped address", IcmplbReasonREASON_MALFORMED, xdpPass, with(func(p *packet6) { p.dst = netip.MustParseAddr("::ffff:10.0.0.100") })},
		{"from the VIP", IcmplbReasonREASON_BOGUS_SOURCE, xdpPass, with(func(p *packet6) { p.src = vip6 })},
		{"to another address", IcmplbReasonREASON_NOT_VIP, xdpPass, with(func(p *packet6) { p.dst = router6 })},
		{"reply to no SNAT address", IcmplbReasonREASON_NOT_VIP, xdpPass, func(h *harness) []byte {
			return replyTo6(req, backend6A, router6, 0x1111).frame()
		}},
		{"reply answering no request", IcmplbReasonREASON_CONNTRACK_MISS, xdpPass, func(h *harness) []byte {
			return replyTo6(req, backend6A, vip6, 0x1111).frame()
		}},
		{"error quoting 47 bytes", IcmplbReasonREASON_ERROR_TRUNCATED, xdpPass, func(h *harness) []byte {
			return h.icmp6ErrorAbout(replyTo6(req, backend6A, vip6, 0).frame(), 1, 3, 0, 47).frame()
		}},
		{"error quoting a packet with a hop-by-hop header", IcmplbReasonREASON_ERROR_FOREIGN, xdpPass, func(h *harness) []byte {
			q := req
			q.src, q.dst, q.ext, q.extFirst = vip6, backend6A.addr, hbh, 0
			return h.icmp6ErrorAbout(q.frame(), 1, 3, 0, 1232).frame()
		}},
		{"error quoting a reply", IcmplbReasonREASON_ERROR_FOREIGN, xdpPass, func(h *harness) []byte {
			q := replyTo6(req, backend6A, vip6, 0)
			q.src, q.dst = vip6, client6a
			return h.icmp6ErrorAbout(q.frame(), 1, 3, 0, 1232).frame()
		}},
		{"parameter problem", IcmplbReasonREASON_NOT_ECHO, xdpPass, func(h *harness) []byte {
			q := req
			q.src, q.dst = vip6, backend6A.addr
			return h.icmp6ErrorAbout(q.frame(), 4, 0, 6, 1232).frame()
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := readyHarness6(t, vip6)
			h.requireUntouched(t, tt.frame(h), tt.verdict, tt.reason)
			// A reply from the backend's address and MAC that answers
			// nothing is its unmatched reply; nothing else counts.
			var want IcmplbBackendCounters
			if tt.reason == IcmplbReasonREASON_CONNTRACK_MISS {
				want.Unmatched = 1
			}
			if c := h.backendCounters(t, backend6A.idx); c != want {
				t.Errorf("backend counters %+v, want %+v", c, want)
			}
		})
	}
}

// The frames of this file are what they say: their checksums verify from
// scratch, so that a pass above is the program's doing.
func TestIPv6FramesVerify(t *testing.T) {
	f := echoRequest6(client6a, hop1MAC, 1, 2).frame()
	var src, dst [16]byte
	copy(src[:], f[22:38])
	copy(dst[:], f[38:54])
	if c := checksum6(netip.AddrFrom16(src), netip.AddrFrom16(dst), f[54:]); c != 0 {
		t.Fatalf("ICMPv6 checksum residue %#04x", c)
	}
	if !bytes.Equal(f[12:14], []byte{0x86, 0xdd}) {
		t.Fatalf("ethertype %x", f[12:14])
	}
}
