// SPDX-License-Identifier: MIT

package bpf

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// BenchmarkPath measures the XDP program's cost per packet on each path, as
// timed by the kernel (BPF_PROG_TEST_RUN with one repetition per call, on a
// fresh copy of the frame: repetitions would reuse the rewritten buffer).
//
// What runs between two packets moves the cost by a factor of two here
// (caches, branch predictors), so every path is timed alike: each loop
// sends two packets of the path back to back and times the second, warm,
// as a line-rate stream would find it; state a path needs is set up,
// untimed, between the pairs. The xdp_pass program, timed the same way on
// the same frames, is the baseline of what any XDP program costs:
// "ns/pkt" is the path's kernel time per packet, "pass-ns/pkt" the
// baseline's. Each path checks every verdict and, at the end, that its
// reason counter moved once per packet, so a benchmark cannot time
// another path than its name says.
func BenchmarkPath(b *testing.B) {
	cfg := testConfig(vip)
	cfg.ConntrackSize = 1 << 16
	cfg.InflightSize = 1 << 18
	baseline := loadTestObjects(b).XdpPass

	// bench sends frame(2p) then frame(2p+1), timing the latter, for
	// pairs p = 0, 1, ...; between(p) (may be nil) runs after pair p.
	bench := func(b *testing.B, h *harness, frame func(i uint32) []byte, verdict uint32, reason IcmplbReason, between func(p uint32)) {
		before := h.stats(b)
		run := func(i uint32) (path, pass time.Duration) {
			in := frame(i)
			var err error
			if _, pass, err = baseline.Benchmark(in, 1, nil); err != nil {
				b.Fatal(err)
			}
			ret, path, err := h.objs.Icmplb.Benchmark(in, 1, nil)
			if err != nil || ret != verdict {
				b.Fatalf("packet %d: verdict %d (want %d), err %v; stats moved %v", i, ret, verdict, err, statsDelta(before, h.stats(b)))
			}
			return path, pass
		}
		var path, pass time.Duration
		p := uint32(0)
		for b.Loop() {
			run(2 * p)
			d, e := run(2*p + 1)
			path += d
			pass += e
			if between != nil {
				b.StopTimer()
				between(p)
				b.StartTimer()
			}
			p++
		}
		if got := h.stats(b)[reason] - before[reason]; got != 2*uint64(p) {
			b.Fatalf("%s moved by %d over %d packets: not every packet took the path", reasonTable[reason].name, got, 2*p)
		}
		b.ReportMetric(float64(path.Nanoseconds())/float64(p), "ns/pkt")
		b.ReportMetric(float64(pass.Nanoseconds())/float64(p), "pass-ns/pkt")
		b.ReportMetric(float64(path)/float64(pass), "x-pass")
	}
	fixed := func(f []byte) func(uint32) []byte { return func(uint32) []byte { return f } }
	// seqReq is a request of one session with a new sequence number each
	// time, in a frame of size bytes (Ethernet header included).
	seqReq := func(size int) func(uint32) packet {
		return func(i uint32) packet {
			p := echoRequest(client1, hop1MAC, 7, uint16(i))
			p.payload = make([]byte, size-14-20-8)
			return p
		}
	}

	// The seed's stateless DNAT (testprogs.c), timed like the paths: the
	// cost of balancing without conntrack or measurement.
	b.Run("stateless_dnat", func(b *testing.B) {
		dnat := loadTestObjects(b).StatelessDnat
		req := seqReq(98)
		var path, pass time.Duration
		n := 0
		for b.Loop() {
			for k := range 2 {
				in := req(uint32(2*n + k)).frame()
				_, e, err := baseline.Benchmark(in, 1, nil)
				if err != nil {
					b.Fatal(err)
				}
				ret, d, err := dnat.Benchmark(in, 1, nil)
				if err != nil || ret != xdpTX {
					b.Fatalf("verdict %d, err %v", ret, err)
				}
				if k == 1 {
					path += d
					pass += e
				}
				// What it sent, untimed: the benchmark times this path.
				b.StopTimer()
				opts := ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in))}
				if _, err := dnat.Run(&opts); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if dst := netip.AddrFrom4([4]byte(opts.DataOut[30:34])); dst != backendA.addr && dst != backendB.addr {
					b.Fatalf("stateless DNAT sent the request to %v, not a backend", dst)
				}
				if c := checksum(opts.DataOut[14:34]); c != 0 {
					b.Fatalf("IP checksum of the rewritten request does not verify (residue %#04x)", c)
				}
			}
			n++
		}
		b.ReportMetric(float64(path.Nanoseconds())/float64(n), "ns/pkt")
		b.ReportMetric(float64(pass.Nanoseconds())/float64(n), "pass-ns/pkt")
		b.ReportMetric(float64(path)/float64(pass), "x-pass")
	})
	b.Run("pass_not_icmp", func(b *testing.B) {
		h := readyHarness(b, cfg)
		p := echoRequest(client1, hop1MAC, 1, 1)
		p.proto = 6
		bench(b, h, fixed(p.frame()), xdpPass, IcmplbReasonREASON_NOT_ICMP, nil)
	})
	b.Run("request_bogus_source", func(b *testing.B) {
		h := readyHarness(b, cfg)
		bench(b, h, fixed(echoRequest(netip.MustParseAddr("127.0.0.1"), hop1MAC, 1, 1).frame()), xdpPass, IcmplbReasonREASON_BOGUS_SOURCE, nil)
	})
	b.Run("request_new_session", func(b *testing.B) {
		// Ids and requests are free again at once, and the sweeper runs
		// (untimed) every 1024 packets: this path is a new session's, not
		// a full map's or a collision's.
		fresh := cfg
		fresh.NATIdle = time.Nanosecond
		fresh.LossTimeout = time.Nanosecond
		h := readyHarness(b, fresh)
		frame := func(i uint32) []byte {
			// A new client every time: conntrack miss, Maglev pick, NAT id.
			return echoRequest(netip.AddrFrom4([4]byte{10, 64 + byte(i>>16), byte(i >> 8), byte(i)}), hop1MAC, 1, 1).frame()
		}
		bench(b, h, frame, xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED, func(p uint32) {
			if p%512 == 511 {
				h.sweep(b)
			}
		})
	})
	for _, size := range []int{98, 1514, runLinearMax} {
		b.Run("request_known_session_"+strconv.Itoa(size), func(b *testing.B) {
			h := readyHarness(b, cfg)
			req := seqReq(size)
			// The session's id: its home.
			natID, _ := h.homeID(b, backendA.idx, vip, client1, 7)
			// Each request is answered, untimed, so that the in-flight map
			// stays small and sequence numbers may wrap.
			bench(b, h, func(i uint32) []byte { return req(i).frame() }, xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED,
				func(p uint32) {
					for i := 2 * p; i < 2*p+2; i++ {
						if v, _ := h.runRaw(b, replyTo(req(i), backendA, vip, natID).frame()); v != xdpTX {
							b.Fatalf("reply %d: verdict %d", i, v)
						}
					}
				})
		})
	}
	b.Run("request_resent_in_flight", func(b *testing.B) {
		h := readyHarness(b, cfg)
		f := echoRequest(client1, hop1MAC, 7, 1).frame()
		if v, _ := h.runRaw(b, f); v != xdpTX {
			b.Fatalf("first copy: verdict %d", v)
		}
		bench(b, h, fixed(f), xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED, nil)
		if c := h.backendCounters(b, backendA.idx); c.Requests != 1 {
			b.Fatalf("%d requests counted, want the first copy's 1", c.Requests)
		}
	})
	b.Run("request_session_mac_mismatch", func(b *testing.B) {
		h := readyHarness(b, cfg)
		if v, _ := h.runRaw(b, echoRequest(client1, hop1MAC, 7, 1).frame()); v != xdpTX {
			b.Fatalf("setup: verdict %d", v)
		}
		bench(b, h, fixed(echoRequest(client1, hop2MAC, 7, 2).frame()), xdpDrop, IcmplbReasonREASON_SESSION_MAC_MISMATCH, nil)
	})
	b.Run("request_nat_collision", func(b *testing.B) {
		long := cfg
		long.LossTimeout = MaxLossTimeout // the owner's request stays young
		h := readyHarness(b, long)
		send := func(p packet) {
			b.Helper()
			if v, _ := h.runRaw(b, p.frame()); v != xdpTX {
				b.Fatalf("setup: verdict %d", v)
			}
		}
		// The owner's sequence 5 waits in the inflight map (slot 1 of its
		// ring holds sequence 1); then the owner is forgotten (see forget)
		// and its NAT id given to the newcomer, whose sequence 5 then meets
		// it there.
		id := h.aHome(b, backendA.idx, 0x4242)
		h.forceNATID(b, backendA.idx, id, echoRequest(client1, hop1MAC, 7, 1))
		send(echoRequest(client1, hop1MAC, 7, 1))
		send(echoRequest(client1, hop1MAC, 7, 5))
		h.forget(b, backendA, id)
		h.forceNATID(b, backendA.idx, id, echoRequest(client2, hop2MAC, 7, 1))
		send(echoRequest(client2, hop2MAC, 7, 1))
		bench(b, h, fixed(echoRequest(client2, hop2MAC, 7, 5).frame()), xdpDrop, IcmplbReasonREASON_NAT_COLLISION, nil)
	})
	b.Run("request_inflight_full", func(b *testing.B) {
		small := cfg
		small.InflightSize = 1
		h := readyHarness(b, small)
		// Sequence 1 takes slot 1 of the ring, 5 the map's one entry.
		for _, seq := range []uint16{1, 5} {
			if v, _ := h.runRaw(b, echoRequest(client1, hop1MAC, 7, seq).frame()); v != xdpTX {
				b.Fatalf("setup: verdict %d", v)
			}
		}
		bench(b, h, fixed(echoRequest(client1, hop1MAC, 7, 9).frame()), xdpDrop, IcmplbReasonREASON_INFLIGHT_FULL, nil)
	})
	// answers times the answers (replies or errors) to a session's
	// requests: request i is forwarded, untimed, before its answer(i,
	// natID) is timed, natID being read at byte natAt of what was sent.
	answers := func(b *testing.B, h *harness, request func(i uint32) []byte, natAt int,
		answer func(i uint32, natID uint16) []byte, reason IcmplbReason) {
		var natID uint16
		send := func(i uint32) {
			v, out := h.runRaw(b, request(i))
			if v != xdpTX {
				b.Fatalf("request %d: verdict %d", i, v)
			}
			natID = binary.BigEndian.Uint16(out[natAt:])
		}
		send(0)
		send(1)
		bench(b, h, func(i uint32) []byte { return answer(i, natID) }, xdpTX, reason, func(p uint32) {
			send(2*p + 2)
			send(2*p + 3)
		})
	}
	b.Run("reply_matched", func(b *testing.B) {
		h := readyHarness(b, cfg)
		req := seqReq(98)
		answers(b, h, func(i uint32) []byte { return req(i).frame() }, 38,
			func(i uint32, natID uint16) []byte { return replyTo(req(i), backendA, vip, natID).frame() },
			IcmplbReasonREASON_REPLY_RETURNED)
	})
	// An ICMP error about a request in flight, from the backend's next hop,
	// quoting the whole request: returned to the client like a reply.
	b.Run("error_returned", func(b *testing.B) {
		h := readyHarness(b, cfg)
		req := seqReq(98)
		answers(b, h, func(i uint32) []byte { return req(i).frame() }, 38,
			func(i uint32, natID uint16) []byte {
				return h.errorAbout(req(i), backendA, natID, 3, 1, 0, 576).frame()
			},
			IcmplbReasonREASON_ERROR_RETURNED)
	})
	// The IPv6 paths, timed alike: a request of a known session, a new
	// session, a matched reply and an error.
	cfg6 := cfg
	cfg6.VIP, cfg6.SNAT = vip6, vip6
	ready6 := func(b *testing.B, c testCfg) *harness {
		h := newHarness(b, c)
		h.setBackend(b, backend6A, backendReady)
		h.pointMaglev(b, backend6A.idx)
		return h
	}
	seqReq6 := func(i uint32) packet6 { return echoRequest6(client6a, hop1MAC, 7, uint16(i)) }
	b.Run("request_new_session_v6", func(b *testing.B) {
		fresh := cfg6
		fresh.NATIdle = time.Nanosecond
		fresh.LossTimeout = time.Nanosecond
		h := ready6(b, fresh)
		frame := func(i uint32) []byte {
			// A new client every time, in a prefix of its own.
			c := client6b.As16()
			c[12], c[13], c[14], c[15] = 0x40, byte(i>>16), byte(i>>8), byte(i)
			return echoRequest6(netip.AddrFrom16(c), hop1MAC, 1, 1).frame()
		}
		bench(b, h, frame, xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED, func(p uint32) {
			if p%512 == 511 {
				h.sweep(b)
			}
		})
	})
	b.Run("request_known_session_v6", func(b *testing.B) {
		h := ready6(b, cfg6)
		natID, _ := h.homeID(b, backend6A.idx, vip6, seqReq6(0).src, seqReq6(0).echoID)
		bench(b, h, func(i uint32) []byte { return seqReq6(i).frame() }, xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED,
			func(p uint32) {
				for i := 2 * p; i < 2*p+2; i++ {
					if v, _ := h.runRaw(b, replyTo6(seqReq6(i), backend6A, vip6, natID).frame()); v != xdpTX {
						b.Fatalf("reply %d: verdict %d", i, v)
					}
				}
			})
	})
	b.Run("reply_matched_v6", func(b *testing.B) {
		h := ready6(b, cfg6)
		answers(b, h, func(i uint32) []byte { return seqReq6(i).frame() }, 14+40+4,
			func(i uint32, natID uint16) []byte { return replyTo6(seqReq6(i), backend6A, vip6, natID).frame() },
			IcmplbReasonREASON_REPLY_RETURNED)
	})
	b.Run("error_returned_v6", func(b *testing.B) {
		h := ready6(b, cfg6)
		answers(b, h, func(i uint32) []byte { return seqReq6(i).frame() }, 14+40+4,
			func(i uint32, natID uint16) []byte {
				fw := seqReq6(i)
				fw.ethSrc, fw.ethDst = fw.ethDst, backend6A.mac
				fw.src, fw.dst, fw.echoID = vip6, backend6A.addr, natID
				return h.icmp6ErrorAbout(fw.frame(), 1, 3, 0, 1232).frame()
			}, IcmplbReasonREASON_ERROR_RETURNED)
	})
	// The reply paths below leave the map as they find it.
	inFlight := func(b *testing.B, h *harness) (packet, uint16) {
		req := echoRequest(client1, hop1MAC, 7, 1)
		v, out := h.runRaw(b, req.frame())
		if v != xdpTX {
			b.Fatalf("setup: verdict %d", v)
		}
		return req, binary.BigEndian.Uint16(out[38:40])
	}
	b.Run("reply_unmatched", func(b *testing.B) {
		h := readyHarness(b, cfg)
		req, natID := inFlight(b, h)
		bench(b, h, fixed(replyTo(req, backendA, vip, natID^1).frame()), xdpPass, IcmplbReasonREASON_CONNTRACK_MISS, nil)
	})
	b.Run("error_unmatched", func(b *testing.B) {
		h := readyHarness(b, cfg)
		req, natID := inFlight(b, h)
		bench(b, h, fixed(h.errorAbout(req, backendA, natID^1, 3, 1, 0, 576).frame()), xdpPass, IcmplbReasonREASON_ERROR_UNMATCHED, nil)
	})
	b.Run("reply_spoofed", func(b *testing.B) {
		h := readyHarness(b, cfg)
		req, natID := inFlight(b, h)
		rep := replyTo(req, backendA, vip, natID)
		rep.ethSrc = attackerMAC
		bench(b, h, fixed(rep.frame()), xdpPass, IcmplbReasonREASON_REPLY_SPOOFED, nil)
	})
	b.Run("reply_mismatch", func(b *testing.B) {
		h := readyHarness(b, cfg)
		req, natID := inFlight(b, h)
		rep := replyTo(req, backendA, vip, natID)
		rep.payload = append([]byte(nil), rep.payload...)
		rep.payload[0] ^= 1
		bench(b, h, fixed(rep.frame()), xdpPass, IcmplbReasonREASON_REPLY_MISMATCH, nil)
	})
}

// readyHarness is a harness with backend A ready behind every Maglev slot.
func readyHarness(tb testing.TB, cfg testCfg) *harness {
	h := newHarness(tb, cfg)
	h.setBackend(tb, backendA, backendReady)
	h.pointMaglev(tb, backendA.idx)
	return h
}
