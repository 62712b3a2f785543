// SPDX-License-Identifier: MIT

package balancer

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/exporter/telemetry"
)

// Verdicts names each data-plane verdict reason (enum reason in
// bpf/abi.h), indexed by its value.
var Verdicts = func() []telemetry.Verdict {
	v := make([]telemetry.Verdict, bpf.IcmplbReasonREASON_MAX)
	set := func(r bpf.IcmplbReason, verdict, reason string) {
		v[r] = telemetry.Verdict{Verdict: verdict, Reason: reason, BalancerLoss: slices.Contains(BalancerLimited, reason)}
	}
	set(bpf.IcmplbReasonREASON_REQUEST_FORWARDED, "tx", "request_forwarded")
	set(bpf.IcmplbReasonREASON_REPLY_RETURNED, "tx", "reply_returned")
	set(bpf.IcmplbReasonREASON_NOT_IP, "pass", "not_ip")
	set(bpf.IcmplbReasonREASON_NOT_ICMP, "pass", "not_icmp")
	set(bpf.IcmplbReasonREASON_NOT_ECHO, "pass", "not_echo")
	set(bpf.IcmplbReasonREASON_NOT_VIP, "pass", "not_vip")
	set(bpf.IcmplbReasonREASON_NOT_UNICAST, "pass", "not_unicast")
	set(bpf.IcmplbReasonREASON_FRAGMENT, "pass", "fragment")
	set(bpf.IcmplbReasonREASON_IP_OPTIONS, "pass", "ip_options")
	set(bpf.IcmplbReasonREASON_MALFORMED, "pass", "malformed")
	set(bpf.IcmplbReasonREASON_CONNTRACK_MISS, "pass", "conntrack_miss")
	set(bpf.IcmplbReasonREASON_NEIGH_UNRESOLVED, "pass", "neigh_unresolved")
	set(bpf.IcmplbReasonREASON_NAT_EXHAUSTED, "pass", "nat_exhausted")
	set(bpf.IcmplbReasonREASON_NO_BACKEND, "drop", "no_backend")
	set(bpf.IcmplbReasonREASON_VLAN, "pass", "vlan")
	set(bpf.IcmplbReasonREASON_BOGUS_SOURCE, "pass", "bogus_source")
	set(bpf.IcmplbReasonREASON_TTL_ZERO, "pass", "ttl_zero")
	set(bpf.IcmplbReasonREASON_SESSION_MAC_MISMATCH, "drop", "session_mac_mismatch")
	set(bpf.IcmplbReasonREASON_REPLY_SPOOFED, "pass", "reply_spoofed")
	set(bpf.IcmplbReasonREASON_REPLY_MISMATCH, "pass", "reply_mismatch")
	set(bpf.IcmplbReasonREASON_NAT_COLLISION, "drop", "nat_collision")
	set(bpf.IcmplbReasonREASON_INFLIGHT_FULL, "drop", "inflight_full")
	set(bpf.IcmplbReasonREASON_PROBE_REPLY, "pass", "probe_reply")
	set(bpf.IcmplbReasonREASON_ALL_DOWN, "pass", "all_down")
	set(bpf.IcmplbReasonREASON_ERROR_RETURNED, "tx", "error_returned")
	set(bpf.IcmplbReasonREASON_ERROR_UNMATCHED, "pass", "error_unmatched")
	set(bpf.IcmplbReasonREASON_ERROR_FOREIGN, "pass", "error_foreign")
	set(bpf.IcmplbReasonREASON_ERROR_TRUNCATED, "pass", "error_truncated")
	for r, c := range v {
		if c.Reason == "" {
			panic(fmt.Sprintf("verdict reason %d has no name: name it in balancer.Verdicts", r))
		}
	}
	return v
}()

// ErrorTypes names each kind of ICMP error the data plane counts (enum
// icmp_error in bpf/abi.h), indexed by its value.
var ErrorTypes = func() []string {
	t := make([]string, bpf.IcmplbIcmpErrorICMP_ERRORS)
	t[bpf.IcmplbIcmpErrorICMP_ERROR_UNREACHABLE] = telemetry.ErrorUnreachable
	t[bpf.IcmplbIcmpErrorICMP_ERROR_PACKET_TOO_BIG] = telemetry.ErrorPacketTooBig
	t[bpf.IcmplbIcmpErrorICMP_ERROR_TIME_EXCEEDED] = telemetry.ErrorTimeExceeded
	for k, name := range t {
		if name == "" {
			panic(fmt.Sprintf("ICMP error kind %d has no name: name it in balancer.ErrorTypes", k))
		}
	}
	return t
}()

