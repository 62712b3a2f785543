// SPDX-License-Identifier: MIT

package main

// End-to-end tests: the real icmplb binary in the lb namespace of the seed
// topology, driven by the real iputils ping from the client namespaces. They
// need root (BPF, network namespaces) and skip without it.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

const (
	h1 = topology.SeedClient
	h4 = topology.SeedClient2
	lb = topology.SeedBalancer
)

// newLab builds a seed topology of its own for one test and starts the agent
// in the given XDP mode on lb's eth0, with h2 and h3 as backends.
func newLab(t *testing.T, mode string) (*topology.Topology, *agent) {
	t.Helper()
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	if mode == "native" {
		attachPassToLBPeer(t, topo)
	}
	a := startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip,
		"--backend", backend1, "--backend", backend2, "--xdp-mode", mode)
	checkAttached(t, topo, a, mode)
	return topo, a
}

// checkAttached makes sure the agent runs in the mode the test is about: a
// silent fallback from native to generic would make the native tests test
// generic mode twice.
func checkAttached(t *testing.T, topo *topology.Topology, a *agent, mode string) {
	t.Helper()
	if st := xdpState(t, topo); !strings.HasPrefix(st, mode+" prog ") {
		t.Fatalf("lb eth0 has XDP %q, want %s mode", st, mode)
	}
	if !strings.Contains(a.Log(), "mode="+mode) {
		t.Fatalf("agent did not log mode=%s", mode)
	}
}

func TestBalance(t *testing.T) {
	testenv.Privileged(t)
	agenttest.Binary(t) // build once, before the parallel subtests race for it
	for _, mode := range []string{"generic", "native"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			t.Run("RepliesFromVIP", func(t *testing.T) { t.Parallel(); testRepliesFromVIP(t, mode) })
			t.Run("SameEchoIDTwoClients", func(t *testing.T) { t.Parallel(); testSameEchoID(t, mode) })
			t.Run("Spread", func(t *testing.T) { t.Parallel(); testSpread(t, mode) })
			t.Run("OtherTrafficToKernel", func(t *testing.T) { t.Parallel(); testOtherTraffic(t, mode) })
			t.Run("SIGTERMDetaches", func(t *testing.T) { t.Parallel(); testSIGTERM(t, mode) })
		})
	}
}

// A reply with the VIP as source is not proof of balancing by itself: lb owns
// the VIP and its kernel would answer too. The namespaces' ICMP counters tell
// who really answered. The backends' count must match exactly: nothing else
// in this private topology sends them echo requests, and a request forwarded
// twice (or a retransmission by the balancer) would be a bug.
func testRepliesFromVIP(t *testing.T, mode string) {
	topo, _ := newLab(t, mode)
	assertBalances(t, topo)
}

// Two clients using the same echo identifier must stay two sessions: the NAT
// id is what tells their replies apart at the backend.
func testSameEchoID(t *testing.T, mode string) {
	topo, _ := newLab(t, mode)
	before := snap(t, topo)
	hosts := []string{h1, h4}
	res := make([]pingResult, len(hosts))
	var wg sync.WaitGroup
	for i, host := range hosts {
		wg.Go(func() { res[i] = ping(topo, host, "-e", "4242", "-c", "20", "-i", "0.02", "-W", "5", vip) })
	}
	wg.Wait()
	d := before.since(t, topo)
	for i, r := range res {
		if err := r.check(20, vip); err != nil {
			t.Errorf("%s: %v\n%s", hosts[i], err, r)
		}
	}
	if d.backends() != 40 || d.lbOut != 0 {
		t.Errorf("want the backends to receive exactly the 40 requests and lb to send no reply; %s", d)
	}
}

// Sessions are hashed on (client, echo id), so distinct identifiers from one
// client must land on both backends. Which identifiers go where is fixed by
// the hash; with 32 sessions, all on one backend would be a 2^-31 chance for
// a working hash.
func testSpread(t *testing.T, mode string) {
	topo, _ := newLab(t, mode)
	const sessions = 32
	before := snap(t, topo)
	results := make([]pingResult, sessions)
	sem := make(chan struct{}, 8) // 2 cores: more pings at once only add scheduling noise
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = ping(topo, h1, "-e", fmt.Sprint(1000+i), "-c", "2", "-i", "0.02", "-W", "5", vip)
		})
	}
	wg.Wait()
	d := before.since(t, topo)
	for _, r := range results {
		if err := r.check(2, vip); err != nil {
			t.Errorf("%v\n%s", err, r)
		}
	}
	if d.h2In == 0 || d.h3In == 0 || d.backends() != 2*sessions || d.lbOut != 0 {
		t.Errorf("want both backends used, %d requests in all and no reply from lb; %s", 2*sessions, d)
	}
}

