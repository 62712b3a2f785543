// SPDX-License-Identifier: MIT

package config

import (
	"fmt"
	"net/url"
	"time"
)

// Status is the settings of `icmplb status`, which reads a running agent's
// HTTP API (it needs no privilege and works from another host or
// container, where the pinned maps are not at hand).
type Status struct {
	// Agent is the base URL of the agent's HTTP server.
	Agent string `name:"agent" default:"${status_agent}" env:"ICMPLB_STATUS_AGENT" help:"Base URL of the agent's HTTP server (--web.listen-address)."`
	// Interval is the window rates and quantiles are measured over.
	Interval time.Duration `name:"interval" default:"${status_interval}" env:"ICMPLB_STATUS_INTERVAL" help:"Window over which requests/s, loss and RTT quantiles are measured, ${status_interval_min}..${status_interval_max}."`
	// Output is OutputTable or OutputJSON.
	Output string `name:"output" short:"o" default:"${status_output}" enum:"table,json" env:"ICMPLB_STATUS_OUTPUT" help:"Output format: table (aligned, for people) or json (for scripts)."`
}

// Output formats of Status.
const (
	OutputTable = "table"
	OutputJSON  = "json"
)

// Defaults and bounds of Status.
const (
	DefaultStatusAgent    = "http://127.0.0.1" + DefaultListenAddress
	DefaultStatusInterval = 2 * time.Second
	// MinStatusInterval: a window shorter than the agent's quarter-epoch
	// loss settling shows no loss at all.
	MinStatusInterval = 500 * time.Millisecond
	MaxStatusInterval = time.Minute
)

// Validate checks the status settings.
func (s Status) Validate() error {
	u, err := url.Parse(s.Agent)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--agent %q (ICMPLB_STATUS_AGENT): want an http:// or https:// URL with a host, such as %s", s.Agent, DefaultStatusAgent)
	}
	if s.Interval < MinStatusInterval || s.Interval > MaxStatusInterval {
		return fmt.Errorf("--interval %s (ICMPLB_STATUS_INTERVAL): must be %s..%s", s.Interval, fmtDuration(MinStatusInterval), fmtDuration(MaxStatusInterval))
	}
	if s.Output != OutputTable && s.Output != OutputJSON {
		return fmt.Errorf("--output %q (ICMPLB_STATUS_OUTPUT): must be %s or %s", s.Output, OutputTable, OutputJSON)
	}
	return nil
}