// BalancerLimited are the reasons for which the balancer itself, not a
// backend, failed a client's request: no NAT id, no room to track it, or its
// NAT id and sequence still awaited by another client. They are the
// balancer's loss, never a backend's.
var BalancerLimited = []string{"nat_exhausted", "nat_collision", "inflight_full"}

// scratch holds the buffers of one map read, reused across scrapes.
type scratch struct {
	keys     []uint32
	counters []bpf.IcmplbBackendCounters
	hist     []uint64
	stats    []uint64
	svcStats []uint64
}

// Snapshot reads the data plane's maps. It is safe for concurrent use; a
// scrape reads a few batched syscalls' worth, independent of traffic.
func (b *Balancer) Snapshot() (*telemetry.Snapshot, error) { return b.snapshot(true) }

// snapshot reads the backends' counters and, when full, the rest a scrape
// shows (verdicts, conntrack, trace drops), which the health judge does not
// need.
func (b *Balancer) snapshot(full bool) (*telemetry.Snapshot, error) {
	b.snapMu.Lock()
	defer b.snapMu.Unlock()
	// A slot given to another backend between the read of the counters
	// and their attribution would credit one with the other's: read again.
	for try := 0; ; try++ {
		snap, stale, err := b.read(full)
		if err != nil || !stale || try == 2 {
			return snap, err
		}
	}
}

// read is one snapshot; stale is true when a slot changed owner meanwhile.
func (b *Balancer) read(full bool) (_ *telemetry.Snapshot, stale bool, err error) {
	b.mu.Lock()
	gen := b.gen
	n := b.nslots
	// Service counters up to the highest table in use: the rest are zero.
	tables := 0
	for _, svc := range b.services {
		tables = max(tables, int(svc.table)+1)
	}
	b.mu.Unlock()
	s := &b.scratch
	snap := &telemetry.Snapshot{}

	if err := readPerCPU(b.objs.BackendStats, n, &s.keys, &s.counters, b.ncpu); err != nil {
		return nil, false, fmt.Errorf("read backend counters: %w", err)
	}
	if err := readPerCPU(b.objs.RttHist, n*bpf.RTTBuckets, &s.keys, &s.hist, b.ncpu); err != nil {
		return nil, false, fmt.Errorf("read RTT histograms: %w", err)
	}
	if err := readPerCPU(b.objs.SvcStats, tables*len(Verdicts), &s.keys, &s.svcStats, b.ncpu); err != nil {
		return nil, false, fmt.Errorf("read service counters: %w", err)
	}
	b.mu.Lock()
	stale = b.gen != gen
	keys := slices.SortedFunc(maps.Keys(b.slots), slotKey.compare)
	snap.Backends = make([]telemetry.Backend, 0, len(keys))
	idxs := make([]uint32, 0, len(keys))
	for _, k := range keys {
		sl := b.slots[k]
		if int(sl.idx) >= n {
			continue // added after the read
		}
		i := int(sl.idx)
		state, why := b.stateOf(k, sl)
		tb := telemetry.Backend{VIP: k.vip, Addr: k.addr, Up: b.hosts[k.addr].up,
			Weight: sl.weight, Removed: sl.removed, State: state, StateReason: why, Ejections: maps.Clone(sl.ejections)}
		if s := b.services[k.vip]; s != nil && s.cfg.Probe.Interval > 0 {
			p := sl.probe
			p.RTT.Buckets = slices.Clone(p.RTT.Buckets)
			tb.Probe = &p
		}
		snap.Backends = append(snap.Backends, tb)
		idxs = append(idxs, sl.idx)
		bs := &snap.Backends[len(snap.Backends)-1]
		if i < len(b.sessions) {
			bs.Sessions = uint64(b.sessions[i])
		}
		bs.Errors = make(map[string]uint64, len(ErrorTypes))
		bs.RTT = telemetry.Histogram{Schema: bpf.RTTSchema, Offset: bpf.RTTBucketOffset, Buckets: make([]uint64, bpf.RTTBuckets)}
		for cpu := 0; cpu < b.ncpu; cpu++ {
			c := &s.counters[i*b.ncpu+cpu]
			bs.Requests += c.Requests
			bs.RequestBytes += c.RequestBytes
			bs.Replies += c.Replies
			bs.ReplyBytes += c.ReplyBytes
			bs.Late += c.Late
			bs.Unmatched += c.Unmatched
			bs.SessionsMoved += c.Moved
			bs.RTT.Sum += time.Duration(c.RttSumNs)
			for k, n := range c.Errors {
				bs.Errors[ErrorTypes[k]] += n
			}
		}
		for k := range bs.RTT.Buckets {
			base := bpf.RTTKey(i, k) * b.ncpu
			for cpu := 0; cpu < b.ncpu; cpu++ {
				bs.RTT.Buckets[k] += s.hist[base+cpu]
			}
		}
	}
	vips := slices.SortedFunc(maps.Keys(b.services), netip.Addr.Compare)
	for _, vip := range vips {
		svc := b.services[vip]
		ts := telemetry.Service{VIP: vip, SNAT: svc.cfg.SNAT, BalancerLost: map[string]uint64{}, AllDown: svc.allDown}
		for r, v := range Verdicts {
			if !v.BalancerLoss {
				continue
			}
			base := (int(svc.table)*len(Verdicts) + r) * b.ncpu
			for cpu := 0; cpu < b.ncpu; cpu++ {
				ts.BalancerLost[v.Reason] += s.svcStats[base+cpu]
			}
		}
		snap.Services = append(snap.Services, ts)
	}
	b.mu.Unlock()
	b.loss.mu.Lock()
	for j, idx := range idxs {
		if int(idx) < len(b.loss.lost) {
			snap.Backends[j].Lost = b.loss.lost[idx]
		}
	}
	b.loss.mu.Unlock()

	if !full {
		return snap, stale, nil
	}
	if err := readPerCPU(b.objs.Stats, len(Verdicts), &s.keys, &s.stats, b.ncpu); err != nil {
		return nil, false, fmt.Errorf("read verdict counters: %w", err)
	}
	snap.Verdicts = make([]telemetry.Verdict, len(Verdicts))
	for r, v := range Verdicts {
		for cpu := 0; cpu < b.ncpu; cpu++ {
			v.Packets += s.stats[r*b.ncpu+cpu]
		}
		snap.Verdicts[r] = v
	}

	if err := readPerCPU(b.objs.TraceDropped, 1, &s.keys, &s.stats, b.ncpu); err != nil {
		return nil, false, fmt.Errorf("read trace drop counter: %w", err)
	}
	for cpu := 0; cpu < b.ncpu; cpu++ {
		snap.TraceEventsDropped += s.stats[cpu]
	}

	snap.Conntrack = telemetry.Conntrack{Capacity: b.cfg.ConntrackSize, InFlightCapacity: b.cfg.InflightSize}
	c, ok, err := b.countEntries()
	if err != nil {
		return nil, false, err
	}
	if ok {
		snap.Conntrack.Known, snap.Conntrack.Sessions, snap.Conntrack.InFlight = true, c.fwd, c.inflight
	}
	return snap, stale, nil
}

