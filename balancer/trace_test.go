// SPDX-License-Identifier: MIT

package balancer

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/exporter/telemetry"
)

// echoFrame is an Ethernet + IPv4 echo request from client to the VIP.
func echoFrame(vip [4]byte, client [4]byte, id, seq uint16) []byte {
	f := make([]byte, 14+20+8+16)
	copy(f[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(f[6:12], []byte{2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 1
	binary.BigEndian.PutUint16(ip[2:], 20+8+16)
	copy(ip[12:16], client[:])
	copy(ip[16:20], vip[:])
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum16(ip)))
	icmp := f[34:]
	icmp[0] = 8
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	binary.BigEndian.PutUint16(icmp[2:], ^fold(sum16(icmp)))
	return f
}

func sum16(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// BenchmarkReadTraces measures the kernel-to-userspace half of the trace
// pipeline: how many events per second ReadTraces takes out of the ring
// buffer and decodes, which is the rate the kernel can sustain before the
// ring fills and it drops. Each round, the data plane first fills the ring
// with sampled requests while the reader is held back (untimed: a
// BPF_PROG_RUN per packet is slower than the reader), then the reader drains
// it against the clock. exporter.BenchmarkTracer measures the span half.
func BenchmarkReadTraces(b *testing.B) {
	const batch = 50000 // 56-byte records: about 2.7 MiB of the 4 MiB ring
	bal := newDetached(b, 1, func(c *config.Config) {
		c.TraceSample = 1
		c.TraceBufferSize = 4 << 20
		// A batch takes longer than twice this: each session's request of
		// the next batch finds its ring slot free, so every request is a
		// new one, traced.
		c.LossTimeout = config.MinLossTimeout
	})
	for _, st := range bal.hosts {
		st.mac = net.HardwareAddr{2, 0, 0, 0, 0, 3}
	}
	for k := range bal.slots {
		if err := bal.writeSlot(k); err != nil {
			b.Fatal(err)
		}
	}

	// The reader waits on the current gate, which stays open (closed) except
	// while the ring is being filled.
	var gate atomic.Pointer[chan struct{}]
	open := make(chan struct{})
	close(open)
	gate.Store(&open)
	var delivered atomic.Int64
	drained := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		bal.ReadTraces(ctx, func(telemetry.TraceEvent) {
			<-*gate.Load()
			if delivered.Add(1)%batch == 0 {
				drained <- struct{}{}
			}
		})
	}()
	// A batch is 4 requests of each of its sessions, the next 4 sequence
	// numbers: one per slot of the session's ring. Few sessions for the
	// backend's NAT ids, so that none is refused one.
	const sessions = batch / int(bpf.IcmplbLayoutINFLIGHT_RING)
	vip := bal.cfg.VIP.As4()
	frames := make([][]byte, batch)
	out := make([]byte, 256)
	for round := 0; b.Loop(); round++ {
		b.StopTimer()
		for i := range frames {
			s := i % sessions
			seq := uint16(round*int(bpf.IcmplbLayoutINFLIGHT_RING) + i/sessions + 1)
			frames[i] = echoFrame(vip, [4]byte{10, 9, byte(s >> 8), byte(s)}, uint16(s), seq)
		}
		shut := make(chan struct{})
		gate.Store(&shut)
		for i := range batch {
			if _, err := bal.objs.Icmplb.Run(&ebpf.RunOptions{Data: frames[i], DataOut: out}); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		close(shut)
		select {
		case <-drained:
		case <-time.After(time.Minute):
			// Fewer events than requests: some request was not a new one.
			snap, _ := bal.Snapshot()
			b.Fatalf("%d events delivered, not a multiple of the batch %d, after a minute; verdicts %+v", delivered.Load(), batch, snap.Verdicts)
		}
	}
	b.StopTimer()
	cancel()
	<-done
	snap, err := bal.Snapshot()
	if err != nil {
		b.Fatal(err)
	}
	if snap.TraceEventsDropped != 0 {
		b.Fatalf("%d events dropped while filling: the batch does not fit the ring", snap.TraceEventsDropped)
	}
	b.ReportMetric(float64(delivered.Load())/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(b.Elapsed().Seconds()/float64(delivered.Load())*1e9, "ns/event")
}

// An error event names its type; other kinds carry none, whatever the
// field holds.
func TestDecodeTraceError(t *testing.T) {
	b := &Balancer{byIdx: map[uint32]slotKey{}}
	raw := bpf.IcmplbTraceEvent{Kind: bpf.IcmplbTraceKindTRACE_ERROR, Error: bpf.IcmplbIcmpErrorICMP_ERROR_PACKET_TOO_BIG, RttNs: 1500}
	if ev := b.decodeTrace(&raw, 0); ev.Kind != telemetry.TraceError || ev.Error != telemetry.ErrorPacketTooBig || ev.RTT != 1500 {
		t.Errorf("error event decoded as %+v", ev)
	}
	raw.Kind = bpf.IcmplbTraceKindTRACE_REPLY
	if ev := b.decodeTrace(&raw, 0); ev.Kind != telemetry.TraceReply || ev.Error != "" {
		t.Errorf("reply event decoded as %+v", ev)
	}
}

// Addresses come out of an event in their own family: IPv4 unmapped, IPv6
// as they are, so that spans name them in the same text as the metrics.
func TestDecodeTraceAddresses(t *testing.T) {
	b := &Balancer{byIdx: map[uint32]slotKey{}}
	for _, tc := range []struct{ client, backend string }{
		{"10.0.0.1", "10.0.0.2"},
		{"fd00:1cb::1", "fd00:1cb::2"},
	} {
		raw := bpf.IcmplbTraceEvent{Kind: bpf.IcmplbTraceKindTRACE_REQUEST,
			Client: bpf.Addr(netip.MustParseAddr(tc.client)), Backend: bpf.Addr(netip.MustParseAddr(tc.backend))}
		ev := b.decodeTrace(&raw, 0)
		if ev.Client.String() != tc.client || ev.Backend.String() != tc.backend {
			t.Errorf("event of %s -> %s decoded as %v -> %v", tc.client, tc.backend, ev.Client, ev.Backend)
		}
	}
}
