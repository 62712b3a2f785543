// SPDX-License-Identifier: MIT

package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// A home is never taken over from an idle session, as a counted id is: two
// CPUs computing the same home at once could each overwrite what the other
// wrote, and one session's reply reach the other's client. The sweeper
// frees it.
func TestNATHomeNeverTakenOver(t *testing.T) {
	cfg := testConfig(vip)
	// Every session is idle as soon as its request is answered.
	cfg.NATIdle = 0
	h := readyHarness(t, cfg)
	home := h.aHome(t, backendA.idx, 7)

	first := echoRequest(client1, hop1MAC, 5, 1)
	h.forceHome(t, backendA.idx, home, first)
	if _, got := h.forward(t, first); got != home {
		t.Fatalf("first session got NAT id %#04x, want its home %#04x", got, home)
	}
	h.returnReply(t, replyTo(first, backendA, vip, home), client1, 5, hop1MAC)

	second := echoRequest(client2, hop2MAC, 6, 1)
	h.forceHome(t, backendA.idx, home, second)
	_, got := h.forward(t, second)
	if got == home {
		t.Fatalf("second session took over home %#04x of an idle one", home)
	}
	if x := natUnpermute(h.pool(t, backendA.idx).Key, got); x < natHomes {
		t.Errorf("second session got %#04x, a home (value %#04x), want a counted id", got, x)
	}
	h.requireConntrack(t, client1, 5, hop1MAC, backendA, home)
	h.returnReply(t, replyTo(second, backendA, vip, got), client2, 6, hop2MAC)

	h.sweep(t)
	h.requireNoSession(t, client1, 5)
	third := echoRequest(netip.MustParseAddr("10.0.0.9"), hop2MAC, 7, 1)
	h.forceHome(t, backendA.idx, home, third)
	if _, got := h.forward(t, third); got != home {
		t.Fatalf("after the sweep, a session got NAT id %#04x, want the freed home %#04x", got, home)
	}
}

// A session found at its home never needs its ct_fwd entry, but that entry
// is what keeps it on its backend, bound to its MAC, once Maglev picks
// another backend. The session looks it up once every FWD_REFRESH, so that
// the LRU keeps it, and writes it again when it was evicted or points
// elsewhere.
func TestNATHomeKeepsForwardEntry(t *testing.T) {
	fk := IcmplbFwdKey{Client: Addr(client1), Vip: Addr(vip), EchoId: Net16(0x71)}
	for _, tt := range []struct {
		name string
		lose func(*harness) error
	}{
		{"evicted", func(h *harness) error { return h.objs.CtFwd.Delete(fk) }},
		{"pointing elsewhere", func(h *harness) error {
			return h.objs.CtFwd.Put(fk, IcmplbFwdVal{Backend: Addr(backendB.addr), BackendIdx: backendB.idx,
				NatId: Net16(0x1234), ClientMac: hop2MAC})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := readyHarness(t, testConfig(vip))
			h.setBackend(t, backendB, backendReady)
			req := echoRequest(client1, hop1MAC, 0x71, 1)
			home, _ := h.homeID(t, backendA.idx, vip, client1, 0x71)
			if _, got := h.forward(t, req); got != home {
				t.Fatalf("NAT id %#04x, want the session's home %#04x", got, home)
			}
			if err := tt.lose(h); err != nil {
				t.Fatal(err)
			}

			// The refresh falls due.
			rk := IcmplbRevKey{Backend: Addr(backendA.addr), NatId: Net16(home)}
			var rv IcmplbRevVal
			if err := h.objs.CtRev.Lookup(rk, &rv); err != nil {
				t.Fatal(err)
			}
			rv.FwdRef = uint16(monotonicNow(t)>>IcmplbLayoutFWD_REFRESH_SHIFT) - uint16(IcmplbLayoutFWD_REFRESH)
			if err := h.objs.CtRev.Update(rk, rv, ebpf.UpdateExist); err != nil {
				t.Fatal(err)
			}
			req.seq = 2
			if be, got := h.forward(t, req); be != backendA || got != home {
				t.Fatalf("request went to %v with NAT id %#04x, want %v at its home %#04x", be.addr, got, backendA.addr, home)
			}
			h.requireConntrack(t, client1, 0x71, hop1MAC, backendA, home)

			h.pointMaglev(t, backendB.idx)
			h.requireUntouched(t, echoRequest(client1, hop2MAC, 0x71, 3).frame(), xdpDrop,
				IcmplbReasonREASON_SESSION_MAC_MISMATCH)
			req.seq = 4
			if be, got := h.forward(t, req); be != backendA || got != home {
				t.Fatalf("after Maglev picked %v: request went to %v with NAT id %#04x, want it kept on %v, %#04x",
					backendB.addr, be.addr, got, backendA.addr, home)
			}
			if c := h.backendCounters(t, backendA.idx); c.Requests != 3 || c.Moved != 0 {
				t.Errorf("%v: %d requests, %d moved, want 3 and 0", backendA.addr, c.Requests, c.Moved)
			}
			if c := h.backendCounters(t, backendB.idx); c.Requests != 0 {
				t.Errorf("%v: %d requests, want 0", backendB.addr, c.Requests)
			}
		})
	}
}