// The balancer owns echo to the VIP only: TCP to the VIP and echo to lb's own
// address must reach lb's kernel as if no program were attached.
func testOtherTraffic(t *testing.T, mode string) {
	topo, _ := newLab(t, mode)

	var ln net.Listener
	if err := topo.InNS(lb, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(vip, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.CopyN(c, c, 1)
	}()
	var echoed []byte
	err := topo.InNS(h1, func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{'x'}); err != nil {
			return err
		}
		echoed = make([]byte, 1)
		_, err = io.ReadFull(c, echoed)
		return err
	})
	if err != nil || string(echoed) != "x" {
		t.Errorf("TCP round trip h1 -> %s (listener in lb): got %q, err %v", ln.Addr(), echoed, err)
	}

	before := snap(t, topo)
	r := ping(topo, h1, "-c", "3", "-i", "0.05", "-W", "5", lbAddr)
	d := before.since(t, topo)
	if err := r.check(3, lbAddr); err != nil {
		t.Fatalf("ping lb's own address: %v\n%s\n%s", err, r, d)
	}
	if d.lbOut != 3 || d.backends() != 0 {
		t.Errorf("want lb's kernel to answer all 3 pings and no backend to see them; %s", d)
	}
}

// On SIGTERM the agent must leave the interface as it found it: no program,
// and the VIP answered by lb's kernel again, since it is lb's address.
func testSIGTERM(t *testing.T, mode string) {
	topo, a := newLab(t, mode)
	before := snap(t, topo)
	if r := ping(topo, h1, "-c", "2", "-i", "0.05", "-W", "5", vip); r.check(2, vip) != nil {
		t.Fatalf("balancing before SIGTERM: %v\n%s", r.check(2, vip), r)
	}
	if d := before.since(t, topo); d.backends() != 2 {
		t.Fatalf("balancer not in the path before SIGTERM, so the test would prove nothing; %s", d)
	}

	took, err := stopAgent(a)
	if err != nil {
		t.Fatalf("exit after SIGTERM: %v (after %v)", err, took)
	}
	t.Logf("exited %v after SIGTERM", took.Round(time.Millisecond))
	if !strings.Contains(a.Log(), "msg=detached") {
		t.Errorf("no msg=detached in the log")
	}
	if st := xdpState(t, topo); st != "" {
		t.Errorf("XDP still attached to lb eth0 after exit: %s", st)
	}

	before = snap(t, topo)
	r := ping(topo, h1, "-c", "3", "-i", "0.05", "-W", "5", vip)
	d := before.since(t, topo)
	if err := r.check(3, vip); err != nil {
		t.Fatalf("ping VIP after exit: %v\n%s\n%s", err, r, d)
	}
	if d.lbOut != 3 || d.backends() != 0 {
		t.Errorf("want lb's kernel to answer all 3 pings to the VIP after exit; %s", d)
	}
}

// auto must not pick native on a veth, where XDP_TX is silently dropped when
// the peer has no XDP program (as here).
func TestAutoModeOnVeth(t *testing.T) {
	testenv.Privileged(t)
	t.Parallel()
	topo := topology.NewT(t, topology.Seed())
	a := startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip,
		"--backend", backend1, "--backend", backend2, "--xdp-mode", "auto")
	if !strings.Contains(a.Log(), "using generic XDP") {
		t.Errorf("agent did not log that it chose generic XDP on the veth")
	}
	checkAttached(t, topo, a, "generic")
	assertBalances(t, topo)
}

// A container is configured through the environment; the comma-separated
// ICMPLB_BACKENDS must give two backends.
func TestEnvConfig(t *testing.T) {
	testenv.Privileged(t)
	t.Parallel()
	topo := topology.NewT(t, topology.Seed())
	a := startAgent(t, topo, []string{
		"ICMPLB_IFACE=eth0", "ICMPLB_VIP=" + vip, "ICMPLB_BACKENDS=" + backend1 + "," + backend2,
	}, "run")
	if !strings.Contains(a.Log(), "backends=2 up=2") {
		t.Errorf("want 2 backends, both up, from ICMPLB_BACKENDS")
	}
	assertBalances(t, topo)
}

// assertBalances pings the VIP from h1 and checks the backends answered.
func assertBalances(t *testing.T, topo *topology.Topology) {
	t.Helper()
	before := snap(t, topo)
	r := ping(topo, h1, "-c", "5", "-i", "0.05", "-W", "5", vip)
	d := before.since(t, topo)
	if err := r.check(5, vip); err != nil {
		t.Fatalf("%v\n%s\n%s", err, r, d)
	}
	if d.backends() != 5 || d.lbOut != 0 {
		t.Fatalf("want the backends to receive exactly the 5 requests and lb to send no reply; %s", d)
	}
}

