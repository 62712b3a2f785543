// SPDX-License-Identifier: MIT

// Package config is the one home of the agent's settings: each one's flag,
// environment variable, default, help and validation. kong parses the
// command line and the environment straight into Config; the balancer and
// the exporter receive the validated value.
package config

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"time"
)

// What an agent with --bpffs does when it stops (Config.OnExit).
const (
	OnExitKeep   = "keep"
	OnExitDetach = "detach"
)

// XDP attach modes accepted by Config.XDPMode.
const (
	ModeAuto    = "auto"
	ModeNative  = "native"
	ModeGeneric = "generic"
)

// Config is every setting of `icmplb run`. Start from Default: a zero size
// or duration is refused, not read as "default". The kong tags make each
// field a flag and a variable; their defaults and bounds are this package's
// constants (see KongVars), so `--help` cannot drift from Validate.
type Config struct {
	// Iface is the interface clients and backends are reached through.
	Iface string `name:"iface" required:"" env:"ICMPLB_IFACE" help:"Interface clients and backends are reached through."`
	// ConfigFile is a YAML file of services (see LoadServices); it excludes
	// --vip, --backend and --snat, and Service's health flags are the
	// defaults of its services.
	ConfigFile string `name:"config.file" env:"ICMPLB_CONFIG_FILE" help:"YAML file of services (VIPs and weighted backends), reloaded on SIGHUP and POST /-/reload; excludes --vip, --backend and --snat."`
	// Service is the one service the flags define; kong flattens it into
	// --vip, --backend, --snat and the health flags (--outlier.*,
	// --probe.*, --all-down).
	Service
	// Services are the services of ConfigFile, set by Parse and Reload.
	// Empty: the one Service of the flags (see ServiceList).
	Services []Service `kong:"-"`
	// XDPMode is ModeAuto, ModeNative or ModeGeneric.
	XDPMode string `name:"xdp-mode" default:"${xdp_mode}" enum:"auto,native,generic" env:"ICMPLB_XDP_MODE" help:"XDP attach mode: auto (generic on veth, else native with generic fallback), native or generic."`
	// MaglevSize is the number of Maglev slots, a prime.
	MaglevSize int `name:"maglev-size" default:"${maglev_size}" env:"ICMPLB_MAGLEV_SIZE" help:"Slots of the Maglev table: a prime, at least the backends and at most ${maglev_size_max}; 100x the backends keeps shares within 1%."`
	// ConntrackSize is the capacity of the conntrack maps: ping sessions.
	ConntrackSize int `name:"conntrack-size" default:"${conntrack_size}" env:"ICMPLB_CONNTRACK_SIZE" help:"Ping sessions the balancer holds (conntrack maps), ${map_size_min}..${map_size_max}; when full, new sessions pass to the kernel."`
	// NATIdle is how long a ping session may stay silent before its NAT id
	// can be reused.
	NATIdle time.Duration `name:"nat-idle" default:"${nat_idle}" env:"ICMPLB_NAT_IDLE" help:"Silence after which a session's NAT id may be reused, ${nat_idle_min}..${nat_idle_max} and at least twice --loss-timeout."`
	// LossTimeout is how long a request waits for its reply before it
	// counts as lost.
	LossTimeout time.Duration `name:"loss-timeout" default:"${loss_timeout}" env:"ICMPLB_LOSS_TIMEOUT" help:"A request unanswered this long is lost, ${loss_timeout_min}..${loss_timeout_max}."`
	// InflightSize bounds the requests awaiting replies.
	InflightSize int `name:"inflight-size" default:"${inflight_size}" env:"ICMPLB_INFLIGHT_SIZE" help:"Capacity of the map of requests awaiting replies, ${map_size_min}..${map_size_max}."`
	// BPFFS, when set, is a bpffs directory under which the conntrack maps
	// are pinned, so that sessions survive a restart of the agent.
	BPFFS string `name:"bpffs" env:"ICMPLB_BPFFS" help:"Mounted bpffs (e.g. /sys/fs/bpf) to pin the maps and the XDP link under, so that a restart or upgrade of the agent loses no packet and no session; empty: no pinning."`
	// OnExit says what an agent with BPFFS leaves behind when it stops:
	// OnExitKeep or OnExitDetach. Without BPFFS it always detaches.
	OnExit string `name:"bpffs.on-exit" default:"${on_exit}" enum:"keep,detach" env:"ICMPLB_BPFFS_ON_EXIT" help:"With --bpffs, what stopping the agent does: keep (the program keeps balancing, pinned, for the next agent to take over) or detach (remove it and its pinned maps)."`

	// ListenAddress is the HTTP server's TCP address.
	ListenAddress string `name:"web.listen-address" default:"${web_listen_address}" env:"ICMPLB_WEB_LISTEN_ADDRESS" help:"Address of the HTTP server: /metrics, /healthz, /readyz."`
	// WebConfigFile is an exporter-toolkit web configuration file.
	WebConfigFile string `name:"web.config.file" env:"ICMPLB_WEB_CONFIG_FILE" help:"Web configuration file (exporter-toolkit format): TLS, basic auth with bcrypt hashes, rate limit; empty: plain HTTP without auth."`
	// WebMaxConnections bounds the HTTP server's open connections.
	WebMaxConnections int `name:"web.max-connections" default:"${web_max_connections}" env:"ICMPLB_WEB_MAX_CONNECTIONS" help:"Open HTTP connections at most; at the limit the longest-idle one is closed to serve a new client."`

	// TraceSample sends one exchange in TraceSample to the trace pipeline;
	// 0 disables tracing.
	TraceSample int `name:"trace.sample" default:"0" env:"ICMPLB_TRACE_SAMPLE" help:"Trace one exchange in N over OTLP (configured by the OTEL_* variables); 0 disables tracing."`
	// TraceBufferSize is the size of the kernel's trace ring buffer in bytes.
	TraceBufferSize int `name:"trace.buffer-size" default:"${trace_buffer}" env:"ICMPLB_TRACE_BUFFER_SIZE" help:"Bytes of the kernel's trace ring buffer, a power of two up to ${trace_buffer_max}; when full, events are dropped and counted."`

	// NeighInterval is how often backends' neighbour entries are checked;
	// not a flag (tests shorten it); zero means DefaultNeighInterval.
	NeighInterval time.Duration `kong:"-"`
}

