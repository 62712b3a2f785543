package responder

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// start runs a responder with cfg in host's namespace, with the kernel's
// echo replies off, until the test ends.
func start(t *testing.T, topo *topology.Topology, host string, cfg Config) *Responder {
	t.Helper()
	if err := DisableKernelEcho(topo, host); err != nil {
		t.Fatal(err)
	}
	return serve(t, topo, host, cfg)
}

// serve is start without touching the kernel's echo replies.
func serve(t *testing.T, topo *topology.Topology, host string, cfg Config) *Responder {
	t.Helper()
	var r *Responder
	if err := topo.InNS(host, func() (err error) {
		r, err = Listen(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve() }()
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return r
}

type pingSummary struct {
	transmitted, received, duplicates int
	lossPercent                       float64
	min, avg, max                     time.Duration
}

var (
	countsRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received,(?: \+(\d+) duplicates,)?(?: \+\d+ errors,)? ([\d.]+)% packet loss`)
	rttRE    = regexp.MustCompile(`rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+ ms`)
)

func parsePing(out string) (pingSummary, error) {
	var s pingSummary
	m := countsRE.FindStringSubmatch(out)
	if m == nil {
		return s, fmt.Errorf("no summary line in ping output:\n%s", out)
	}
	s.transmitted, _ = strconv.Atoi(m[1])
	s.received, _ = strconv.Atoi(m[2])
	if m[3] != "" {
		s.duplicates, _ = strconv.Atoi(m[3])
	}
	s.lossPercent, _ = strconv.ParseFloat(m[4], 64)
	if m := rttRE.FindStringSubmatch(out); m != nil {
		ms := func(v string) time.Duration {
			f, _ := strconv.ParseFloat(v, 64)
			return time.Duration(f * float64(time.Millisecond))
		}
		s.min, s.avg, s.max = ms(m[1]), ms(m[2]), ms(m[3])
	}
	return s, nil
}

// ping runs ping in from against to and parses its summary. ping exits
// non-zero when replies are missing, which is expected here, so only a
// missing summary is an error.
func ping(t *testing.T, topo *topology.Topology, from, to string, args ...string) pingSummary {
	t.Helper()
	args = append(append([]string{"-q", "-n"}, args...), to)
	out, err := topo.Run(from, "ping", args...)
	s, perr := parsePing(out)
	if perr != nil {
		t.Fatalf("ping %v: %v (exit: %v)", args, perr, err)
	}
	t.Logf("ping %v: %+v", args, s)
	return s
}

func TestDelayAndLoss(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	cfg := Config{Delay: 10 * time.Millisecond, Loss: 0.3, Seed: 1}
	r := start(t, topo, topology.SeedBackend1, cfg)

	// 2ms apart against a 10ms delay keeps about five requests waiting at
	// once: a responder that answered one at a time would fall behind.
	const n = 200
	s := ping(t, topo, topology.SeedClient, topology.SeedH2.String(),
		"-c", strconv.Itoa(n), "-i", "0.002", "-W", "1")

	wantDropped := cfg.Dropped(n)
	if wantDropped != 60 {
		t.Fatalf("scheme drops %d of %d, want 60", wantDropped, n)
	}
	if s.transmitted != n || s.received != n-int(wantDropped) || s.duplicates != 0 || s.lossPercent != 30 {
		t.Errorf("ping: %d transmitted, %d received, %d duplicates, %v%% loss; want %d, %d, 0, 30%%",
			s.transmitted, s.received, s.duplicates, s.lossPercent, n, n-int(wantDropped))
	}
	if s.avg < 10*time.Millisecond || s.avg > 12*time.Millisecond {
		t.Errorf("rtt avg %v, want within [10ms, 12ms]", s.avg)
	}
	if s.min < 10*time.Millisecond {
		t.Errorf("rtt min %v is below the 10ms delay", s.min)
	}

	req, rep, drop := r.Stats()
	t.Logf("responder: %d requests, %d replied, %d dropped, %d send errors", req, rep, drop, r.SendErrors())
	if req != n || rep != n-wantDropped || drop != wantDropped || r.SendErrors() != 0 {
		t.Errorf("stats: %d requests, %d replied, %d dropped, %d send errors; want %d, %d, %d, 0",
			req, rep, drop, r.SendErrors(), n, n-wantDropped, wantDropped)
	}
}

func TestNoLossShortDelay(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	r := start(t, topo, topology.SeedBackend1, Config{Delay: 2 * time.Millisecond})

	const n = 200
	s := ping(t, topo, topology.SeedClient, topology.SeedH2.String(),
		"-c", strconv.Itoa(n), "-i", "0.002", "-W", "1")
	if s.transmitted != n || s.received != n || s.duplicates != 0 {
		t.Errorf("ping: %d transmitted, %d received, %d duplicates; want %d, %[4]d, 0",
			s.transmitted, s.received, s.duplicates, n)
	}
	if s.avg < 2*time.Millisecond || s.avg > 3*time.Millisecond {
		t.Errorf("rtt avg %v, want within [2ms, 3ms]", s.avg)
	}
	req, rep, drop := r.Stats()
	if req != n || rep != n || drop != 0 {
		t.Errorf("stats: %d requests, %d replied, %d dropped; want %d, %[4]d, 0", req, rep, drop, n)
	}
}

func TestJitter(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	start(t, topo, topology.SeedBackend1, Config{Delay: 6 * time.Millisecond, Jitter: 3 * time.Millisecond, Seed: 5})

	s := ping(t, topo, topology.SeedClient, topology.SeedH2.String(), "-c", "200", "-i", "0.002", "-W", "1")
	if s.received != 200 || s.duplicates != 0 {
		t.Fatalf("ping: %d received, %d duplicates; want 200, 0", s.received, s.duplicates)
	}
	// The delays are uniform over [3ms, 9ms], averaging 6.02ms for this
	// seed; 200 of them come close to both ends. The maximum is not bounded
	// above: one scheduling hiccup on a busy machine would break that.
	if s.min < 3*time.Millisecond || s.min > 4*time.Millisecond {
		t.Errorf("rtt min %v, want within [3ms, 4ms]", s.min)
	}
	if s.max < 8*time.Millisecond {
		t.Errorf("rtt max %v, want at least 8ms", s.max)
	}
	if s.avg < 6*time.Millisecond || s.avg > 7*time.Millisecond {
		t.Errorf("rtt avg %v, want within [6ms, 7ms]", s.avg)
	}
}

// Without the sysctl the kernel answers too and ping reports duplicates;
// with it, only the responder's (delayed) reply arrives.
func TestKernelEchoDisabled(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	serve(t, topo, topology.SeedBackend1, Config{Delay: 5 * time.Millisecond})
	h2 := topology.SeedH2.String()

	s := ping(t, topo, topology.SeedClient, h2, "-c", "5", "-i", "0.05", "-W", "1")
	// ping quits on its fifth answer, the kernel's, before the
	// responder's late duplicate of it arrives.
	if s.received != 5 || s.duplicates < 4 {
		t.Errorf("kernel echo on: %d received, %d duplicates; want 5, at least 4", s.received, s.duplicates)
	}

	if err := DisableKernelEcho(topo, topology.SeedBackend1); err != nil {
		t.Fatal(err)
	}
	s = ping(t, topo, topology.SeedClient, h2, "-c", "5", "-i", "0.05", "-W", "1")
	if s.received != 5 || s.duplicates != 0 {
		t.Errorf("kernel echo off: %d received, %d duplicates; want 5, 0", s.received, s.duplicates)
	}
	if s.min < 5*time.Millisecond {
		t.Errorf("kernel echo off: rtt min %v, so some reply did not come from the responder", s.min)
	}
}

func TestCloseCancelsPendingReplies(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	if err := DisableKernelEcho(topo, topology.SeedBackend1); err != nil {
		t.Fatal(err)
	}
	var r *Responder
	if err := topo.InNS(topology.SeedBackend1, func() (err error) {
		r, err = Listen(Config{Delay: time.Hour})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve() }()
	ping(t, topo, topology.SeedClient, topology.SeedH2.String(), "-c", "3", "-i", "0.01", "-W", "0.2")
	if req, _, _ := r.Stats(); req != 3 {
		t.Errorf("%d requests seen, want 3", req)
	}
	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for replies an hour away")
	}
	if err := <-done; err != nil {
		t.Errorf("serve after close: %v", err)
	}
	if req, rep, drop := r.Stats(); req != 3 || rep != 0 || drop != 0 {
		t.Errorf("stats after close: %d, %d, %d; want 3, 0, 0", req, rep, drop)
	}
}

// A host with a second address (as a backend carrying a VIP would) must
// answer from the address that was pinged, as the kernel does; routing
// alone would pick the primary address.
func TestReplyFromPingedAddress(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	const extra = "10.0.0.52"
	if _, err := topo.Run(topology.SeedBackend1, "ip", "addr", "add", extra+"/32", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	start(t, topo, topology.SeedBackend1, Config{Delay: time.Millisecond})
	out, err := topo.Run(topology.SeedClient, "ping", "-n", "-c", "3", "-i", "0.05", "-W", "1", extra)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "bytes from "+extra+":"); n != 3 {
		t.Errorf("%d of 3 replies from %s:\n%s", n, extra, out)
	}
}
