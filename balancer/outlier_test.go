// SPDX-License-Identifier: MIT

package balancer

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/exporter/telemetry"
)

// outlierEpoch is an arbitrary wall time: the logic only compares times.
var outlierEpoch = time.Unix(1_700_000_000, 0)

func outlierAt(sec int) time.Time { return outlierEpoch.Add(time.Duration(sec) * time.Second) }

// rttHist lays counts out as the data plane does (bpf/abi.h: schema 3,
// RTT_BUCKET_OFFSET 160, RTT_BUCKETS 256), so that bucket k's upper bound
// is 2^((k-160)/8) s: k 160 is 1 s, k 80 about 1 ms.
func rttHist(counts map[int]uint64) telemetry.Histogram {
	h := telemetry.Histogram{Schema: 3, Offset: 160, Buckets: make([]uint64, 256)}
	for k, n := range counts {
		h.Buckets[k] = n
	}
	return h
}

func upperBound(k int) float64 {
	h := rttHist(nil)
	return h.UpperBound(k)
}

func outlierSample(sec int, answered, lost uint64, rtt map[int]uint64) sample {
	s := sample{at: outlierAt(sec), answered: answered, lost: lost}
	if rtt != nil {
		s.rtt = rttHist(rtt)
	}
	return s
}

func TestWindowOf(t *testing.T) {
	const w = 10 * time.Second
	for _, tc := range []struct {
		name    string
		samples []sample
		ok      bool
		want    windowStats
	}{
		{name: "none"},
		{name: "one", samples: []sample{outlierSample(0, 10, 0, nil)}},
		{
			name:    "span under half the window",
			samples: []sample{outlierSample(0, 0, 0, nil), outlierSample(2, 20, 0, nil), outlierSample(4, 40, 2, nil)},
		},
		{
			// Old samples do not stretch a window the recent ones are
			// too short for.
			name:    "only one sample within the window",
			samples: []sample{outlierSample(0, 0, 0, nil), outlierSample(20, 200, 0, nil), outlierSample(24, 240, 8, nil)},
		},
		{
			name:    "span exactly half the window",
			samples: []sample{outlierSample(0, 0, 0, nil), outlierSample(5, 50, 3, nil)},
			ok:      true,
			want:    windowStats{span: 5 * time.Second, answered: 50, lost: 3, settled: 53},
		},
		{
			// The sample 13 s old is past the window; the one exactly w
			// old is the first within it.
			name: "older samples ignored",
			samples: []sample{
				outlierSample(0, 0, 0, nil), outlierSample(3, 100, 7, nil),
				outlierSample(6, 130, 9, nil), outlierSample(13, 200, 10, nil),
			},
			ok:   true,
			want: windowStats{span: 10 * time.Second, answered: 100, lost: 3, settled: 103},
		},
		{
			name: "first within the window is the oldest such",
			samples: []sample{
				outlierSample(0, 0, 0, nil), outlierSample(4, 40, 0, nil),
				outlierSample(8, 80, 4, nil), outlierSample(12, 120, 8, nil),
			},
			ok:   true,
			want: windowStats{span: 8 * time.Second, answered: 80, lost: 8, settled: 88},
		},
		{
			// A slot reused by another backend starts its counters over:
			// no negative (wrapped) deltas.
			name:    "counters went backwards",
			samples: []sample{outlierSample(0, 500, 50, nil), outlierSample(10, 10, 60, nil)},
			ok:      true,
			want:    windowStats{span: w, answered: 0, lost: 10, settled: 10},
		},
		{
			// Deltas {100: 98, 120: 2}: the 99th of 100 falls in bucket
			// 120. The newest sample alone ({100: 148, 120: 2, 140: 10},
			// rank 158.4) would say bucket 140.
			name: "p99 of the histogram deltas",
			samples: []sample{
				outlierSample(0, 60, 0, map[int]uint64{100: 50, 140: 10}),
				outlierSample(10, 160, 0, map[int]uint64{100: 148, 120: 2, 140: 10}),
			},
			ok:   true,
			want: windowStats{span: w, answered: 100, settled: 100, p99: upperBound(120), hasP99: true},
		},
		{
			name: "p99 in the lower bucket when it holds 99",
			samples: []sample{
				outlierSample(0, 0, 0, map[int]uint64{}),
				outlierSample(10, 100, 0, map[int]uint64{100: 99, 120: 1}),
			},
			ok:   true,
			want: windowStats{span: w, answered: 100, settled: 100, p99: upperBound(100), hasP99: true},
		},
		{
			name: "no replies in the window",
			samples: []sample{
				outlierSample(0, 100, 0, map[int]uint64{100: 100}),
				outlierSample(10, 100, 30, map[int]uint64{100: 100}),
			},
			ok:   true,
			want: windowStats{span: w, lost: 30, settled: 30},
		},
		{
			name:    "no histogram",
			samples: []sample{outlierSample(0, 0, 0, nil), outlierSample(10, 50, 0, nil)},
			ok:      true,
			want:    windowStats{span: w, answered: 50, settled: 50},
		},
		{
			// A reused slot's histogram restarts too: the bucket that
			// shrank counts nothing, the one that grew counts its growth.
			name: "histogram went backwards",
			samples: []sample{
				outlierSample(0, 0, 0, map[int]uint64{100: 500, 150: 1}),
				outlierSample(10, 20, 0, map[int]uint64{100: 10, 150: 21}),
			},
			ok:   true,
			want: windowStats{span: w, answered: 20, settled: 20, p99: upperBound(150), hasP99: true},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := windowOf(tc.samples, w)
			if ok != tc.ok {
				t.Fatalf("windowOf ok = %v, want %v (stats %+v)", ok, tc.ok, got)
			}
			// Field by field: the judge may come to need more of the
			// window than these.
			if ok && (got.span != tc.want.span || got.answered != tc.want.answered || got.lost != tc.want.lost ||
				got.settled != tc.want.settled || got.hasP99 != tc.want.hasP99 || got.p99 != tc.want.p99) {
				t.Errorf("windowOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// bucketWidth is the ratio of a bucket's upper to lower bound at schema 3.
var bucketWidth = math.Exp2(1.0 / 8)

func TestJudgeOutlier(t *testing.T) {
	def := config.DefaultOutlier()
	withP99 := def
	withP99.MaxP99RTT = 10 * time.Millisecond
	never := def
	never.MaxLossRatio = 1
	anyLoss := def
	anyLoss.MaxLossRatio = 0
	const span = 10 * time.Second
	ms := func(n float64) float64 { return n / 1000 }
	for _, tc := range []struct {
		name   string
		cfg    config.Outlier
		st     windowStats
		reason string
		why    []string // substrings of why
	}{
		{
			name: "below min requests at total loss",
			cfg:  def,
			st:   windowStats{span: span, settled: 19, lost: 19},
		},
		{
			name: "nothing settled",
			cfg:  anyLoss,
			st:   windowStats{span: span},
		},
		{
			name: "loss at the threshold",
			cfg:  def,
			st:   windowStats{span: span, settled: 20, lost: 2, answered: 18},
		},
		{
			name: "loss at the threshold, larger window",
			cfg:  def,
			st:   windowStats{span: span, settled: 30, lost: 3, answered: 27},
		},
		{
			name:   "loss above the threshold",
			cfg:    def,
			st:     windowStats{span: span, settled: 20, lost: 3, answered: 17},
			reason: telemetry.EjectLoss,
			why:    []string{"lost 3 of 20", "15.0%", "10s", "more than 10.0%"},
		},
		{
			name:   "loss just above the threshold",
			cfg:    def,
			st:     windowStats{span: span, settled: 1000, lost: 101, answered: 899},
			reason: telemetry.EjectLoss,
			why:    []string{"lost 101 of 1000", "more than 10.0%"},
		},
		{
			name: "max loss ratio 1 never ejects on loss",
			cfg:  never,
			st:   windowStats{span: span, settled: 50, lost: 50},
		},
		{
			name:   "max loss ratio 0 ejects on one lost",
			cfg:    anyLoss,
			st:     windowStats{span: span, settled: 20, lost: 1, answered: 19},
			reason: telemetry.EjectLoss,
		},
		{
			name: "max loss ratio 0 keeps a lossless backend",
			cfg:  anyLoss,
			st:   windowStats{span: span, settled: 20, answered: 20},
		},
		{
			name: "max p99 0 never ejects on latency",
			cfg:  def,
			st:   windowStats{span: span, settled: 100, answered: 100, p99: 10, hasP99: true},
		},
		{
			name:   "p99 above the limit",
			cfg:    withP99,
			st:     windowStats{span: span, settled: 20, answered: 20, p99: ms(20), p99Low: ms(20) / bucketWidth, hasP99: true},
			reason: telemetry.EjectLatency,
			why:    []string{"p99 RTT over 18.", "20 replies", "more than 10ms"},
		},
		{
			name: "p99 at the limit",
			cfg:  withP99,
			st:   windowStats{span: span, settled: 20, answered: 20, p99: ms(10), p99Low: ms(10) / bucketWidth, hasP99: true},
		},
		{
			name: "p99 below the limit",
			cfg:  withP99,
			st:   windowStats{span: span, settled: 100, answered: 100, p99: ms(9), p99Low: ms(9) / bucketWidth, hasP99: true},
		},
		{
			// Enough settled to judge loss, too few replies to trust a p99.
			name: "p99 above the limit on too few replies",
			cfg:  withP99,
			st:   windowStats{span: span, settled: 20, lost: 1, answered: 19, p99: ms(20), p99Low: ms(20) / bucketWidth, hasP99: true},
		},
		{
			name: "no p99",
			cfg:  withP99,
			st:   windowStats{span: span, settled: 20, answered: 20, p99: ms(20)},
		},
		{
			name:   "loss before latency",
			cfg:    withP99,
			st:     windowStats{span: span, settled: 25, lost: 5, answered: 20, p99: ms(20), p99Low: ms(20) / bucketWidth, hasP99: true},
			reason: telemetry.EjectLoss,
			why:    []string{"lost 5 of 25"},
		},
		{
			name:   "latency when loss is within bounds",
			cfg:    withP99,
			st:     windowStats{span: span, settled: 25, lost: 2, answered: 23, p99: ms(20), p99Low: ms(20) / bucketWidth, hasP99: true},
			reason: telemetry.EjectLatency,
			why:    []string{"23 replies"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reason, why := judgeOutlier(tc.cfg, tc.st)
			if reason != tc.reason {
				t.Fatalf("judgeOutlier(%+v) = %q (%s), want %q", tc.st, reason, why, tc.reason)
			}
			if reason == "" && why != "" {
				t.Errorf("kept with a why: %q", why)
			}
			if reason != "" && why == "" {
				t.Errorf("ejected (%s) without a why", reason)
			}
			for _, s := range tc.why {
				if !strings.Contains(why, s) {
					t.Errorf("why %q does not say %q", why, s)
				}
			}
		})
	}
}

func TestEjectionTime(t *testing.T) {
	def := config.DefaultOutlier() // 30 s, capped at 300 s
	long := def
	long.BaseEjectionTime, long.MaxEjectionTime = time.Second, config.MaxEjectionTime
	for _, tc := range []struct {
		cfg  config.Outlier
		n    int
		want time.Duration
	}{
		{def, math.MinInt, 30 * time.Second},
		{def, -1, 30 * time.Second},
		{def, 0, 30 * time.Second},
		{def, 1, 30 * time.Second},
		{def, 2, 60 * time.Second},
		{def, 9, 270 * time.Second},
		{def, 10, 300 * time.Second},
		{def, 11, 300 * time.Second},
		{def, 1 << 20, 300 * time.Second},
		// 30 s × n overflows an int64 of nanoseconds from n ≈ 3.1e8.
		{def, 1 << 34, 300 * time.Second},
		{def, 1 << 62, 300 * time.Second},
		{def, math.MaxInt / 2, 300 * time.Second},
		{def, math.MaxInt, 300 * time.Second},
		{long, 86400, 24 * time.Hour},
		{long, 86401, 24 * time.Hour},
		{long, math.MaxInt, 24 * time.Hour},
	} {
		if got := ejectionTime(tc.cfg, tc.n); got != tc.want {
			t.Errorf("ejectionTime(base %s, max %s, n %d) = %s, want %s",
				tc.cfg.BaseEjectionTime, tc.cfg.MaxEjectionTime, tc.n, got, tc.want)
		}
	}
	// Overflow wraps to any value, small positive ones included: no huge
	// n may come out under the cap.
	for _, base := range []time.Duration{time.Second, 7 * time.Second, 30 * time.Second, time.Hour} {
		cfg := config.Outlier{BaseEjectionTime: base, MaxEjectionTime: config.MaxEjectionTime}
		for n := math.MaxInt; n > math.MaxInt-1000; n-- {
			if got := ejectionTime(cfg, n); got != config.MaxEjectionTime {
				t.Fatalf("ejectionTime(base %s, n %d) = %s, want the cap %s", base, n, got, config.MaxEjectionTime)
			}
		}
	}
}

func TestMaxEjected(t *testing.T) {
	for _, tc := range []struct{ pct, n, want int }{
		{0, 10, 0},
		{0, 1, 0},
		{10, 1, 1},
		{50, 1, 1},
		{10, 5, 1},
		{50, 2, 1},
		{50, 3, 1},
		{50, 10, 5},
		{10, 25, 2},
		{100, 3, 3},
		{100, 1, 1},
		{50, 0, 0},
		{100, 0, 0},
	} {
		if got := maxEjected(tc.pct, tc.n); got != tc.want {
			t.Errorf("maxEjected(%d%%, %d backends) = %d, want %d", tc.pct, tc.n, got, tc.want)
		}
	}
}

// TestEjectionTimeline drives one backend's ejection state through a
// timeline: ejections grow with each consecutive one up to the cap, and the
// multiplier decays one per window back in service.
func TestEjectionTimeline(t *testing.T) {
	cfg := config.DefaultOutlier()
	cfg.Window = 10 * time.Second
	cfg.BaseEjectionTime = 30 * time.Second
	cfg.MaxEjectionTime = 75 * time.Second
	const (
		observe = "observe"
		eject   = "eject"
		tick    = "tick"
	)
	type step struct {
		at       int
		op       string
		returned bool // what tick says
		ejected  bool
		until    int // seconds, when ejected
		mult     int
		samples  int
	}
	steps := []step{
		{at: 0, op: observe, samples: 1},
		{at: 1, op: observe, samples: 2},
		{at: 2, op: eject, ejected: true, until: 32, mult: 1},
		{at: 3, op: tick, ejected: true, until: 32, mult: 1},
		// Sampled while out: what it did then is no ground to judge it on
		// its return either.
		{at: 10, op: observe, ejected: true, until: 32, mult: 1, samples: 1},
		{at: 20, op: observe, ejected: true, until: 32, mult: 1, samples: 2},
		// No decay while out of service.
		{at: 31, op: tick, ejected: true, until: 32, mult: 1, samples: 2},
		{at: 32, op: tick, returned: true, mult: 1},
		{at: 33, op: tick, mult: 1},
		// Judged afresh: one sample since its return is no window.
		{at: 33, op: observe, mult: 1, samples: 1},
		{at: 40, op: eject, ejected: true, until: 100, mult: 2},
		{at: 100, op: tick, returned: true, mult: 2},
		{at: 109, op: tick, mult: 2},
		{at: 110, op: tick, mult: 1},
		{at: 115, op: tick, mult: 1},
		{at: 119, op: tick, mult: 1},
		{at: 120, op: tick, mult: 0},
		{at: 130, op: tick, mult: 0},
		{at: 200, op: tick, mult: 0},
		{at: 205, op: eject, ejected: true, until: 235, mult: 1},
		{at: 235, op: tick, returned: true, mult: 1},
		{at: 236, op: eject, ejected: true, until: 296, mult: 2},
		{at: 296, op: tick, returned: true, mult: 2},
		// 3 × 30 s is over the 75 s cap.
		{at: 297, op: eject, ejected: true, until: 372, mult: 3},
		{at: 372, op: tick, returned: true, mult: 3},
		// At the cap the multiplier stops growing: more ejections would
		// only add windows to wait out before it comes back down.
		{at: 373, op: eject, ejected: true, until: 448, mult: 3},
		{at: 448, op: tick, returned: true, mult: 3},
		{at: 458, op: tick, mult: 2},
	}
	var e ejection
	n := uint64(0)
	for _, s := range steps {
		now := outlierAt(s.at)
		returned := false
		switch s.op {
		case observe:
			n += 10
			e.observe(sample{at: now, answered: n}, cfg.Window)
		case eject:
			e.eject(cfg, now, telemetry.EjectLoss, "lost a lot")
		case tick:
			returned = e.tick(cfg, now)
		}
		if returned != s.returned {
			t.Errorf("t=%ds %s: returned %v, want %v", s.at, s.op, returned, s.returned)
		}
		if e.ejected != s.ejected {
			t.Errorf("t=%ds %s: ejected %v, want %v", s.at, s.op, e.ejected, s.ejected)
		}
		if s.ejected && !e.until.Equal(outlierAt(s.until)) {
			t.Errorf("t=%ds %s: until t=%s, want t=%ds", s.at, s.op, e.until.Sub(outlierEpoch), s.until)
		}
		if e.multiplier != s.mult {
			t.Errorf("t=%ds %s: multiplier %d, want %d", s.at, s.op, e.multiplier, s.mult)
		}
		if len(e.samples) != s.samples {
			t.Errorf("t=%ds %s: %d samples, want %d", s.at, s.op, len(e.samples), s.samples)
		}
		if s.op == eject && (e.reason != telemetry.EjectLoss || e.why != "lost a lot") {
			t.Errorf("t=%ds eject: reason %q why %q", s.at, e.reason, e.why)
		}
	}
}

// TestEjectionObserveKeepsWindow: a backend sampled every second for long
// keeps only what its window needs, and the window still spans all of w.
func TestEjectionObserveKeepsWindow(t *testing.T) {
	const w = 10 * time.Second
	var e ejection
	for sec := 0; sec <= 300; sec++ {
		e.observe(outlierSample(sec, uint64(10*sec), uint64(sec), nil), w)
		if len(e.samples) > 12 {
			t.Fatalf("t=%ds: %d samples kept for a %s window of 1 s samples", sec, len(e.samples), w)
		}
		st, ok := windowOf(e.samples, w)
		if wantOK := sec >= 5; ok != wantOK {
			t.Fatalf("t=%ds: windowOf ok = %v, want %v", sec, ok, wantOK)
		}
		if want := min(time.Duration(sec)*time.Second, w); ok && (st.span != want || st.answered != uint64(want/time.Second)*10) {
			t.Fatalf("t=%ds: window %+v, want a span of %s", sec, st, want)
		}
	}
}

// TestOutlierController runs the agent's loop once a second over a backend
// that answers 10 requests/s, then from t=20s loses half of them, at the
// default settings: it must be ejected within a window (and the second it
// takes to sample) of the loss starting, never before; after its return it
// must be judged on fresh samples only, then ejected again for twice as
// long.
func TestOutlierController(t *testing.T) {
	cfg := config.DefaultOutlier()
	const lossFrom = 20
	var (
		e                  ejection
		answered, lost     uint64
		ejectedAt          []int
		returnedAt         []int
		lastEjectionLength time.Duration
	)
	for sec := 0; sec <= 200 && len(ejectedAt) < 2; sec++ {
		now := outlierAt(sec)
		// Counters at sec cover the second that ends then.
		if sec > lossFrom {
			answered += 5
			lost += 5
		} else if sec > 0 {
			answered += 10
		}
		if e.tick(cfg, now) {
			returnedAt = append(returnedAt, sec)
		}
		if e.ejected {
			continue
		}
		e.observe(sample{at: now, answered: answered, lost: lost,
			rtt: rttHist(map[int]uint64{80: answered})}, cfg.Window)
		st, ok := windowOf(e.samples, cfg.Window)
		if !ok {
			continue
		}
		reason, why := judgeOutlier(cfg, st)
		if reason == "" {
			continue
		}
		if reason != telemetry.EjectLoss {
			t.Fatalf("t=%ds: ejected for %q (%s), want %q", sec, reason, why, telemetry.EjectLoss)
		}
		e.eject(cfg, now, reason, why)
		ejectedAt = append(ejectedAt, sec)
		lastEjectionLength = e.until.Sub(now)
		t.Logf("t=%ds: ejected for %s: %s", sec, lastEjectionLength, why)
	}
	if len(ejectedAt) == 0 {
		t.Fatalf("never ejected a backend losing half its requests from t=%ds", lossFrom)
	}
	first := ejectedAt[0]
	t.Logf("ejected %ds after the loss started (limit %s + 1s)", first-lossFrom, cfg.Window)
	if first <= lossFrom {
		t.Errorf("ejected at t=%ds, before any loss (from t=%ds)", first, lossFrom)
	}
	if limit := lossFrom + int((cfg.Window+time.Second)/time.Second); first > limit {
		t.Errorf("ejected at t=%ds, want by t=%ds", first, limit)
	}
	if len(returnedAt) == 0 || returnedAt[0] != first+int(cfg.BaseEjectionTime/time.Second) {
		t.Fatalf("returned at %v, want t=%ds (base ejection time after t=%ds)", returnedAt, first+int(cfg.BaseEjectionTime/time.Second), first)
	}
	if len(ejectedAt) < 2 {
		t.Fatalf("still losing half, never ejected again after its return at t=%ds", returnedAt[0])
	}
	back, again := returnedAt[0], ejectedAt[1]
	t.Logf("returned at t=%ds, ejected again at t=%ds", back, again)
	// The first window after its return must span half the window of
	// samples taken since.
	if min := back + int(cfg.Window/2/time.Second); again < min {
		t.Errorf("ejected again at t=%ds, before a fresh half window (t=%ds)", again, min)
	}
	if max := back + int((cfg.Window+time.Second)/time.Second); again > max {
		t.Errorf("ejected again at t=%ds, want by t=%ds", again, max)
	}
	if want := 2 * cfg.BaseEjectionTime; lastEjectionLength != want {
		t.Errorf("second ejection lasts %s, want %s", lastEjectionLength, want)
	}
}

// TestOutlierLatencyBucketStraddlesLimit judges replies measured by the data
// plane's histogram against --outlier.max-p99-rtt 10ms: replies all at
// 9.5 ms have a p99 under the limit, replies all in the bucket above it one
// over it.
func TestOutlierLatencyBucketStraddlesLimit(t *testing.T) {
	cfg := config.DefaultOutlier()
	cfg.MaxP99RTT = 10 * time.Millisecond
	bucketOf := func(d time.Duration) int {
		return 160 + int(math.Ceil(math.Log2(d.Seconds())*8))
	}
	for _, tc := range []struct {
		name   string
		rtt    time.Duration
		reason string
	}{
		{name: "all replies under the limit", rtt: 9500 * time.Microsecond},
		{name: "all replies in the bucket past the limit", rtt: 10200 * time.Microsecond, reason: telemetry.EjectLatency},
		{name: "all replies well over the limit", rtt: 20 * time.Millisecond, reason: telemetry.EjectLatency},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := bucketOf(tc.rtt)
			h := rttHist(nil)
			if lo, hi := h.UpperBound(k-1), h.UpperBound(k); tc.rtt.Seconds() <= lo || tc.rtt.Seconds() > hi {
				t.Fatalf("%s is not in bucket %d (%g, %g]", tc.rtt, k, lo, hi)
			}
			samples := []sample{
				outlierSample(0, 0, 0, map[int]uint64{}),
				outlierSample(10, 100, 0, map[int]uint64{k: 100}),
			}
			st, ok := windowOf(samples, cfg.Window)
			if !ok {
				t.Fatalf("no window of %+v", samples)
			}
			reason, why := judgeOutlier(cfg, st)
			if reason != tc.reason {
				t.Errorf("every reply took %s, limit %s, bucket %d (%.3fms, %.3fms]: judged %q (%s), want %q: "+
					"the p99 compared with the limit is its bucket's upper bound, so a bucket straddling the "+
					"limit ejects backends whose every reply is under it",
					tc.rtt, cfg.MaxP99RTT, k, h.UpperBound(k-1)*1000, h.UpperBound(k)*1000, reason, why, tc.reason)
			}
		})
	}
}
