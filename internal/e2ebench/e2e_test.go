// SPDX-License-Identifier: MIT

package e2ebench

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/loadgen"
	"github.com/icmplb/icmplb/internal/testenv"
)

func TestMain(m *testing.M) { agenttest.Main(m) }

// The network: A (a0) is the generator, every client's next hop and every
// backend; B (b0, 10.0.0.1/24) is the balancer under test. Known sessions
// come from clients in 10.32.0.0/11, new ones from 10.64.0.0/10.
var (
	bAddr       = netip.MustParsePrefix("10.0.0.1/24")
	vip         = netip.MustParseAddr("10.0.0.100")
	backends    = backendAddrs(32)
	gateway     = netip.MustParseAddr("10.0.0.254")
	knownClient = netip.MustParseAddr("10.32.0.1")
	newClients  = netip.MustParseAddr("10.64.0.0")
	addrs       = loadgen.Addrs{VIP: vip, Backends: netip.MustParsePrefix("10.0.0.0/24"), Clients: netip.MustParsePrefix("10.0.0.0/8")}
)

// newPerRun bounds the new sessions of one run of the case "new": 4 x 64k,
// so that the sessions of all its runs and of the known cases (under 1M)
// fit in conntrack and in the NAT ids of the backends (32 x 65535). A flood
// past those sizes measures what the balancer does when full (refuse, or
// evict), not the path of a new session.
const newPerRun = 1 << 18

// Agent settings for every icmplb run: health checks off (they would
// send frames of their own and could eject the backends that never answer
// in the request-only cases), every session of the run fits in conntrack
// (see newPerRun), and the in-flight map holds every unanswered request
// until the sweeper (every 500 ms) drops it 2 x 10 ms after it left.
var agentFlags = []string{
	"--probe.interval", "0", "--outlier.max-ejection-percent", "0",
	"--conntrack-size", "1048576", "--inflight-size", "4194304", "--loss-timeout", "10ms",
	"--web.listen-address", "127.0.0.1:10047",
}

// backendAddrs are n backends from 10.0.0.2 on. Each gives icmplb 65535 NAT
// ids (and nftables 65536 SNAT tuples): 32 hold every session the cases
// open (see newPerRun) with ids to spare.
func backendAddrs(n int) []netip.Addr {
	a := make([]netip.Addr, n)
	next := netip.MustParseAddr("10.0.0.2")
	for i := range a {
		a[i], next = next, next.Next()
	}
	return a
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		b.Fatalf("%s=%q: want a count", name, v)
	}
	return n
}