// Service is what one balanced service needs: its VIP, the address its
// requests leave with, and its backends. They are grouped so that a config
// file can give a list of them and each is checked alike (Service.validate);
// the rest of Config is per agent.
type Service struct {
	// VIP is the virtual address clients ping.
	VIP netip.Addr `name:"vip" env:"ICMPLB_VIP" help:"Virtual IPv4 or IPv6 address clients ping (required unless --config.file is given)."`
	// Backends are the hosts echo requests are spread over.
	Backends []Backend `name:"backend" env:"ICMPLB_BACKENDS" sep:"," help:"Backend IPv4 or IPv6 address, of the VIP's family, weight 1 (repeat the flag; comma-separated in the env var)."`
	// SNAT is the source address of requests sent to backends; the zero
	// value means the VIP (see WithDefaults).
	SNAT netip.Addr `name:"snat" env:"ICMPLB_SNAT" help:"Source address of requests sent to backends, of the VIP's family (default: the VIP)."`
	// Outlier and Probe judge the backends' health; AllDown says what
	// happens when none is healthy. With --config.file, the flags are the
	// defaults of every service of the file.
	Outlier Outlier `embed:""`
	Probe   Probe   `embed:""`
	AllDown string  `name:"all-down" default:"${all_down}" enum:"fail-open,pass" env:"ICMPLB_ALL_DOWN" help:"When no backend of a service is healthy: fail-open (use every backend that answers ARP) or pass (to this host's kernel)."`
}

// Backend is one backend of a service and its share of new sessions.
type Backend struct {
	Addr netip.Addr
	// Weight is the backend's share of new sessions relative to the
	// service's other backends, 0..MaxWeight. 0 drains it: it gets no new
	// session and keeps serving the ones it has. The zero value is 0, so
	// code building a Backend states the weight; the flags and the file
	// give DefaultWeight when none is written.
	Weight int
}

