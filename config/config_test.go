// SPDX-License-Identifier: MIT

package config

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// backends are addrs at DefaultWeight, as --backend gives them.
func backends(addrs ...string) []Backend {
	var bs []Backend
	for _, a := range addrs {
		bs = append(bs, Backend{Addr: netip.MustParseAddr(a), Weight: DefaultWeight})
	}
	return bs
}

// seedConfig is the seed topology's configuration with every default.
func seedConfig() Config {
	c := Default()
	c.Iface = "eth0"
	c.VIP = netip.MustParseAddr("10.0.0.100")
	c.Backends = backends("10.0.0.2", "10.0.0.3")
	return c
}

func TestConfigDefaultsValid(t *testing.T) {
	if err := seedConfig().Validate(); err != nil {
		t.Fatalf("the defaults are refused: %v", err)
	}
}

// TestConfigValidate: one line per case, each refusal naming the flag, its
// variable and what is allowed. The first cases are those of issue 7
// defect 9.
func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Config)
		want []string // all in the error; none: accepted
	}{
		{"conntrack wraps uint32", func(c *Config) { c.ConntrackSize = 4294967297 }, []string{"--conntrack-size 4294967297 (ICMPLB_CONNTRACK_SIZE): must be 1024..16777216"}},
		{"conntrack 1e8", func(c *Config) { c.ConntrackSize = 100000000 }, []string{"--conntrack-size 100000000", "ICMPLB_CONNTRACK_SIZE", "1024..16777216"}},
		{"conntrack 0", func(c *Config) { c.ConntrackSize = 0 }, []string{"--conntrack-size 0 (ICMPLB_CONNTRACK_SIZE): must be 1024..16777216"}},
		{"loss timeout 0", func(c *Config) { c.LossTimeout = 0 }, []string{"--loss-timeout 0s (ICMPLB_LOSS_TIMEOUT): must be 10ms..30s"}},
		{"loss timeout 1ns", func(c *Config) { c.LossTimeout = time.Nanosecond }, []string{"--loss-timeout 1ns (ICMPLB_LOSS_TIMEOUT): must be 10ms..30s"}},
		{"nat idle 0", func(c *Config) { c.NATIdle = 0 }, []string{"--nat-idle 0s (ICMPLB_NAT_IDLE): must be 1s..1h"}},
		{"inflight 0", func(c *Config) { c.InflightSize = 0 }, []string{"--inflight-size 0 (ICMPLB_INFLIGHT_SIZE): must be 1024..16777216"}},
		{"inflight wraps uint32", func(c *Config) { c.InflightSize = 1<<32 + 1024 }, []string{"--inflight-size", "ICMPLB_INFLIGHT_SIZE"}},
		{"conntrack 1023", func(c *Config) { c.ConntrackSize = 1023 }, []string{"--conntrack-size 1023"}},
		{"conntrack 2^24+1", func(c *Config) { c.ConntrackSize = 1<<24 + 1 }, []string{"--conntrack-size 16777217"}},
		{"loss timeout 9ms", func(c *Config) { c.LossTimeout = 9 * time.Millisecond }, []string{"--loss-timeout 9ms"}},
		{"loss timeout 31s", func(c *Config) { c.LossTimeout = 31 * time.Second }, []string{"--loss-timeout 31s"}},
		{"nat idle 999ms", func(c *Config) { c.NATIdle = 999 * time.Millisecond }, []string{"--nat-idle 999ms", "1s..1h"}},
		{"nat idle 2h", func(c *Config) { c.NATIdle = 2 * time.Hour }, []string{"--nat-idle 2h (ICMPLB_NAT_IDLE)"}},
		{"nat idle under 2x loss", func(c *Config) { c.NATIdle, c.LossTimeout = 10*time.Second, 6*time.Second }, []string{"--nat-idle 10s (ICMPLB_NAT_IDLE)", "twice --loss-timeout 6s", "12s"}},
		{"maglev 0", func(c *Config) { c.MaglevSize = 0 }, []string{"--maglev-size 0 (ICMPLB_MAGLEV_SIZE)", "prime in 2..131071"}},
		{"maglev not prime", func(c *Config) { c.MaglevSize = 65536 }, []string{"--maglev-size 65536", "prime"}},
		{"maglev too large", func(c *Config) { c.MaglevSize = 1048573 }, []string{"--maglev-size 1048573", "..131071"}},
		{"maglev below backends", func(c *Config) { c.MaglevSize = 2; c.Backends = append(c.Backends, backends("10.0.0.4")...) }, []string{"prime in 3..131071"}},
		{"trace sample negative", func(c *Config) { c.TraceSample = -1 }, []string{"--trace.sample -1 (ICMPLB_TRACE_SAMPLE)", "0 disables"}},
		{"trace sample wraps", func(c *Config) { c.TraceSample = 1<<32 + 1 }, []string{"--trace.sample 4294967297"}},
		{"trace buffer 0", func(c *Config) { c.TraceBufferSize = 0 }, []string{"--trace.buffer-size 0 (ICMPLB_TRACE_BUFFER_SIZE)", "power of two"}},
		{"trace buffer not power", func(c *Config) { c.TraceBufferSize = 3 << 12 }, []string{"--trace.buffer-size 12288"}},
		{"trace buffer 2^29", func(c *Config) { c.TraceBufferSize = 1 << 29 }, []string{"..268435456"}},
		{"xdp mode empty", func(c *Config) { c.XDPMode = "" }, []string{`--xdp-mode "" (ICMPLB_XDP_MODE)`}},
		{"neigh interval negative", func(c *Config) { c.NeighInterval = -time.Second }, []string{"neighbour check interval"}},
		{"no iface", func(c *Config) { c.Iface = "" }, []string{"--iface (ICMPLB_IFACE)"}},
		{"no backends", func(c *Config) { c.Backends = nil }, []string{"no backends", "--backend (ICMPLB_BACKENDS"}},
		{"backend twice", func(c *Config) { c.Backends[1] = c.Backends[0] }, []string{"backend 10.0.0.2 is given twice (--backend, ICMPLB_BACKENDS)"}},
		{"backend is VIP", func(c *Config) { c.Backends[1].Addr = c.VIP }, []string{"backend 10.0.0.100 is the VIP"}},
		{"backend 0/8", func(c *Config) { c.Backends[1].Addr = netip.MustParseAddr("0.1.2.3") }, []string{"backend 0.1.2.3 is not a unicast host address (--backend, ICMPLB_BACKENDS)"}},
		{"backend limited broadcast", func(c *Config) { c.Backends[1].Addr = netip.MustParseAddr("255.255.255.255") }, []string{"not a unicast"}},
		{"backend class E", func(c *Config) { c.Backends[1].Addr = netip.MustParseAddr("240.0.0.1") }, []string{"not a unicast"}},
		{"VIP loopback IPv6", func(c *Config) { c.VIP = netip.MustParseAddr("::1") }, []string{"VIP ::1 is not a unicast host address (--vip, ICMPLB_VIP)"}},
		{"VIP IPv6, backends IPv4", func(c *Config) { c.VIP = netip.MustParseAddr("2001:db8::100") }, []string{"backend 10.0.0.2 is IPv4, the VIP 2001:db8::100 is IPv6 (--backend, ICMPLB_BACKENDS); a service is one family"}},
		{"SNAT IPv6, VIP IPv4", func(c *Config) { c.SNAT = netip.MustParseAddr("2001:db8::101") }, []string{"SNAT address 2001:db8::101 is IPv6, the VIP 10.0.0.100 is IPv4 (--snat, ICMPLB_SNAT)"}},
		{"backend link-local", func(c *Config) {
			c.VIP, c.Backends = netip.MustParseAddr("2001:db8::100"), backends("2001:db8::2", "fe80::3")
		}, []string{"backend fe80::3 is link-local (--backend, ICMPLB_BACKENDS)"}},
		{"SNAT multicast", func(c *Config) { c.SNAT = netip.MustParseAddr("224.0.0.1") }, []string{"SNAT address 224.0.0.1", "--snat, ICMPLB_SNAT"}},

		{"outlier window 1s", func(c *Config) { c.Outlier.Window = time.Second }, []string{"--outlier.window 1s (ICMPLB_OUTLIER_WINDOW): must be 2s..300s"}},
		{"outlier window 301s", func(c *Config) { c.Outlier.Window = 301 * time.Second }, []string{"--outlier.window 301s"}},
		{"outlier min requests 0", func(c *Config) { c.Outlier.MinRequests = 0 }, []string{"--outlier.min-requests 0 (ICMPLB_OUTLIER_MIN_REQUESTS): must be 1..1000000"}},
		{"outlier loss ratio negative", func(c *Config) { c.Outlier.MaxLossRatio = -0.1 }, []string{"--outlier.max-loss-ratio -0.1 (ICMPLB_OUTLIER_MAX_LOSS_RATIO): must be 0..1"}},
		{"outlier loss ratio NaN", func(c *Config) { c.Outlier.MaxLossRatio = math.NaN() }, []string{"--outlier.max-loss-ratio NaN"}},
		{"outlier p99 at loss timeout", func(c *Config) { c.Outlier.MaxP99RTT = c.LossTimeout }, []string{"--outlier.max-p99-rtt 1s (ICMPLB_OUTLIER_MAX_P99_RTT): must be 0 (off) or at least 1ms and below --loss-timeout 1s"}},
		{"outlier p99 under 1ms", func(c *Config) { c.Outlier.MaxP99RTT = time.Millisecond - 1 }, []string{"--outlier.max-p99-rtt 999.999µs"}},
		{"outlier p99 negative", func(c *Config) { c.Outlier.MaxP99RTT = -time.Second }, []string{"--outlier.max-p99-rtt -1s"}},
		{"outlier base 0", func(c *Config) { c.Outlier.BaseEjectionTime = 0 }, []string{"--outlier.base-ejection-time 0s (ICMPLB_OUTLIER_BASE_EJECTION_TIME): must be 1s..24h"}},
		{"outlier max 25h", func(c *Config) { c.Outlier.MaxEjectionTime = 25 * time.Hour }, []string{"--outlier.max-ejection-time 25h (ICMPLB_OUTLIER_MAX_EJECTION_TIME): must be 1s..24h"}},
		{"outlier max below base", func(c *Config) { c.Outlier.MaxEjectionTime = 29 * time.Second }, []string{"--outlier.max-ejection-time 29s (ICMPLB_OUTLIER_MAX_EJECTION_TIME): must be at least --outlier.base-ejection-time 30s"}},
		{"outlier percent 101", func(c *Config) { c.Outlier.MaxEjectionPercent = 101 }, []string{"--outlier.max-ejection-percent 101 (ICMPLB_OUTLIER_MAX_EJECTION_PERCENT): must be 0..100"}},
		{"outlier percent negative", func(c *Config) { c.Outlier.MaxEjectionPercent = -1 }, []string{"--outlier.max-ejection-percent -1"}},
		{"probe interval 99ms", func(c *Config) { c.Probe.Interval = 99 * time.Millisecond }, []string{"--probe.interval 99ms (ICMPLB_PROBE_INTERVAL): must be 100ms..60s (0 disables probes)"}},
		{"probe interval 61s", func(c *Config) { c.Probe.Interval = 61 * time.Second }, []string{"--probe.interval 61s"}},
		{"probe interval negative", func(c *Config) { c.Probe.Interval = -time.Second }, []string{"--probe.interval -1s"}},
		{"probe timeout 9ms", func(c *Config) { c.Probe.Timeout = 9 * time.Millisecond }, []string{"--probe.timeout 9ms (ICMPLB_PROBE_TIMEOUT): must be 10ms..60s"}},
		{"probe timeout over interval", func(c *Config) { c.Probe.Interval = 500 * time.Millisecond }, []string{"--probe.timeout 1s (ICMPLB_PROBE_TIMEOUT): must be at most --probe.interval 500ms"}},
		{"probe rise 0", func(c *Config) { c.Probe.Rise = 0 }, []string{"--probe.rise 0 (ICMPLB_PROBE_RISE): must be 1..100"}},
		{"probe fall 101", func(c *Config) { c.Probe.Fall = 101 }, []string{"--probe.fall 101 (ICMPLB_PROBE_FALL): must be 1..100"}},
		{"all down empty", func(c *Config) { c.AllDown = "" }, []string{`--all-down "" (ICMPLB_ALL_DOWN): must be fail-open or pass`}},
		{"probes off leave the rest unchecked", func(c *Config) { c.Probe = Probe{Interval: 0, Timeout: -1, Rise: 0, Fall: 1000} }, nil},
		{"p99 just below the loss timeout", func(c *Config) { c.Outlier.MaxP99RTT = c.LossTimeout - 1 }, nil},

		{"bounds accepted low", func(c *Config) {
			c.ConntrackSize, c.InflightSize, c.LossTimeout, c.NATIdle = MinMapSize, MinMapSize, MinLossTimeout, MinNATIdle
			c.MaglevSize, c.TraceBufferSize = 2, minTraceBuffer()
			c.Backends = c.Backends[:1]
		}, nil},
		{"bounds accepted high", func(c *Config) {
			c.ConntrackSize, c.InflightSize, c.LossTimeout, c.NATIdle = MaxMapSize, MaxMapSize, MaxLossTimeout, MaxNATIdle
			c.MaglevSize, c.TraceSample, c.TraceBufferSize = MaxMaglevSize, MaxTraceSample, MaxTraceBuffer
		}, nil},
		{"max loss timeout with default nat idle", func(c *Config) { c.LossTimeout = MaxLossTimeout }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := seedConfig()
			tc.set(&c)
			err := c.Validate()
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == nil:
				return
			case err == nil:
				t.Fatalf("accepted, want an error with %q", tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
