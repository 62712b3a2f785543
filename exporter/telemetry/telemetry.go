// SPDX-License-Identifier: MIT

// Package telemetry holds what the exporter consumes of the data plane: a
// snapshot of its counters and histograms, and sampled exchanges. It is the
// contract between the balancer, which fills it from the kernel's maps, and
// the exporter, which turns it into metrics and spans: it imports neither,
// and states no constant of the data plane (the histogram carries its own
// layout), so the exporter is built and tested without BPF.
package telemetry

import (
	"math"
	"net/netip"
	"time"
)

// Snapshot is the data plane's state at one moment, summed over CPUs.
type Snapshot struct {
	// Services has one entry per balanced service (VIP).
	Services []Service
	// Backends has one entry per (service, backend) pair: a backend address
	// may serve several VIPs, and each pair is measured on its own.
	Backends []Backend
	// Verdicts has one entry per verdict reason of the data plane.
	Verdicts  []Verdict
	Conntrack Conntrack
	// TraceEventsDropped counts sampled exchanges the kernel could not hand
	// to userspace because the ring buffer was full.
	TraceEventsDropped uint64
}

// Service is a balanced VIP and what the balancer itself failed of its
// requests.
type Service struct {
	VIP  netip.Addr
	SNAT netip.Addr
	// BalancerLost counts the VIP's requests failed by the balancer, by
	// the reason of a Verdict with BalancerLoss.
	BalancerLost map[string]uint64
	// AllDown is true while no backend of the service is healthy, so that
	// its all-down mode (fail-open or pass) is in effect.
	AllDown bool
}

// Backend is what the data plane measured for one backend of one service.
type Backend struct {
	// VIP is the service the backend was measured for.
	VIP  netip.Addr
	Addr netip.Addr
	// Up is true while the backend's next hop is resolved.
	Up bool
	// Weight is the backend's configured share of the service's new
	// sessions; 0 while it drains (weight 0, or removed by a reload and
	// waiting for its sessions to end: see Removed).
	Weight int
	// Removed is true for a backend a reload removed whose sessions have
	// not all ended; it disappears with its last session.
	Removed bool
	// Sessions is the backend's live sessions of this service (clients
	// heard from within the NAT idle time), as of the last sweep.
	Sessions uint64
	// State is one of States: why the backend does or does not take new
	// sessions.
	State string
	// StateReason says why, with the figures that decided it (e.g. "loss
	// 52% of 40 requests in 10s > 10%"); empty when up.
	StateReason string
	// Ejections counts the times the backend was taken out for its
	// health, by reason: EjectLoss, EjectLatency, EjectProbe.
	Ejections map[string]uint64
	// SessionsMoved counts the running sessions the data plane moved off
	// the backend because it left the service's pool (ejected, probes
	// failed, next hop lost).
	SessionsMoved uint64
	// Probe is what the agent's own probes of the backend measured; nil
	// when the service does not probe.
	Probe        *Probe
	RequestBytes uint64
	Requests     uint64
	Replies      uint64
	ReplyBytes   uint64
	// Lost counts requests with no reply within the loss timeout, settled
	// once that timeout has passed.
	Lost uint64
	// Late counts replies that came after the loss timeout.
	Late uint64
	// Unmatched counts replies that answered no request the balancer
	// remembers (duplicates, or later than it waits).
	Unmatched uint64
	// Errors counts requests answered by an ICMP error (from the backend
	// or a router on its way) instead of a reply, by type (ErrorTypes):
	// returned to the client, neither a reply nor lost.
	Errors map[string]uint64
	RTT    Histogram
}

// States of a backend (Backend.State), in the order they take precedence.
const (
	// StateDraining: weight 0, or removed by a reload; running sessions
	// stay, no new ones.
	StateDraining = "draining"
	// StateUnresolved: the next hop does not answer ARP or NDP.
	StateUnresolved = "unresolved"
	// StateProbeFailed: the agent's probes failed Fall times in a row.
	StateProbeFailed = "probe_failed"
	// StateEjected: its measured loss or latency was too high; it returns
	// after its ejection time.
	StateEjected = "ejected"
	// StateUp: takes new sessions.
	StateUp = "up"
)

// States lists every backend state.
var States = []string{StateUp, StateDraining, StateEjected, StateProbeFailed, StateUnresolved}