// BenchmarkE2E measures, in one run and the same way for each, how many
// echo frames per second go through each setup on the balancer's side of a
// veth pair, with the generator pinned to one CPU (where, on a veth, the
// whole path runs). It prints a table and writes it as JSON to
// $ICMPLB_E2E_OUT (default bin/e2e-bench.json). $ICMPLB_E2E_FRAMES (default
// 2000000) and $ICMPLB_E2E_MAX_SECONDS (default 2) bound each case,
// $ICMPLB_E2E_CPU (default 0) is the generator's CPU, and each case is run
// $ICMPLB_E2E_RUNS times (default 3), its row being the median run.
func BenchmarkE2E(b *testing.B) {
	testenv.Privileged(b)
	testenv.Tool(b, "nft", "nftables")
	testenv.Tool(b, "ethtool", "ethtool")
	testenv.Tool(b, "sysctl", "procps")
	bin := agenttest.Binary(b)
	out := os.Getenv("ICMPLB_E2E_OUT")
	if out == "" {
		out = filepath.Join("..", "..", "bin", "e2e-bench.json")
	}
	e := &bench{
		b:      b,
		bin:    bin,
		frames: uint64(envInt(b, "ICMPLB_E2E_FRAMES", 2_000_000)),
		maxDur: time.Duration(envInt(b, "ICMPLB_E2E_MAX_SECONDS", 2)) * time.Second,
		cpu:    envInt(b, "ICMPLB_E2E_CPU", 0),
		reps:   max(envInt(b, "ICMPLB_E2E_RUNS", 3), 1),
	}
	for b.Loop() {
		e.rows = nil
		e.run()
	}
	SetRatios(e.rows, "reflector", "known-1")
	fmt.Println()
	if err := WriteTable(os.Stdout, e.rows); err != nil {
		b.Fatal(err)
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	res := Results{
		Kernel: unix.ByteSliceToString(uts.Release[:]), CPUs: runtime.NumCPU(), GeneratorCPU: e.cpu,
		FramesPerCase: e.frames, MaxSeconds: e.maxDur.Seconds(), Runs: e.reps, FrameSize: loadgen.DefaultSize, Rows: e.rows,
	}
	if err := WriteJSON(out, res); err != nil {
		b.Fatal(err)
	}
	abs, _ := filepath.Abs(out)
	fmt.Printf("\nresults written to %s\n", abs)
	for _, r := range e.rows {
		if r.Setup == "icmplb-native" && r.Case == "known-64k" {
			b.ReportMetric(r.PPS/1e6, "icmplb-native-Mpps")
			b.ReportMetric(r.Ratio, "icmplb-native-x-reflector")
		}
		if r.Setup == "reflector" {
			b.ReportMetric(r.PPS/1e6, "reflector-Mpps")
		}
	}
}

type bench struct {
	b      *testing.B
	bin    string
	frames uint64
	maxDur time.Duration
	cpu    int
	reps   int

	p    *loadgen.Pair
	gen  *loadgen.Generator
	near *loadgen.Sink // on a0: the sink, or the responder
	rows []Row
}

// run builds the pair and measures every setup on it.
func (e *bench) run() {
	b := e.b
	p, err := loadgen.NewPair()
	if err != nil {
		b.Fatal(err)
	}
	e.p = p
	b.Cleanup(func() {
		if err := p.Close(); err != nil {
			b.Errorf("remove namespaces: %v", err)
		}
	})
	b.Logf("namespaces %s and %s", p.A, p.B)
	e.gen, err = loadgen.NewGenerator(e.settings("known-1"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.gen.Close() })
	e.configureB()
	e.setNear(loadgen.SinkRole)

	// The generator's ceiling: one hop, into a sink on b0.
	far := e.attachFar(loadgen.SinkRole)
	e.measure("generator", "known-1", far, loadgen.RequestVIP, nil)
	e.closeFar(far)

	// The path's physical limit: two hops, b0 sends every frame back.
	far = e.attachFar(loadgen.ReflectorRole)
	e.measure("reflector", "known-1", e.near, loadgen.RequestVIP, nil)
	e.closeFar(far)

	// The seed's approach: a stateless DNAT, no conntrack or measurement.
	l := e.attachDNAT()
	e.measure("stateless_dnat", "known-1", e.near, loadgen.RequestBackend, nil)
	e.measure("stateless_dnat", "known-64k", e.near, loadgen.RequestBackend, nil)
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}

	// icmplb, native: b0's native XDP gives it NAPI, so the generator's
	// frames arrive.
	e.icmplb("native")
	// Generic mode sees frames only once b0 has NAPI without a native
	// program: GRO on does that (docs/testing.md).
	if _, err := p.Exec(p.B, "ethtool", "-K", p.BIface, "gro", "on"); err != nil {
		b.Fatal(err)
	}
	e.icmplb("generic")
	e.nftables()
}

// settings are the generator's settings of a case.
func (e *bench) settings(kase string) loadgen.Settings {
	s := loadgen.Settings{SrcMAC: e.p.AMAC, DstMAC: e.p.BMAC, Client: knownClient, Dst: vip}
	switch kase {
	case "known-1":
	case "first-64k", "known-64k", "replies-64k":
		s.Client = knownClient.Next()
		s.Sessions = 1 << 16
	case "new":
		// 64 ids x 131072 clients: 8M (client, id) pairs, each new within
		// the runs of the case (up to 8M frames).
		s.Client, s.Clients, s.Sessions = newClients, 1<<17, 64
	default:
		e.b.Fatalf("unknown case %q", kase)
	}
	return s
}