// entries is the occupancy of the conntrack maps.
type entries struct{ fwd, rev, inflight int64 }

// countEntries asks the kernel how many entries each conntrack map holds:
// one program run, not a walk. ok is false where the kernel cannot count
// (before Linux 6.6).
func (b *Balancer) countEntries() (entries, bool, error) {
	if b.ctCount.Prog == nil {
		return entries{}, false, nil
	}
	b.ctMu.Lock()
	defer b.ctMu.Unlock()
	if _, err := b.ctCount.Prog.Run(&ebpf.RunOptions{}); err != nil {
		return entries{}, false, fmt.Errorf("count conntrack entries: %w", err)
	}
	var e entries
	for i, v := range []*int64{&e.fwd, &e.rev, &e.inflight} {
		if err := b.ctCount.Entries.Lookup(uint32(i), v); err != nil {
			return entries{}, false, fmt.Errorf("read conntrack count %d: %w", i, err)
		}
	}
	return e, true, nil
}

// readPerCPU reads entries [0, n) of a per-CPU array map in batches into
// *vals (n × ncpu values, entry-major), reusing the buffers' capacity.
func readPerCPU[T any](m *ebpf.Map, n int, keys *[]uint32, vals *[]T, ncpu int) error {
	*keys = grow(*keys, n)
	*vals = grow(*vals, n*ncpu)
	var cursor ebpf.MapBatchCursor
	done := 0
	for done < n {
		got, err := m.BatchLookup(&cursor, (*keys)[done:n], (*vals)[done*ncpu:n*ncpu], nil)
		done += got
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return err
		}
		if got == 0 {
			break
		}
	}
	if done != n {
		return fmt.Errorf("read %d of %d entries", done, n)
	}
	return nil
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}
