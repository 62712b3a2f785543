// SPDX-License-Identifier: MIT

package config

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"strconv"
	"strings"

	"github.com/alecthomas/kong"
)

// KongVars are the defaults and bounds the tags interpolate
// (default:"${conntrack_size}"), so that the help states this package's
// constants and cannot drift from Validate.
func KongVars() kong.Vars {
	d := Default()
	return kong.Vars{
		"xdp_mode":                     d.XDPMode,
		"on_exit":                      d.OnExit,
		"maglev_size":                  strconv.Itoa(d.MaglevSize),
		"maglev_size_max":              strconv.Itoa(MaxMaglevSize),
		"conntrack_size":               strconv.Itoa(d.ConntrackSize),
		"inflight_size":                strconv.Itoa(d.InflightSize),
		"map_size_min":                 strconv.Itoa(MinMapSize),
		"map_size_max":                 strconv.Itoa(MaxMapSize),
		"nat_idle":                     fmtDuration(d.NATIdle),
		"nat_idle_min":                 fmtDuration(MinNATIdle),
		"nat_idle_max":                 fmtDuration(MaxNATIdle),
		"loss_timeout":                 fmtDuration(d.LossTimeout),
		"loss_timeout_min":             fmtDuration(MinLossTimeout),
		"loss_timeout_max":             fmtDuration(MaxLossTimeout),
		"trace_buffer":                 strconv.Itoa(d.TraceBufferSize),
		"trace_buffer_max":             strconv.Itoa(MaxTraceBuffer),
		"web_listen_address":           d.ListenAddress,
		"web_max_connections":          strconv.Itoa(d.WebMaxConnections),
		"log_level":                    strings.ToLower(DefaultLogLevel.String()),
		"log_format":                   DefaultLogFormat,
		"status_agent":                 DefaultStatusAgent,
		"outlier_window":               fmtDuration(DefaultOutlierWindow),
		"outlier_window_min":           fmtDuration(MinOutlierWindow),
		"outlier_window_max":           fmtDuration(MaxOutlierWindow),
		"outlier_min_requests":         strconv.Itoa(DefaultOutlierMinRequests),
		"outlier_min_requests_max":     strconv.Itoa(MaxOutlierMinRequests),
		"outlier_max_loss_ratio":       strconv.FormatFloat(DefaultOutlierMaxLossRatio, 'g', -1, 64),
		"outlier_max_p99_rtt":          fmtDuration(DefaultOutlierMaxP99RTT),
		"outlier_max_p99_rtt_min":      fmtDuration(MinOutlierMaxP99RTT),
		"outlier_base_ejection":        fmtDuration(DefaultBaseEjectionTime),
		"outlier_max_ejection":         fmtDuration(DefaultMaxEjectionTime),
		"outlier_ejection_min":         fmtDuration(MinEjectionTime),
		"outlier_ejection_max":         fmtDuration(MaxEjectionTime),
		"outlier_max_ejection_percent": strconv.Itoa(DefaultMaxEjectionPercent),
		"probe_interval":               fmtDuration(DefaultProbeInterval),
		"probe_interval_min":           fmtDuration(MinProbeInterval),
		"probe_interval_max":           fmtDuration(MaxProbeInterval),
		"probe_timeout":                fmtDuration(DefaultProbeTimeout),
		"probe_timeout_min":            fmtDuration(MinProbeTimeout),
		"probe_rise":                   strconv.Itoa(DefaultProbeRise),
		"probe_fall":                   strconv.Itoa(DefaultProbeFall),
		"probe_count_max":              strconv.Itoa(MaxProbeCount),
		"all_down":                     DefaultAllDown,
		"status_interval":              fmtDuration(DefaultStatusInterval),
		"status_interval_min":          fmtDuration(MinStatusInterval),
		"status_interval_max":          fmtDuration(MaxStatusInterval),
		"status_output":                OutputTable,
	}
}

// KongOptions are the options every parser of these settings uses: the
// binary's and the tests', so that both parse alike.
func KongOptions() []kong.Option {
	return []kong.Option{
		KongVars(),
		kong.TypeMapper(reflect.TypeFor[netip.Addr](), kong.MapperFunc(addrMapper)),
		kong.TypeMapper(reflect.TypeFor[Backend](), kong.MapperFunc(backendMapper)),
	}
}

// backendMapper reads --backend ADDR as a backend of DefaultWeight: weights
// other than the default are the services file's.
func backendMapper(ctx *kong.DecodeContext, target reflect.Value) error {
	var a netip.Addr
	if err := addrMapper(ctx, reflect.ValueOf(&a).Elem()); err != nil {
		return err
	}
	target.Set(reflect.ValueOf(Backend{Addr: a, Weight: DefaultWeight}))
	return nil
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

// agent is the settings as one command line: the global log flags and the
// run flags. Parse and Flags read it; the binary's CLI embeds the same two
// structs.
type agent struct {
	Log    Log    `embed:""`
	Config Config `embed:""`
}

// Flag describes one setting as a user gives it.
type Flag struct {
	Name     string // without the leading "--"
	Env      string
	Default  string // as --help shows it, after interpolation; "" for none
	Help     string
	Required bool
}

// Flags lists every setting, from the kong model of Config and Log.
func Flags() []Flag {
	var a agent
	p, err := kong.New(&a, append(KongOptions(), kong.Name("icmplb"))...)
	if err != nil {
		panic(fmt.Sprintf("config: kong model: %v", err))
	}
	var flags []Flag
	for _, f := range p.Model.Node.Flags {
		if f.Name == "help" {
			continue
		}
		env := ""
		if len(f.Envs) > 0 {
			env = f.Envs[0]
		}
		flags = append(flags, Flag{Name: f.Name, Env: env, Default: f.Default, Help: f.Help, Required: f.Required})
	}
	return flags
}

// Parse reads a command line of run flags (and global log flags) and an
// environment as the binary does, defaults, mappers and Validate included;
// env stands for the process environment, which it does not read.
func Parse(args []string, env map[string]string) (Config, Log, error) {
	var a agent
	var exited error
	p, err := kong.New(&a, append(KongOptions(), kong.Name("icmplb"),
		kong.Resolvers(envResolver(env)),
		kong.Writers(io.Discard, io.Discard),
		kong.Exit(func(code int) { exited = fmt.Errorf("exit %d", code) }))...)
	if err != nil {
		return Config{}, Log{}, err
	}
	if _, err := p.Parse(args); err != nil {
		return Config{}, Log{}, err
	}
	if exited != nil {
		return Config{}, Log{}, exited
	}
	if a.Config.ConfigFile != "" {
		if a.Config, err = a.Config.Reload(); err != nil {
			return Config{}, Log{}, err
		}
	}
	return a.Config, a.Log, nil
}

// envResolver resolves a flag from env by its variable, as kong resolves
// it from the process environment.
func envResolver(env map[string]string) kong.Resolver {
	return kong.ResolverFunc(func(_ *kong.Context, _ *kong.Path, f *kong.Flag) (any, error) {
		for _, name := range f.Envs {
			if v, ok := env[name]; ok {
				return v, nil
			}
		}
		return nil, nil
	})
}
