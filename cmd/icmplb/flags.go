package main

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kong"

	"github.com/icmplb/icmplb/balancer"
	"github.com/icmplb/icmplb/exporter"
)

// cliOptions are the kong options of the CLI, shared by main and the tests
// so that both parse alike.
func cliOptions() []kong.Option {
	return []kong.Option{
		kong.Name("icmplb"),
		kong.Description("XDP ICMP echo load balancer and Prometheus exporter of per-backend latency and loss."),
		flagVars(),
		kong.TypeMapper(reflect.TypeFor[netip.Addr](), kong.MapperFunc(addrMapper)),
	}
}

// flagVars are the defaults and bounds the run flags interpolate
// (default:"${conntrack_size}"): the balancer's constants, so that a default
// or a bound has one home and the help cannot drift from the check.
func flagVars() kong.Vars {
	d := balancer.DefaultConfig()
	return kong.Vars{
		"maglev_size":         strconv.Itoa(d.MaglevSize),
		"maglev_size_max":     strconv.Itoa(balancer.MaxMaglevSize),
		"conntrack_size":      strconv.Itoa(d.ConntrackSize),
		"inflight_size":       strconv.Itoa(d.InflightSize),
		"map_size_min":        strconv.Itoa(balancer.MinMapSize),
		"map_size_max":        strconv.Itoa(balancer.MaxMapSize),
		"nat_idle":            seconds(d.NATIdle),
		"nat_idle_min":        seconds(balancer.MinNATIdle),
		"nat_idle_max":        seconds(balancer.MaxNATIdle),
		"loss_timeout":        seconds(d.LossTimeout),
		"loss_timeout_min":    balancer.MinLossTimeout.String(),
		"loss_timeout_max":    seconds(balancer.MaxLossTimeout),
		"trace_buffer":        strconv.Itoa(d.TraceBufferSize),
		"trace_buffer_max":    strconv.Itoa(balancer.MaxTraceBuffer),
		"web_max_connections": strconv.Itoa(exporter.DefaultMaxConnections),
	}
}

// seconds writes whole hours as "1h" and whole seconds as "60s", where
// Duration.String says "1h0m0s" and "1m0s".
func seconds(d time.Duration) string {
	if d%time.Hour == 0 {
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}

// addrMapper parses an address with the spaces around it removed, so that
// ICMPLB_BACKENDS="10.0.0.2, 10.0.0.3" (each element of a list goes through
// it) means what it says.
func addrMapper(ctx *kong.DecodeContext, target reflect.Value) error {
	var s string
	if err := ctx.Scan.PopValueInto("address", &s); err != nil {
		return err
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return errors.New("an empty address (a stray comma?)")
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return err
	}
	target.Set(reflect.ValueOf(a))
	return nil
}
