// SPDX-License-Identifier: MIT

package responder

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/icmplb/icmplb/internal/histquant"
	"github.com/icmplb/icmplb/internal/pingout"
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

// ping runs ping in from against to and parses its output. ping exits
// non-zero when replies are missing, which is expected here, so only a
// missing summary is an error.
func ping(t *testing.T, topo *topology.Topology, from, to string, args ...string) pingout.Result {
	t.Helper()
	args = append(append([]string{"-n"}, args...), to)
	out, err := topo.Run(from, "ping", args...)
	s := pingout.Parse(out)
	if !s.Summary {
		t.Fatalf("ping %v: no summary line (exit: %v):\n%s", args, err, out)
	}
	t.Logf("ping %v: %d transmitted, %d received, %d duplicates, rtt min/avg/max %v/%v/%v",
		args, s.Transmitted, s.Received, s.Duplicates, s.Min, s.Avg, s.MaxRTT)
	return s
}

// judge checks a responder's record against its configuration and against
// what the one ping session that used it saw, exchange by exchange (the
// sequence number identifies an exchange). Every scheduled delay must be
// exactly the configured one (want gives it per reply, in order): the
// responder never answers early. Every round trip ping saw must be at least
// the responder's hold of that request, which holds the delay, the wait for
// the scheduler and the wait to be read. How late the scheduler let replies
// go is logged, never judged: it depends on the machine's load.
func judge(t *testing.T, r *Responder, s pingout.Result, want func() time.Duration) {
	t.Helper()
	ex := r.Exchanges()
	bySeq := map[int]Exchange{}
	var holds, late, slack []float64
	replied := 0
	for _, e := range ex {
		if e.Dropped {
			if !e.Due.IsZero() || e.Replied() {
				t.Errorf("request %d was dropped but scheduled or answered: %+v", e.N, e)
			}
			continue
		}
		if d := want(); e.Delay() != d {
			t.Errorf("request %d (seq %d) scheduled %v after it was read, want %v", e.N, e.Seq, e.Delay(), d)
		}
		if !e.Replied() {
			t.Errorf("request %d (seq %d) not answered: %+v", e.N, e.Seq, e)
			continue
		}
		replied++
		if e.Late() < 0 || e.Arrived.After(e.Read) {
			t.Errorf("request %d: arrived %v, read %v, due %v, reply sent at %v: out of order",
				e.N, e.Arrived, e.Read, e.Due, e.Sending)
		}
		bySeq[e.Seq] = e
		holds = append(holds, e.Hold().Seconds())
		late = append(late, e.Late().Seconds())
	}
	got := 0
	for _, p := range s.Replies {
		if p.Dup {
			continue
		}
		got++
		e, ok := bySeq[p.Seq]
		if !ok {
			t.Errorf("ping got a reply to seq %d, which the responder did not answer", p.Seq)
			continue
		}
		if p.Max < e.Hold() {
			t.Errorf("seq %d: ping saw %v (at most %v), less than the responder held it (%v)", p.Seq, p.RTT, p.Max, e.Hold())
		}
		slack = append(slack, (p.Max - e.Hold()).Seconds())
	}
	if got != replied || got != s.Received {
		t.Errorf("ping printed %d replies and counted %d; the responder answered %d", got, s.Received, replied)
	}
	if len(holds) == 0 {
		return
	}
	q := func(xs []float64, q float64) time.Duration {
		return time.Duration(histquant.Nth(histquant.Rank(q, uint64(len(xs))), xs) * 1e9).Round(time.Microsecond)
	}
	t.Logf("responder held p50 %v, p99 %v, max %v; late p50 %v, p99 %v; ping minus hold p50 %v, p99 %v",
		q(holds, 0.5), q(holds, 0.99), q(holds, 1), q(late, 0.5), q(late, 0.99), q(slack, 0.5), q(slack, 0.99))
}

// constant is want for judge without jitter.
func constant(d time.Duration) func() time.Duration { return func() time.Duration { return d } }

func TestDelayAndLoss(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	cfg := Config{Delay: 10 * time.Millisecond, Loss: 0.3, Seed: 1, Record: true}
	r := start(t, topo, topology.SeedBackend1, cfg)

	// 2ms apart against a 10ms delay keeps about five requests waiting at
	// once: a responder that answered one at a time would fall behind.
	const n = 200
	s := ping(t, topo, topology.SeedClient, topology.SeedH2.String(),
		"-c", strconv.Itoa(n), "-i", "0.002", "-W", "5")

	wantDropped := cfg.Dropped(n)
	if wantDropped != 60 {
		t.Fatalf("scheme drops %d of %d, want 60", wantDropped, n)
	}
	if s.Transmitted != n || s.Received != n-int(wantDropped) || s.Duplicates != 0 {
		t.Errorf("ping: %d transmitted, %d received, %d duplicates; want %d, %d, 0",
			s.Transmitted, s.Received, s.Duplicates, n, n-int(wantDropped))
	}
	judge(t, r, s, constant(cfg.Delay))

	req, rep, drop := r.Stats()
	t.Logf("responder: %d requests, %d replied, %d dropped, %d send errors", req, rep, drop, r.SendErrors())
	if req != n || rep != n-wantDropped || drop != wantDropped || r.SendErrors() != 0 {
		t.Errorf("stats: %d requests, %d replied, %d dropped, %d send errors; want %d, %d, %d, 0",
			req, rep, drop, r.SendErrors(), n, n-wantDropped, wantDropped)
	}
	for _, e := range r.Exchanges() {
		if e.Dropped != cfg.Drops(e.N) {
			t.Errorf("request %d: dropped %v, the scheme says %v", e.N, e.Dropped, cfg.Drops(e.N))
		}
	}
}

