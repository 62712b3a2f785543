// SPDX-License-Identifier: MIT

package main

// Attack tests (issue 7, defects 2-8): hosts of the seed topology, and an
// attacker h5 on the same segment, put on the wire what no well-behaved
// client or backend sends (forged replies, spoofed requests, tagged frames,
// bad checksums, floods of fresh sessions) through AF_PACKET sockets
// (internal/frames), and the tests check what reached whom against what
// really happened in the same run: captures at the hosts and the backends'
// own counts.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/frames"
	"github.com/icmplb/icmplb/internal/responder"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// The attacker: one more host on the seed segment.
const atk = "h5"

var atkAddr = netip.MustParseAddr("10.0.0.5")

// attackSpec is the seed topology plus the attacker h5, with extra
// addresses on lb (e.g. a SNAT address other than the VIP).
func attackSpec(lbExtra ...netip.Prefix) topology.Spec {
	s := topology.Seed()
	for i := range s.Hosts {
		if s.Hosts[i].Name == topology.SeedBalancer {
			s.Hosts[i].Extra = append(slices.Clone(s.Hosts[i].Extra), lbExtra...)
		}
	}
	s.Hosts = append(s.Hosts, topology.HostSpec{Name: atk, Addr: netip.PrefixFrom(atkAddr, topology.SeedNet.Bits())})
	return s
}