// Reasons a backend is taken out for its health (Backend.Ejections).
const (
	EjectLoss    = "loss"
	EjectLatency = "latency"
	EjectProbe   = "probe"
)

// EjectReasons lists every reason of Backend.Ejections.
var EjectReasons = []string{EjectLoss, EjectLatency, EjectProbe}

// Types of the ICMP errors that answer requests (Backend.Errors).
const (
	// ErrorUnreachable: destination unreachable (net, host, protocol,
	// administratively prohibited, ...), but for fragmentation needed.
	ErrorUnreachable = "unreachable"
	// ErrorPacketTooBig: fragmentation needed and DF set (ICMPv4), packet
	// too big (ICMPv6).
	ErrorPacketTooBig = "packet_too_big"
	// ErrorTimeExceeded: TTL or hop limit exceeded in transit (a routing
	// loop, a path too long), or fragment reassembly time exceeded.
	ErrorTimeExceeded = "time_exceeded"
)

// ErrorTypes lists every type of Backend.Errors.
var ErrorTypes = []string{ErrorUnreachable, ErrorPacketTooBig, ErrorTimeExceeded}

// Probe is what the agent's probes of one backend measured, cumulative.
type Probe struct {
	Requests uint64
	Replies  uint64
	// Lost counts probes unanswered within the probe timeout.
	Lost uint64
	RTT  Histogram
}

// Histogram holds round-trip times as a native (exponential) histogram of
// seconds. Buckets[0] is the zero bucket, times of at most ZeroThreshold;
// Buckets[k], k ≥ 1, is the native bucket of index k-Offset: times in
// (2^((i-1)/2^Schema), 2^(i/2^Schema)] seconds with i = k-Offset.
type Histogram struct {
	Schema  int32
	Offset  int
	Buckets []uint64
	Sum     time.Duration
}

// Count is the number of times in the histogram.
func (h *Histogram) Count() uint64 {
	var n uint64
	for _, c := range h.Buckets {
		n += c
	}
	return n
}

// Index is the native bucket index of Buckets[k].
func (h *Histogram) Index(k int) int { return k - h.Offset }

// UpperBound is the upper bound of Buckets[k] in seconds; for k = 0, the
// zero threshold.
func (h *Histogram) UpperBound(k int) float64 {
	return math.Exp2(float64(h.Index(k)) / float64(int(1)<<h.Schema))
}

// Quantile is the upper bound, in seconds, of the bucket holding quantile q
// (0 < q <= 1): at most one bucket's width (9% at schema 3) above the true
// value, never below it. ok is false for an empty histogram.
func (h *Histogram) Quantile(q float64) (v float64, ok bool) {
	total := h.Count()
	if total == 0 {
		return 0, false
	}
	rank := q * float64(total)
	var seen uint64
	for k, n := range h.Buckets {
		seen += n
		if float64(seen) >= rank && n > 0 {
			return h.UpperBound(k), true
		}
	}
	return h.UpperBound(len(h.Buckets) - 1), true
}

// ZeroThreshold is the upper bound of the zero bucket in seconds.
func (h *Histogram) ZeroThreshold() float64 { return h.UpperBound(0) }

// Verdict is how many packets got one verdict for one reason.
type Verdict struct {
	Verdict string // "tx", "pass" or "drop"
	Reason  string
	Packets uint64
	// BalancerLoss marks the reasons for which the balancer itself, not a
	// backend, failed a client's request.
	BalancerLoss bool
}

// Conntrack is the occupancy of the conntrack maps.
type Conntrack struct {
	// Known is false when the kernel cannot count map elements (before 6.6).
	Known bool
	// Sessions counts ping sessions (client, echo id) tracked.
	Sessions int64
	// Capacity is the size of the session map.
	Capacity int
	// InFlight counts requests awaiting their reply.
	InFlight int64
	// InFlightCapacity is the size of the in-flight map.
	InFlightCapacity int
}

// TraceKind tells a sampled request from its answer.
type TraceKind int

// Kinds of TraceEvent.
const (
	TraceRequest TraceKind = iota + 1
	TraceReply
	// TraceError: an ICMP error answered the request.
	TraceError
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
	// Late is set for a reply or error that came after the loss timeout.
	Late bool
	// Error is the type of the ICMP error (ErrorTypes) that answered the
	// request (TraceError only).
	Error string
}
