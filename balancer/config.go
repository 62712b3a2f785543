package balancer

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"time"

	"github.com/icmplb/icmplb/bpf"
)

// XDP attach modes accepted by Config.XDPMode.
const (
	ModeAuto    = "auto"
	ModeNative  = "native"
	ModeGeneric = "generic"
)

// Config is what the balancer needs to run on one interface. Start from
// DefaultConfig: a zero size or duration is refused, not read as "default".
type Config struct {
	// Iface is the interface clients and backends are reached through.
	Iface string
	// VIP is the virtual address clients ping.
	VIP netip.Addr
	// SNAT is the source address of requests sent to backends; the zero
	// value means the VIP.
	SNAT netip.Addr
	// Backends are the hosts echo requests are spread over.
	Backends []netip.Addr
	// XDPMode is ModeAuto, ModeNative or ModeGeneric.
	XDPMode string
	// MaglevSize is the number of Maglev slots, a prime.
	MaglevSize int
	// ConntrackSize is the capacity of each conntrack LRU map.
	ConntrackSize int
	// NATIdle is how long a ping session may stay silent before its NAT id
	// can be reused.
	NATIdle time.Duration
	// NeighInterval is how often backends' neighbour entries are checked.
	NeighInterval time.Duration
	// LossTimeout is how long a request waits for its reply before it
	// counts as lost.
	LossTimeout time.Duration
	// InflightSize bounds the requests awaiting replies.
	InflightSize int
	// TraceSample sends one exchange in TraceSample to the trace pipeline;
	// 0 disables tracing.
	TraceSample int
	// TraceBufferSize is the size of the kernel's trace ring buffer in bytes.
	TraceBufferSize int
	// BPFFS, when set, is a bpffs directory under which the conntrack maps
	// are pinned, so that sessions survive a restart of the agent.
	BPFFS string
}

// Defaults of Config: the CLI's flag defaults are these constants too
// (cmd/icmplb passes them to kong), so each default has one home.
const (
	DefaultConntrackSize = 65536
	DefaultNATIdle       = 60 * time.Second
	DefaultNeighInterval = time.Second
	DefaultLossTimeout   = time.Second
	DefaultInflightSize  = 262144
	DefaultTraceBuffer   = 1 << 20
	// MaxBackends bounds the backend index space of the data plane.
	MaxBackends = 1024
)

// Bounds of Config. Every int setting is bounded well inside uint32, the
// type the data plane takes, so that no value wraps on the way there.
const (
	// MaxMaglevSize is the first prime above 100 × MaxBackends, the size at
	// which even MaxBackends backends get shares within 1% of each other.
	// Larger tables buy nothing and cost time: every backend going up or
	// down rebuilds the table (measured with 1024 backends on a 2-core
	// machine: 65537 slots 47 ms, 1048573 slots 1.4 s).
	MaxMaglevSize = 131071

	// MinMapSize is the least capacity of the conntrack and in-flight maps.
	// LRU maps hand free entries to each CPU in batches of 128, so a map of
	// a few hundred entries evicts live sessions long before it is full.
	MinMapSize = 1024
	// MaxMapSize bounds the conntrack and in-flight maps. Their entries are
	// preallocated when the agent starts, ~90-100 bytes each (88 and 104
	// bytes per entry of ct_fwd and ct_rev by the kernel's memlock count),
	// so 2^24 entries are ~1.5 GiB per map. Measured on a 2-core machine
	// with all three maps at 2^24: 4.4 GiB, attached after 14 s, stopped in
	// under 2 s; at 2^25 the start took 35 s, and the 10^8 (~10 GiB
	// a map) took 77 s to stop. 2^24 sessions are also every NAT id of 256
	// backends, beyond any real need.
	MaxMapSize = 1 << 24

	// MinLossTimeout is far above what a healthy reply can take: a LAN
	// round trip is well under 1 ms, and the delays a loaded kernel adds to
	// it (softirq work deferred to ksoftirqd waits for the scheduler, a
	// tick is 4 ms at HZ=250) are a few ms. Below it healthy replies count
	// as lost; at 1 ns every one did.
	MinLossTimeout = 10 * time.Millisecond
	// MaxLossTimeout is the round value within bpf.MaxLossTimeout, the
	// longest the data plane's ring of epochs can wait before it counts a
	// request as lost.
	MaxLossTimeout = 30 * time.Second

	// MinNATIdle keeps a session's NAT id between two pings of `ping -i 1`.
	MinNATIdle = time.Second
	// MaxNATIdle bounds how long a NAT id stays with a client that left:
	// a backend has at most 65536 of them, and with hours of idle time
	// departed sessions hold them until new sessions find none
	// (nat_exhausted).
	MaxNATIdle = time.Hour

	// MaxTraceSample keeps "one in N" within the data plane's uint32.
	MaxTraceSample = math.MaxInt32
	// MinTraceBuffer is the kernel's least ring buffer: one page (the
	// bound takes the larger of this and the machine's page size).
	MinTraceBuffer = 4096
	// MaxTraceBuffer is 5 million events of 48 bytes: at most 65536 traced
	// requests await their reply in the pipeline (exporter.DefaultMaxPending),
	// so a larger buffer would only lock more kernel memory.
	MaxTraceBuffer = 1 << 28
)

