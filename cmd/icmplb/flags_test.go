// SPDX-License-Identifier: MIT

package main

import (
	"bytes"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/alecthomas/kong"

	"github.com/icmplb/icmplb/config"
)

// hermetic unsets the ICMPLB_* variables of the shell running the tests for
// the duration of t.
func hermetic(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "ICMPLB_") {
			t.Setenv(k, "") // restores it after the test
			os.Unsetenv(k)
		}
	}
}

// The binary's CLI parses into the config package as config.Parse does:
// same flags, same defaults, same check. config's own tests cover the
// values; this one ties the binary to them.
func TestCLIParsesLikeConfig(t *testing.T) {
	hermetic(t)
	args := []string{"--iface", "eth0", "--vip", "10.0.0.100", "--backend", "10.0.0.2", "--conntrack-size", "2048"}
	var c cli
	p, err := kong.New(&c, append(cliOptions(), kong.Exit(func(int) { t.Fatal("kong exited") }))...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Parse(append([]string{"run"}, args...)); err != nil {
		t.Fatal(err)
	}
	want, log, err := config.Parse(args, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Run.Config, want) || c.Log != log {
		t.Errorf("the CLI gives\n%+v %+v\nconfig.Parse gives\n%+v %+v", c.Run.Config, c.Log, want, log)
	}
	if _, err := p.Parse([]string{"run", "--iface", "eth0", "--vip", "10.0.0.100", "--backend", "10.0.0.2", "--conntrack-size", "0"}); err == nil ||
		!strings.Contains(err.Error(), "--conntrack-size 0 (ICMPLB_CONNTRACK_SIZE)") {
		t.Errorf("--conntrack-size 0: %v, want config's refusal", err)
	}
}

// The help shows the bounds the check enforces, from the same constants.
func TestFlagHelpShowsBounds(t *testing.T) {
	hermetic(t)
	var out bytes.Buffer
	var c cli
	exited := false
	p, err := kong.New(&c, append(cliOptions(), kong.Writers(&out, &out), kong.Exit(func(int) { exited = true }))...)
	if err != nil {
		t.Fatal(err)
	}
	p.Parse([]string{"run", "--help"})
	if !exited {
		t.Fatal("--help did not exit")
	}
	help := strings.Join(strings.Fields(out.String()), " ")
	for _, want := range []string{"--conntrack-size=65536", "(conntrack maps), 1024..16777216", "--loss-timeout=1s", "10ms..30s",
		"--nat-idle=60s", "1s..1h", "--maglev-size=65537", "at most 131071", "--inflight-size=262144", "--trace.buffer-size=1048576",
		"--web.max-connections=64", "--web.listen-address=\":10047\"", "--log.level=info"} {
		if !strings.Contains(help, want) {
			t.Errorf("help does not show %q:\n%s", want, out.String())
		}
	}
}