// Two CPUs opening one session at once (its first requests on two queues)
// both find its home free, and one CPU's insert fails: that one adopts the
// entry the other just made. The session then holds one NAT id, and both
// requests leave with it.
func TestNATHomeConcurrentOpens(t *testing.T) {
	requireRoot(t)
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		t.Fatalf("read CPU affinity: %v", err)
	}
	var cpus []int
	for cpu := 0; cpu < 1024; cpu++ {
		if allowed.IsSet(cpu) {
			cpus = append(cpus, cpu)
		}
	}
	if len(cpus) < 2 {
		t.Skip("needs two CPUs to open a session on both at once")
	}
	cfg := testConfig(vip)
	cfg.ConntrackSize = 16384
	h := readyHarness(t, cfg)

	const sessions = 4000
	frames := make([][]byte, sessions)
	for i := range frames {
		frames[i] = echoRequest(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), hop1MAC, 1, 1).frame()
	}
	var (
		arrived [2]atomic.Int64
		natIDs  [2][sessions]uint16
		errs    [2]error
		wg      sync.WaitGroup
	)
	for c := range 2 {
		wg.Go(func() {
			// BPF_PROG_RUN runs on the calling CPU. Never unlocked: the
			// thread ends with the goroutine, its pinning with it.
			runtime.LockOSThread()
			var set unix.CPUSet
			set.Set(cpus[c])
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				errs[c] = err
				arrived[c].Store(sessions)
				return
			}
			for i, frame := range frames {
				// Both CPUs send session i's request together.
				arrived[c].Store(int64(i + 1))
				for arrived[1-c].Load() < int64(i+1) {
				}
				opts := ebpf.RunOptions{Data: bytes.Clone(frame), DataOut: make([]byte, len(frame)+256)}
				verdict, err := h.objs.Icmplb.Run(&opts)
				if err == nil && verdict != xdpTX {
					err = fmt.Errorf("session %d on CPU %d: verdict %d, want XDP_TX", i, cpus[c], verdict)
				}
				if err != nil {
					errs[c] = err
					arrived[c].Store(sessions)
					return
				}
				natIDs[c][i] = binary.BigEndian.Uint16(opts.DataOut[38:40])
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Sessions whose home another session held first open with counted
	// ids; two CPUs opening one of them at once may each take one, the
	// unused one idling out as any idle session's does. Only homes are
	// adopted.
	pool := h.pool(t, backendA.idx)
	split, atHome := 0, 0
	for i := range sessions {
		home, ok := natHome(pool, vip, netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), 1)
		a, b := natIDs[0][i], natIDs[1][i]
		switch {
		case !ok || (a != home && b != home):
		case a == b:
			atHome++
		default:
			split++
			t.Errorf("session %d: NAT ids %#04x and %#04x on the two CPUs, its home %#04x", i, a, b, home)
		}
	}
	if split > 0 || atHome < sessions/2 {
		t.Fatalf("%d sessions opened at their home on both CPUs, %d split, of %d", atHome, split, sessions)
	}
}
