// SPDX-License-Identifier: MIT

package config

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"
)

// The status command's flags, parsed with nothing given, are the constants
// Validate is checked against below.
func TestStatusKongDefaults(t *testing.T) {
	for _, env := range []string{"ICMPLB_STATUS_AGENT", "ICMPLB_STATUS_INTERVAL", "ICMPLB_STATUS_OUTPUT"} {
		t.Setenv(env, "") // restores it after the test
		os.Unsetenv(env)
	}
	var cli struct {
		Status `embed:""`
	}
	parser, err := kong.New(&cli, KongOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parser.Parse(nil); err != nil {
		t.Fatal(err)
	}
	want := defaultStatus()
	if cli.Status != want {
		t.Errorf("kong defaults %+v, want %+v", cli.Status, want)
	}
	if err := cli.Status.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func defaultStatus() Status {
	return Status{Agent: DefaultStatusAgent, Interval: DefaultStatusInterval, Output: OutputTable}
}

func TestStatusValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Status)
		// flag and env the error names; "" for a valid setting.
		flag, env string
	}{
		{name: "defaults", change: func(*Status) {}},
		{name: "https with a path", change: func(s *Status) { s.Agent = "https://lb1.example.net:10047/icmplb/" }},
		{name: "IPv6 host", change: func(s *Status) { s.Agent = "http://[::1]:10047" }},
		{name: "json", change: func(s *Status) { s.Output = OutputJSON }},
		{name: "shortest interval", change: func(s *Status) { s.Interval = MinStatusInterval }},
		{name: "longest interval", change: func(s *Status) { s.Interval = MaxStatusInterval }},

		{name: "ftp", change: func(s *Status) { s.Agent = "ftp://127.0.0.1:10047" }, flag: "--agent", env: "ICMPLB_STATUS_AGENT"},
		{name: "no host", change: func(s *Status) { s.Agent = "http://" }, flag: "--agent", env: "ICMPLB_STATUS_AGENT"},
		{name: "no host, a path", change: func(s *Status) { s.Agent = "http:///metrics" }, flag: "--agent", env: "ICMPLB_STATUS_AGENT"},
		{name: "no scheme", change: func(s *Status) { s.Agent = "127.0.0.1:10047" }, flag: "--agent", env: "ICMPLB_STATUS_AGENT"},
		{name: "host:port", change: func(s *Status) { s.Agent = "localhost:10047" }, flag: "--agent", env: "ICMPLB_STATUS_AGENT"},
		{name: "garbage", change: func(s *Status) { s.Agent = "not a url" }, flag: "--agent", env: "ICMPLB_STATUS_AGENT"},
		{name: "unparsable", change: func(s *Status) { s.Agent = "http://[::1" }, flag: "--agent", env: "ICMPLB_STATUS_AGENT"},
		{name: "newline", change: func(s *Status) { s.Agent = "http://a\nb" }, flag: "--agent", env: "ICMPLB_STATUS_AGENT"},
		{name: "empty", change: func(s *Status) { s.Agent = "" }, flag: "--agent", env: "ICMPLB_STATUS_AGENT"},
		{name: "interval 499ms", change: func(s *Status) { s.Interval = 499 * time.Millisecond }, flag: "--interval", env: "ICMPLB_STATUS_INTERVAL"},
		{name: "interval 61s", change: func(s *Status) { s.Interval = 61 * time.Second }, flag: "--interval", env: "ICMPLB_STATUS_INTERVAL"},
		{name: "interval 0", change: func(s *Status) { s.Interval = 0 }, flag: "--interval", env: "ICMPLB_STATUS_INTERVAL"},
		{name: "interval negative", change: func(s *Status) { s.Interval = -time.Second }, flag: "--interval", env: "ICMPLB_STATUS_INTERVAL"},
		{name: "output yaml", change: func(s *Status) { s.Output = "yaml" }, flag: "--output", env: "ICMPLB_STATUS_OUTPUT"},
		{name: "output empty", change: func(s *Status) { s.Output = "" }, flag: "--output", env: "ICMPLB_STATUS_OUTPUT"},
		{name: "output upper case", change: func(s *Status) { s.Output = "TABLE" }, flag: "--output", env: "ICMPLB_STATUS_OUTPUT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := defaultStatus()
			tc.change(&s)
			err := s.Validate()
			if tc.flag == "" {
				if err != nil {
					t.Errorf("%+v: %v", s, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("%+v: valid, want an error naming %s", s, tc.flag)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error on more than one line: %q", msg)
			}
			if !strings.HasPrefix(msg, tc.flag+" ") || !strings.Contains(msg, "("+tc.env+")") {
				t.Errorf("error %q, want it to start with %s and name %s", msg, tc.flag, tc.env)
			}
		})
	}
}

// The interval's error states the bounds as a user types them.
func TestStatusIntervalBoundsMessage(t *testing.T) {
	s := defaultStatus()
	s.Interval = 61 * time.Second
	err := s.Validate()
	if err == nil || !strings.Contains(err.Error(), "500ms..60s") {
		t.Errorf("61s: %v, want the bounds 500ms..60s", err)
	}
}
