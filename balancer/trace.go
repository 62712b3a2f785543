// SPDX-License-Identifier: MIT

package balancer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/exporter/telemetry"
)

// traceKinds maps the data plane's enum trace_kind to the exporter's kinds.
var traceKinds = map[bpf.IcmplbTraceKind]telemetry.TraceKind{
	bpf.IcmplbTraceKindTRACE_REQUEST: telemetry.TraceRequest,
	bpf.IcmplbTraceKindTRACE_REPLY:   telemetry.TraceReply,
	bpf.IcmplbTraceKindTRACE_ERROR:   telemetry.TraceError,
}

// ReadTraces hands every sampled exchange to handle until ctx is done. It
// returns at once when tracing is off. handle runs on the reading goroutine:
// while it is slow, the kernel drops events and counts them.
func (b *Balancer) ReadTraces(ctx context.Context, handle func(telemetry.TraceEvent)) error {
	if b.cfg.TraceSample == 0 {
		return nil
	}
	rd, err := ringbuf.NewReader(b.objs.Events)
	if err != nil {
		return fmt.Errorf("open trace ring buffer: %w", err)
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	var rec ringbuf.Record
	var raw bpf.IcmplbTraceEvent
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			return fmt.Errorf("read trace ring buffer: %w", err)
		}
		if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &raw); err != nil {
			b.log.Warn("malformed trace event", "len", len(rec.RawSample), "err", err)
			continue
		}
		handle(b.decodeTrace(&raw, time.Now().UnixNano()-int64(monotonic())))
	}
}

// decodeTrace converts an event, with wallOffset = wall clock - monotonic
// clock in ns.
func (b *Balancer) decodeTrace(raw *bpf.IcmplbTraceEvent, wallOffset int64) telemetry.TraceEvent {
	return telemetry.TraceEvent{
		Kind:    traceKinds[bpf.IcmplbTraceKind(raw.Kind)],
		Sent:    time.Unix(0, int64(raw.SentNs)+wallOffset),
		RTT:     time.Duration(raw.RttNs),
		VIP:     b.vipOf(raw.BackendIdx),
		Client:  bpf.AddrFrom(raw.Client),
		Backend: bpf.AddrFrom(raw.Backend),
		EchoID:  bpf.Host16(raw.EchoId),
		Seq:     bpf.Host16(raw.Seq),
		Late:    raw.Late != 0,
		Error:   errorType(bpf.IcmplbTraceKind(raw.Kind), raw.Error),
	}
}

func errorType(kind bpf.IcmplbTraceKind, e bpf.IcmplbIcmpError) string {
	if kind != bpf.IcmplbTraceKindTRACE_ERROR || int(e) >= len(ErrorTypes) {
		return ""
	}
	return ErrorTypes[e]
}

// vipOf is the service of backend slot idx.
func (b *Balancer) vipOf(idx uint32) netip.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.byIdx[idx].vip
}
