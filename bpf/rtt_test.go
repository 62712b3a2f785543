// SPDX-License-Identifier: MIT

package bpf

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// refBucket is the float reference of the RTT bucket mapping: the native
// histogram bucket of schema 3 holding v ns is ceil(8 log2(v / 1e9)).
func refBucket(v uint64) int {
	if v == 0 {
		return 0
	}
	k := int(math.Ceil(8*math.Log2(float64(v)/1e9))) + RTTBucketOffset
	return min(max(k, 0), RTTBuckets-1)
}

func TestRTTBoundsMatchFloat(t *testing.T) {
	b := RTTBounds()
	for k, got := range b {
		want := 1e9 * math.Pow(2, float64(k-RTTBucketOffset)/8)
		if d := float64(got) - want; d > 0 || d <= -1 {
			t.Errorf("bound[%d] = %d, want floor(%.3f)", k, got, want)
		}
		if k > 0 && got <= b[k-1] {
			t.Errorf("bound[%d] = %d is not above bound[%d] = %d", k, got, k-1, b[k-1])
		}
	}
	if b[RTTBucketOffset] != 1e9 || b[RTTBucketOffset+8] != 2e9 || b[RTTBucketOffset-8] != 5e8 {
		t.Errorf("bounds at 0.5 s, 1 s, 2 s are %d, %d, %d: powers of two must be exact",
			b[RTTBucketOffset-8], b[RTTBucketOffset], b[RTTBucketOffset+8])
	}
}

// TestRTTBucketInKernel runs the kernel's own bucket function on both sides
// of every boundary and compares it with the float reference.
func TestRTTBucketInKernel(t *testing.T) {
	probe := loadTestObjects(t).RttBucketProbe

	bucket := func(v uint64) int {
		in := make([]byte, 64) // above the kernel's minimum test frame
		binary.NativeEndian.PutUint64(in, v)
		out := make([]byte, 64)
		if _, err := probe.Run(&ebpf.RunOptions{Data: in, DataOut: out}); err != nil {
			t.Fatalf("run probe: %v", err)
		}
		return int(binary.NativeEndian.Uint64(out))
	}
	bounds := RTTBounds()
	values := []uint64{0, 1, math.MaxUint64}
	for _, b := range bounds {
		values = append(values, b-1, b, b+1)
	}
	checked := 0
	for _, v := range values {
		got, want := bucket(v), refBucket(v)
		if got != want {
			t.Errorf("RTT %d ns: kernel bucket %d, float reference %d", v, got, want)
		}
		checked++
	}
	for k, b := range bounds {
		if got := bucket(b); got != k {
			t.Errorf("bound[%d] = %d ns lands in bucket %d", k, b, got)
		}
		if k < len(bounds)-1 {
			if got := bucket(b + 1); got != k+1 {
				t.Errorf("bound[%d]+1 ns lands in bucket %d, want %d", k, got, k+1)
			}
		}
	}
	t.Logf("checked %d values across %d boundaries", checked, len(bounds))
}

func histogram(t *testing.T, h *harness, idx uint32) map[int]uint64 {
	t.Helper()
	out := map[int]uint64{}
	for k := 0; k < RTTBuckets; k++ {
		var perCPU []uint64
		if err := h.objs.RttHist.Lookup(uint32(RTTKey(int(idx), k)), &perCPU); err != nil {
			t.Fatal(err)
		}
		for _, n := range perCPU {
			if n > 0 {
				out[k] += n
			}
		}
	}
	return out
}

func epochTotals(t *testing.T, h *harness, idx uint32) (sent, answered uint64) {
	t.Helper()
	for e := 0; e < Epochs; e++ {
		var perCPU []IcmplbEpochCount
		if err := h.objs.Epochs.Lookup(uint32(EpochKey(int(idx), uint64(e))), &perCPU); err != nil {
			t.Fatal(err)
		}
		for _, c := range perCPU {
			sent += c.Sent
			answered += c.Answered
		}
	}
	return sent, answered
}

func TestRTTMeasured(t *testing.T) {
	h := readyHarness(t, testConfig(vip))

	req := echoRequest(client1, hop1MAC, 0x1234, 7)
	before := monotonicNow(t)
	_, natID := h.forward(t, req)
	time.Sleep(3 * time.Millisecond)
	h.returnReply(t, replyTo(req, backendA, vip, natID), client1, 0x1234, hop1MAC)
	elapsed := monotonicNow(t) - before

	c := h.backendCounters(t, backendA.idx)
	if c.RttSumNs < uint64(3*time.Millisecond) || c.RttSumNs > elapsed {
		t.Errorf("RTT sum %d ns, want within [3ms, %d ns]", c.RttSumNs, elapsed)
	}
	hist := histogram(t, h, backendA.idx)
	if len(hist) != 1 {
		t.Fatalf("histogram %v, want one bucket with one reply", hist)
	}
	for k, n := range hist {
		if want := refBucket(c.RttSumNs); k != want || n != 1 {
			t.Errorf("histogram has %d in bucket %d, want 1 in bucket %d (RTT %d ns)", n, k, want, c.RttSumNs)
		}
	}
	if sent, answered := epochTotals(t, h, backendA.idx); sent != 1 || answered != 1 {
		t.Errorf("epochs count %d sent, %d answered; want 1, 1", sent, answered)
	}
	var iv IcmplbInflightVal
	key := IcmplbInflightKey{Backend: Addr(backendA.addr), NatId: Net16(natID), Seq: Net16(7)}
	if err := h.objs.Inflight.Lookup(key, &iv); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("in-flight entry still there after its reply (err %v)", err)
	}
}

