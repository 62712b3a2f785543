// SPDX-License-Identifier: MIT

// Command icmplb attaches an XDP ICMP echo load balancer to an interface and
// exports what it observes of the traffic it balances.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/exporter"
	"github.com/icmplb/icmplb/exporter/telemetry"
)

// version is set at link time (-X main.version=...).
var version = ""

type cli struct {
	Log config.Log `embed:""`

	Run     runCmd     `cmd:"" help:"Attach the balancer to an interface and serve until SIGINT/SIGTERM; SIGHUP reloads --config.file."`
	Status  statusCmd  `cmd:"" help:"Show a running agent's services and backends: weight, state, sessions, requests/s, loss, RTT p50/p99."`
	Version versionCmd `cmd:"" help:"Print the version and exit."`
}

// runCmd's flags are the config package's: kong parses straight into it
// and runs its Validate, so a bad flag stops startup with one line.
type runCmd struct {
	Config config.Config `embed:""`
}

// cliOptions are the kong options of the CLI, shared by main and the tests
// so that both parse alike.
func cliOptions() []kong.Option {
	return append([]kong.Option{
		kong.Name("icmplb"),
		kong.Description("XDP ICMP echo load balancer and Prometheus exporter of per-backend latency and loss."),
	}, config.KongOptions()...)
}

func (r *runCmd) Run(log *slog.Logger) error {
	cfg := r.Config.WithDefaults()
	if cfg.ConfigFile != "" {
		// Parsing checked the file; read it once more for the services to
		// run, checked again.
		var err error
		if cfg, err = cfg.Reload(); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var tracer *exporter.Tracer
	var tp *sdktrace.TracerProvider
	var err error
	if cfg.TraceSample > 0 {
		if tp, err = exporter.NewTracerProvider(ctx, cfg.Iface, buildVersion()); err != nil {
			return err
		}
		tracer = exporter.NewTracer(tp, cfg.LossTimeout)
	}
	src := &attached{}
	reg, err := exporter.NewRegistry(exporter.NewCollector(src, tracer, buildVersion()))
	if err != nil {
		return err
	}
	// cur is the running configuration: a reload replaces it only once
	// the balancer applied the new one.
	cur := cfg
	reloader := exporter.NewReloader(func() error {
		next, err := cur.Reload()
		if err != nil {
			return err
		}
		b := src.balancer()
		if b == nil {
			return errors.New("the balancer is not attached yet")
		}
		if err := b.Apply(next); err != nil {
			return err
		}
		cur = next
		return nil
	}, log)
	if err := reg.Register(reloader); err != nil {
		return err
	}
	// Listen before attaching so that a bad web config or a taken port stops
	// startup cleanly; /healthz answers while the program is being attached.
	srv, err := exporter.NewServer(exporter.WebConfig{
		ListenAddress: cfg.ListenAddress, ConfigFile: cfg.WebConfigFile, MaxConnections: cfg.WebMaxConnections,
	}, exporter.Handler(reg, &src.ready, buildVersion(), &exporter.Agent{Source: src, Reloader: reloader}), log)
	if err != nil {
		return err
	}
	go func() {
		if err := srv.Serve(); err != nil {
			log.Error("HTTP server stopped", "err", err)
			stop()
		}
	}()
	b, err := balancer.New(cfg, log)
	if err != nil {
		return err
	}
	src.set(b)
	log.Info("serving metrics", "address", srv.Addr().String())
	defer func() {
		src.set(nil)
		switch {
		case cfg.BPFFS != "" && cfg.OnExit == config.OnExitKeep:
			if err := b.Close(); err != nil {
				log.Error("release the data plane", "err", err)
				return
			}
			log.Info("exited; the balancer keeps running from its pins for the next agent to take over",
				"iface", cfg.Iface, "pins", balancer.PinDir(cfg.BPFFS, cfg.Iface))
		case cfg.BPFFS != "":
			if err := b.Detach(); err != nil {
				log.Error("detach", "err", err)
				return
			}
			log.Info("detached; pins removed", "iface", cfg.Iface)
		default:
			if err := b.Close(); err != nil {
				log.Error("detach", "err", err)
				return
			}
			log.Info("detached", "iface", cfg.Iface)
		}
	}()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reloader.Reload("signal")
			}
		}
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

func (a *attached) balancer() *balancer.Balancer {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.b
}

func (a *attached) Snapshot() (*telemetry.Snapshot, error) {
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
	var h slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: c.Log.Level})
	if c.Log.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: c.Log.Level})
	}
	log := slog.New(h)
	slog.SetDefault(log)
	ctx.FatalIfErrorf(ctx.Run(log))
}
