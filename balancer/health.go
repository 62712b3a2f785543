// SPDX-License-Identifier: MIT

package balancer

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/exporter/telemetry"
)

// health is what the agent judged of one backend slot: outlier ejection
// from the traffic it measured, and its own probes.
type health struct {
	out ejection
	// probeUp is false once Fall probes in a row failed, until Rise in a
	// row succeed; a backend is presumed up until its probes say
	// otherwise, as ARP already vouched for it.
	probeUp          bool
	probeOK, probeKO int
	probeWhy         string
	probe            telemetry.Probe
	ejections        map[string]uint64
	// healthyFlag is BACKEND_F_HEALTHY as last written to the data plane.
	healthyFlag bool
}

func newSlot(idx uint32) *slot {
	return &slot{idx: idx, health: health{probeUp: true, ejections: map[string]uint64{},
		probe: telemetry.Probe{RTT: newRTTHistogram()}}}
}

func newRTTHistogram() telemetry.Histogram {
	return telemetry.Histogram{Schema: bpf.RTTSchema, Offset: bpf.RTTBucketOffset, Buckets: make([]uint64, bpf.RTTBuckets)}
}

// rttBounds are the data plane's bucket bounds in ns, so that probe RTTs
// land in the same buckets as the traffic's.
var rttBounds = bpf.RTTBounds()

func observeRTT(h *telemetry.Histogram, d time.Duration) {
	k, _ := slices.BinarySearch(rttBounds[:], uint64(d.Nanoseconds()))
	h.Buckets[min(k, len(h.Buckets)-1)]++
	h.Sum += d
}

func (h *health) healthy() bool { return h.probeUp && !h.out.ejected }

// pool is what a service's table is built from: the weights of its
// backends that take new sessions. With none healthy and resolved, the
// service is all down: fail-open uses every resolved backend regardless of
// health, pass leaves the table empty and passes requests to the kernel.
// With none resolved at all, every backend stays, so that requests pass to
// the kernel as neighbour_unresolved, as before health existed.
func (b *Balancer) pool(vip netip.Addr) (weights map[netip.Addr]int, failOpen, pass, allDown bool) {
	s := b.services[vip]
	weights = map[netip.Addr]int{}
	resolved := map[netip.Addr]int{}
	configured := map[netip.Addr]int{}
	for _, be := range s.cfg.Backends {
		if be.Weight == 0 {
			continue
		}
		configured[be.Addr] = be.Weight
		if !b.hosts[be.Addr].up {
			continue
		}
		resolved[be.Addr] = be.Weight
		if sl := b.slots[slotKey{vip, be.Addr}]; sl != nil && sl.healthy() {
			weights[be.Addr] = be.Weight
		}
	}
	switch {
	case len(weights) > 0 || len(configured) == 0:
		return weights, false, false, false
	case len(resolved) == 0:
		return configured, false, false, true
	case s.cfg.AllDown == config.AllDownPass:
		return weights, false, true, true
	}
	return resolved, true, false, true
}

// wantHealthy is BACKEND_F_HEALTHY of slot k: healthy, or its service
// fails open.
func (b *Balancer) wantHealthy(k slotKey) bool {
	sl := b.slots[k]
	if s := b.services[k.vip]; s != nil && s.failOpen {
		return true
	}
	return sl.healthy()
}

