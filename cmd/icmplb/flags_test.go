package main

import (
	"bytes"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/alecthomas/kong"

	"github.com/icmplb/icmplb/balancer"
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

// parse runs the CLI's kong parser, with its Validate hooks, on args and
// the environment env ("NAME=value").
func parse(t *testing.T, env []string, args ...string) (*cli, error) {
	t.Helper()
	hermetic(t)
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	var c cli
	p, err := kong.New(&c, append(cliOptions(), kong.Exit(func(int) { t.Fatalf("kong exited on %q", args) }))...)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Parse(args)
	return &c, err
}

var seedArgs = []string{"run", "--iface", "eth0", "--vip", "10.0.0.100", "--backend", "10.0.0.2"}

// The flags' defaults are the balancer's: one home for each.
func TestFlagDefaultsAreBalancerDefaults(t *testing.T) {
	c, err := parse(t, nil, seedArgs...)
	if err != nil {
		t.Fatal(err)
	}
	want := balancer.DefaultConfig()
	want.Iface, want.VIP, want.Backends = "eth0", netip.MustParseAddr("10.0.0.100"), []netip.Addr{netip.MustParseAddr("10.0.0.2")}
	if got := c.Run.config(); !reflect.DeepEqual(got, want) {
		t.Errorf("kong's defaults give\n%+v\nwant balancer.DefaultConfig()\n%+v", got, want)
	}
}

func TestKongEnvBackendsWithSpaces(t *testing.T) {
	for _, v := range []string{"10.0.0.2, 10.0.0.3", " 10.0.0.2 ,\t10.0.0.3 ", "10.0.0.2,10.0.0.3"} {
		c, err := parse(t, []string{"ICMPLB_IFACE=eth0", "ICMPLB_VIP= 10.0.0.100", "ICMPLB_BACKENDS=" + v}, "run")
		if err != nil {
			t.Errorf("ICMPLB_BACKENDS=%q: %v", v, err)
			continue
		}
		want := []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")}
		if !reflect.DeepEqual(c.Run.Backends, want) || c.Run.VIP != netip.MustParseAddr("10.0.0.100") {
			t.Errorf("ICMPLB_BACKENDS=%q: backends %v, VIP %v", v, c.Run.Backends, c.Run.VIP)
		}
	}
	c, err := parse(t, nil, "run", "--iface", "eth0", "--vip", "10.0.0.100", "--backend", " 10.0.0.2", "--backend", "10.0.0.3, 10.0.0.4")
	if err != nil || len(c.Run.Backends) != 3 {
		t.Errorf("--backend with spaces: %v, backends %v", err, c.Run.Backends)
	}
}

// TestKongFlagErrors: one line per case, through kong's parser as the
// binary runs it, from the command line or the environment; the refusal is
// one line naming the flag, the variable and what is allowed.
func TestKongFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"conntrack wraps uint32", nil, []string{"--conntrack-size", "4294967297"}, []string{"--conntrack-size 4294967297 (ICMPLB_CONNTRACK_SIZE): must be 1024..16777216"}},
		{"conntrack 1e8", nil, []string{"--conntrack-size", "100000000"}, []string{"--conntrack-size 100000000 (ICMPLB_CONNTRACK_SIZE)"}},
		{"conntrack 0", nil, []string{"--conntrack-size", "0"}, []string{"--conntrack-size 0 (ICMPLB_CONNTRACK_SIZE): must be 1024..16777216"}},
		{"conntrack 0 from env", []string{"ICMPLB_CONNTRACK_SIZE=0"}, nil, []string{"--conntrack-size 0 (ICMPLB_CONNTRACK_SIZE)"}},
		{"loss timeout 0", nil, []string{"--loss-timeout", "0"}, []string{"--loss-timeout 0s (ICMPLB_LOSS_TIMEOUT): must be 10ms..30s"}},
		{"loss timeout 1ns", nil, []string{"--loss-timeout", "1ns"}, []string{"--loss-timeout 1ns (ICMPLB_LOSS_TIMEOUT): must be 10ms..30s"}},
		{"nat idle 0", nil, []string{"--nat-idle", "0s"}, []string{"--nat-idle 0s (ICMPLB_NAT_IDLE): must be 1s..1h"}},
		{"nat idle under twice loss", []string{"ICMPLB_LOSS_TIMEOUT=10s", "ICMPLB_NAT_IDLE=15s"}, nil, []string{"--nat-idle 15s (ICMPLB_NAT_IDLE): must be at least twice --loss-timeout 10s, that is 20s"}},
		{"inflight 0", nil, []string{"--inflight-size", "0"}, []string{"--inflight-size 0 (ICMPLB_INFLIGHT_SIZE)"}},
		{"maglev not prime", nil, []string{"--maglev-size", "65536"}, []string{"--maglev-size 65536 (ICMPLB_MAGLEV_SIZE): must be a prime in 2..131071"}},
		{"trace buffer", nil, []string{"--trace.buffer-size", "5000"}, []string{"--trace.buffer-size 5000 (ICMPLB_TRACE_BUFFER_SIZE)"}},
		{"empty list element", []string{"ICMPLB_BACKENDS=10.0.0.2,,10.0.0.3"}, []string{}, []string{"stray comma", "ICMPLB_BACKENDS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"run", "--iface", "eth0", "--vip", "10.0.0.100"}, tc.args...)
			env := tc.env
			if !strings.Contains(strings.Join(env, " "), "ICMPLB_BACKENDS") {
				args = append(args, "--backend", "10.0.0.2")
			}
			_, err := parse(t, env, args...)
			if err == nil {
				t.Fatalf("%q %q accepted", env, args)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("not one line: %q", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not contain %q", err, w)
				}
			}
		})
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
	for _, want := range []string{"--conntrack-size=65536", "(ping sessions), 1024..16777216", "--loss-timeout=1s", "10ms..30s",
		"--nat-idle=60s", "1s..1h", "--maglev-size=65537", "at most 131071", "--inflight-size=262144", "--trace.buffer-size=1048576"} {
		if !strings.Contains(help, want) {
			t.Errorf("help does not show %q:\n%s", want, out.String())
		}
	}
}
