// SPDX-License-Identifier: MIT

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/pingout"
	"github.com/icmplb/icmplb/internal/topology"
)

// Addresses of the seed topology as the agent's flags and ping take them.
var (
	vip      = topology.SeedVIP.String()
	lbAddr   = topology.SeedLB.String()
	backend1 = topology.SeedH2.String()
	backend2 = topology.SeedH3.String()
)

// Deadlines only tell a slow step from a hung one: every wait polls and
// returns as soon as its condition holds, so they are generous for a busy
// machine (the agent's start alone took 4.5s here with both cores loaded).
const (
	attachTimeout = 60 * time.Second // from start to msg=attached
	stopTimeout   = 60 * time.Second // from SIGTERM to exit
	cmdTimeout    = 60 * time.Second
)

func TestMain(m *testing.M) { agenttest.Main(m) }

// agent is a running icmplb process in the lb namespace.
type agent = agenttest.Proc

// startAgent runs icmplb with args in the lb namespace and waits until it has
// attached; env adds to a hermetic environment.
func startAgent(t *testing.T, topo *topology.Topology, env []string, args ...string) *agent {
	t.Helper()
	p := agenttest.Start(t, "icmplb", topo.Command(topology.SeedBalancer, agenttest.Binary(t), healthOff(args)...), agenttest.Env(env...))
	// Runs before agenttest's own cleanup, whose Stop then finds the agent
	// gone: that one kills after 5s, which a loaded machine exceeds (the
	// detach waits for RCU grace periods).
	t.Cleanup(func() { stopAgent(p) })
	p.WaitLog(t, "msg=attached", attachTimeout)
	return p
}

// healthOff turns the agent's probes and outlier ejection off unless args
// set them: the tests that count packets at the backends or judge the
// measurement of lossy backends must see only clients' traffic, and keep
// every backend in service. The health tests turn them on.
func healthOff(args []string) []string {
	if len(args) == 0 || args[0] != "run" {
		return args
	}
	out := slices.Clone(args)
	for _, f := range []string{"--probe.interval", "--outlier.max-ejection-percent"} {
		if !slices.Contains(args, f) {
			out = append(out, f, "0")
		}
	}
	return out
}

// stopAgent is agent.Stop with the generous stopTimeout: it sends SIGTERM
// and waits for the exit, killing the agent only after stopTimeout. It
// returns how long the exit took and the exit error; an agent that had
// exited already returns its exit error again.
func stopAgent(p *agent) (time.Duration, error) {
	select {
	case <-p.Done():
		return 0, p.Err()
	default:
	}
	start := time.Now()
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		<-p.Done()
		return time.Since(start), p.Err()
	}
	select {
	case <-p.Done():
		return time.Since(start), p.Err()
	case <-time.After(stopTimeout):
		return time.Since(start), fmt.Errorf("still running %v after SIGTERM", stopTimeout)
	}
}