// MaxLossTimeout must fit the data plane's epochs: a negative difference
// does not compile.
const _ = uint64(bpf.MaxLossTimeout - MaxLossTimeout)

// DefaultConfig returns a Config with every setting at its default; the
// caller adds the interface, the VIP and the backends.
func DefaultConfig() Config {
	return Config{
		XDPMode:         ModeAuto,
		MaglevSize:      DefaultMaglevSize,
		ConntrackSize:   DefaultConntrackSize,
		NATIdle:         DefaultNATIdle,
		NeighInterval:   DefaultNeighInterval,
		LossTimeout:     DefaultLossTimeout,
		InflightSize:    DefaultInflightSize,
		TraceBufferSize: DefaultTraceBuffer,
	}
}

// setDefaults fills in what the zero value documents: no SNAT address means
// the VIP. Sizes and durations have no such reading: a zero there is a
// mistake, and Validate says so.
func (c *Config) setDefaults() {
	if !c.SNAT.IsValid() {
		c.SNAT = c.VIP
	}
}

// setting names a setting as the user gives it: its flag and variable.
type setting struct{ flag, env string }

var (
	setIface       = setting{"--iface", "ICMPLB_IFACE"}
	setVIP         = setting{"--vip", "ICMPLB_VIP"}
	setSNAT        = setting{"--snat", "ICMPLB_SNAT"}
	setBackend     = setting{"--backend", "ICMPLB_BACKENDS"}
	setXDPMode     = setting{"--xdp-mode", "ICMPLB_XDP_MODE"}
	setMaglev      = setting{"--maglev-size", "ICMPLB_MAGLEV_SIZE"}
	setConntrack   = setting{"--conntrack-size", "ICMPLB_CONNTRACK_SIZE"}
	setInflight    = setting{"--inflight-size", "ICMPLB_INFLIGHT_SIZE"}
	setLossTimeout = setting{"--loss-timeout", "ICMPLB_LOSS_TIMEOUT"}
	setNATIdle     = setting{"--nat-idle", "ICMPLB_NAT_IDLE"}
	setTraceSample = setting{"--trace.sample", "ICMPLB_TRACE_SAMPLE"}
	setTraceBuffer = setting{"--trace.buffer-size", "ICMPLB_TRACE_BUFFER_SIZE"}
)

// errorf reports a bad value of s in one line: "--flag value (ENV): why".
func (s setting) errorf(value any, format string, args ...any) error {
	return fmt.Errorf("%s %v (%s): %s", s.flag, value, s.env, fmt.Sprintf(format, args...))
}

func (s setting) intIn(v, lo, hi int) error {
	if v < lo || v > hi {
		return s.errorf(v, "must be %d..%d", lo, hi)
	}
	return nil
}

func (s setting) durationIn(v, lo, hi time.Duration) error {
	if v < lo || v > hi {
		return s.errorf(fmtDuration(v), "must be %s..%s", fmtDuration(lo), fmtDuration(hi))
	}
	return nil
}