// ServiceList is every service the agent balances: the file's, or the one
// of the flags.
func (c Config) ServiceList() []Service {
	if len(c.Services) > 0 || c.ConfigFile != "" {
		return c.Services
	}
	return []Service{c.Service.withDefaults()}
}

// Log is how the agent logs: flags of every command.
type Log struct {
	Level  slog.Level `name:"log.level" default:"${log_level}" env:"ICMPLB_LOG_LEVEL" help:"Log level: debug, info, warn, error."`
	Format string     `name:"log.format" default:"${log_format}" enum:"text,json" env:"ICMPLB_LOG_FORMAT" help:"Log format: text or json."`
}

// Defaults of Config and Log: the flags' defaults are these constants (see
// KongVars), so each default has one home.
const (
	// DefaultMaglevSize is a prime well above 100 times a typical pool, so
	// that shares stay within 1% of each other, and small enough to rebuild
	// in milliseconds.
	DefaultMaglevSize = 65537
	// DefaultListenAddress: 10047 is outside the exporters' port range
	// allocated on Prometheus's wiki (9100-9999, full).
	DefaultListenAddress = ":10047"
	// DefaultMaxConnections: enough for several scrapers, probes and a
	// browser, few enough that the descriptors stay a small part of a
	// 1024-descriptor limit, which the agent's BPF objects and netlink
	// sockets share.
	DefaultMaxConnections = 64
	DefaultLogLevel       = slog.LevelInfo
	DefaultLogFormat      = "text"
	DefaultXDPMode        = ModeAuto
	// DefaultOnExit is keep: whoever pins the data plane does so to
	// survive the agent's restarts, and a rolling update or a crash loop
	// stops the agent with SIGTERM like an uninstall does. Detaching would
	// drop every session for the restart's duration.
	DefaultOnExit        = OnExitKeep
	DefaultConntrackSize = 65536
	DefaultNATIdle       = 60 * time.Second
	DefaultNeighInterval = time.Second
	DefaultLossTimeout   = time.Second
	DefaultInflightSize  = 262144
	DefaultTraceBuffer   = 1 << 20
	// DefaultWeight is a backend's weight when the flags or the file give
	// none.
	DefaultWeight = 1
	// MaxBackends bounds the backends of all services together: each
	// (service, backend) pair has a slot of the data plane's counters,
	// histograms and NAT pools, and a backend removed by a reload keeps
	// its slot until its sessions end.
	MaxBackends = 1024
	// MaxServices bounds the services (VIPs) of one agent: each has a
	// Maglev table of MaglevSize slots in the kernel (256 KiB at the
	// default size), and a reload briefly holds a second one.
	MaxServices = 256
	// MaxWeight bounds a backend's weight: with weights up to 1000 the
	// lightest backend of a pool still gets dozens of slots of a default
	// table, so shares stay within 1% of the weights.
	MaxWeight = 1000
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
	// preallocated when the agent starts: 136 bytes an entry of ct_fwd, 160
	// of the in-flight map, 208 of ct_rev by the kernel's memlock count
	// (addresses of both families in 16 bytes), so 2^24 entries are 2.1 to
	// 3.25 GiB per map. Measured on a 2-core machine with all three maps at
	// 2^24, when entries were about 100 bytes: 4.4 GiB, attached after 14
	// s, stopped in under 2 s; at 2^25 the start took 35 s, and the 10^8 (~10 GiB
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

// Default returns a Config with every setting at its default; the caller
// adds the interface, the VIP and the backends.
func Default() Config {
	return Config{
		XDPMode:           DefaultXDPMode,
		OnExit:            DefaultOnExit,
		ListenAddress:     DefaultListenAddress,
		WebMaxConnections: DefaultMaxConnections,
		MaglevSize:        DefaultMaglevSize,
		ConntrackSize:     DefaultConntrackSize,
		NATIdle:           DefaultNATIdle,
		NeighInterval:     DefaultNeighInterval,
		LossTimeout:       DefaultLossTimeout,
		InflightSize:      DefaultInflightSize,
		TraceBufferSize:   DefaultTraceBuffer,
		Service:           Service{Outlier: DefaultOutlier(), Probe: DefaultProbe(), AllDown: DefaultAllDown},
	}
}

// WithDefaults fills in what the zero value documents: no SNAT address
// means the VIP. Sizes and durations have no such reading: a zero there is
// a mistake, and Validate says so.
func (c Config) WithDefaults() Config {
	if c.VIP.IsValid() {
		c.Service = c.Service.withDefaults()
	}
	// A copy: the caller's services stay as they were given.
	c.Services = slices.Clone(c.Services)
	for i := range c.Services {
		c.Services[i] = c.Services[i].withDefaults()
	}
	// Not a flag: zero is what kong leaves it at.
	if c.NeighInterval == 0 {
		c.NeighInterval = DefaultNeighInterval
	}
	return c
}

// Setting names a setting as the user gives it: its flag and variable,
// read from Config's tags so that they are written once.
type Setting struct{ Flag, Env string }

func settingOf(field string) Setting { return settingIn[Config](field) }

// settingIn is settingOf for a field of T, a struct Config embeds.
func settingIn[T any](field string) Setting {
	f, ok := reflect.TypeFor[T]().FieldByName(field)
	if !ok {
		panic("config: no field " + field)
	}
	return Setting{Flag: "--" + f.Tag.Get("name"), Env: f.Tag.Get("env")}
}

// The settings other packages name in their errors.
var (
	SetIface   = settingOf("Iface")
	SetVIP     = settingOf("VIP")
	SetSNAT    = settingOf("SNAT")
	SetBackend = settingOf("Backends")
	SetFile    = settingOf("ConfigFile")
	SetBPFFS   = settingOf("BPFFS")
)

var (
	setXDPMode     = settingOf("XDPMode")
	setMaglev      = settingOf("MaglevSize")
	setConntrack   = settingOf("ConntrackSize")
	setInflight    = settingOf("InflightSize")
	setLossTimeout = settingOf("LossTimeout")
	setNATIdle     = settingOf("NATIdle")
	setTraceSample = settingOf("TraceSample")
	setTraceBuffer = settingOf("TraceBufferSize")
	setMaxConns    = settingOf("WebMaxConnections")
	setListen      = settingOf("ListenAddress")
)

// errorf reports a bad value of s in one line: "--flag value (ENV): why".
func (s Setting) errorf(value any, format string, args ...any) error {
	return fmt.Errorf("%s %v (%s): %s", s.Flag, value, s.Env, fmt.Sprintf(format, args...))
}

func (s Setting) intIn(v, lo, hi int) error {
	if v < lo || v > hi {
		return s.errorf(v, "must be %d..%d", lo, hi)
	}
	return nil
}

func (s Setting) durationIn(v, lo, hi time.Duration) error {
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

func (s Service) withDefaults() Service {
	if !s.SNAT.IsValid() {
		s.SNAT = s.VIP
	}
	return s
}

// minTraceBuffer is MinTraceBuffer or the page size where pages are larger:
// the kernel takes only whole pages for a ring buffer.
func minTraceBuffer() int { return max(MinTraceBuffer, os.Getpagesize()) }

// Validate reports the first problem of c in one line a user can act on,
// naming the flag and the variable that set it. It checks only c itself;
// the interface, its addresses and the kernel are checked by New.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if c.Iface == "" {
		return fmt.Errorf("no interface: set %s (%s)", SetIface.Flag, SetIface.Env)
	}
	if c.ConfigFile != "" {
		if c.VIP.IsValid() || len(c.Backends) > 0 || c.SNAT.IsValid() {
			return fmt.Errorf("both %s and %s/%s/%s are given: the file lists every service, so drop the flags (or the file)",
				SetFile.Flag, SetVIP.Flag, SetBackend.Flag, SetSNAT.Flag)
		}
		// The health flags are the defaults of the file's services: a bad
		// one is named as the flag, not as every service inheriting it.
		if err := c.Service.validateHealth(where{}); err != nil {
			return err
		}
		// Parsing the flags (kong runs Validate) has not read the file
		// yet: check it now, so that a bad file stops startup in one line.
		if len(c.Services) == 0 {
			svcs, err := LoadServices(c.ConfigFile, c.Service)
			if err != nil {
				return err
			}
			c.Services = svcs
		}
	} else if !c.VIP.IsValid() {
		return fmt.Errorf("no VIP given: set %s (%s) or %s (%s)", SetVIP.Flag, SetVIP.Env, SetFile.Flag, SetFile.Env)
	}
	if err := validateServices(c.ServiceList(), c.ConfigFile != ""); err != nil {
		if c.ConfigFile != "" {
			return fmt.Errorf("%s: %w", c.ConfigFile, err)
		}
		return err
	}
	if c.OnExit != OnExitKeep && c.OnExit != OnExitDetach {
		return settingOf("OnExit").errorf(fmt.Sprintf("%q", c.OnExit), "must be %s or %s", OnExitKeep, OnExitDetach)
	}
	switch c.XDPMode {
	case ModeAuto, ModeNative, ModeGeneric:
	default:
		return setXDPMode.errorf(fmt.Sprintf("%q", c.XDPMode), "must be %s, %s or %s", ModeAuto, ModeNative, ModeGeneric)
	}
	// A table smaller than a service's backends cannot hold each of them.
	lo := 2
	for _, svc := range c.ServiceList() {
		lo = max(lo, len(svc.Backends))
	}
	if c.MaglevSize < lo || c.MaglevSize > MaxMaglevSize || !IsPrime(c.MaglevSize) {
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
	if err := c.validateP99(); err != nil {
		return err
	}
	// Replies are awaited for twice the loss timeout (late replies still
	// count): a NAT id handed to a new session before then makes its
	// requests collide with the old session's (reason nat_collision).
	if c.NATIdle < 2*c.LossTimeout {
		return setNATIdle.errorf(fmtDuration(c.NATIdle), "must be at least twice %s %s, that is %s: replies are awaited that long, and a NAT id reused sooner collides with them",
			setLossTimeout.Flag, fmtDuration(c.LossTimeout), fmtDuration(2*c.LossTimeout))
	}
	if c.NeighInterval <= 0 {
		return fmt.Errorf("neighbour check interval %s must be positive", c.NeighInterval)
	}
	if err := setTraceSample.intIn(c.TraceSample, 0, MaxTraceSample); err != nil {
		return fmt.Errorf("%w (0 disables tracing)", err)
	}
	if _, _, err := net.SplitHostPort(c.ListenAddress); err != nil {
		return setListen.errorf(c.ListenAddress, "want host:port or :port (%v)", err)
	}
	if c.WebMaxConnections < 1 {
		return setMaxConns.errorf(c.WebMaxConnections, "must be at least 1")
	}
	if lo := minTraceBuffer(); c.TraceBufferSize < lo || c.TraceBufferSize > MaxTraceBuffer || c.TraceBufferSize&(c.TraceBufferSize-1) != 0 {
		return setTraceBuffer.errorf(c.TraceBufferSize, "must be a power of two in %d..%d", lo, MaxTraceBuffer)
	}
	return nil
}

// validateP99 checks each service's outlier.max_p99_rtt against
// --loss-timeout, the flags' first when they are the file's defaults.
func (c Config) validateP99() error {
	fromFile := c.ConfigFile != ""
	if fromFile {
		if err := c.Service.validateP99(where{}, c.LossTimeout); err != nil {
			return err
		}
	}
	for i, s := range c.ServiceList() {
		if err := s.validateP99(where{file: fromFile, svc: i}, c.LossTimeout); err != nil {
			if fromFile {
				return fmt.Errorf("%s: %w", c.ConfigFile, err)
			}
			return err
		}
	}
	return nil
}

// IsPrime reports whether n is prime: Maglev's table size must be.
func IsPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}
