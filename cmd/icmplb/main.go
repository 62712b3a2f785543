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
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/icmplb/icmplb/balancer"
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
}

func (r *runCmd) config() balancer.Config {
	return balancer.Config{
		Iface: r.Iface, VIP: r.VIP, SNAT: r.SNAT, Backends: r.Backends, XDPMode: r.XDPMode,
		MaglevSize: r.MaglevSize, ConntrackSize: r.ConntrackSize, NATIdle: r.NATIdle,
	}
}

// Validate runs at parse time, so a bad flag stops startup with one line.
func (r *runCmd) Validate() error { return r.config().Validate() }

func (r *runCmd) Run(log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	b, err := balancer.New(r.config(), log)
	if err != nil {
		return err
	}
	defer func() {
		if err := b.Close(); err != nil {
			log.Error("detach", "err", err)
			return
		}
		log.Info("detached", "iface", r.Iface)
	}()
	return b.Run(ctx)
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
