// SPDX-License-Identifier: MIT

package balancer

import (
	"fmt"
	"math"
	"time"

	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/exporter/telemetry"
)

// sample is one backend's cumulative counters at one time, as the data
// plane and the loss ledger had them.
type sample struct {
	at time.Time
	// answered counts replies within the loss timeout, lost the requests
	// settled without one: together, the requests settled so far.
	answered, lost uint64
	rtt            telemetry.Histogram
}

// windowStats is what a backend did between two samples.
type windowStats struct {
	span     time.Duration
	settled  uint64 // answered + lost
	lost     uint64
	p99      float64 // seconds: the upper bound of its bucket; valid when hasP99
	p99Low   float64 // the lower bound of that bucket
	hasP99   bool
	answered uint64
}

// windowOf compares the newest sample with the oldest one not older than
// w: ok is false until the samples span at least half of w, so that a
// backend is never judged on a moment.
func windowOf(samples []sample, w time.Duration) (windowStats, bool) {
	if len(samples) < 2 {
		return windowStats{}, false
	}
	last := samples[len(samples)-1]
	first := samples[0]
	for _, s := range samples {
		if last.at.Sub(s.at) <= w {
			first = s
			break
		}
	}
	span := last.at.Sub(first.at)
	if span < w/2 {
		return windowStats{}, false
	}
	st := windowStats{span: span}
	st.answered = last.answered - min(first.answered, last.answered)
	st.lost = last.lost - min(first.lost, last.lost)
	st.settled = st.answered + st.lost
	d := telemetry.Histogram{Schema: last.rtt.Schema, Offset: last.rtt.Offset, Buckets: make([]uint64, len(last.rtt.Buckets))}
	for k, n := range last.rtt.Buckets {
		d.Buckets[k] = n
		if k < len(first.rtt.Buckets) {
			d.Buckets[k] -= min(first.rtt.Buckets[k], n)
		}
	}
	st.p99, st.hasP99 = d.Quantile(0.99)
	st.p99Low = st.p99 / math.Exp2(1/float64(int(1)<<d.Schema))
	return st, true
}

// judgeOutlier says whether a backend's window calls for its ejection: the
// reason (telemetry.EjectLoss or EjectLatency) and the figures that decided
// it, or "" to keep it.
func judgeOutlier(cfg config.Outlier, st windowStats) (reason, why string) {
	if st.settled < uint64(cfg.MinRequests) {
		return "", ""
	}
	if ratio := float64(st.lost) / float64(st.settled); cfg.MaxLossRatio < 1 && ratio > cfg.MaxLossRatio {
		return telemetry.EjectLoss, fmt.Sprintf("lost %d of %d requests (%.1f%%) in %s, more than %.1f%%",
			st.lost, st.settled, ratio*100, st.span.Round(time.Second), cfg.MaxLossRatio*100)
	}
	// The p99 is known to a bucket, (p99Low, p99]: eject only when the
	// whole bucket is over the limit, so a backend under it never is.
	if cfg.MaxP99RTT > 0 && st.hasP99 && st.answered >= uint64(cfg.MinRequests) && st.p99Low >= cfg.MaxP99RTT.Seconds() {
		return telemetry.EjectLatency, fmt.Sprintf("p99 RTT over %s (%d replies in %s), more than %s",
			time.Duration(st.p99Low*float64(time.Second)).Round(time.Microsecond), st.answered, st.span.Round(time.Second), cfg.MaxP99RTT)
	}
	return "", ""
}

// ejectionTime is how long the n-th consecutive ejection (n >= 1) lasts:
// Envoy's base_ejection_time × ejections, capped.
func ejectionTime(cfg config.Outlier, n int) time.Duration {
	if n < 1 {
		n = 1
	}
	d := cfg.BaseEjectionTime * time.Duration(n)
	if d > cfg.MaxEjectionTime || d/time.Duration(n) != cfg.BaseEjectionTime {
		return cfg.MaxEjectionTime
	}
	return d
}

// maxEjected is how many of a service's n backends may be ejected at once:
// pct percent of them, rounded down, but always one (as Envoy does), and
// none when pct is 0.
func maxEjected(pct, n int) int {
	if pct <= 0 || n == 0 {
		return 0
	}
	return max(1, n*pct/100)
}

// ejection is one backend's outlier state.
type ejection struct {
	ejected bool
	until   time.Time
	// multiplier counts consecutive ejections: it grows by one at each
	// ejection and shrinks by one for each window the backend then spends
	// in service without one.
	multiplier int
	decayAt    time.Time
	why        string
	reason     string
	// samples since the backend last returned, oldest first.
	samples []sample
}

// observe adds a sample and drops those the window no longer needs.
func (e *ejection) observe(s sample, w time.Duration) {
	e.samples = append(e.samples, s)
	for len(e.samples) > 2 && s.at.Sub(e.samples[1].at) > w {
		e.samples = e.samples[1:]
	}
}

// eject takes the backend out until its ejection time has passed.
func (e *ejection) eject(cfg config.Outlier, now time.Time, reason, why string) {
	// Past the cap more ejections add nothing but windows to wait out
	// before the multiplier is back down (Envoy stops it there too).
	if ejectionTime(cfg, e.multiplier) < cfg.MaxEjectionTime {
		e.multiplier++
	}
	e.ejected, e.reason, e.why = true, reason, why
	e.until = now.Add(ejectionTime(cfg, e.multiplier))
	e.samples = nil
}

// tick returns an ejected backend whose time has passed (true when it
// did), and lets the multiplier decay while the backend stays in service.
func (e *ejection) tick(cfg config.Outlier, now time.Time) (returned bool) {
	if e.ejected {
		if now.Before(e.until) {
			return false
		}
		// Judged afresh from now on: what it did before its ejection is
		// what got it ejected.
		e.ejected, e.samples, e.decayAt = false, nil, now.Add(cfg.Window)
		return true
	}
	if e.multiplier > 0 && !now.Before(e.decayAt) {
		e.multiplier--
		e.decayAt = now.Add(cfg.Window)
	}
	return false
}