// openSender opens a frame sender on host's eth0 until the test ends.
func openSender(t *testing.T, topo *topology.Topology, host string) *frames.Sender {
	t.Helper()
	var s *frames.Sender
	if err := topo.InNS(host, func() (err error) { s, err = frames.NewSender("eth0"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// sniffed is one captured frame of interest.
type sniffed struct {
	frames.Frame
	At          time.Time
	TagFromMeta bool
	Outgoing    bool
}

// sniffer records the frames a capture keeps, on a goroutine of its own.
type sniffer struct {
	c    *frames.Capture
	done chan struct{}
	err  error // set before done is closed

	mu  sync.Mutex
	got []sniffed
	n   atomic.Int64
}

// sniff captures on iface of the namespace enter switches into (a
// topology's InNS or InSwitch) until the test ends: keep picks the frames to
// record; on, if not nil, runs for each kept frame on the capture goroutine
// (it must not block). record false keeps only the count.
func sniff(t *testing.T, enter func(func() error) error, iface string, opt frames.CaptureOptions,
	record bool, keep func(frames.Frame) bool, on func(sniffed)) *sniffer {
	t.Helper()
	s := &sniffer{done: make(chan struct{})}
	if err := enter(func() (err error) { s.c, err = frames.NewCapture(iface, opt); return err }); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(s.done)
		for {
			p, err := s.c.Next(0)
			if errors.Is(err, frames.ErrClosed) {
				return
			}
			if err != nil {
				s.err = err
				return
			}
			f, err := frames.Parse(p.Data)
			if err != nil || !keep(f) {
				continue
			}
			x := sniffed{Frame: f, At: p.Time, TagFromMeta: p.TagFromMeta, Outgoing: p.Outgoing}
			s.n.Add(1)
			if record {
				s.mu.Lock()
				s.got = append(s.got, x)
				s.mu.Unlock()
			}
			if on != nil {
				on(x)
			}
		}
	}()
	t.Cleanup(func() { s.stop(t) })
	return s
}

func sniffHost(t *testing.T, topo *topology.Topology, host string, opt frames.CaptureOptions,
	keep func(frames.Frame) bool, on func(sniffed)) *sniffer {
	t.Helper()
	return sniff(t, func(fn func() error) error { return topo.InNS(host, fn) }, "eth0", opt, true, keep, on)
}

// frames returns a copy of what was recorded so far.
func (s *sniffer) frames() []sniffed {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// stop ends the capture and fails the test if the kernel dropped frames
// for it: then the capture is not the whole truth.
func (s *sniffer) stop(t *testing.T) {
	t.Helper()
	drops, derr := s.c.Drops()
	s.c.Close()
	<-s.done
	if s.err != nil {
		t.Errorf("capture: %v", s.err)
	}
	if derr != nil {
		t.Errorf("%v", derr)
	} else if drops != 0 {
		t.Errorf("capture: the kernel dropped %d frames for want of buffer space; the capture is incomplete", drops)
	}
}

// isEcho keeps echo messages of type typ from src to dst (invalid: any).
func isEcho(typ uint8, src, dst netip.Addr) func(frames.Frame) bool {
	return func(f frames.Frame) bool {
		return f.IsEcho && f.Type == typ && (!src.IsValid() || f.Src == src) && (!dst.IsValid() || f.Dst == dst)
	}
}

// request is an echo request to the VIP sent by host with source src.
func request(topo *topology.Topology, host string, src netip.Addr, id, seq uint16, payload []byte) frames.Echo {
	return frames.Echo{
		DstMAC: topo.Host(lb).MAC, SrcMAC: topo.Host(host).MAC,
		Src: src, Dst: topology.SeedVIP, Type: frames.ICMPEchoReq, ID: id, Seq: seq, Payload: payload,
	}
}

// paced sends n frames built by mk at rate frames per second, as far as the
// machine keeps up (2 cores: it may not), and returns how many it sent and
// how long that took.
func paced(s *frames.Sender, n int, rate float64, mk func(i int, buf []byte) []byte) (int, time.Duration, error) {
	start := time.Now()
	buf := make([]byte, 0, 128)
	for i := range n {
		if due := time.Duration(float64(i) / rate * float64(time.Second)); time.Since(start) < due {
			time.Sleep(due - time.Since(start))
		}
		if err := s.Send(mk(i, buf[:0])); err != nil {
			return i, time.Since(start), err
		}
	}
	return n, time.Since(start), nil
}

// metrics is one scrape of the agent.
type metrics map[string]*dto.MetricFamily

// counter sums the series of a counter family whose labels match all the
// name, value pairs of kv.
func (m metrics) counter(name string, kv ...string) uint64 {
	var sum float64
	for _, s := range m[name].GetMetric() {
		if labelsMatch(s, kv) {
			sum += s.GetCounter().GetValue()
		}
	}
	return uint64(sum)
}

func labelsMatch(s *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range s.GetLabel() {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func (m metrics) reason(r string) uint64 { return m.counter("icmplb_packets_total", "reason", r) }

func (m metrics) backend(name, be string) uint64 { return m.counter(name, "backend", be) }

func (m metrics) hist(be string) *dto.Histogram {
	for _, s := range m["icmplb_backend_rtt_seconds"].GetMetric() {
		if labelsMatch(s, []string{"backend", be}) {
			return s.GetHistogram()
		}
	}
	return &dto.Histogram{}
}

// balancerLost sums icmplb_balancer_lost_requests_total over its reasons.
func (m metrics) balancerLost() uint64 { return m.counter("icmplb_balancer_lost_requests_total") }

// reasons lists the packets_total series that changed since before, for
// failure messages and logs.
func (m metrics) reasons(before metrics) string {
	var out []string
	for _, s := range m["icmplb_packets_total"].GetMetric() {
		var v, r string
		for _, l := range s.GetLabel() {
			switch l.GetName() {
			case "verdict":
				v = l.GetValue()
			case "reason":
				r = l.GetValue()
			}
		}
		if d := s.GetCounter().GetValue() - float64(before.counter("icmplb_packets_total", "verdict", v, "reason", r)); d != 0 {
			out = append(out, fmt.Sprintf("%s/%s +%.0f", v, r, d))
		}
	}
	for _, s := range m["icmplb_balancer_lost_requests_total"].GetMetric() {
		if v := s.GetCounter().GetValue(); v != 0 {
			var r string
			for _, l := range s.GetLabel() {
				if l.GetName() == "reason" {
					r = l.GetValue()
				}
			}
			out = append(out, fmt.Sprintf("balancer_lost{%s} %.0f", r, v))
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// backendLine summarises one backend's counters for logs.
func (m metrics) backendLine(be string) string {
	h := m.hist(be)
	mean := 0.0
	if h.GetSampleCount() > 0 {
		mean = h.GetSampleSum() / float64(h.GetSampleCount())
	}
	return fmt.Sprintf("backend %s: requests %d, replies %d, unmatched %d, late %d, lost %d, RTT samples %d (mean %.1f ms)",
		be, m.backend("icmplb_backend_requests_total", be), m.backend("icmplb_backend_replies_total", be),
		m.backend("icmplb_backend_unmatched_replies_total", be), m.backend("icmplb_backend_late_replies_total", be),
		m.backend("icmplb_backend_lost_total", be), h.GetSampleCount(), mean*1e3)
}

func scrapeM(t *testing.T, topo *topology.Topology) metrics {
	t.Helper()
	return metrics(scrape(t, topo))
}

// below returns how many RTT samples lie at or below bound seconds, by the
// classic buckets: the largest bucket bound not above it.
func below(h *dto.Histogram, bound float64) uint64 {
	var n uint64
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() <= bound {
			n = b.GetCumulativeCount()
		}
	}
	return n
}

// waitQuiet waits until count stops moving for 200 ms, or timeout passes:
// the frames in flight have arrived.
func waitQuiet(timeout time.Duration, count func() int64) {
	last := int64(-1)
	waitFor(timeout, func() bool {
		n := count()
		quiet := n == last
		last = n
		time.Sleep(200 * time.Millisecond)
		return quiet
	})
}

// waitFor polls cond every 100 ms until it holds or timeout passes, and
// reports whether it held.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var atLeastRE = regexp.MustCompile(`at least (\d+)`)

// mapSize returns want for the size flag if the agent accepts it, else the
// smallest size it names in its refusal (the bounds are another change's
// business). Flags are checked at parse time, so nothing is attached.
func mapSize(t *testing.T, topo *topology.Topology, flag string, want int) int {
	t.Helper()
	_, stderr, code := lbRun(t, topo, nil, agenttest.Binary(t), "run", "--iface", "nosuch0", "--vip", vip,
		"--backend", backend1, flag, strconv.Itoa(want))
	if code == 0 {
		t.Fatalf("icmplb run on a missing interface exited 0")
	}
	if !strings.Contains(stderr, "nosuch0") {
		m := atLeastRE.FindStringSubmatch(stderr)
		if m == nil {
			t.Fatalf("%s %d refused without a lower bound: %s", flag, want, stderr)
		}
		n, _ := strconv.Atoi(m[1])
		t.Logf("%s %d refused (%s); using %d", flag, want, strings.TrimSpace(stderr), n)
		return n
	}
	return want
}

// payload is a fixed-length echo payload starting with tag.
func payload(tag string, n int) []byte {
	b := bytes.Repeat([]byte{'.'}, n)
	copy(b, tag)
	return b
}

// TestAttackForgedReplies (issue 7, defect 2): a host that spoofs a
// backend's address must not get its echo replies to a client, nor into the
// RTT histogram, whether it guesses the NAT id blindly, learns it and
// copies the request's data, or also spoofs the backend's MAC.
func TestAttackForgedReplies(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, attackSpec())
	const delay = 500 * time.Millisecond
	h2 := topology.SeedBackend1
	resp := startResponder(t, topo, h2, responder.Config{Delay: delay, Seed: 1})
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1,
		"--web.listen-address", metricsAddr, "--loss-timeout", "2s")
	// Phase C spoofs h2's MAC from h5's port: without learning there the
	// bridge keeps sending h2's frames to h2, as a switch with port
	// security would.
	if _, err := topo.SwitchRun("bridge", "link", "set", "dev", topo.Host(atk).Port, "learning", "off"); err != nil {
		t.Fatal(err)
	}
	lbMAC, beMAC, atkMAC := topo.Host(lb).MAC, topo.Host(h2).MAC, topo.Host(atk).MAC
	cli, evil := openSender(t, topo, h1), openSender(t, topo, atk)
	const plen = 32
	realData := func(phase byte, seq uint16) []byte { return payload(fmt.Sprintf("REAL-%c-%05d", phase, seq), plen) }
	forgedData := func(phase byte) []byte { return payload(fmt.Sprintf("FORGED-%c", phase), plen) }
	forge := func(src []byte, id, seq uint16, data []byte) frames.Echo {
		return frames.Echo{DstMAC: lbMAC, SrcMAC: src, Src: topology.SeedH2, Dst: topology.SeedVIP,
			Type: frames.ICMPEchoReply, ID: id, Seq: seq, Payload: data}
	}

	atClient := sniffHost(t, topo, h1, frames.CaptureOptions{Filter: frames.ICMPOrVLAN},
		isEcho(frames.ICMPEchoReply, topology.SeedVIP, topology.SeedH1), nil)
	// The attacker of phases B and C sees the requests arriving at h2 (a
	// sniffer on the backend's segment) and answers each at once, 500 ms
	// before h2 does.
	var forgedB, forgedC atomic.Int64
	var forgeErr atomic.Value
	sniffHost(t, topo, h2, frames.CaptureOptions{Filter: frames.ICMPOrVLAN},
		isEcho(frames.ICMPEchoReq, netip.Addr{}, topology.SeedH2), func(s sniffed) {
			var fr frames.Echo
			switch {
			case bytes.HasPrefix(s.Payload, []byte("REAL-B")):
				fr = forge(atkMAC, s.ID, s.Seq, s.Payload)
				forgedB.Add(1)
			case bytes.HasPrefix(s.Payload, []byte("REAL-C")):
				fr = forge(beMAC, s.ID, s.Seq, forgedData('C'))
				forgedC.Add(1)
			default:
				return
			}
			if err := evil.Send(fr.Marshal()); err != nil {
				forgeErr.Store(err)
			}
		})

	type key struct{ id, seq uint16 }
	var mu sync.Mutex
	sentAt := map[key]time.Time{}
	send := func(phase byte, id, seq uint16) {
		mu.Lock()
		sentAt[key{id, seq}] = time.Now()
		mu.Unlock()
		if err := cli.Send(request(topo, h1, topology.SeedH1, id, seq, realData(phase, seq)).Marshal()); err != nil {
			t.Error(err)
		}
	}
	const idA, idB, idC = 0xa001, 0xb001, 0xc001
	before := scrapeM(t, topo)

	// Phase A: blind. The client pings every 50 ms, so its latest request
	// is always in flight; the attacker sweeps all 65536 NAT ids, twice,
	// each with the sequence number of the client's latest request.
	var latest atomic.Uint32
	stop := make(chan struct{})
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		for seq := uint16(1); ; seq++ {
			send('A', idA, seq)
			latest.Store(uint32(seq))
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	waitFor(time.Second, func() bool { return latest.Load() > 0 })
	sweepStart := time.Now()
	swept := 0
	buf := make([]byte, 0, 128)
	for range 2 {
		for id := range 1 << 16 {
			fr := forge(atkMAC, uint16(id), uint16(latest.Load()), forgedData('A'))
			if err := evil.Send(fr.AppendTo(buf[:0])); err != nil {
				t.Fatal(err)
			}
			swept++
		}
	}
	sweepTook := time.Since(sweepStart)
	close(stop)
	<-clientDone
	t.Logf("phase A: swept %d forged replies in %v (%.0f/s) while the client sent %d requests",
		swept, sweepTook.Round(time.Millisecond), float64(swept)/sweepTook.Seconds(), latest.Load())

	// Phases B and C: the attacker learns NAT id, sequence and data.
	const n = 10
	for _, ph := range []struct {
		phase byte
		id    uint16
	}{{'B', idB}, {'C', idC}} {
		for seq := uint16(1); seq <= n; seq++ {
			send(ph.phase, ph.id, seq)
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err, _ := forgeErr.Load().(error); err != nil {
		t.Fatalf("forging: %v", err)
	}

	// Every real reply has left h2 and been counted.
	sent := len(sentAt)
	var after metrics
	settled := waitFor(10*time.Second, func() bool {
		req, rep, _ := resp.Stats()
		if req != uint64(sent) || rep != req {
			return false
		}
		after = scrapeM(t, topo)
		h := after.hist(backend1)
		return after.backend("icmplb_backend_replies_total", backend1)+after.backend("icmplb_backend_unmatched_replies_total", backend1) >= rep &&
			h.GetSampleCount() >= rep
	})
	after = scrapeM(t, topo)
	req, replied, _ := resp.Stats()
	t.Logf("client sent %d requests, h2 received %d and replied %d; attacker forged %d in phase B, %d in phase C (settled %v)",
		sent, req, replied, forgedB.Load(), forgedC.Load(), settled)
	t.Logf("%s", after.backendLine(backend1))
	t.Logf("packets: %s", after.reasons(before))

	// What the client got: replies by payload and by (id, seq).
	got := atClient.frames()
	perSeq := map[key]int{}
	var forgedSeen, early, dups int
	var clientRTT []time.Duration
	for _, r := range got {
		k := key{r.ID, r.Seq}
		perSeq[k]++
		if perSeq[k] > 1 {
			dups++
		}
		if bytes.HasPrefix(r.Payload, []byte("FORGED")) {
			forgedSeen++
			continue
		}
		if at, ok := sentAt[k]; ok {
			rtt := r.At.Sub(at)
			if rtt < delay {
				early++ // h2 never answers before its delay: forged
			} else if perSeq[k] == 1 {
				clientRTT = append(clientRTT, rtt)
			}
		}
	}
	missing := 0
	for k := range sentAt {
		if perSeq[k] == 0 {
			missing++
		}
	}
	t.Logf("client got %d replies: %d with the attacker's data, %d before h2's delay, %d duplicates, %d requests unanswered",
		len(got), forgedSeen, early, dups, missing)
	if forgedSeen != 0 || early != 0 || dups != 0 {
		t.Errorf("forged replies reached the client: %d with the attacker's data, %d before h2 could answer, %d duplicates",
			forgedSeen, early, dups)
	}
	if missing != 0 {
		t.Errorf("%d of %d requests got no reply although h2 answered %d: a forged reply cost the client its real one",
			missing, sent, replied)
	}

	h := after.hist(backend1)
	if h.GetSampleCount() != replied {
		t.Errorf("%d RTT samples, h2 sent %d real replies", h.GetSampleCount(), replied)
	}
	if n := below(h, 0.35); n != 0 {
		t.Errorf("%d RTT samples at or below 0.35 s, but h2 answers after %v: forged replies were measured", n, delay)
	}
	if h.GetSampleCount() > 0 && len(clientRTT) > 0 {
		var sum time.Duration
		for _, d := range clientRTT {
			sum += d
		}
		mean := h.GetSampleSum() / float64(h.GetSampleCount())
		cmean := (sum / time.Duration(len(clientRTT))).Seconds()
		t.Logf("RTT mean: balancer %.1f ms, client %.1f ms, h2's delay %v", mean*1e3, cmean*1e3, delay)
		// The balancer measures a part of the client's round trip, and h2
		// never answers before its delay.
		if mean < delay.Seconds() || mean > cmean {
			t.Errorf("balancer's mean RTT %.1f ms outside [h2's delay %v, client's mean %.1f ms]", mean*1e3, delay, cmean*1e3)
		}
	}
	if r := after.backend("icmplb_backend_replies_total", backend1); r != replied {
		t.Errorf("%d replies counted for h2, h2 sent %d", r, replied)
	}
	if u := after.backend("icmplb_backend_unmatched_replies_total", backend1); u != 0 {
		t.Errorf("%d replies counted unmatched for h2: forged replies were blamed on the backend", u)
	}
	spoofed := after.reason("reply_spoofed") - before.reason("reply_spoofed")
	mismatch := after.reason("reply_mismatch") - before.reason("reply_mismatch")
	miss := after.reason("conntrack_miss") - before.reason("conntrack_miss")
	// A sweep's forgery with the probes' echo id is passed as theirs: the
	// agent's prober would drop it for its missing token.
	probe := after.reason("probe_reply") - before.reason("probe_reply")
	// Phase B's forgeries come from a foreign MAC with the right id and
	// sequence; each sweep meets the client's in-flight request once.
	if spoofed < uint64(forgedB.Load())+2 {
		t.Errorf("reply_spoofed +%d, want at least the %d phase B forgeries plus one per sweep (2)", spoofed, forgedB.Load())
	}
	if mismatch != uint64(forgedC.Load()) {
		t.Errorf("reply_mismatch +%d, want the %d phase C forgeries (h2's MAC, wrong data)", mismatch, forgedC.Load())
	}
	if total := spoofed + mismatch + miss + probe; total < uint64(swept)+uint64(forgedB.Load()+forgedC.Load()) {
		t.Errorf("forged replies counted: reply_spoofed +%d, reply_mismatch +%d, conntrack_miss +%d, probe_reply +%d = %d; %d were sent",
			spoofed, mismatch, miss, probe, total, swept+int(forgedB.Load()+forgedC.Load()))
	}
}

// TestAttackSessionHijack (issue 7, defect 3): a host that sends requests
// with a client's address and echo id must not get that session's replies;
// the session belongs to the MAC that opened it.
func TestAttackSessionHijack(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, attackSpec())
	// The backends' delay keeps each victim reply in flight while the
	// attacker's requests arrive, as over any real network.
	const delay = 100 * time.Millisecond
	r2 := startResponder(t, topo, topology.SeedBackend1, responder.Config{Delay: delay, Seed: 1})
	r3 := startResponder(t, topo, topology.SeedBackend2, responder.Config{Delay: delay, Seed: 2})
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--web.listen-address", metricsAddr)
	victim, evil := openSender(t, topo, h1), openSender(t, topo, atk)
	const id, n = 0x4242, 10
	toVictimIP := isEcho(frames.ICMPEchoReply, topology.SeedVIP, topology.SeedH1)
	atVictim := sniffHost(t, topo, h1, frames.CaptureOptions{Filter: frames.ICMPOrVLAN}, toVictimIP, nil)
	atAttacker := sniffHost(t, topo, atk, frames.CaptureOptions{Filter: frames.ICMPOrVLAN, Promiscuous: true}, toVictimIP, nil)
	before := scrapeM(t, topo)

	vsend := func(seq uint16) {
		if err := victim.Send(request(topo, h1, topology.SeedH1, id, seq, payload("VICTIM", 32)).Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	vsend(1)
	if !waitFor(3*time.Second, func() bool { return atVictim.n.Load() >= 1 }) {
		t.Fatal("the victim's first request got no reply: the session never opened")
	}
	// From now on the attacker claims the session every 50 ms, with the
	// victim's address and echo id from its own MAC.
	stop, done := make(chan struct{}), make(chan struct{})
	var evilSent atomic.Int64
	go func() {
		defer close(done)
		for seq := uint16(1000); ; seq++ {
			fr := request(topo, atk, topology.SeedH1, id, seq, payload("ATTACK", 32))
			if err := evil.Send(fr.Marshal()); err != nil {
				t.Error(err)
				return
			}
			evilSent.Add(1)
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	for seq := uint16(2); seq <= n; seq++ {
		time.Sleep(200 * time.Millisecond)
		vsend(seq)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	<-done
	// All requests the backends got are answered and returned by now.
	waitFor(5*time.Second, func() bool {
		q2, p2, _ := r2.Stats()
		q3, p3, _ := r3.Stats()
		return q2 == p2 && q3 == p3 && atVictim.n.Load()+atAttacker.n.Load() >= int64(q2+q3)
	})
	time.Sleep(200 * time.Millisecond) // a last reply on its way through the bridge
	after := scrapeM(t, topo)

	count := func(s *sniffer, tag string) (k int, seqs map[uint16]int) {
		seqs = map[uint16]int{}
		for _, f := range s.frames() {
			if f.ID == id && bytes.HasPrefix(f.Payload, []byte(tag)) {
				k++
				seqs[f.Seq]++
			}
		}
		return k, seqs
	}
	victimGot, victimSeqs := count(atVictim, "VICTIM")
	stolen, _ := count(atAttacker, "VICTIM")
	own, _ := count(atAttacker, "ATTACK")
	q2, _, _ := r2.Stats()
	q3, _, _ := r3.Stats()
	mism := after.reason("session_mac_mismatch") - before.reason("session_mac_mismatch")
	t.Logf("victim sent %d and got %d replies (%d distinct); attacker sent %d, got %d of the victim's replies and %d to its own requests; backends received %d; session_mac_mismatch +%d",
		n, victimGot, len(victimSeqs), evilSent.Load(), stolen, own, q2+q3, mism)
	t.Logf("packets: %s", after.reasons(before))
	if stolen != 0 || own != 0 {
		t.Errorf("the attacker got %d of the victim's replies and %d replies to its spoofed requests, want none", stolen, own)
	}
	if victimGot != n || len(victimSeqs) != n {
		t.Errorf("the victim got %d replies for %d of its %d requests, want each answered once", victimGot, len(victimSeqs), n)
	}
	if q2+q3 != n {
		t.Errorf("the backends received %d requests, want the victim's %d only", q2+q3, n)
	}
	if mism != uint64(evilSent.Load()) {
		t.Errorf("session_mac_mismatch +%d, want the attacker's %d requests", mism, evilSent.Load())
	}
}

// frameBackend answers the echo requests that reach a host with frames of
// its own, from user space, with the kernel's echo replies off. An
// AF_PACKET capture keeps up with tens of thousands of requests per second
// where the raw socket of package responder overflows on a busy 2-core
// machine, and a reply can wait for any condition, not only a delay.
type frameBackend struct {
	received, replied atomic.Int64
	queue             chan sniffed
	stop, done        chan struct{}
	err               error // set before done is closed
}

// startFrameBackend answers each request once ready holds for it (polled
// in arrival order), until the test ends.
func startFrameBackend(t *testing.T, topo *topology.Topology, host string, ready func(sniffed) bool) *frameBackend {
	t.Helper()
	if err := responder.DisableKernelEcho(topo, host); err != nil {
		t.Fatal(err)
	}
	h, lbMAC := topo.Host(host), topo.Host(lb).MAC
	out := openSender(t, topo, host)
	b := &frameBackend{queue: make(chan sniffed, 1<<18), stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() {
		close(b.stop)
		<-b.done
		if b.err != nil {
			t.Errorf("backend %s: %v", host, b.err)
		}
	})
	sniff(t, func(fn func() error) error { return topo.InNS(host, fn) }, "eth0",
		frames.CaptureOptions{Filter: frames.ICMPOrVLAN, RcvBuf: 64 << 20}, false,
		isEcho(frames.ICMPEchoReq, netip.Addr{}, h.Addr.Addr()), func(s sniffed) {
			b.received.Add(1)
			s.Payload = slices.Clone(s.Payload)
			b.queue <- s
		})
	go func() {
		defer close(b.done)
		buf := make([]byte, 0, 1600)
		for {
			var s sniffed
			select {
			case <-b.stop:
				return
			case s = <-b.queue:
			}
			for !ready(s) {
				select {
				case <-b.stop:
					return
				case <-time.After(500 * time.Microsecond):
				}
			}
			r := frames.Echo{DstMAC: lbMAC, SrcMAC: h.MAC, Src: h.Addr.Addr(), Dst: s.Src,
				Type: frames.ICMPEchoReply, ID: s.ID, Seq: s.Seq, Payload: s.Payload}
			if err := out.Send(r.AppendTo(buf[:0])); err != nil {
				b.err = err
				return
			}
			b.replied.Add(1)
		}
	}()
	return b
}

// answeredAll reports whether the backend answered every request it got.
func (b *frameBackend) answeredAll() bool { return b.replied.Load() == b.received.Load() }

// fresh numbers random sessions: source addresses of the seed subnet no
// host uses (.20-.99, .101-.254), any echo id. The payload names the
// session, so that whoever receives a reply can tell whether it was meant
// for the address and echo id it carries.
type fresh struct {
	rng   *rand.Rand
	magic [4]byte
	// used makes every session new: of 100,000 random draws from the 15
	// million pairs some hundreds would repeat, and a repeat within its
	// first request's round trip is a duplicate request, not a session.
	used map[uint32]bool
}

func newFresh(seed uint64, magic string) *fresh {
	f := &fresh{rng: rand.New(rand.NewPCG(seed, seed)), used: map[uint32]bool{}}
	copy(f.magic[:], magic)
	return f
}

func (f *fresh) next() (netip.Addr, uint16) {
	for {
		last := byte(20 + f.rng.IntN(234))
		if last >= 100 {
			last++ // skip the VIP
		}
		id := uint16(f.rng.Uint32())
		if k := uint32(last)<<16 | uint32(id); !f.used[k] {
			f.used[k] = true
			return netip.AddrFrom4([4]byte{10, 0, 0, last}), id
		}
	}
}

// frame builds the i-th request of a new random session from host.
func (f *fresh) frame(topo *topology.Topology, host string, i int, buf []byte) []byte {
	src, id := f.next()
	p := make([]byte, 24)
	copy(p, f.magic[:])
	a := src.As4()
	copy(p[4:], a[:])
	binary.BigEndian.PutUint16(p[8:], id)
	binary.BigEndian.PutUint32(p[10:], uint32(i))
	return request(topo, host, src, id, 1, p).AppendTo(buf)
}

// index is the number of the request (the sender's count) in a payload
// frame wrote.
func (f *fresh) index(p []byte) int {
	if len(p) < 14 {
		return -1
	}
	return int(binary.BigEndian.Uint32(p[10:]))
}

// owner decodes what frame wrote: the session a reply with this payload
// belongs to.
func (f *fresh) owner(p []byte) (netip.Addr, uint16, bool) {
	if len(p) < 14 || !bytes.Equal(p[:4], f.magic[:]) {
		return netip.Addr{}, 0, false
	}
	return netip.AddrFrom4([4]byte(p[4:8])), binary.BigEndian.Uint16(p[8:]), true
}

// TestAttackEvictionWrongClient (issue 7, defect 4): under map pressure a
// reply must go to the session that sent its request or to nobody, never
// to another (client, echo id).
//
// The backends answered in 3.3 s while 20k fresh sessions a second
// arrived, that is, 66,000 sessions later. This machine may not send 20k/s,
// so the backends here answer each request once the client has sent 66,000
// more (after the client's last request the count goes on at 20k/s): the
// conntrack and NAT ids meet the same pressure at any achieved rate.
func TestAttackEvictionWrongClient(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, attackSpec())
	ct := mapSize(t, topo, "--conntrack-size", 1024)
	const total, rate, lag = 80000, 20000, 66000
	gen := newFresh(4, "EVIC")
	var sentN atomic.Int64
	var doneAt atomic.Pointer[time.Time]
	progress := func() int {
		if at := doneAt.Load(); at != nil {
			return total + int(time.Since(*at).Seconds()*rate)
		}
		return int(sentN.Load())
	}
	ready := func(s sniffed) bool { return progress() >= gen.index(s.Payload)+lag }
	bes := []*frameBackend{
		startFrameBackend(t, topo, topology.SeedBackend1, ready),
		startFrameBackend(t, topo, topology.SeedBackend2, ready),
	}
	// Replies may come long after their request when the client is slow:
	// they must still be matched, not judged.
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--web.listen-address", metricsAddr, "--conntrack-size", strconv.Itoa(ct), "--loss-timeout", "30s")
	cli := openSender(t, topo, h1)
	// Replies come back to h1's MAC whatever address they carry.
	atClient := sniff(t, func(fn func() error) error { return topo.InNS(h1, fn) }, "eth0",
		frames.CaptureOptions{Filter: frames.ICMPOrVLAN, RcvBuf: 64 << 20}, true,
		isEcho(frames.ICMPEchoReply, topology.SeedVIP, netip.Addr{}), nil)
	before := scrapeM(t, topo)

	sent, took, err := paced(cli, total, rate, func(i int, buf []byte) []byte {
		sentN.Store(int64(i))
		return gen.frame(topo, h1, i, buf)
	})
	now := time.Now()
	doneAt.Store(&now)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d requests of fresh sessions in %v (%.0f/s)", sent, took.Round(time.Millisecond), float64(sent)/took.Seconds())
	if !waitFor(time.Duration(lag)*time.Second/rate+15*time.Second, func() bool { return bes[0].answeredAll() && bes[1].answeredAll() }) {
		t.Errorf("the backends had not answered every request they got")
	}
	// The last replies pass the balancer: wait until the capture is quiet.
	waitQuiet(5*time.Second, atClient.n.Load)
	after := scrapeM(t, topo)

	var returned, wrong, alien int
	var examples []string
	for _, r := range atClient.frames() {
		src, id, ok := gen.owner(r.Payload)
		if !ok {
			alien++
			continue
		}
		returned++
		if r.Dst != src || r.ID != id {
			wrong++
			if len(examples) < 3 {
				examples = append(examples, fmt.Sprintf("reply to %s id %d carried the request of %s id %d", r.Dst, r.ID, src, id))
			}
		}
	}
	q := bes[0].received.Load() + bes[1].received.Load()
	p := bes[0].replied.Load() + bes[1].replied.Load()
	t.Logf("backends received %d requests and replied %d; %d replies came back to h1, %d to the wrong (client, echo id), %d not ours",
		q, p, returned, wrong, alien)
	t.Logf("packets: %s", after.reasons(before))
	if wrong != 0 {
		t.Errorf("%d of %d returned replies went to the wrong (client, echo id), e.g. %s", wrong, returned, strings.Join(examples, "; "))
	}
	if returned == 0 {
		t.Errorf("no reply came back at all (backends replied %d): the test proves nothing", p)
	}
	if rr := after.reason("reply_returned") - before.reason("reply_returned"); rr != uint64(returned+alien) {
		t.Errorf("the balancer returned %d replies, h1 captured %d", rr, returned+alien)
	}
}

// TestAttackVLAN (issue 7, defect 5): VLAN-tagged frames are not the
// balancer's (it has no VLAN configuration), so they pass untouched and
// counted, in both XDP modes.
func TestAttackVLAN(t *testing.T) {
	testenv.Privileged(t)
	agenttest.Binary(t) // build once, before the parallel subtests race for it
	for _, mode := range []string{"generic", "native"} {
		t.Run(mode, func(t *testing.T) { t.Parallel(); testVLAN(t, mode) })
	}
}

func testVLAN(t *testing.T, mode string) {
	topo := topology.NewT(t, attackSpec())
	port := topo.Host(lb).Port
	// On a veth the tag travels in skb metadata, outside the frame the
	// program sees; without TX VLAN offload on the switch's port toward lb
	// the kernel writes it into the frame.
	if _, err := topo.SwitchRun("ethtool", "-K", port, "txvlan", "off", "tx-vlan-stag-hw-insert", "off"); err != nil {
		t.Fatal(err)
	}
	if mode == "native" {
		attachPassToLBPeer(t, topo)
	}
	a := startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--xdp-mode", mode, "--web.listen-address", metricsAddr)
	checkAttached(t, topo, a, mode)
	toLB := sniff(t, topo.InSwitch, port, frames.CaptureOptions{Filter: frames.ICMPOrVLAN, Outgoing: true}, true,
		func(f frames.Frame) bool { return len(f.VLANs) > 0 }, nil)
	cli := openSender(t, topo, h1)
	before, bm := snap(t, topo), scrapeM(t, topo)

	tags := [][]frames.VLAN{
		{{TPID: frames.EtherTypeVLAN, TCI: 10}},
		{{TPID: frames.EtherTypeQinQ, TCI: 20}},
		{{TPID: frames.EtherTypeQinQ, TCI: 30}, {TPID: frames.EtherTypeVLAN, TCI: 10}},
	}
	const per = 24
	for i, tag := range tags {
		for seq := uint16(1); seq <= per; seq++ {
			fr := request(topo, h1, topology.SeedH1, uint16(0x5000+i), seq, payload("TAGGED", 32))
			fr.VLANs = tag
			if err := cli.Send(fr.Marshal()); err != nil {
				t.Fatal(err)
			}
		}
	}
	sent := uint64(len(tags) * per)
	var am metrics
	waitFor(3*time.Second, func() bool {
		am = scrapeM(t, topo)
		return am.reason("vlan")-bm.reason("vlan") >= sent
	})
	time.Sleep(100 * time.Millisecond) // a forwarded request on its way to a backend
	d := before.since(t, topo)
	am = scrapeM(t, topo)
	var inFrame, inMeta int
	for _, f := range toLB.frames() {
		if !f.Outgoing {
			continue // forwarded by lb: the backends' counts tell
		}
		if f.TagFromMeta {
			inMeta++
		} else {
			inFrame++
		}
	}
	t.Logf("%s: sent %d tagged echoes to the VIP; toward lb %d carried the tag in the frame, %d in metadata; %s; packets: %s",
		mode, sent, inFrame, inMeta, d, am.reasons(bm))
	if inMeta != 0 || inFrame != int(sent) {
		t.Fatalf("%d of %d tagged frames left the switch with the tag in the frame (%d in metadata): the test setup failed",
			inFrame, sent, inMeta)
	}
	if d.backends() != 0 {
		t.Errorf("tagged echoes were balanced: %s", d)
	}
	if v := am.reason("vlan") - bm.reason("vlan"); v != sent || am.counter("icmplb_packets_total", "verdict", "pass", "reason", "vlan") != v {
		t.Errorf("pass/vlan +%d, want the %d tagged frames", v, sent)
	}
	if f := am.reason("request_forwarded") - bm.reason("request_forwarded"); f != 0 {
		t.Errorf("request_forwarded +%d while only tagged frames were sent", f)
	}
	assertBalances(t, topo)
}

// TestAttackInflateLoss (issue 7, defect 6): requests no backend can answer
// (bad ICMP checksum) or should (bogus source, TTL 0) are not forwarded, so
// no client can inflate a backend's loss with them; they are counted.
func TestAttackInflateLoss(t *testing.T) {
	testenv.Privileged(t)
	snat := netip.MustParseAddr("10.0.0.200")
	topo := topology.NewT(t, attackSpec(netip.PrefixFrom(snat, 32)))
	// br_netfilter would check headers on the bridge; the balancer must be
	// the one that sees these frames.
	if _, err := topo.SwitchRun("sh", "-c", "f=/proc/sys/net/bridge/bridge-nf-call-iptables; [ ! -e $f ] || echo 0 > $f"); err != nil {
		t.Fatal(err)
	}
	// h3 drops every request: its loss is the truth the settlement of the
	// loss counters is awaited by.
	r3 := startResponder(t, topo, topology.SeedBackend2, responder.Config{Loss: 1, Seed: 2})
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--snat", snat.String(),
		"--backend", backend1, "--backend", backend2, "--web.listen-address", metricsAddr, "--loss-timeout", "500ms")
	isAttack := func(f frames.Frame) bool {
		return f.IsEcho && f.Type == frames.ICMPEchoReq && bytes.HasPrefix(f.Payload, []byte("ATTACK"))
	}
	isControl := func(f frames.Frame) bool {
		return f.IsEcho && f.Type == frames.ICMPEchoReq && bytes.HasPrefix(f.Payload, []byte("CONTROL"))
	}
	opt := frames.CaptureOptions{Filter: frames.ICMPOrVLAN}
	atk2 := sniffHost(t, topo, topology.SeedBackend1, opt, isAttack, nil)
	atk3 := sniffHost(t, topo, topology.SeedBackend2, opt, isAttack, nil)
	ctl3 := sniffHost(t, topo, topology.SeedBackend2, opt, isControl, nil)
	cli := openSender(t, topo, h1)
	before := scrapeM(t, topo)

	send := func(fr frames.Echo) {
		if err := cli.Send(fr.Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	const n = 20
	for seq := uint16(1); seq <= n; seq++ {
		// A session each, so that both backends would get some.
		fr := request(topo, h1, topology.SeedH1, 0x6000+seq, seq, payload("ATTACK-CSUM", 32))
		fr.BadChecksum = true
		send(fr)
	}
	bogus := []string{"0.0.0.0", "255.255.255.255", "10.0.0.255", "224.0.0.1", "127.0.0.1", vip, snat.String()}
	const perBogus = 3
	for i, s := range bogus {
		for seq := uint16(1); seq <= perBogus; seq++ {
			send(request(topo, h1, netip.MustParseAddr(s), uint16(0x6100+i*perBogus)+seq, seq, payload("ATTACK-SRC", 32)))
		}
	}
	for seq := uint16(1); seq <= n; seq++ {
		fr := request(topo, h1, topology.SeedH1, 0x6200+seq, seq, payload("ATTACK-TTL", 32))
		fr.ZeroTTL = true
		send(fr)
	}
	// Then honest requests, on sessions spread over both backends.
	const sessions, per = 16, 2
	for i := range sessions {
		for seq := uint16(1); seq <= per; seq++ {
			send(request(topo, h1, topology.SeedH1, uint16(0x7000+i), seq, payload("CONTROL", 32)))
		}
	}
	var after metrics
	settled := waitFor(10*time.Second, func() bool {
		after = scrapeM(t, topo)
		c3 := uint64(ctl3.n.Load())
		return c3 > 0 && after.backend("icmplb_backend_lost_total", backend2) >= c3
	})
	time.Sleep(200 * time.Millisecond)
	after = scrapeM(t, topo)
	seen2, seen3, c3 := atk2.n.Load(), atk3.n.Load(), uint64(ctl3.n.Load())
	q3, _, dropped3 := r3.Stats()
	t.Logf("sent %d bad-checksum, %d bogus-source, %d TTL-0 requests, then %d honest ones; attack requests seen at h2 %d, at h3 %d; honest ones at h3 %d (h3 read %d, dropped %d); loss settled %v",
		n, len(bogus)*perBogus, n, sessions*per, seen2, seen3, c3, q3, dropped3, settled)
	t.Logf("%s", after.backendLine(backend1))
	t.Logf("%s", after.backendLine(backend2))
	t.Logf("packets: %s", after.reasons(before))
	if seen2+seen3 != 0 {
		t.Errorf("%d attack requests reached the backends (h2 %d, h3 %d), want none", seen2+seen3, seen2, seen3)
	}
	for _, w := range []struct {
		reason string
		want   uint64
	}{{"malformed", n}, {"bogus_source", uint64(len(bogus) * perBogus)}, {"ttl_zero", n}} {
		if got := after.counter("icmplb_packets_total", "verdict", "pass", "reason", w.reason) -
			before.counter("icmplb_packets_total", "verdict", "pass", "reason", w.reason); got != w.want {
			t.Errorf("pass/%s +%d, want %d", w.reason, got, w.want)
		}
	}
	fwd := after.backend("icmplb_backend_requests_total", backend1) + after.backend("icmplb_backend_requests_total", backend2)
	if fwd != sessions*per {
		t.Errorf("%d requests forwarded, want the %d honest ones", fwd, sessions*per)
	}
	if l := after.backend("icmplb_backend_lost_total", backend1); l != 0 {
		t.Errorf("h2 answers every request it gets, yet %d were counted lost", l)
	}
	if l := after.backend("icmplb_backend_lost_total", backend2); l != c3 {
		t.Errorf("%d counted lost for h3, which dropped the %d honest requests it got", l, c3)
	}
}

// TestAttackEvictionBlame (issue 7, defect 7): when the balancer's maps are
// too small for the traffic, the requests it cannot track are its own loss,
// never a backend's: a backend's lost count is what it really left
// unanswered.
func TestAttackEvictionBlame(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, attackSpec())
	ct := mapSize(t, topo, "--conntrack-size", 1024)
	inf := mapSize(t, topo, "--inflight-size", 1024)
	const delay = 200 * time.Millisecond
	after200ms := func(s sniffed) bool { return time.Since(s.At) >= delay }
	rs := map[string]*frameBackend{
		backend1: startFrameBackend(t, topo, topology.SeedBackend1, after200ms),
		backend2: startFrameBackend(t, topo, topology.SeedBackend2, after200ms),
	}
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--web.listen-address", metricsAddr, "--conntrack-size", strconv.Itoa(ct), "--inflight-size", strconv.Itoa(inf))
	cli := openSender(t, topo, h1)
	gen := newFresh(7, "BLAM")
	before := scrapeM(t, topo)

	const total, rate = 100000, 20000
	sent, took, err := paced(cli, total, rate, func(i int, buf []byte) []byte { return gen.frame(topo, h1, i, buf) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d requests of fresh sessions in %v (%.0f/s); maps: conntrack %d, in-flight %d",
		sent, took.Round(time.Millisecond), float64(sent)/took.Seconds(), ct, inf)
	// Settled: every backend answered what it read, and the balancer has
	// judged every request it forwarded (answered in time, late or lost).
	var after metrics
	settled := waitFor(20*time.Second, func() bool {
		after = scrapeM(t, topo)
		for be, r := range rs {
			if !r.answeredAll() {
				return false
			}
			judged := after.hist(be).GetSampleCount() + after.backend("icmplb_backend_lost_total", be)
			if judged < after.backend("icmplb_backend_requests_total", be) {
				return false
			}
		}
		return true
	})
	time.Sleep(1500 * time.Millisecond) // one more settlement round: a late count would show
	after = scrapeM(t, topo)
	t.Logf("settled %v; packets: %s", settled, after.reasons(before))
	var fwd uint64
	for _, be := range []string{backend1, backend2} {
		q, p := uint64(rs[be].received.Load()), uint64(rs[be].replied.Load())
		requests := after.backend("icmplb_backend_requests_total", be)
		lost := after.backend("icmplb_backend_lost_total", be)
		late := after.backend("icmplb_backend_late_replies_total", be)
		fwd += requests
		truth := requests - min(p, requests) + late
		t.Logf("%s; the backend read %d and answered %d", after.backendLine(be), q, p)
		if lost != truth {
			t.Errorf("backend %s: %d requests counted lost; it was sent %d and answered %d (%d of them late): want %d",
				be, lost, requests, p, late, truth)
		}
		if u := after.backend("icmplb_backend_unmatched_replies_total", be); u != 0 {
			t.Errorf("backend %s: %d replies without a request to match: the balancer forgot requests it forwarded", be, u)
		}
	}
	bl := after.balancerLost()
	t.Logf("forwarded %d, balancer's own loss %d, sent %d", fwd, bl, sent)
	if fwd+bl != uint64(sent) {
		t.Errorf("forwarded %d + balancer's loss %d = %d, want the %d requests sent", fwd, bl, fwd+bl, sent)
	}
}

// TestAttackPinnedRestartBackends (issue 7, defect 8): after a restart on
// pinned maps with another backend set, a reply is counted for the backend
// that sent it, and a backend that got no request has no counts.
func TestAttackPinnedRestartBackends(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, attackSpec())
	fs := bpffs(t)
	// Replies stay in flight across the restart (which takes about a
	// second; the test says so if it took longer).
	const delay = 4 * time.Second
	r2 := startResponder(t, topo, topology.SeedBackend1, responder.Config{Delay: delay, Seed: 1})
	r3 := startResponder(t, topo, topology.SeedBackend2, responder.Config{Delay: delay, Seed: 2})
	backend4 := topology.SeedH4.String() // h4's kernel answers
	base := []string{"run", "--iface", "eth0", "--vip", vip, "--bpffs", fs, "--web.listen-address", metricsAddr,
		"--loss-timeout", "10s"}
	first := startAgent(t, topo, nil, append(base, "--backend", backend1, "--backend", backend2)...)
	cli := openSender(t, topo, h1)
	atClient := sniffHost(t, topo, h1, frames.CaptureOptions{Filter: frames.ICMPOrVLAN},
		isEcho(frames.ICMPEchoReply, topology.SeedVIP, topology.SeedH1), nil)
	const sessions = 32
	for i := range sessions {
		if err := cli.Send(request(topo, h1, topology.SeedH1, uint16(5000+i), 1, payload("PIN", 32)).Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	reqs := func() (q, p uint64) {
		q2, p2, _ := r2.Stats()
		q3, p3, _ := r3.Stats()
		return q2 + q3, p2 + p3
	}
	if !waitFor(3*time.Second, func() bool { q, _ := reqs(); return q == sessions }) {
		q, _ := reqs()
		t.Fatalf("backends received %d of %d requests before the restart", q, sessions)
	}
	q2, _, _ := r2.Stats()
	if _, err := first.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	h4Before := icmpOf(t, topo, h4)
	startAgent(t, topo, nil, append(base, "--backend", backend2, "--backend", backend4)...)
	if _, p := reqs(); p != 0 {
		t.Fatalf("%d replies left the backends before the new agent attached; the restart took longer than their %v delay", p, delay)
	}
	_, p3Before, _ := r3.Stats()
	if !waitFor(delay+3*time.Second, func() bool { _, p := reqs(); return p == sessions }) {
		_, p := reqs()
		t.Fatalf("backends answered %d of %d requests", p, sessions)
	}
	// The replies cross the balancer: wait until the capture is quiet.
	waitQuiet(3*time.Second, atClient.n.Load)
	after := scrapeM(t, topo)
	_, p3, _ := r3.Stats()
	h4Got := icmpOf(t, topo, h4).InType8 - h4Before.InType8
	t.Logf("before the restart h2 got %d requests, h3 %d; after it h3 replied %d, h4 received %d requests; the client got %d replies",
		q2, sessions-q2, p3-p3Before, h4Got, atClient.n.Load())
	t.Logf("%s", after.backendLine(backend2))
	t.Logf("%s", after.backendLine(backend4))
	t.Logf("packets: %s", after.reasons(metrics{}))
	if h4Got != 0 {
		t.Fatalf("h4 received %d requests though no client sent one since the restart", h4Got)
	}
	for _, name := range []string{"icmplb_backend_requests_total", "icmplb_backend_replies_total",
		"icmplb_backend_unmatched_replies_total", "icmplb_backend_late_replies_total", "icmplb_backend_lost_total"} {
		if v := after.backend(name, backend4); v != 0 {
			t.Errorf("%s{backend=%q} = %d, but h4 received no request", name, backend4, v)
		}
	}
	if n := after.hist(backend4).GetSampleCount(); n != 0 {
		t.Errorf("%d RTT samples for h4, which received no request", n)
	}
	if c := after.backend("icmplb_backend_replies_total", backend2) + after.backend("icmplb_backend_unmatched_replies_total", backend2); c > p3-p3Before {
		t.Errorf("%d replies counted for h3, which sent %d since the restart: another backend's replies were counted as h3's", c, p3-p3Before)
	}

	// New sessions go to both backends of the new set and are counted
	// there; the counters carried on across the restart.
	q3Before, _, _ := r3.Stats()
	counted3 := after.backend("icmplb_backend_requests_total", backend2)
	for i := range sessions {
		if err := cli.Send(request(topo, h1, topology.SeedH1, uint16(6000+i), 1, payload("NEW", 32)).Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	var q3 uint64
	waitFor(3*time.Second, func() bool {
		q3, _, _ = r3.Stats()
		h4Got = icmpOf(t, topo, h4).InType8 - h4Before.InType8
		return q3-q3Before+h4Got == sessions
	})
	after = scrapeM(t, topo)
	got3 := after.backend("icmplb_backend_requests_total", backend2) - counted3
	got4 := after.backend("icmplb_backend_requests_total", backend4)
	t.Logf("new sessions: h3 received %d, h4 %d; counted h3 %d, h4 %d", q3-q3Before, h4Got, got3, got4)
	if got4 != h4Got || got3 != q3-q3Before {
		t.Errorf("requests counted: h3 %d, h4 %d; the backends received h3 %d, h4 %d", got3, got4, q3-q3Before, h4Got)
	}
}