// fmtDuration writes whole hours as "1h" and whole seconds as "60s", as a
// user would type them, where Duration.String says "1h0m0s" and "1m0s".
func fmtDuration(d time.Duration) string {
	switch {
	case d != 0 && d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}

// minTraceBuffer is MinTraceBuffer or the page size where pages are larger:
// the kernel takes only whole pages for a ring buffer.
func minTraceBuffer() int { return max(MinTraceBuffer, os.Getpagesize()) }

// Validate reports the first problem of c in one line a user can act on,
// naming the flag and the variable that set it. It checks only c itself;
// the interface, its addresses and the kernel are checked by New.
func (c Config) Validate() error {
	c.setDefaults()
	if c.Iface == "" {
		return fmt.Errorf("no interface: set %s (%s)", setIface.flag, setIface.env)
	}
	if err := unicastV4("VIP", setVIP, c.VIP); err != nil {
		return err
	}
	if err := unicastV4("SNAT address", setSNAT, c.SNAT); err != nil {
		return err
	}
	if len(c.Backends) == 0 {
		return fmt.Errorf("no backends: give at least one %s (%s, comma-separated)", setBackend.flag, setBackend.env)
	}
	if len(c.Backends) > MaxBackends {
		return fmt.Errorf("%d backends given (%s, %s): at most %d are supported", len(c.Backends), setBackend.flag, setBackend.env, MaxBackends)
	}
	seen := make(map[netip.Addr]bool, len(c.Backends))
	for _, b := range c.Backends {
		if err := unicastV4("backend", setBackend, b); err != nil {
			return err
		}
		if seen[b] {
			return fmt.Errorf("backend %s is given twice (%s, %s)", b, setBackend.flag, setBackend.env)
		}
		seen[b] = true
		if b == c.VIP {
			return fmt.Errorf("backend %s is the VIP itself (%s, %s); a backend must be another host", b, setBackend.flag, setBackend.env)
		}
		if b == c.SNAT {
			return fmt.Errorf("backend %s is the SNAT address (%s, %s); a backend must be another host", b, setBackend.flag, setBackend.env)
		}
	}
	switch c.XDPMode {
	case ModeAuto, ModeNative, ModeGeneric:
	default:
		return setXDPMode.errorf(fmt.Sprintf("%q", c.XDPMode), "must be %s, %s or %s", ModeAuto, ModeNative, ModeGeneric)
	}
	// A table smaller than the backends cannot hold each of them.
	if lo := max(2, len(c.Backends)); c.MaglevSize < lo || c.MaglevSize > MaxMaglevSize || !isPrime(c.MaglevSize) {
		return setMaglev.errorf(c.MaglevSize, "must be a prime in %d..%d (%d is the default)", lo, MaxMaglevSize, DefaultMaglevSize)
	}
	if err := setConntrack.intIn(c.ConntrackSize, MinMapSize, MaxMapSize); err != nil {
		return err
	}
	if err := setInflight.intIn(c.InflightSize, MinMapSize, MaxMapSize); err != nil {
		return err
	}
	if err := setLossTimeout.durationIn(c.LossTimeout, MinLossTimeout, MaxLossTimeout); err != nil {
		return err
	}
	if err := setNATIdle.durationIn(c.NATIdle, MinNATIdle, MaxNATIdle); err != nil {
		return err
	}
	// Replies are awaited for twice the loss timeout (late replies still
	// count): a NAT id handed to a new session before then makes its
	// requests collide with the old session's (reason nat_collision).
	if c.NATIdle < 2*c.LossTimeout {
		return setNATIdle.errorf(fmtDuration(c.NATIdle), "must be at least twice %s %s, that is %s: replies are awaited that long, and a NAT id reused sooner collides with them",
			setLossTimeout.flag, fmtDuration(c.LossTimeout), fmtDuration(2*c.LossTimeout))
	}
	if c.NeighInterval <= 0 {
		return fmt.Errorf("neighbour check interval %s must be positive", c.NeighInterval)
	}
	if err := setTraceSample.intIn(c.TraceSample, 0, MaxTraceSample); err != nil {
		return fmt.Errorf("%w (0 disables tracing)", err)
	}
	if lo := minTraceBuffer(); c.TraceBufferSize < lo || c.TraceBufferSize > MaxTraceBuffer || c.TraceBufferSize&(c.TraceBufferSize-1) != 0 {
		return setTraceBuffer.errorf(c.TraceBufferSize, "must be a power of two in %d..%d", lo, MaxTraceBuffer)
	}
	return nil
}

func unicastV4(what string, s setting, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("no %s given: set %s (%s)", what, s.flag, s.env)
	case !a.Is4():
		return fmt.Errorf("%s %s is not an IPv4 address (%s, %s); icmplb balances ICMPv4 echo", what, a, s.flag, s.env)
	// 0/8 is "this network", 240/4 reserved and 255.255.255.255 the
	// limited broadcast: the data plane refuses them as sources too.
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback(), a.As4()[0] == 0, a.As4()[0] >= 240:
		return fmt.Errorf("%s %s is not a unicast host address (%s, %s)", what, a, s.flag, s.env)
	}
	return nil
}
