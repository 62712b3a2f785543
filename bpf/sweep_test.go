// SPDX-License-Identifier: MIT

package bpf

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

func TestSweepRemovesExpiredState(t *testing.T) {
	cfg := testConfig(vip)
	h := newHarness(t, cfg)
	now := monotonicNow(t)
	be := Addr(backendA.addr)
	c1, c2, c3 := Addr(client1), Addr(client2), Addr(netip.MustParseAddr("10.0.0.5"))

	oldReq := IcmplbInflightKey{Backend: be, NatId: Net16(1), Seq: Net16(1)}
	newReq := IcmplbInflightKey{Backend: be, NatId: Net16(1), Seq: Net16(2)}
	// Older than twice the loss timeout: not even a late reply can come.
	mustPut(t, h.objs.Inflight, oldReq, IcmplbInflightVal{SentNs: now - uint64(3*cfg.LossTimeout)})
	// Lost, but a late reply may still come: kept.
	mustPut(t, h.objs.Inflight, newReq, IcmplbInflightVal{SentNs: now - uint64(cfg.LossTimeout+cfg.LossTimeout/2)})

	// Stamped by a CPU after the sweep read its clock: newer than its now.
	racing := IcmplbInflightKey{Backend: be, NatId: Net16(1), Seq: Net16(3)}
	mustPut(t, h.objs.Inflight, racing, IcmplbInflightVal{SentNs: now + uint64(time.Second)})
	racingRev := IcmplbRevKey{Backend: be, NatId: Net16(12)}
	mustPut(t, h.objs.CtRev, racingRev, IcmplbRevVal{Client: c3, EchoId: Net16(8), Vip: Addr(vip), LastSeenNs: now + uint64(time.Second)})

	idle := IcmplbRevKey{Backend: be, NatId: Net16(10)}
	live := IcmplbRevKey{Backend: be, NatId: Net16(11)}
	mustPut(t, h.objs.CtRev, idle, IcmplbRevVal{Client: c1, EchoId: Net16(7), Vip: Addr(vip), LastSeenNs: now - uint64(2*cfg.NATIdle)})
	mustPut(t, h.objs.CtRev, live, IcmplbRevVal{Client: c2, EchoId: Net16(7), Vip: Addr(vip), LastSeenNs: now - uint64(time.Second)})
	idleSession := IcmplbFwdKey{Client: c1, Vip: Addr(vip), EchoId: Net16(7)}
	liveSession := IcmplbFwdKey{Client: c2, Vip: Addr(vip), EchoId: Net16(7)}
	mustPut(t, h.objs.CtFwd, idleSession, IcmplbFwdVal{Backend: be, NatId: idle.NatId})
	mustPut(t, h.objs.CtFwd, liveSession, IcmplbFwdVal{Backend: be, NatId: live.NatId})

	if _, err := h.objs.Sweep.Run(SweepRun(SweepAll)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		m    *ebpf.Map
		key  any
		kept bool
	}{
		{"request past twice the loss timeout", h.objs.Inflight, oldReq, false},
		{"request within twice the loss timeout", h.objs.Inflight, newReq, true},
		{"request stamped after the sweep began", h.objs.Inflight, racing, true},
		{"NAT mapping stamped after the sweep began", h.objs.CtRev, racingRev, true},
		{"idle NAT mapping", h.objs.CtRev, idle, false},
		{"live NAT mapping", h.objs.CtRev, live, true},
		{"session of the idle mapping", h.objs.CtFwd, idleSession, false},
		{"live session", h.objs.CtFwd, liveSession, true},
	} {
		// LookupBytes returns nil, not an error, for a missing key.
		v, err := c.m.LookupBytes(c.key)
		if err != nil {
			t.Fatal(err)
		}
		if (v != nil) != c.kept {
			t.Errorf("%s: kept=%v, want %v", c.name, v != nil, c.kept)
		}
	}
}

func mustPut(t *testing.T, m *ebpf.Map, k, v any) {
	t.Helper()
	if err := m.Put(k, v); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkSweep is one run of the sweeper over each group of maps, sized
// for 262144 entries, holding 0, 10k and 200k live sessions each with a
// request in flight, and its share of a core at the agent's schedule
// (SweepInflightEvery, SweepSessionsEvery). The agent skips a group whose
// maps are empty.
func BenchmarkSweep(b *testing.B) {
	for _, live := range []int{0, 10_000, 200_000} {
		b.Run(fmt.Sprintf("live=%d", live), func(b *testing.B) {
			cfg := testConfig(vip)
			cfg.ConntrackSize, cfg.InflightSize = 1<<18, 1<<18 // room for 200k
			h := newHarness(b, cfg)
			now := monotonicNow(b)
			be := Addr(backendA.addr)
			fk := make([]IcmplbFwdKey, live)
			fv := make([]IcmplbFwdVal, live)
			rk := make([]IcmplbRevKey, live)
			rv := make([]IcmplbRevVal, live)
			ik := make([]IcmplbInflightKey, live)
			iv := make([]IcmplbInflightVal, live)
			for i := range live {
				client := Addr(netip.AddrFrom4([4]byte{10, 4, byte(i >> 8), byte(i)}))
				nat := Net16(uint16(i))
				b4 := Addr(netip.AddrFrom4([4]byte{10, 5, byte(i >> 16), 1})) // 65536 NAT ids a backend
				fk[i], fv[i] = IcmplbFwdKey{Client: client, Vip: Addr(vip), EchoId: Net16(uint16(i >> 16))}, IcmplbFwdVal{Backend: b4, NatId: nat}
				rk[i], rv[i] = IcmplbRevKey{Backend: b4, NatId: nat}, IcmplbRevVal{Client: client, EchoId: Net16(uint16(i >> 16)), Vip: Addr(vip), LastSeenNs: now + uint64(time.Hour)}
				ik[i], iv[i] = IcmplbInflightKey{Backend: be, NatId: nat, Seq: Net16(uint16(i >> 16))}, IcmplbInflightVal{SentNs: now + uint64(time.Hour)}
			}
			for _, m := range []struct {
				m    *ebpf.Map
				k, v any
			}{{h.objs.CtFwd, fk, fv}, {h.objs.CtRev, rk, rv}, {h.objs.Inflight, ik, iv}} {
				if live == 0 {
					break
				}
				if n, err := m.m.BatchUpdate(m.k, m.v, nil); err != nil || n != live {
					b.Fatalf("fill %v: %d, %v", m.m, n, err)
				}
			}
			for _, sw := range []struct {
				name  string
				what  IcmplbSweepWhat
				every time.Duration
			}{{"inflight", IcmplbSweepWhatSWEEP_INFLIGHT, SweepInflightEvery}, {"sessions", IcmplbSweepWhatSWEEP_SESSIONS, SweepSessionsEvery}} {
				b.Run(sw.name, func(b *testing.B) {
					for b.Loop() {
						if _, err := h.objs.Sweep.Run(SweepRun(sw.what)); err != nil {
							b.Fatal(err)
						}
					}
					// Share of a core at the agent's schedule.
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(sw.every.Nanoseconds())*100, "%core")
				})
			}
		})
	}
}
