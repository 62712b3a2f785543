package balancer

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/icmplb/icmplb/bpf"
)

// XDP attach modes accepted by Config.XDPMode.
const (
	ModeAuto    = "auto"
	ModeNative  = "native"
	ModeGeneric = "generic"
)

// Config is what the balancer needs to run on one interface.
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
	// InflightSize bounds the requests awaiting replies (an LRU map).
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

// Defaults for the zero fields of Config.
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

func (c *Config) setDefaults() {
	if !c.SNAT.IsValid() {
		c.SNAT = c.VIP
	}
	if c.XDPMode == "" {
		c.XDPMode = ModeAuto
	}
	if c.MaglevSize == 0 {
		c.MaglevSize = DefaultMaglevSize
	}
	if c.ConntrackSize == 0 {
		c.ConntrackSize = DefaultConntrackSize
	}
	if c.NATIdle == 0 {
		c.NATIdle = DefaultNATIdle
	}
	if c.NeighInterval == 0 {
		c.NeighInterval = DefaultNeighInterval
	}
	if c.LossTimeout == 0 {
		c.LossTimeout = DefaultLossTimeout
	}
	if c.InflightSize == 0 {
		c.InflightSize = DefaultInflightSize
	}
	if c.TraceBufferSize == 0 {
		c.TraceBufferSize = DefaultTraceBuffer
	}
}

// Validate reports the first problem of c in words a user can act on. It
// checks only c itself; the interface and the kernel are checked by New.
func (c Config) Validate() error {
	c.setDefaults()
	if c.Iface == "" {
		return fmt.Errorf("no interface: set --iface (ICMPLB_IFACE)")
	}
	if err := unicastV4("VIP", c.VIP); err != nil {
		return err
	}
	if err := unicastV4("SNAT address", c.SNAT); err != nil {
		return err
	}
	if len(c.Backends) == 0 {
		return fmt.Errorf("no backends: give at least one --backend (ICMPLB_BACKENDS, comma-separated)")
	}
	if len(c.Backends) > MaxBackends {
		return fmt.Errorf("%d backends given, at most %d are supported", len(c.Backends), MaxBackends)
	}
	seen := make(map[netip.Addr]bool, len(c.Backends))
	for _, b := range c.Backends {
		if err := unicastV4("backend", b); err != nil {
			return err
		}
		if seen[b] {
			return fmt.Errorf("backend %s is given twice", b)
		}
		seen[b] = true
		if b == c.VIP {
			return fmt.Errorf("backend %s is the VIP itself; a backend must be another host", b)
		}
		if b == c.SNAT {
			return fmt.Errorf("backend %s is the SNAT address; a backend must be another host", b)
		}
	}
	switch c.XDPMode {
	case ModeAuto, ModeNative, ModeGeneric:
	default:
		return fmt.Errorf("XDP mode %q is not one of auto, native, generic", c.XDPMode)
	}
	if !isPrime(c.MaglevSize) || c.MaglevSize < len(c.Backends) {
		return fmt.Errorf("maglev size %d must be a prime of at least the number of backends (%d); 65537 is a good choice",
			c.MaglevSize, len(c.Backends))
	}
	if c.ConntrackSize < 16 {
		return fmt.Errorf("conntrack size %d is too small; use at least 16", c.ConntrackSize)
	}
	if c.LossTimeout <= 0 || c.LossTimeout > bpf.MaxLossTimeout {
		return fmt.Errorf("loss timeout %s must be above 0 and at most %s", c.LossTimeout, bpf.MaxLossTimeout)
	}
	if c.InflightSize < 16 {
		return fmt.Errorf("in-flight map size %d is too small; use at least 16", c.InflightSize)
	}
	if c.TraceSample < 0 {
		return fmt.Errorf("trace sampling 1 in %d: must be 0 (off) or positive", c.TraceSample)
	}
	if c.TraceBufferSize < 4096 || c.TraceBufferSize&(c.TraceBufferSize-1) != 0 {
		return fmt.Errorf("trace buffer size %d must be a power of two of at least 4096 bytes", c.TraceBufferSize)
	}
	if c.NATIdle < time.Second {
		return fmt.Errorf("NAT idle time %s is below 1s; sessions would lose their NAT id between two pings", c.NATIdle)
	}
	return nil
}

func unicastV4(what string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("no %s given", what)
	case !a.Is4():
		return fmt.Errorf("%s %s is not an IPv4 address; icmplb balances ICMPv4 echo", what, a)
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s %s is not a unicast host address", what, a)
	}
	return nil
}
