// SPDX-License-Identifier: MIT

package config

import "time"

// Outlier is passive outlier ejection: a backend whose measured loss or p99
// RTT over Window is too high leaves its service's table for new sessions,
// and its running sessions move to the other backends, for an ejection time
// that grows with consecutive ejections (Envoy's base_ejection_time ×
// ejections, capped at MaxEjectionTime).
type Outlier struct {
	// Window is how far back loss and RTT are judged.
	Window time.Duration `name:"outlier.window" default:"${outlier_window}" env:"ICMPLB_OUTLIER_WINDOW" help:"Loss and RTT are judged over this window, ${outlier_window_min}..${outlier_window_max}."`
	// MinRequests is the least settled requests in Window to judge on.
	MinRequests int `name:"outlier.min-requests" default:"${outlier_min_requests}" env:"ICMPLB_OUTLIER_MIN_REQUESTS" help:"Least requests answered or lost within the window for a backend to be judged, 1..${outlier_min_requests_max}."`
	// MaxLossRatio ejects a backend that lost more than this share of its
	// settled requests in Window; 1 never ejects on loss.
	MaxLossRatio float64 `name:"outlier.max-loss-ratio" default:"${outlier_max_loss_ratio}" env:"ICMPLB_OUTLIER_MAX_LOSS_RATIO" help:"Eject a backend that lost more than this share of its requests within the window, 0..1 (1: never on loss)."`
	// MaxP99RTT ejects a backend whose p99 RTT in Window exceeds it; 0
	// never ejects on latency.
	MaxP99RTT time.Duration `name:"outlier.max-p99-rtt" default:"${outlier_max_p99_rtt}" env:"ICMPLB_OUTLIER_MAX_P99_RTT" help:"Eject a backend whose p99 RTT within the window exceeds this, ${outlier_max_p99_rtt_min} up to below --loss-timeout; 0: never on latency."`
	// BaseEjectionTime is the first ejection's length; the n-th
	// consecutive one lasts n times it.
	BaseEjectionTime time.Duration `name:"outlier.base-ejection-time" default:"${outlier_base_ejection}" env:"ICMPLB_OUTLIER_BASE_EJECTION_TIME" help:"An ejected backend returns after this times its consecutive ejections, ${outlier_ejection_min}..${outlier_ejection_max}."`
	// MaxEjectionTime caps an ejection's length.
	MaxEjectionTime time.Duration `name:"outlier.max-ejection-time" default:"${outlier_max_ejection}" env:"ICMPLB_OUTLIER_MAX_EJECTION_TIME" help:"Longest ejection, at least --outlier.base-ejection-time and at most ${outlier_ejection_max}."`
	// MaxEjectionPercent bounds the share of a service's backends ejected
	// at once; one backend may always be ejected. 0 disables ejection.
	MaxEjectionPercent int `name:"outlier.max-ejection-percent" default:"${outlier_max_ejection_percent}" env:"ICMPLB_OUTLIER_MAX_EJECTION_PERCENT" help:"Most of a service's backends ejected at once, in percent, 0..100 (one may always be; 0 disables ejection)."`
}

// Probe is active health checking: the agent pings each backend of a
// service every Interval; Fall consecutive failures take it out, Rise
// consecutive successes bring it back.
type Probe struct {
	// Interval between probes of one backend; 0 disables probing.
	Interval time.Duration `name:"probe.interval" default:"${probe_interval}" env:"ICMPLB_PROBE_INTERVAL" help:"Ping each backend this often, ${probe_interval_min}..${probe_interval_max}; 0 disables probes."`
	// Timeout is how long a probe waits for its reply.
	Timeout time.Duration `name:"probe.timeout" default:"${probe_timeout}" env:"ICMPLB_PROBE_TIMEOUT" help:"A probe unanswered this long fails, ${probe_timeout_min}..--probe.interval."`
	// Rise is the consecutive successes that bring a failed backend back.
	Rise int `name:"probe.rise" default:"${probe_rise}" env:"ICMPLB_PROBE_RISE" help:"Consecutive answered probes that bring a backend back, 1..${probe_count_max}."`
	// Fall is the consecutive failures that take a backend out.
	Fall int `name:"probe.fall" default:"${probe_fall}" env:"ICMPLB_PROBE_FALL" help:"Consecutive failed probes that take a backend out, 1..${probe_count_max}."`
}

