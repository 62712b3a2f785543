// Command icmplb attaches an XDP ICMP echo load balancer to an interface and
// exports what it observes of the traffic it balances.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	MaglevSize    int           `name:"maglev-size" default:"65537" env:"ICMPLB_MAGLEV_SIZE" help:"Slots of the Maglev table (a prime, at least 100x the backends for 1% balance)."`
	ConntrackSize int           `name:"conntrack-size" default:"65536" env:"ICMPLB_CONNTRACK_SIZE" help:"Capacity of each conntrack LRU map (ping sessions)."`
	NATIdle       time.Duration `name:"nat-idle" default:"60s" env:"ICMPLB_NAT_IDLE" help:"Silence after which a session's NAT id may be reused."`
	LossTimeout   time.Duration `name:"loss-timeout" default:"1s" env:"ICMPLB_LOSS_TIMEOUT" help:"A request unanswered this long is lost (at most 30s)."`
	InflightSize  int           `name:"inflight-size" default:"262144" env:"ICMPLB_INFLIGHT_SIZE" help:"Capacity of the map of requests awaiting replies."`
	BPFFS         string        `name:"bpffs" env:"ICMPLB_BPFFS" help:"Mounted bpffs (e.g. /sys/fs/bpf) to pin the conntrack maps under, so sessions survive a restart; empty: no pinning."`

	ListenAddress string `name:"web.listen-address" default:":10047" env:"ICMPLB_WEB_LISTEN_ADDRESS" help:"Address of the HTTP server: /metrics, /healthz, /readyz."`
	TraceSample   int    `name:"trace.sample" default:"0" env:"ICMPLB_TRACE_SAMPLE" help:"Trace one exchange in N over OTLP (configured by the OTEL_* variables); 0 disables tracing."`
	TraceBuffer   int    `name:"trace.buffer-size" default:"1048576" env:"ICMPLB_TRACE_BUFFER_SIZE" help:"Bytes of the kernel's trace ring buffer (a power of two); when full, events are dropped and counted."`
}

func (r *runCmd) config() balancer.Config {
	return balancer.Config{
		Iface: r.Iface, VIP: r.VIP, SNAT: r.SNAT, Backends: r.Backends, XDPMode: r.XDPMode,
		MaglevSize: r.MaglevSize, ConntrackSize: r.ConntrackSize, NATIdle: r.NATIdle,
		LossTimeout: r.LossTimeout, InflightSize: r.InflightSize,
		TraceSample: r.TraceSample, TraceBufferSize: r.TraceBuffer, BPFFS: r.BPFFS,
	}
}

// Validate runs at parse time, so a bad flag stops startup with one line.
func (r *runCmd) Validate() error { return r.config().Validate() }

func (r *runCmd) Run(log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// Listen before attaching so that a taken port stops startup cleanly;
	// /healthz answers while the program is being attached.
	ln, err := net.Listen("tcp", r.ListenAddress)
	if err != nil {
		return fmt.Errorf("listen on --web.listen-address %s: %w", r.ListenAddress, err)
	}
	var tracer *exporter.Tracer
	var tp *sdktrace.TracerProvider
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
	srv := &http.Server{Handler: exporter.Handler(reg, &src.ready, buildVersion()), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server stopped", "err", err)
			stop()
		}
	}()
	b, err := balancer.New(r.config(), log)
	if err != nil {
		return err
	}
	src.set(b)
	log.Info("serving metrics", "address", ln.Addr().String())
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
	ctx := kong.Parse(&c,
		kong.Name("icmplb"),
		kong.Description("XDP ICMP echo load balancer and Prometheus exporter of per-backend latency and loss."),
	)
	var h slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: c.LogLevel})
	if c.LogFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: c.LogLevel})
	}
	log := slog.New(h)
	slog.SetDefault(log)
	ctx.FatalIfErrorf(ctx.Run(log))
}
