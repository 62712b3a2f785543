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
)

// TraceKind tells a sampled request from its reply.
type TraceKind int

// Kinds of TraceEvent, numbered as the data plane's enum trace_kind.
const (
	TraceRequest = TraceKind(bpf.IcmplbTraceKindTRACE_REQUEST)
	TraceReply   = TraceKind(bpf.IcmplbTraceKindTRACE_REPLY)
)

// TraceEvent is one sampled exchange as the kernel saw it: a request when it
// was forwarded, and again with its reply.
type TraceEvent struct {
	Kind TraceKind
	// Sent is when the request was forwarded, on the wall clock.
	Sent time.Time
	// RTT is the time from request to reply (TraceReply only).
	RTT     time.Duration
	VIP     netip.Addr
	Client  netip.Addr
	Backend netip.Addr
	// EchoID is the client's echo identifier, Seq the sequence number.
	EchoID uint16
	Seq    uint16
	// Late is set for a reply that came after the loss timeout.
	Late bool
}

// ReadTraces hands every sampled exchange to handle until ctx is done. It
// returns at once when tracing is off. handle runs on the reading goroutine:
// while it is slow, the kernel drops events and counts them.
func (b *Balancer) ReadTraces(ctx context.Context, handle func(TraceEvent)) error {
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
func (b *Balancer) decodeTrace(raw *bpf.IcmplbTraceEvent, wallOffset int64) TraceEvent {
	return TraceEvent{
		Kind:    TraceKind(raw.Kind),
		Sent:    time.Unix(0, int64(raw.SentNs)+wallOffset),
		RTT:     time.Duration(raw.RttNs),
		VIP:     b.cfg.VIP,
		Client:  bpf.AddrFrom(raw.Client),
		Backend: bpf.AddrFrom(raw.Backend),
		EchoID:  bpf.Host16(raw.EchoId),
		Seq:     bpf.Host16(raw.Seq),
		Late:    raw.Late != 0,
	}
}
