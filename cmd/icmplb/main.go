// Command icmplb attaches an XDP ICMP echo load balancer to an interface and
// exports what it observes of the traffic it balances.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/icmplb/icmplb/balancer"
	"github.com/icmplb/icmplb/exporter"
)

// version is set at link time (-X main.version=...).
var version = ""

type cli struct {
	LogLevel  slog.Level `name:"log.level" default:"info" env:"ICMPLB_LOG_LEVEL" help:"Log level: debug, info, warn, error."`
	LogFormat string     `name:"log.format" default:"text" enum:"text,json" env:"ICMPLB_LOG_FORMAT" help:"Log format: text or json."`

	Run     runCmd     `cmd:"" help:"Attach the balancer to an interface and serve until SIGINT/SIGTERM."`
	Version versionCmd `cmd:"" help:"Print the version and exit."`
}

type runCmd struct {
	Iface         string        `name:"iface" required:"" env:"ICMPLB_IFACE" help:"Interface clients and backends are reached through."`
	VIP           netip.Addr    `name:"vip" required:"" env:"ICMPLB_VIP" help:"Virtual IPv4 address clients ping."`
	Backends      []netip.Addr  `name:"backend" env:"ICMPLB_BACKENDS" sep:"," help:"Backend IPv4 address (repeat the flag; comma-separated in the env var)."`
	SNAT          netip.Addr    `name:"snat" env:"ICMPLB_SNAT" help:"Source address of requests sent to backends (default: the VIP)."`
	XDPMode       string        `name:"xdp-mode" default:"auto" enum:"auto,native,generic" env:"ICMPLB_XDP_MODE" help:"XDP attach mode: auto (generic on veth, else native with generic fallback), native or generic."`
	MaglevSize    int           `name:"maglev-size" default:"${maglev_size}" env:"ICMPLB_MAGLEV_SIZE" help:"Slots of the Maglev table: a prime, at least the backends and at most ${maglev_size_max}; 100x the backends keeps shares within 1%."`
	ConntrackSize int           `name:"conntrack-size" default:"${conntrack_size}" env:"ICMPLB_CONNTRACK_SIZE" help:"Capacity of each conntrack LRU map (ping sessions), ${map_size_min}..${map_size_max}."`
	NATIdle       time.Duration `name:"nat-idle" default:"${nat_idle}" env:"ICMPLB_NAT_IDLE" help:"Silence after which a session's NAT id may be reused, ${nat_idle_min}..${nat_idle_max} and at least twice --loss-timeout."`
	LossTimeout   time.Duration `name:"loss-timeout" default:"${loss_timeout}" env:"ICMPLB_LOSS_TIMEOUT" help:"A request unanswered this long is lost, ${loss_timeout_min}..${loss_timeout_max}."`
	InflightSize  int           `name:"inflight-size" default:"${inflight_size}" env:"ICMPLB_INFLIGHT_SIZE" help:"Capacity of the map of requests awaiting replies, ${map_size_min}..${map_size_max}."`
	BPFFS         string        `name:"bpffs" env:"ICMPLB_BPFFS" help:"Mounted bpffs (e.g. /sys/fs/bpf) to pin the conntrack maps under, so sessions survive a restart; empty: no pinning."`

	ListenAddress string `name:"web.listen-address" default:":10047" env:"ICMPLB_WEB_LISTEN_ADDRESS" help:"Address of the HTTP server: /metrics, /healthz, /readyz."`
	WebConfig     string `name:"web.config.file" env:"ICMPLB_WEB_CONFIG_FILE" help:"Web configuration file (exporter-toolkit format): TLS, basic auth with bcrypt hashes, rate limit; empty: plain HTTP without auth."`
	WebMaxConns   int    `name:"web.max-connections" default:"${web_max_connections}" env:"ICMPLB_WEB_MAX_CONNECTIONS" help:"Open HTTP connections at most; at the limit the longest-idle one is closed to serve a new client."`
	TraceSample   int    `name:"trace.sample" default:"0" env:"ICMPLB_TRACE_SAMPLE" help:"Trace one exchange in N over OTLP (configured by the OTEL_* variables); 0 disables tracing."`
	TraceBuffer   int    `name:"trace.buffer-size" default:"${trace_buffer}" env:"ICMPLB_TRACE_BUFFER_SIZE" help:"Bytes of the kernel's trace ring buffer, a power of two up to ${trace_buffer_max}; when full, events are dropped and counted."`
}