func TestNoLossShortDelay(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	r := start(t, topo, topology.SeedBackend1, Config{Delay: 2 * time.Millisecond, Record: true})

	const n = 200
	s := ping(t, topo, topology.SeedClient, topology.SeedH2.String(),
		"-c", strconv.Itoa(n), "-i", "0.002", "-W", "5")
	if s.Transmitted != n || s.Received != n || s.Duplicates != 0 {
		t.Errorf("ping: %d transmitted, %d received, %d duplicates; want %d, %[4]d, 0",
			s.Transmitted, s.Received, s.Duplicates, n)
	}
	judge(t, r, s, constant(2*time.Millisecond))
	req, rep, drop := r.Stats()
	if req != n || rep != n || drop != 0 {
		t.Errorf("stats: %d requests, %d replied, %d dropped; want %d, %[4]d, 0", req, rep, drop, n)
	}
}

func TestJitter(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	cfg := Config{Delay: 6 * time.Millisecond, Jitter: 3 * time.Millisecond, Seed: 5, Record: true}
	r := start(t, topo, topology.SeedBackend1, cfg)

	s := ping(t, topo, topology.SeedClient, topology.SeedH2.String(), "-c", "200", "-i", "0.002", "-W", "5")
	if s.Received != 200 || s.Duplicates != 0 {
		t.Fatalf("ping: %d received, %d duplicates; want 200, 0", s.Received, s.Duplicates)
	}
	// Each scheduled delay is the seed's draw, exactly; the draws of this
	// seed are uniform over [3ms, 9ms] and come close to both ends.
	replay := &Responder{cfg: cfg, jitter: newJitterRand(cfg.Seed)}
	lo, hi := time.Hour, time.Duration(0)
	judge(t, r, s, func() time.Duration {
		d := replay.delay()
		lo, hi = min(lo, d), max(hi, d)
		return d
	})
	if lo < 3*time.Millisecond || lo > 3100*time.Microsecond || hi > 9*time.Millisecond || hi < 8900*time.Microsecond {
		t.Errorf("scheduled delays span [%v, %v], want about [3ms, 9ms]", lo, hi)
	}
}

// Without the sysctl the kernel answers too and ping reports duplicates;
// with it, only the responder's (delayed) reply arrives.
func TestKernelEchoDisabled(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	serve(t, topo, topology.SeedBackend1, Config{Delay: 5 * time.Millisecond})
	h2 := topology.SeedH2.String()

	// Requests 200ms apart leave the responder's late duplicates time to
	// arrive before ping quits on its fifth answer; one is proof enough
	// that two hosts answered.
	s := ping(t, topo, topology.SeedClient, h2, "-c", "5", "-i", "0.2", "-W", "5")
	if s.Received != 5 || s.Duplicates < 1 {
		t.Errorf("kernel echo on: %d received, %d duplicates; want 5, at least 1", s.Received, s.Duplicates)
	}

	if err := DisableKernelEcho(topo, topology.SeedBackend1); err != nil {
		t.Fatal(err)
	}
	s = ping(t, topo, topology.SeedClient, h2, "-c", "5", "-i", "0.05", "-W", "5")
	if s.Received != 5 || s.Duplicates != 0 {
		t.Errorf("kernel echo off: %d received, %d duplicates; want 5, 0", s.Received, s.Duplicates)
	}
	// The responder never answers before its delay, however idle the
	// machine: a faster reply came from somewhere else.
	if s.Min < 5*time.Millisecond {
		t.Errorf("kernel echo off: rtt min %v, so some reply did not come from the responder", s.Min)
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
	// The requests arrived before ping gave up on them; Serve reads them
	// when the scheduler lets it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		req, _, _ := r.Stats()
		if req == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests seen 10s after ping sent 3", req)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("close: %v", err)
		}
	case <-time.After(20 * time.Second):
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
	out, err := topo.Run(topology.SeedClient, "ping", "-n", "-c", "3", "-i", "0.05", "-W", "5", extra)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "bytes from "+extra+":"); n != 3 {
		t.Errorf("%d of 3 replies from %s:\n%s", n, extra, out)
	}
}