// TestRTTManyInFlight checks that replies are matched by sequence number, so
// that a session with several requests out measures each one.
func TestRTTManyInFlight(t *testing.T) {
	h := readyHarness(t, testConfig(vip))

	var natID uint16
	for seq := uint16(1); seq <= 5; seq++ {
		_, natID = h.forward(t, echoRequest(client1, hop1MAC, 0x4444, seq))
		time.Sleep(2 * time.Millisecond)
	}
	// Answer in reverse: seq 5 was sent last, so its RTT is the smallest.
	for seq := uint16(5); seq >= 1; seq-- {
		req := echoRequest(client1, hop1MAC, 0x4444, seq)
		h.returnReply(t, replyTo(req, backendA, vip, natID), client1, 0x4444, hop1MAC)
	}
	c := h.backendCounters(t, backendA.idx)
	if c.Unmatched != 0 || c.Late != 0 {
		t.Fatalf("counters %+v: every reply must match its request", c)
	}
	hist := histogram(t, h, backendA.idx)
	total := uint64(0)
	for _, n := range hist {
		total += n
	}
	if total != 5 {
		t.Fatalf("histogram holds %d replies, want 5: %v", total, hist)
	}
	// Five RTTs spread over >= 8 ms must not all land in one schema-3 bucket.
	if len(hist) < 2 {
		t.Errorf("all RTTs in one bucket %v: sequence numbers were not told apart", hist)
	}
}

// TestReplyWithoutRequestUnmatched: a backend's reply that answers no request
// in flight (a duplicate, or a sequence never sent) is no measurement, and
// no client's: it is passed to the kernel untouched and counted unmatched.
func TestReplyWithoutRequestUnmatched(t *testing.T) {
	h := readyHarness(t, testConfig(vip))

	req := echoRequest(client1, hop1MAC, 0x1234, 1)
	_, natID := h.forward(t, req)
	rep := replyTo(req, backendA, vip, natID)
	h.returnReply(t, rep, client1, 0x1234, hop1MAC)
	h.requireUntouched(t, rep.frame(), xdpPass, IcmplbReasonREASON_CONNTRACK_MISS)
	rep.seq = 99
	h.requireUntouched(t, rep.frame(), xdpPass, IcmplbReasonREASON_CONNTRACK_MISS)
	if c := h.backendCounters(t, backendA.idx); c.Unmatched != 2 || c.Replies != 1 {
		t.Errorf("counters %+v, want 1 reply and 2 unmatched", c)
	}
	if _, answered := epochTotals(t, h, backendA.idx); answered != 1 {
		t.Errorf("%d answered, want 1", answered)
	}
	if hist := histogram(t, h, backendA.idx); len(hist) != 1 {
		t.Errorf("histogram %v, want the one matched reply", hist)
	}
}

// TestLateReplyNotAnswered: a reply after the loss timeout but within twice
// that is returned and counted late; its request stays lost. The request's
// send time is moved back instead of sleeping through the timeout.
func TestLateReplyNotAnswered(t *testing.T) {
	cfg := testConfig(vip)
	h := readyHarness(t, cfg)

	req := echoRequest(client1, hop1MAC, 0x1234, 1)
	_, natID := h.forward(t, req)
	h.backdate(t, backendA, natID, 1, cfg.LossTimeout+cfg.LossTimeout/2)
	h.returnReply(t, replyTo(req, backendA, vip, natID), client1, 0x1234, hop1MAC)
	c := h.backendCounters(t, backendA.idx)
	if c.Late != 1 || c.RttSumNs != 0 || c.Replies != 1 || c.Unmatched != 0 {
		t.Errorf("counters %+v, want one late reply outside the RTT sum", c)
	}
	if len(histogram(t, h, backendA.idx)) != 0 {
		t.Error("a late reply went into the RTT histogram")
	}
	if sent, answered := epochTotals(t, h, backendA.idx); sent != 1 || answered != 0 {
		t.Errorf("epochs %d sent, %d answered; want the late request unanswered", sent, answered)
	}
	if _, ok := h.inflight(t, backendA, natID, 1); ok {
		t.Error("in-flight entry kept after its late reply")
	}
}

