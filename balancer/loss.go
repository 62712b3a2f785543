// SPDX-License-Identifier: MIT

package balancer

import (
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/icmplb/icmplb/bpf"
)

// lossLedger settles each epoch of requests once its loss timeout has
// passed: the requests of an epoch that got no reply in time are lost. The
// data plane counts per (backend, epoch) in a ring of bpf.Epochs slots, so a
// settlement reads backends × Epochs counters, whatever the traffic.
type lossLedger struct {
	mu   sync.Mutex
	lost []uint64 // per backend index
	next []uint64 // per backend index: first epoch not settled
	buf  []bpf.IcmplbEpochCount
	keys []uint32
}

// settleGrace covers replies counted on one CPU while another CPU's settle
// reads the slot.
const settleGrace = 100 * time.Millisecond

func newLossLedger() *lossLedger { return &lossLedger{} }

// grow makes room for backend slots [0, n), new ones starting at now.
func (l *lossLedger) grow(n int, now uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.lost) < n {
		l.lost = append(l.lost, 0)
		l.next = append(l.next, now>>bpf.EpochShift)
	}
}

// reset starts slot idx afresh for a new backend.
func (l *lossLedger) reset(idx uint32, now uint64) {
	l.grow(int(idx)+1, now)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lost[idx], l.next[idx] = 0, now>>bpf.EpochShift
}

// restore takes over the ledger a previous agent left in the pinned map,
// so that lost counters carry on across a restart.
func (l *lossLedger) restore(m interface {
	Lookup(key, value any) error
}, n int, now uint64) error {
	l.grow(n, now)
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range n {
		var st bpf.IcmplbLossState
		if err := m.Lookup(uint32(i), &st); err != nil {
			return fmt.Errorf("read loss ledger slot %d: %w", i, err)
		}
		if st.NextEpoch != 0 {
			l.lost[i], l.next[i] = st.Lost, st.NextEpoch
		}
	}
	return nil
}

// save writes the ledger to the pinned map for the next agent.
func (l *lossLedger) save(m interface {
	BatchUpdate(keys, values any, opts *ebpf.BatchOptions) (int, error)
}) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.lost)
	if n == 0 {
		return nil
	}
	keys := make([]uint32, n)
	vals := make([]bpf.IcmplbLossState, n)
	for i := range n {
		keys[i], vals[i] = uint32(i), bpf.IcmplbLossState{Lost: l.lost[i], NextEpoch: l.next[i]}
	}
	_, err := m.BatchUpdate(keys, vals, nil)
	return err
}

// settledThrough returns the last epoch whose requests can no longer be
// answered in time at monotonic time now.
func settledThrough(now uint64, timeout time.Duration) (uint64, bool) {
	wait := uint64(timeout + settleGrace)
	if now < wait {
		return 0, false
	}
	// Epoch e is settled when (e+1) << EpochShift + wait <= now.
	end := (now - wait) >> bpf.EpochShift
	if end == 0 {
		return 0, false
	}
	return end - 1, true
}

// settle counts the lost requests of every epoch that became settled, given
// the epoch slots of all backends (backend-major, then slot, then CPU).
// It returns the epochs that were too old to settle: their slots had been
// reused, which means settle was not called for longer than the ring covers.
func (l *lossLedger) settle(slots []bpf.IcmplbEpochCount, ncpu int, now uint64, timeout time.Duration) (skipped uint64) {
	last, ok := settledThrough(now, timeout)
	if !ok {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.next {
		// Slots older than the ring were overwritten: skip, do not guess.
		if oldest := (now >> bpf.EpochShift) - uint64(bpf.Epochs) + 2; l.next[i] < oldest && now>>bpf.EpochShift >= uint64(bpf.Epochs) {
			skipped += oldest - l.next[i]
			l.next[i] = oldest
		}
		for e := l.next[i]; e <= last; e++ {
			var sent, answered uint64
			base := bpf.EpochKey(i, e) * ncpu
			for cpu := 0; cpu < ncpu; cpu++ {
				if s := slots[base+cpu]; s.Epoch == e {
					sent += s.Sent
					answered += s.Answered
				}
			}
			if sent > answered {
				l.lost[i] += sent - answered
			}
			l.next[i] = e + 1
		}
	}
	return skipped
}

// pending says whether the epoch slots hold requests not settled yet: while
// none do, settling can wait for traffic, seen a second later at most.
func (l *lossLedger) pending(slots []bpf.IcmplbEpochCount, ncpu int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, next := range l.next {
		for k := bpf.EpochKey(i, 0) * ncpu; k < bpf.EpochKey(i+1, 0)*ncpu && k < len(slots); k++ {
			if s := slots[k]; s.Sent > 0 && s.Epoch >= next {
				return true
			}
		}
	}
	return false
}

// monotonic is the clock of bpf_ktime_get_ns.
func monotonic() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return uint64(ts.Nano())
}

// settleLoss reads the epoch counters and settles what is due; it returns
// whether requests wait to be settled.
func (b *Balancer) settleLoss() (bool, error) {
	l := b.loss
	b.mu.Lock()
	n := b.nslots * bpf.Epochs
	b.mu.Unlock()
	if err := readPerCPU(b.objs.Epochs, n, &l.keys, &l.buf, b.ncpu); err != nil {
		return true, err
	}
	if skipped := l.settle(l.buf, b.ncpu, monotonic(), b.cfg.LossTimeout); skipped > 0 {
		b.log.Warn("loss accounting fell behind; some epochs were not counted", "epochs", skipped)
	}
	if b.pinDir != "" {
		if err := l.save(b.objs.LossLedger); err != nil {
			return true, fmt.Errorf("save the loss ledger: %w", err)
		}
	}
	return l.pending(l.buf, b.ncpu), nil
}
