// SPDX-License-Identifier: MIT

package balancer

import (
	"testing"
	"time"

	"github.com/icmplb/icmplb/bpf"
)

const epochNs = uint64(1) << bpf.EpochShift

// slotsFor lays out per-CPU epoch slots as the data plane's map does.
func slotsFor(backends, ncpu int) []bpf.IcmplbEpochCount {
	return make([]bpf.IcmplbEpochCount, backends*bpf.Epochs*ncpu)
}

func put(slots []bpf.IcmplbEpochCount, ncpu, backend int, epoch uint64, cpu int, sent, answered uint64) {
	slots[bpf.EpochKey(backend, epoch)*ncpu+cpu] = bpf.IcmplbEpochCount{Epoch: epoch, Sent: sent, Answered: answered}
}

func TestLossSettlesOnlyAfterTimeout(t *testing.T) {
	const ncpu = 2
	start := 1000 * epochNs
	l := testLedger(2, start)
	slots := slotsFor(2, ncpu)
	e := start >> bpf.EpochShift
	// Backend 0: 10 sent over two CPUs, 7 answered, one answer counted on
	// the other CPU than its request. Backend 1: all answered.
	put(slots, ncpu, 0, e, 0, 6, 3)
	put(slots, ncpu, 0, e, 1, 4, 4)
	put(slots, ncpu, 1, e, 0, 5, 5)
	timeout := time.Second

	// Before end of epoch + timeout + grace: nothing is settled.
	l.settle(slots, ncpu, (e+1)*epochNs+uint64(timeout), timeout)
	if l.lost[0] != 0 || l.next[0] != e {
		t.Fatalf("settled too early: lost %v next %d", l.lost, l.next[0])
	}
	l.settle(slots, ncpu, (e+1)*epochNs+uint64(timeout+settleGrace), timeout)
	if l.lost[0] != 3 || l.lost[1] != 0 {
		t.Fatalf("lost %v, want [3 0]", l.lost)
	}
	// Settling again counts nothing twice.
	l.settle(slots, ncpu, (e+3)*epochNs+uint64(timeout+settleGrace), timeout)
	if l.lost[0] != 3 {
		t.Fatalf("lost %v after a second settle, want 3 still", l.lost)
	}
}

func TestLossIgnoresSlotsOfOtherEpochs(t *testing.T) {
	const ncpu = 1
	start := 5000 * epochNs
	l := testLedger(1, start)
	slots := slotsFor(1, ncpu)
	e := start >> bpf.EpochShift
	// The slot of epoch e holds an older epoch's counts (e - Epochs):
	// nothing was sent in e on that CPU.
	put(slots, ncpu, 0, e-uint64(bpf.Epochs), 0, 9, 0)
	put(slots, ncpu, 0, e+1, 0, 4, 1)
	l.settle(slots, ncpu, (e+3)*epochNs+uint64(time.Second+settleGrace), time.Second)
	if l.lost[0] != 3 {
		t.Fatalf("lost %d, want 3 (epoch e+1 only)", l.lost[0])
	}
}

func TestLossSkipsOverwrittenEpochs(t *testing.T) {
	const ncpu = 1
	start := 5000 * epochNs
	l := testLedger(1, start)
	slots := slotsFor(1, ncpu)
	// Far later than the ring covers: the epochs in between are gone.
	now := start + uint64(3*bpf.Epochs)*epochNs
	if skipped := l.settle(slots, ncpu, now, time.Second); skipped == 0 {
		t.Fatal("no epochs reported skipped after the ring was overrun")
	}
	if l.lost[0] != 0 {
		t.Fatalf("invented %d losses from overwritten slots", l.lost[0])
	}
}

func TestMaxLossTimeoutFitsRing(t *testing.T) {
	// The last epoch settled must still be in the ring when it is read.
	now := uint64(10000) * epochNs
	last, ok := settledThrough(now, bpf.MaxLossTimeout)
	if !ok {
		t.Fatal("nothing settles")
	}
	if cur := now >> bpf.EpochShift; cur-last >= uint64(bpf.Epochs)-1 {
		t.Fatalf("settling epoch %d at %d: %d epochs back, the ring holds %d", last, cur, cur-last, bpf.Epochs)
	}
}

func testLedger(n int, now uint64) *lossLedger {
	l := newLossLedger()
	l.grow(n, now)
	return l
}

// pending tells the agent whether it must keep settling every quarter
// epoch: only while some request of an epoch not settled yet was sent.
func TestLossPending(t *testing.T) {
	const ncpu = 2
	start := 1000 * epochNs
	l := testLedger(2, start)
	slots := slotsFor(2, ncpu)
	e := start >> bpf.EpochShift
	timeout := time.Second
	if l.pending(slots, ncpu) {
		t.Fatal("pending with no request sent")
	}
	put(slots, ncpu, 1, e, 1, 2, 2)
	if !l.pending(slots, ncpu) {
		t.Fatal("not pending with two requests of an epoch not settled, on backend 1's second CPU")
	}
	l.settle(slots, ncpu, (e+1)*epochNs+uint64(timeout+settleGrace), timeout)
	if l.pending(slots, ncpu) {
		t.Fatalf("pending once the only epoch with requests is settled (next %v)", l.next)
	}
	put(slots, ncpu, 0, e+1, 0, 1, 0)
	if !l.pending(slots, ncpu) {
		t.Fatal("not pending with a request of the next epoch")
	}
}