// config starts from the balancer's defaults, so that a setting without a
// flag keeps its default; every flag's value is passed as given, and a
// 0 from the command line is refused, not taken for the default.
func (r *runCmd) config() balancer.Config {
	c := balancer.DefaultConfig()
	c.Iface, c.VIP, c.SNAT, c.Backends, c.XDPMode = r.Iface, r.VIP, r.SNAT, r.Backends, r.XDPMode
	c.MaglevSize, c.ConntrackSize, c.NATIdle = r.MaglevSize, r.ConntrackSize, r.NATIdle
	c.LossTimeout, c.InflightSize = r.LossTimeout, r.InflightSize
	c.TraceSample, c.TraceBufferSize, c.BPFFS = r.TraceSample, r.TraceBuffer, r.BPFFS
	return c
}

// Validate runs at parse time, so a bad flag stops startup with one line.
func (r *runCmd) Validate() error { return r.config().Validate() }

func (r *runCmd) Run(log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var tracer *exporter.Tracer
	var tp *sdktrace.TracerProvider
	var err error
	if r.TraceSample > 0 {
		if tp, err = exporter.NewTracerProvider(ctx, r.Iface, buildVersion()); err != nil {
			return err
		}
		tracer = exporter.NewTracer(tp, r.LossTimeout)
	}
	src := &attached{}
	reg, err := exporter.NewRegistry(exporter.NewCollector(src, tracer, buildVersion()))
	if err != nil {
		return err
	}
	// Listen before attaching so that a bad web config or a taken port stops
	// startup cleanly; /healthz answers while the program is being attached.
	srv, err := exporter.NewServer(exporter.WebConfig{
		ListenAddress: r.ListenAddress, ConfigFile: r.WebConfig, MaxConnections: r.WebMaxConns,
	}, exporter.Handler(reg, &src.ready, buildVersion()), log)
	if err != nil {
		return err
	}
	go func() {
		if err := srv.Serve(); err != nil {
			log.Error("HTTP server stopped", "err", err)
			stop()
		}
	}()
	b, err := balancer.New(r.config(), log)
	if err != nil {
		return err
	}
	src.set(b)
	log.Info("serving metrics", "address", srv.Addr().String())
	defer func() {
		src.set(nil)
		if err := b.Close(); err != nil {
			log.Error("detach", "err", err)
			return
		}
		log.Info("detached", "iface", r.Iface)
	}()
	defer func() {
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
		if tp != nil {
			if err := tp.Shutdown(shutdown); err != nil {
				log.Warn("flush traces", "err", err)
			}
		}
	}()
	if tracer != nil {
		go tracer.Run(ctx, 250*time.Millisecond)
		go func() {
			if err := b.ReadTraces(ctx, tracer.Handle); err != nil {
				log.Error("trace pipeline stopped", "err", err)
			}
		}()
	}
	return b.Run(ctx)
}

// attached is the collector's source: nothing until the balancer is
// attached, so that a scrape during startup or shutdown is not an error.
type attached struct {
	mu    sync.Mutex
	b     *balancer.Balancer
	ready atomic.Bool
}

func (a *attached) set(b *balancer.Balancer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.b = b
	a.ready.Store(b != nil)
}

func (a *attached) Snapshot() (*balancer.Snapshot, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.b == nil {
		return nil, nil
	}
	return a.b.Snapshot()
}

type versionCmd struct{}

func (versionCmd) Run() error {
	fmt.Println("icmplb", buildVersion())
	return nil
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func main() {
	var c cli
	ctx := kong.Parse(&c, cliOptions()...)
	var h slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: c.LogLevel})
	if c.LogFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: c.LogLevel})
	}
	log := slog.New(h)
	slog.SetDefault(log)
	ctx.FatalIfErrorf(ctx.Run(log))
}