// attachPassToLBPeer attaches an XDP_PASS program in native mode to the
// bridge-side veth of lb: native XDP_TX on a veth is dropped unless the peer
// runs an XDP program (DESIGN.md, known pitfalls).
func attachPassToLBPeer(t *testing.T, topo *topology.Topology) {
	t.Helper()
	prog, err := bpf.NewXDPPass()
	if err != nil {
		t.Fatalf("load xdp_pass: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	port := topo.Host(topology.SeedBalancer).Port
	var l link.Link
	err = topo.InSwitch(func() error {
		ifc, err := net.InterfaceByName(port)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		t.Fatalf("attach xdp_pass to %s in %s: %v", port, topo.SwitchNS, err)
	}
	t.Cleanup(func() { l.Close() })
}

// xdpState reads how an XDP program is attached to lb's eth0 from
// `ip -j link show`: "" when none is, else "native", "generic", "offload" or
// "multi", followed by the program. A failed or finished agent must leave "".
func xdpState(t *testing.T, topo *topology.Topology) string {
	t.Helper()
	out, err := exec.Command("ip", "-j", "-n", topo.Host(topology.SeedBalancer).NS, "link", "show", "dev", "eth0").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show: %v: %s", err, out)
	}
	var links []struct {
		XDP *struct {
			Mode int `json:"mode"`
			Prog struct {
				ID   int    `json:"id"`
				Name string `json:"name"`
			} `json:"prog"`
		} `json:"xdp"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("parse ip -j link show output %q: %v", out, err)
	}
	x := links[0].XDP
	if x == nil {
		return ""
	}
	// XDP_ATTACHED_* of linux/if_link.h.
	mode := map[int]string{1: "native", 2: "generic", 3: "offload", 4: "multi"}[x.Mode]
	if mode == "" {
		mode = fmt.Sprintf("mode %d", x.Mode)
	}
	return fmt.Sprintf("%s prog %d %s", mode, x.Prog.ID, x.Prog.Name)
}

// icmpCounters are a namespace's kernel ICMP message counters: echo requests
// received and echo replies sent.
type icmpCounters struct{ InType8, OutType0 uint64 }

// icmpOf reads them from /proc/net/snmp (IcmpMsg lines) inside the host's
// namespace, which is what tells a backend's answer from lb's own kernel's.
// Counters the kernel has never bumped are absent and read as 0.
func icmpOf(t *testing.T, topo *topology.Topology, host string) icmpCounters {
	t.Helper()
	out, err := topo.Run(host, "cat", "/proc/net/snmp")
	if err != nil {
		t.Fatal(err)
	}
	var rows [][]string
	for line := range strings.Lines(out) {
		if rest, ok := strings.CutPrefix(line, "IcmpMsg:"); ok {
			rows = append(rows, strings.Fields(rest))
		}
	}
	var c icmpCounters
	if len(rows) == 0 {
		return c
	}
	if len(rows) != 2 || len(rows[0]) != len(rows[1]) {
		t.Fatalf("%s: cannot parse IcmpMsg lines of /proc/net/snmp:\n%s", host, out)
	}
	for i, name := range rows[0] {
		v, err := strconv.ParseUint(rows[1][i], 10, 64)
		if err != nil {
			t.Fatalf("%s: IcmpMsg %s=%q: %v", host, name, rows[1][i], err)
		}
		switch name {
		case "InType8":
			c.InType8 = v
		case "OutType0":
			c.OutType0 = v
		}
	}
	return c
}

// snapshot holds the counters of the hosts that can answer a ping to the VIP.
type snapshot map[string]icmpCounters

func snap(t *testing.T, topo *topology.Topology) snapshot {
	t.Helper()
	s := snapshot{}
	for _, h := range []string{topology.SeedBackend1, topology.SeedBackend2, topology.SeedBalancer} {
		s[h] = icmpOf(t, topo, h)
	}
	return s
}

// delta is what changed since s; its String is the evidence in a failure.
type delta struct {
	h2In, h3In, lbIn, lbOut uint64
}

func (s snapshot) since(t *testing.T, topo *topology.Topology) delta {
	t.Helper()
	now := snap(t, topo)
	return delta{
		h2In:  now[topology.SeedBackend1].InType8 - s[topology.SeedBackend1].InType8,
		h3In:  now[topology.SeedBackend2].InType8 - s[topology.SeedBackend2].InType8,
		lbIn:  now[topology.SeedBalancer].InType8 - s[topology.SeedBalancer].InType8,
		lbOut: now[topology.SeedBalancer].OutType0 - s[topology.SeedBalancer].OutType0,
	}
}

func (d delta) backends() uint64 { return d.h2In + d.h3In }

func (d delta) String() string {
	return fmt.Sprintf("echo requests received: h2 +%d, h3 +%d, lb +%d; echo replies sent by lb +%d",
		d.h2In, d.h3In, d.lbIn, d.lbOut)
}

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// pingResult is one ping run: its output and what it counted.
type pingResult struct {
	args     []string
	out      string
	err      error
	sent     int
	received int
	// from counts reply lines per source address ("64 bytes from X: ...").
	from map[string]int
	dups int
	// parsed has every reply line with the round trip ping measured (run
	// ping without -q to get them) and the summary's: the clients' side of
	// the truth a measurement of the balancer is judged against.
	parsed pingout.Result
}

func (p pingResult) String() string {
	return fmt.Sprintf("ping %s (err %v):\n%s", strings.Join(p.args, " "), p.err, p.out)
}

// ping runs iputils ping on a host. It never fails the test itself, so that it
// can run on several goroutines; callers check the result.
func ping(topo *topology.Topology, host string, args ...string) pingResult {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	h := topo.Host(host)
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, "ping"}, args...)...)
	out, err := cmd.CombinedOutput()
	r := pingResult{args: args, out: string(out), err: err, from: map[string]int{}, parsed: pingout.Parse(string(out))}
	if m := pingStats.FindStringSubmatch(r.out); m != nil {
		r.sent, _ = strconv.Atoi(m[1])
		r.received, _ = strconv.Atoi(m[2])
	}
	for line := range strings.Lines(r.out) {
		if _, rest, ok := strings.Cut(line, " bytes from "); ok {
			// ": " and not ":", which an IPv6 source holds.
			src, _, _ := strings.Cut(rest, ": ")
			r.from[src]++
		}
		if strings.Contains(line, "DUP!") {
			r.dups++
		}
	}
	return r
}

// check returns nil if the run got want replies, all from the address from
// and none duplicated; otherwise it says what went wrong.
func (p pingResult) check(want int, from string) error {
	switch {
	case p.received != want || p.sent != want:
		return fmt.Errorf("%d of %d echo requests answered, want %d of %d", p.received, p.sent, want, want)
	case p.from[from] != want || len(p.from) != 1:
		return fmt.Errorf("reply lines by source %v, want %d from %s only", p.from, want, from)
	case p.dups != 0:
		return fmt.Errorf("%d duplicate replies: replies of another session were delivered here", p.dups)
	case p.err != nil:
		return fmt.Errorf("ping failed: %v", p.err)
	}
	return nil
}

// lbRun runs the binary once in the lb namespace, for the startup errors.
func lbRun(t *testing.T, topo *topology.Topology, prefix []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	argv := append(append([]string{"netns", "exec", topo.Host(topology.SeedBalancer).NS}, prefix...), args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.Env = agenttest.Env()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("%s: %v (stderr %q)", cmd, err, e.String())
	}
	return o.String(), e.String(), code
}
