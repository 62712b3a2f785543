package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// BenchmarkPath measures the XDP program's cost per packet on each path, as
// timed by the kernel (BPF_PROG_TEST_RUN with one repetition per call, on a
// fresh copy of the frame: repetitions would reuse the rewritten buffer).
// The xdp_pass program, timed the same way, is the baseline of what any XDP
// program costs here; the reported ns/pkt are the kernel's, not the
// syscall's.
func BenchmarkPath(b *testing.B) {
	cfg := testConfig(vip)
	cfg.ConntrackSize = 1 << 16
	cfg.InflightSize = 1 << 18

	timed := func(b *testing.B, run func(seq uint16) time.Duration) {
		var total time.Duration
		seq := uint16(0)
		for b.Loop() {
			total += run(seq)
			seq++
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/pkt")
	}
	kernelTime := func(b *testing.B, h *harness, frame []byte, want uint32) time.Duration {
		ret, d, err := h.objs.Icmplb.Benchmark(frame, 1, nil)
		if err != nil || ret != want {
			b.Fatalf("verdict %d (want %d), err %v", ret, want, err)
		}
		return d
	}
	b.Run("baseline_xdp_pass", func(b *testing.B) {
		h := readyHarness(b, cfg)
		frame := echoRequest(client1, hop1MAC, 1, 1).frame()
		timed(b, func(uint16) time.Duration {
			_, d, err := h.objs.XdpPass.Benchmark(frame, 1, nil)
			if err != nil {
				b.Fatal(err)
			}
			return d
		})
	})
	b.Run("pass_not_icmp", func(b *testing.B) {
		h := readyHarness(b, cfg)
		p := echoRequest(client1, hop1MAC, 1, 1)
		p.proto = 6
		frame := p.frame()
		timed(b, func(uint16) time.Duration { return kernelTime(b, h, frame, xdpPass) })
	})
	b.Run("request_new_session", func(b *testing.B) {
		// A NAT id is free again at once, so that millions of sessions do not
		// exhaust the 65536 ids of the one backend.
		fresh := cfg
		fresh.NATIdle = time.Nanosecond
		h := readyHarness(b, fresh)
		var total time.Duration
		i := uint32(0)
		for b.Loop() {
			// A new client every time: conntrack miss, Maglev pick, NAT id.
			client := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
			total += kernelTime(b, h, echoRequest(client, hop1MAC, 1, 1).frame(), xdpTX)
			i++
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/pkt")
	})
	b.Run("request_known_session", func(b *testing.B) {
		h := readyHarness(b, cfg)
		timed(b, func(seq uint16) time.Duration {
			return kernelTime(b, h, echoRequest(client1, hop1MAC, 7, seq).frame(), xdpTX)
		})
	})
	b.Run("reply_matched", func(b *testing.B) {
		h := readyHarness(b, cfg)
		out := make([]byte, 256)
		var total time.Duration
		seq := uint16(0)
		for b.Loop() {
			b.StopTimer()
			req := echoRequest(client1, hop1MAC, 7, seq)
			n, err := h.objs.Icmplb.Run(&ebpf.RunOptions{Data: req.frame(), DataOut: out})
			if err != nil || n != xdpTX {
				b.Fatalf("request: %d %v", n, err)
			}
			natID := binary.BigEndian.Uint16(out[38:40])
			rep := replyTo(req, backendA, vip, natID).frame()
			b.StartTimer()
			total += kernelTime(b, h, rep, xdpTX)
			seq++
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/pkt")
	})
	b.Run("reply_conntrack_miss", func(b *testing.B) {
		h := readyHarness(b, cfg)
		frame := replyTo(echoRequest(client1, hop1MAC, 7, 1), backendA, vip, 0xdead).frame()
		timed(b, func(uint16) time.Duration { return kernelTime(b, h, frame, xdpPass) })
	})
}

// readyHarness is a harness with backend A ready behind every Maglev slot.
func readyHarness(tb testing.TB, cfg Config) *harness {
	h := newHarness(tb, cfg)
	h.setBackend(tb, backendA, backendReady)
	h.pointMaglev(tb, backendA.idx)
	return h
}