// TestReplyPastTwiceLossTimeoutUnmatched: past twice the loss timeout a
// request is forgotten even if the sweeper has not removed it yet; a reply
// then is unmatched and not the client's any more.
func TestReplyPastTwiceLossTimeoutUnmatched(t *testing.T) {
	cfg := testConfig(vip)
	h := readyHarness(t, cfg)

	req := echoRequest(client1, hop1MAC, 0x1234, 1)
	_, natID := h.forward(t, req)
	h.backdate(t, backendA, natID, 1, 2*cfg.LossTimeout+time.Second)
	h.requireUntouched(t, replyTo(req, backendA, vip, natID).frame(), xdpPass, IcmplbReasonREASON_CONNTRACK_MISS)
	c := h.backendCounters(t, backendA.idx)
	if c.Unmatched != 1 || c.Late != 0 || c.Replies != 0 || c.RttSumNs != 0 {
		t.Errorf("counters %+v, want one unmatched reply and nothing else", c)
	}
	h.sweep(t)
	if _, ok := h.inflight(t, backendA, natID, 1); ok {
		t.Error("sweeper kept a request older than twice the loss timeout")
	}
}

func TestTraceEvents(t *testing.T) {
	cfg := testConfig(vip)
	cfg.TraceSample = 1
	h := readyHarness(t, cfg)
	rd, err := ringbuf.NewReader(h.objs.Events)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	req := echoRequest(client1, hop1MAC, 0x1234, 42)
	_, natID := h.forward(t, req)
	h.returnReply(t, replyTo(req, backendA, vip, natID), client1, 0x1234, hop1MAC)

	var got []IcmplbTraceEvent
	rd.SetDeadline(time.Now().Add(time.Second))
	for len(got) < 2 {
		rec, err := rd.Read()
		if err != nil {
			t.Fatalf("read event %d: %v", len(got), err)
		}
		var e IcmplbTraceEvent
		if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &e); err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	reqEv, repEv := got[0], got[1]
	if reqEv.Kind != IcmplbTraceKindTRACE_REQUEST || repEv.Kind != IcmplbTraceKindTRACE_REPLY {
		t.Fatalf("event kinds %d, %d; want request then reply", reqEv.Kind, repEv.Kind)
	}
	for _, e := range got {
		if AddrFrom(e.Client) != client1 || AddrFrom(e.Backend) != backendA.addr ||
			Host16(e.EchoId) != 0x1234 || Host16(e.Seq) != 42 || e.BackendIdx != backendA.idx {
			t.Errorf("event %+v does not describe the exchange", e)
		}
	}
	if repEv.SentNs != reqEv.SentNs || repEv.RttNs == 0 || repEv.Late != 0 {
		t.Errorf("reply event %+v does not pair with request sent at %d", repEv, reqEv.SentNs)
	}
	if c := h.backendCounters(t, backendA.idx); c.RttSumNs != repEv.RttNs {
		t.Errorf("event RTT %d ns, histogram sum %d ns", repEv.RttNs, c.RttSumNs)
	}
}

func TestTraceRingFullCountsDrops(t *testing.T) {
	cfg := testConfig(vip)
	cfg.TraceSample = 1
	h := readyHarness(t, cfg)

	// Nobody reads: a 4 KiB ring holds about 70 events.
	const n = 200
	for seq := uint16(0); seq < n; seq++ {
		h.forward(t, echoRequest(client1, hop1MAC, 0x1234, seq))
	}
	var perCPU []uint64
	if err := h.objs.TraceDropped.Lookup(uint32(0), &perCPU); err != nil {
		t.Fatal(err)
	}
	var dropped uint64
	for _, v := range perCPU {
		dropped += v
	}
	rd, err := ringbuf.NewReader(h.objs.Events)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	queued := uint64(drain(rd))
	if dropped == 0 || dropped+queued != n {
		t.Errorf("%d events queued and %d dropped, want drops and a sum of %d", queued, dropped, n)
	}
}

func TestSamplingRate(t *testing.T) {
	cfg := testConfig(vip)
	cfg.TraceSample = 4
	cfg.TraceBufferSize = 1 << 16
	h := readyHarness(t, cfg)
	rd, err := ringbuf.NewReader(h.objs.Events)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	const n = 800
	for seq := uint16(0); seq < n; seq++ {
		h.forward(t, echoRequest(client1, hop1MAC, 0x1234, seq))
	}
	got := drain(rd)
	// Binomial(800, 1/4): mean 200, sd 12.2; ±5 sd.
	if got < 139 || got > 261 {
		t.Errorf("%d of %d requests sampled at 1 in 4", got, n)
	}
}

// drain counts the events queued in the ring buffer, without waiting.
func drain(rd *ringbuf.Reader) int {
	rd.SetDeadline(time.Now())
	n := 0
	for {
		if _, err := rd.Read(); err != nil {
			return n
		}
		n++
	}
}