// configureB addresses b0 and makes A the next hop of every backend and
// client, with static neighbour entries: A answers no ARP (its sink drops
// everything).
func (e *bench) configureB() {
	p := e.p
	cmds := [][]string{
		{"addr", "add", bAddr.String(), "dev", p.BIface},
		{"addr", "add", vip.String() + "/32", "dev", p.BIface},
		{"neigh", "replace", gateway.String(), "lladdr", p.AMAC.String(), "dev", p.BIface, "nud", "permanent"},
		{"route", "add", "10.32.0.0/11", "via", gateway.String(), "dev", p.BIface},
		{"route", "add", "10.64.0.0/10", "via", gateway.String(), "dev", p.BIface},
	}
	for _, be := range backends {
		cmds = append(cmds, []string{"neigh", "replace", be.String(), "lladdr", p.AMAC.String(), "dev", p.BIface, "nud", "permanent"})
	}
	for _, c := range cmds {
		if _, err := p.IP(p.B, c...); err != nil {
			e.b.Fatal(err)
		}
	}
}

// inB runs fn in B on a locked thread.
func (e *bench) inB(fn func() error) {
	if err := e.p.Do(e.p.B, fn); err != nil {
		e.b.Fatal(err)
	}
}

// setNear puts the program of role on a0 in place of the current one.
func (e *bench) setNear(role loadgen.Role) {
	if e.near != nil {
		if err := e.near.Close(); err != nil {
			e.b.Fatal(err)
		}
	}
	s, err := loadgen.NewSink(role, addrs)
	if err != nil {
		e.b.Fatal(err)
	}
	e.b.Cleanup(func() { s.Close() })
	if err := e.p.Do(e.p.A, func() error { return s.Attach(e.p.AIndex, false) }); err != nil {
		e.b.Fatal(err)
	}
	e.near = s
}

func (e *bench) attachFar(role loadgen.Role) *loadgen.Sink {
	s, err := loadgen.NewSink(role, addrs)
	if err != nil {
		e.b.Fatal(err)
	}
	e.b.Cleanup(func() { s.Close() })
	e.inB(func() error { return s.Attach(e.p.BIndex, false) })
	return s
}

func (e *bench) closeFar(s *loadgen.Sink) {
	if err := s.Close(); err != nil {
		e.b.Fatal(err)
	}
}

// attachDNAT attaches the seed's stateless DNAT (bpf/testprogs.c) to b0,
// sending to both backends at A's MAC from the VIP.
func (e *bench) attachDNAT() link.Link {
	spec, err := bpf.LoadIcmplbTest()
	if err != nil {
		e.b.Fatal(err)
	}
	be32 := func(a netip.Addr) uint32 { return binary.NativeEndian.Uint32(a.AsSlice()) }
	mac := [6]byte(e.p.AMAC)
	for name, v := range map[string]any{
		bpf.IcmplbTestVarDnatVip:     be32(vip),
		bpf.IcmplbTestVarDnatSnat:    be32(vip),
		bpf.IcmplbTestVarDnatBackend: [2]uint32{be32(backends[0]), be32(backends[1])},
		bpf.IcmplbTestVarDnatMac:     [2][6]byte{mac, mac},
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			e.b.Fatalf("set %s: %v", name, err)
		}
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"stateless_dnat"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		e.b.Fatal(err)
	}
	e.b.Cleanup(func() { objs.Prog.Close() })
	var l link.Link
	e.inB(func() (err error) {
		l, err = link.AttachXDP(link.XDPOptions{Program: objs.Prog, Interface: e.p.BIndex, Flags: link.XDPDriverMode})
		return err
	})
	e.b.Cleanup(func() { l.Close() })
	return l
}

var className = map[loadgen.Class]string{
	loadgen.RequestVIP:     "request_vip",
	loadgen.RequestBackend: "request_backend",
	loadgen.ReplyClient:    "reply_client",
}

// prover is what a setup shows of the path it took: counters, and the CPU
// of its userspace agent.
type prover interface {
	counters() (map[string]float64, error)
	cpuSeconds() (float64, error)
	// check judges the counters' deltas for a case whose sink counted
	// counted of sent frames; "" is a pass.
	check(kase string, d map[string]float64, sent, counted uint64) string
}