// What a service does when none of its backends is healthy
// (Service.AllDown).
const (
	// AllDownFailOpen spreads sessions over every backend that answers
	// ARP, healthy or not, as Envoy's panic threshold does.
	AllDownFailOpen = "fail-open"
	// AllDownPass passes the service's requests to the kernel.
	AllDownPass = "pass"
)

// Defaults and bounds of Outlier and Probe.
const (
	// DefaultOutlierWindow is Envoy's outlier detection interval: ten
	// 1-second pings of one session, enough to tell loss from a blip.
	DefaultOutlierWindow = 10 * time.Second
	MinOutlierWindow     = 2 * time.Second
	MaxOutlierWindow     = 5 * time.Minute
	// DefaultOutlierMinRequests: with fewer, one lost ping is 10% or more
	// and noise would eject.
	DefaultOutlierMinRequests = 20
	MaxOutlierMinRequests     = 1_000_000
	// DefaultOutlierMaxLossRatio: a healthy path loses well under 1%; 10%
	// over at least 20 requests (3 or more lost) is not chance.
	DefaultOutlierMaxLossRatio = 0.1
	// DefaultOutlierMaxP99RTT is off: a normal RTT depends on the path (µs
	// on a LAN, 100s of ms across continents), so no limit fits everyone.
	DefaultOutlierMaxP99RTT = 0
	// MinOutlierMaxP99RTT: a loaded kernel adds a few ms to a LAN round
	// trip (see MinLossTimeout), so a lower limit would eject on noise.
	// The limit must also stay below --loss-timeout: a later reply counts
	// as lost and its RTT is never measured (Config.Validate checks it).
	MinOutlierMaxP99RTT = time.Millisecond
	// DefaultBaseEjectionTime and DefaultMaxEjectionTime are Envoy's.
	DefaultBaseEjectionTime = 30 * time.Second
	DefaultMaxEjectionTime  = 300 * time.Second
	MinEjectionTime         = time.Second
	MaxEjectionTime         = 24 * time.Hour
	// DefaultMaxEjectionPercent: half, so that with two backends one may
	// go, and a fault seen on most backends (more likely the balancer's
	// side or the network) ejects no more than half.
	DefaultMaxEjectionPercent = 50

	// DefaultProbeInterval, Timeout, Rise and Fall are keepalived's and
	// HAProxy's usual values: a dead backend is out within 3 s, back 2 s
	// after it answers again.
	DefaultProbeInterval = time.Second
	MinProbeInterval     = 100 * time.Millisecond
	MaxProbeInterval     = time.Minute
	DefaultProbeTimeout  = time.Second
	MinProbeTimeout      = 10 * time.Millisecond
	DefaultProbeRise     = 2
	DefaultProbeFall     = 3
	MaxProbeCount        = 100

	// DefaultAllDown is fail-open: with every backend judged unhealthy
	// the likelier fault is the judge (the balancer's link, its prober, a
	// shared upstream), and a degraded answer beats none; passing to the
	// kernel would have this host answer pings for a service it cannot
	// reach, hiding the outage from the clients.
	DefaultAllDown = AllDownFailOpen
)

// DefaultOutlier is Outlier at its defaults.
func DefaultOutlier() Outlier {
	return Outlier{
		Window:             DefaultOutlierWindow,
		MinRequests:        DefaultOutlierMinRequests,
		MaxLossRatio:       DefaultOutlierMaxLossRatio,
		MaxP99RTT:          DefaultOutlierMaxP99RTT,
		BaseEjectionTime:   DefaultBaseEjectionTime,
		MaxEjectionTime:    DefaultMaxEjectionTime,
		MaxEjectionPercent: DefaultMaxEjectionPercent,
	}
}

// DefaultProbe is Probe at its defaults.
func DefaultProbe() Probe {
	return Probe{Interval: DefaultProbeInterval, Timeout: DefaultProbeTimeout, Rise: DefaultProbeRise, Fall: DefaultProbeFall}
}