// A bad start must say what is wrong in one line a user reads at a glance,
// and leave no program behind. None of these attach, so they share a topology.
func TestStartupErrors(t *testing.T) {
	testenv.Privileged(t)
	t.Parallel()
	topo := topology.NewT(t, topology.Seed())

	// nobody must be able to execute the binary, whatever the permissions of
	// the directories $ICMPLB_BIN lives in.
	nobodyBin := worldReadableBinary(t)
	bin := agenttest.Binary(t)
	good := []string{"--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2}
	flags := func(over ...string) []string { return append([]string{bin, "run"}, over...) }
	for _, tc := range []struct {
		name   string
		prefix []string // runs before the binary, e.g. setpriv
		argv   []string
		want   []string
	}{
		{name: "UnknownInterface",
			argv: flags("--iface", "nosuch0", "--vip", vip, "--backend", backend1),
			want: []string{`interface "nosuch0" not found`}},
		{name: "InvalidAddress",
			argv: flags("--iface", "eth0", "--vip", "10.0.0", "--backend", backend1),
			want: []string{"--vip", `"10.0.0"`}},
		{name: "DuplicateBackend",
			argv: flags("--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend1),
			want: []string{"backend " + backend1 + " is given twice"}},
		{name: "NoBackends",
			argv: flags("--iface", "eth0", "--vip", vip),
			want: []string{"no backends"}},
		{name: "VIPIsBackend",
			argv: flags("--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", vip),
			want: []string{"backend " + vip + " is the VIP"}},
		{name: "NotUnicast",
			argv: flags("--iface", "eth0", "--vip", "::1", "--backend", backend1),
			want: []string{"VIP ::1 is not a unicast host address"}},
		{name: "OtherFamily",
			argv: flags("--iface", "eth0", "--vip", vip, "--backend", "fd00:1cb::2"),
			want: []string{"fd00:1cb::2 is IPv6, the VIP " + vip + " is IPv4"}},
		{name: "NoPrivileges",
			prefix: []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
				"--inh-caps=-all", "--bounding-set=-all"},
			argv: append([]string{nobodyBin, "run"}, good...),
			want: []string{"CAP_BPF", "CAP_NET_ADMIN"}},
		{name: "NoPerfmon",
			prefix: []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
				"--inh-caps=-all,+bpf,+net_admin", "--ambient-caps=-all,+bpf,+net_admin"},
			argv: append([]string{nobodyBin, "run"}, good...),
			want: []string{"lacks CAP_PERFMON, CAP_NET_RAW"}},
		{name: "NoNetRaw",
			prefix: []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
				"--inh-caps=-all,+bpf,+net_admin,+perfmon", "--ambient-caps=-all,+bpf,+net_admin,+perfmon"},
			argv: append([]string{nobodyBin, "run"}, good...),
			want: []string{"lacks CAP_NET_RAW (or disable probes: --probe.interval 0)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := lbRun(t, topo, tc.prefix, tc.argv...)
			report := fmt.Sprintf("%s: exit %d\nstdout: %q\nstderr: %q", strings.Join(tc.argv[1:], " "), code, stdout, stderr)
			if code == 0 {
				t.Errorf("exit status 0, want non-zero; %s", report)
			}
			if lines := strings.Count(stderr, "\n"); lines != 1 || !strings.HasSuffix(stderr, "\n") {
				t.Errorf("want exactly one line on stderr; %s", report)
			}
			if stdout != "" {
				t.Errorf("want nothing on stdout; %s", report)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not contain %q; %s", w, report)
				}
			}
			if st := xdpState(t, topo); st != "" {
				t.Errorf("XDP attached to lb eth0 after a failed start: %s", st)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(agenttest.Binary(t), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("icmplb version: %v: %s", err, out)
	}
	line, _ := bufio.NewReader(strings.NewReader(string(out))).ReadString('\n')
	if !strings.HasPrefix(line, "icmplb ") || len(strings.TrimSpace(line)) <= len("icmplb") {
		t.Fatalf("icmplb version printed %q, want a line \"icmplb VERSION\"", out)
	}
}

// worldReadableBinary copies the binary under test where an unprivileged
// user can execute it (test temp directories are private to root).
func worldReadableBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "icmplb-e2e-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "icmplb")
	if out, err := exec.Command("cp", agenttest.Binary(t), bin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestLeastPrivilege runs the agent as an unprivileged user holding only the
// three capabilities docs/containers-and-kubernetes.md names: it must attach and balance.
func TestLeastPrivilege(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	// NET_RAW is the probes' raw socket. One probe at start, then none for
	// a minute: the packet count below sees only the clients' pings.
	caps := "-all,+bpf,+perfmon,+net_admin,+net_raw"
	cmd := topo.Command(topology.SeedBalancer, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps="+caps, "--ambient-caps="+caps, "--bounding-set="+caps,
		worldReadableBinary(t), "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--probe.interval", "60s")
	a := agenttest.Start(t, "icmplb as nobody", cmd, agenttest.Env())
	t.Cleanup(func() { stopAgent(a) })
	a.WaitLog(t, "msg=attached", attachTimeout)
	assertBalances(t, topo)
}

// TestInterfaceGone deletes the balancer's interface under the running agent:
// the program goes with it, so the agent must exit with an error naming the
// interface instead of serving as if all were well.
func TestInterfaceGone(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	a := startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1)
	a.ExpectFailure()
	if _, err := topo.Run(topology.SeedBalancer, "ip", "link", "del", "eth0"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("agent still running 20s after its interface was deleted")
	}
	if a.Err() == nil || !strings.Contains(a.Log(), "interface eth0 is gone") {
		t.Errorf("exit %v; want a failure naming the interface", a.Err())
	}
}