// measure runs one case e.reps times (first-64k once: its sessions are
// new only the first time) and adds the run of median rate as its row,
// with every run's rate: the machine is shared, and one run can be off by
// a factor of two.
func (e *bench) measure(setup, kase string, sink *loadgen.Sink, class loadgen.Class, pr prover) {
	reps := e.reps
	if kase == "first-64k" {
		reps = 1
	}
	var runs []Row
	for range reps {
		runs = append(runs, e.measureOnce(setup, kase, sink, class, pr))
	}
	sorted := slices.Clone(runs)
	slices.SortFunc(sorted, func(a, b Row) int { return cmp.Compare(a.PPS, b.PPS) })
	row := sorted[len(sorted)/2]
	for _, r := range runs {
		row.RunsPPS = append(row.RunsPPS, r.PPS)
		if !strings.HasPrefix(row.Check, "FAIL") && strings.HasPrefix(r.Check, "FAIL") {
			row.Check = r.Check
		}
	}
	e.rows = append(e.rows, row)
}

// measureOnce runs the case once: the generator sends (up to e.frames, for
// at most e.maxDur) and sink counts class.
func (e *bench) measureOnce(setup, kase string, sink *loadgen.Sink, class loadgen.Class, pr prover) Row {
	b := e.b
	s := e.settings(kase)
	frames := e.frames
	switch kase {
	case "first-64k":
		frames = uint64(s.Sessions)
	case "new":
		frames = min(frames, newPerRun)
	}
	if err := e.gen.Set(s); err != nil {
		b.Fatal(err)
	}
	counts := func() loadgen.Counts {
		c, err := sink.Counts()
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	before := counts()
	var ctrBefore map[string]float64
	cpuBefore := -1.0
	if pr != nil {
		var err error
		if ctrBefore, err = pr.counters(); err != nil {
			b.Fatal(err)
		}
		if cpuBefore, err = pr.cpuSeconds(); err != nil {
			b.Fatal(err)
		}
	}
	var r loadgen.Result
	err := e.p.Do(e.p.A, func() error {
		unpin, err := loadgen.Pin(e.cpu)
		if err != nil {
			return err
		}
		defer unpin()
		r, err = e.gen.Run(e.p.AIndex, frames, e.maxDur)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	// The agent's CPU over the run, scrapes left out.
	cpuAfter := -1.0
	if pr != nil {
		if cpuAfter, err = pr.cpuSeconds(); err != nil {
			b.Fatal(err)
		}
	}
	// Frames still on their way are counted, not timed: a few hundred at
	// most (a veth ring, a backlog queue), but the kernel's path has been
	// seen to hand some over tens of milliseconds late, which would then be
	// counted in the next run: the counts must hold still for 100 ms.
	after := counts()
	for still, deadline := 0, time.Now().Add(2*time.Second); still < 5 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		c := counts()
		if c == after {
			still++
		} else {
			still = 0
		}
		after = c
	}
	d := after.Sub(before)
	row := Row{Setup: setup, Case: kase, Class: className[class], Sent: r.Frames, Counted: d[class], Seconds: r.Elapsed.Seconds(), AgentCPU: -1}
	row.PPS = float64(row.Counted) / row.Seconds
	var problems []string
	if pr != nil {
		ctrAfter, err := pr.counters()
		if err != nil {
			b.Fatal(err)
		}
		if cpuBefore >= 0 {
			row.AgentCPU = cpuAfter - cpuBefore
		}
		row.Counters = Delta(ctrBefore, ctrAfter)
		if kase == "known-1" && row.Counters["backend_requests"] < row.Counters["request_forwarded"] {
			row.Note = fmt.Sprintf("%.0f of %.0f requests were forwarded as copies of requests still in flight, not counted as new: "+
				"one session's 16-bit sequence wraps every 65536 frames, within 2 x --loss-timeout above 3.3 Mpps",
				row.Counters["request_forwarded"]-row.Counters["backend_requests"], row.Counters["request_forwarded"])
		}
		if msg := pr.check(kase, row.Counters, row.Sent, row.Counted); msg != "" {
			problems = append(problems, msg)
			b.Errorf("%s %s: %s (counters %v; sink %v)", setup, kase, msg, row.Counters, d)
		}
	}
	row.Check = "ok"
	if len(problems) > 0 {
		row.Check = "FAIL: " + strings.Join(problems, "; ")
	}
	if row.Counted < row.Sent {
		row.Check += fmt.Sprintf(" (%.2f%% not counted)", 100*(1-float64(row.Counted)/float64(row.Sent)))
	}
	other := d[loadgen.Frames] - d[class]
	if class == loadgen.ReplyClient {
		other -= d[loadgen.RequestBackend] // the requests the responder answered
	}
	if other > row.Sent/100 {
		row.Note = fmt.Sprintf("sink saw %d frames of other classes", other)
	}
	b.Logf("%s %s: sent %d, counted %d in %.3fs: %.0f pps; agent CPU %.2fs; counters %v; sink %v",
		setup, kase, row.Sent, row.Counted, row.Seconds, row.PPS, row.AgentCPU, row.Counters, d)
	return row
}

// icmplb runs the agent in xdp mode on b0 and measures its cases.
func (e *bench) icmplb(mode string) {
	b := e.b
	p := e.p
	args := []string{"run", "--iface", p.BIface, "--vip", vip.String(), "--xdp-mode", mode}
	for _, be := range backends {
		args = append(args, "--backend", be.String())
	}
	args = append(args, agentFlags...)
	proc := agenttest.Start(b, "icmplb", p.Command(p.B, e.bin, args...), agenttest.Env())
	proc.WaitLog(b, "msg=attached", 60*time.Second)
	if got := e.xdpMode(); got != mode {
		b.Fatalf("agent started with --xdp-mode %s; b0 has XDP attached in mode %q", mode, got)
	}
	a := &agentProver{proc: proc, client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = p.Do(p.B, func() error {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}}
	defer a.client.CloseIdleConnections()
	setup := "icmplb-" + mode
	e.measure(setup, "known-1", e.near, loadgen.RequestBackend, a)
	e.measure(setup, "first-64k", e.near, loadgen.RequestBackend, a)
	e.measure(setup, "known-64k", e.near, loadgen.RequestBackend, a)
	e.measure(setup, "new", e.near, loadgen.RequestBackend, a)
	e.setNear(loadgen.ResponderRole)
	e.measure(setup, "replies-64k", e.near, loadgen.ReplyClient, a)
	e.setNear(loadgen.SinkRole)
	if _, err := proc.Stop(); err != nil {
		b.Fatalf("stop the agent: %v\n%s", err, proc.Log())
	}
}

// xdpMode is how an XDP program is attached to b0, from ip -j link:
// "native", "generic" or "" for none.
func (e *bench) xdpMode() string {
	out, err := e.p.IP(e.p.B, "-j", "link", "show", "dev", e.p.BIface)
	if err != nil {
		e.b.Fatal(err)
	}
	var links []struct {
		XDP *struct {
			Mode int `json:"mode"`
		} `json:"xdp"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		e.b.Fatalf("parse ip -j link output %q: %v", out, err)
	}
	if links[0].XDP == nil {
		return ""
	}
	// XDP_ATTACHED_DRV and XDP_ATTACHED_SKB of linux/if_link.h.
	return map[int]string{1: "native", 2: "generic"}[links[0].XDP.Mode]
}

// agentProver reads the agent's /metrics and /proc/PID/stat.
type agentProver struct {
	proc   *agenttest.Proc
	client *http.Client
}

func (a *agentProver) counters() (map[string]float64, error) {
	resp, err := a.client.Get("http://127.0.0.1:10047/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return Counters(resp.Body)
}

func (a *agentProver) cpuSeconds() (float64, error) {
	d, err := agenttest.CPUTime(a.proc.Cmd.Process.Pid)
	return d.Seconds(), err
}

// check: every counted frame took the intended path, and nothing else
// moved by more than 1% of what was sent.
func (a *agentProver) check(kase string, d map[string]float64, sent, counted uint64) string {
	want := map[string]float64{"request_forwarded": float64(counted), "backend_requests": float64(counted)}
	if kase == "known-1" {
		// One session at millions of frames per second reuses its
		// sequence numbers while their requests may still count as in
		// flight: those are forwarded as copies, not counted as requests
		// (the row's note says how many).
		delete(want, "backend_requests")
		if d["backend_requests"] > d["request_forwarded"] {
			return fmt.Sprintf("backend_requests moved by %.0f, more than request_forwarded", d["backend_requests"])
		}
	}
	if kase == "replies-64k" {
		want["reply_returned"] = float64(counted)
		want["backend_replies"] = float64(counted)
	}
	var bad []string
	for k, v := range want {
		// Forwarded frames the veth dropped are not counted at the
		// sink: the counter may exceed the count, by at most what was
		// sent. Both may take in a few frames of the run before
		// (slack), which the kernel handed over only with this run's.
		if d[k] < v-slack(sent) || d[k] > float64(sent)+slack(sent) {
			bad = append(bad, fmt.Sprintf("%s moved by %.0f, want %.0f..%d", k, d[k], v, sent))
		}
	}
	for k, v := range d {
		if _, ok := want[k]; !ok && k != "backend_requests" && v > float64(sent)/100 {
			bad = append(bad, fmt.Sprintf("%s moved by %.0f", k, v))
		}
	}
	return strings.Join(bad, ", ")
}

// slack is how many frames of a run of sent frames may cross into the next
// run: a few have been seen to wait in a veth ring or a queue, 100 ms past
// the end of their run, until the next run's frames moved them on.
func slack(sent uint64) float64 { return float64(sent) / 1000 }

// nftables DNATs echo requests to the VIP over the backends (round robin
// per new connection) and SNATs them to the VIP, in B's kernel: the
// one-arm forwarding path icmplb replaces.
func (e *bench) nftables() {
	b := e.b
	p := e.p
	if _, err := p.Exec(p.B, "sysctl", "-qw", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.b0.send_redirects=0",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.b0.rp_filter=0"); err != nil {
		b.Fatal(err)
	}
	var pick, set []string
	for i, be := range backends {
		pick = append(pick, fmt.Sprintf("%d : %s", i, be))
		set = append(set, be.String())
	}
	rules := fmt.Sprintf(`table ip icmplb_bench {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[1]s icmp type echo-request dnat to numgen inc mod %[2]d map { %[3]s }
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ip daddr { %[4]s } icmp type echo-request snat to %[1]s
	}
}
`, vip, len(backends), strings.Join(pick, ", "), strings.Join(set, ", "))
	cmd := p.Command(p.B, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("nft -f: %v: %s", err, out)
	}
	n := &nftProver{p: p}
	e.measure("nftables", "known-1", e.near, loadgen.RequestBackend, n)
	e.measure("nftables", "first-64k", e.near, loadgen.RequestBackend, n)
	e.measure("nftables", "known-64k", e.near, loadgen.RequestBackend, n)
	e.measure("nftables", "new", e.near, loadgen.RequestBackend, n)
	e.setNear(loadgen.ResponderRole)
	e.measure("nftables", "replies-64k", e.near, loadgen.ReplyClient, n)
	e.setNear(loadgen.SinkRole)
}

// nftProver reads B's forwarded datagrams (/proc/net/snmp) and conntrack
// entries: the proof that frames went through the kernel's forwarding and
// NAT.
type nftProver struct{ p *loadgen.Pair }

func (n *nftProver) counters() (map[string]float64, error) {
	out, err := n.p.Exec(n.p.B, "cat", "/proc/net/snmp", "/proc/sys/net/netfilter/nf_conntrack_count")
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	c := map[string]float64{}
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "Ip: Forwarding") {
			continue
		}
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j, name := range names {
			if name == "ForwDatagrams" && j < len(values) {
				c["ip_forwarded"], _ = strconv.ParseFloat(values[j], 64)
			}
		}
	}
	c["conntrack_entries"], err = strconv.ParseFloat(lines[len(lines)-1], 64)
	if err != nil || c["ip_forwarded"] == 0 && len(lines) < 3 {
		return nil, fmt.Errorf("parse /proc/net/snmp and nf_conntrack_count of %s: %v\n%s", n.p.B, err, out)
	}
	return c, nil
}

func (n *nftProver) cpuSeconds() (float64, error) { return -1, nil }

// check: the kernel forwarded every counted frame (twice in the replies
// case: the request and its reply), give or take the frames that cross
// from one run into the next (slack).
func (n *nftProver) check(kase string, d map[string]float64, sent, counted uint64) string {
	want, most := float64(counted), float64(sent)
	if kase == "replies-64k" {
		want, most = 2*want, 2*most
	}
	if d["ip_forwarded"] < want-2*slack(sent) || d["ip_forwarded"] > most+2*slack(sent) {
		return fmt.Sprintf("ip_forwarded moved by %.0f, want at least %.0f", d["ip_forwarded"], want)
	}
	return ""
}