// refreshService brings a service's table, its slots' health flags and its
// pass flag in line with its backends' health. A slot that turns healthy
// is flagged before the table gives it sessions; one that turns unhealthy
// leaves the table before its flag moves its sessions.
func (b *Balancer) refreshService(vip netip.Addr) error {
	s := b.services[vip]
	_, s.failOpen, s.pass, s.allDown = b.pool(vip)
	var keys []slotKey
	for k := range b.slots {
		if k.vip == vip {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		if b.wantHealthy(k) && !b.slots[k].healthyFlag {
			if err := b.writeSlot(k); err != nil {
				return err
			}
		}
	}
	if err := b.rebuildTable(vip); err != nil {
		return err
	}
	for _, k := range keys {
		if !b.wantHealthy(k) && b.slots[k].healthyFlag {
			if err := b.writeSlot(k); err != nil {
				return err
			}
		}
	}
	v := bpf.IcmplbService{Snat: bpf.Addr(s.cfg.SNAT), Table: s.table}
	if s.pass {
		v.Flags = bpf.IcmplbServiceFlagsSERVICE_F_PASS
	}
	var cur bpf.IcmplbService
	if err := b.objs.Services.Lookup(bpf.Addr(vip), &cur); err == nil && cur == v {
		return nil
	}
	if err := b.objs.Services.Put(bpf.Addr(vip), v); err != nil {
		return fmt.Errorf("write service %s: %w", vip, err)
	}
	return nil
}

// judge takes one sample of every backend's counters and ejects the
// outliers a service may spare, and returns those whose time is up. It
// runs once a second.
func (b *Balancer) judge() error {
	if !b.judging() {
		return nil
	}
	snap, err := b.snapshot(false)
	if err != nil {
		return err
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	changed := map[netip.Addr]bool{}
	type candidate struct {
		k           slotKey
		reason, why string
	}
	var cands []candidate
	for i := range snap.Backends {
		bs := &snap.Backends[i]
		k := slotKey{bs.VIP, bs.Addr}
		sl, svc := b.slots[k], b.services[bs.VIP]
		if sl == nil || svc == nil {
			continue
		}
		cfg := svc.cfg.Outlier
		if sl.out.tick(cfg, now) {
			b.log.Info("ejected backend returns", "vip", k.vip, "backend", k.addr, "ejections", sl.out.multiplier)
			changed[k.vip] = true
		}
		if sl.out.ejected || sl.removed || sl.weight == 0 || cfg.MaxEjectionPercent == 0 {
			continue
		}
		sl.out.observe(sample{at: now, answered: bs.Replies - min(bs.Late, bs.Replies), lost: bs.Lost, rtt: bs.RTT}, cfg.Window)
		st, ok := windowOf(sl.out.samples, cfg.Window)
		if !ok {
			continue
		}
		if reason, why := judgeOutlier(cfg, st); reason != "" {
			cands = append(cands, candidate{k, reason, why})
		}
	}
	slices.SortFunc(cands, func(x, y candidate) int { return x.k.compare(y.k) })
	for _, c := range cands {
		svc := b.services[c.k.vip]
		ejected := 0
		for _, be := range svc.cfg.Backends {
			if sl := b.slots[slotKey{c.k.vip, be.Addr}]; sl != nil && sl.out.ejected {
				ejected++
			}
		}
		if limit := maxEjected(svc.cfg.Outlier.MaxEjectionPercent, len(svc.cfg.Backends)); ejected >= limit {
			b.log.Warn("outlier not ejected: the service has as many backends ejected as it may", "vip", c.k.vip,
				"backend", c.k.addr, "reason", c.reason, "figures", c.why, "ejected", ejected, "max_ejection_percent", svc.cfg.Outlier.MaxEjectionPercent)
			continue
		}
		sl := b.slots[c.k]
		sl.out.eject(svc.cfg.Outlier, now, c.reason, c.why)
		sl.ejections[c.reason]++
		changed[c.k.vip] = true
		b.log.Warn("backend ejected", "vip", c.k.vip, "backend", c.k.addr, "reason", c.reason, "figures", c.why,
			"for", sl.out.until.Sub(now).Round(time.Second), "consecutive", sl.out.multiplier)
	}
	var errs []error
	for vip := range changed {
		if err := b.refreshService(vip); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// judging is whether judge has work: a service that ejects, or a backend
// ejected that must come back.
func (b *Balancer) judging() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.services {
		if s.cfg.Outlier.MaxEjectionPercent > 0 {
			return true
		}
	}
	for _, sl := range b.slots {
		if sl.out.ejected || sl.out.multiplier > 0 {
			return true
		}
	}
	return false
}

// probeResult takes one probe's outcome for slot k.
func (b *Balancer) probeResult(k slotKey, ok bool, rtt time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sl, svc := b.slots[k], b.services[k.vip]
	if b.closed || sl == nil || svc == nil {
		return
	}
	cfg := svc.cfg.Probe
	sl.probe.Requests++
	if ok {
		sl.probe.Replies++
		observeRTT(&sl.probe.RTT, rtt)
		sl.probeOK, sl.probeKO = sl.probeOK+1, 0
	} else {
		sl.probe.Lost++
		sl.probeOK, sl.probeKO = 0, sl.probeKO+1
	}
	switch {
	case sl.probeUp && sl.probeKO >= cfg.Fall:
		sl.probeUp = false
		sl.probeWhy = fmt.Sprintf("%d probes in a row unanswered within %s", sl.probeKO, cfg.Timeout)
		sl.ejections[telemetry.EjectProbe]++
		b.log.Warn("backend failed its probes; taken out", "vip", k.vip, "backend", k.addr, "figures", sl.probeWhy)
	case !sl.probeUp && sl.probeOK >= cfg.Rise:
		sl.probeUp = true
		b.log.Info("backend passes its probes again", "vip", k.vip, "backend", k.addr,
			"figures", fmt.Sprintf("%d probes in a row answered, the last in %s", sl.probeOK, rtt.Round(time.Microsecond)))
	default:
		return
	}
	if err := b.refreshService(k.vip); err != nil {
		b.log.Warn("apply probe result", "vip", k.vip, "backend", k.addr, "err", err)
	}
}

// probeTargets are the slots to probe, each with its service's settings.
func (b *Balancer) probeTargets() map[slotKey]config.Probe {
	t := map[slotKey]config.Probe{}
	for k := range b.slots {
		if s := b.services[k.vip]; s != nil && s.cfg.Probe.Interval > 0 {
			t[k] = s.cfg.Probe
		}
	}
	return t
}

// stateOf is a slot's state and why, for metrics, logs and status.
func (b *Balancer) stateOf(k slotKey, sl *slot) (state, why string) {
	switch {
	case sl.removed:
		return telemetry.StateDraining, "removed from the services; drains until its sessions end"
	case sl.weight == 0:
		return telemetry.StateDraining, "weight 0"
	case !b.hosts[k.addr].up:
		state, why = telemetry.StateUnresolved, fmt.Sprintf("next hop %s does not answer %s", b.hosts[k.addr].nextHop, resolvedBy(b.hosts[k.addr].nextHop))
	case !sl.probeUp:
		state, why = telemetry.StateProbeFailed, sl.probeWhy
	case sl.out.ejected:
		state, why = telemetry.StateEjected, fmt.Sprintf("%s; back at %s", sl.out.why, sl.out.until.Format(time.TimeOnly))
	default:
		return telemetry.StateUp, ""
	}
	if s := b.services[k.vip]; s != nil && s.failOpen && b.hosts[k.addr].up {
		why += "; no backend is healthy, so the service fails open and still uses it"
	}
	return state, why
}
