// SPDX-License-Identifier: MIT

package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// A second service beside the harness's: its own VIP, SNAT address and
// Maglev table (index 1), and its own slot for backend A's address.
var (
	vip2      = netip.MustParseAddr("10.0.0.101")
	snat2     = netip.MustParseAddr("10.0.0.102")
	backendA2 = backendInfo{idx: 9, addr: backendA.addr, mac: backendA.mac}
)

// addService2 registers the second service with its table pointing at
// slot, and returns the table.
func addService2(t *testing.T, h *harness, slot uint32) *ebpf.Map {
	t.Helper()
	table, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: h.cfg.MaglevSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { table.Close() })
	for s := range h.cfg.MaglevSize {
		if err := table.Put(s, slot); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.objs.MaglevTables.Put(uint32(1), table); err != nil {
		t.Fatal(err)
	}
	h.addService(t, vip2, snat2, 1)
	return table
}

func (h *harness) setBackendOf(t *testing.T, be backendInfo, service netip.Addr) {
	t.Helper()
	v := IcmplbBackend{Addr: Addr(be.addr), Mac: be.mac, Flags: backendReady, Vip: Addr(service)}
	if err := h.objs.Backends.Put(be.idx, v); err != nil {
		t.Fatal(err)
	}
	h.setPool(t, be.idx, IcmplbNatPool{Key: [4]uint32{1, 2, 3, uint32(be.idx)}, Next: 100})
}

func svcCount(t *testing.T, h *harness, table uint32, r IcmplbReason) uint64 {
	t.Helper()
	var perCPU []uint64
	if err := h.objs.SvcStats.Lookup(table*uint32(IcmplbReasonREASON_MAX)+uint32(r), &perCPU); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n
}

// One client pings two VIPs with the same echo id, and both services use
// the same backend host: two sessions with their own NAT ids, each request
// leaving from its service's SNAT address, each reply returned from its own
// VIP, counted under its own slot and service.
func TestTwoServicesShareABackend(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	addService2(t, h, backendA2.idx)
	h.setBackendOf(t, backendA2, vip2)

	req1 := echoRequest(client1, hop1MAC, 0x4242, 1)
	be1, nat1 := h.forward(t, req1)
	req2 := echoRequest(client1, hop1MAC, 0x4242, 1)
	req2.dst = vip2
	out := h.run(t, req2.frame(), xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED)
	requireChecksumsVerify(t, out)
	nat2 := binary.BigEndian.Uint16(out[38:40])
	want := req2
	want.ethSrc, want.ethDst, want.src, want.dst, want.echoID = req2.ethDst, backendA.mac, snat2, backendA.addr, nat2
	requireFrame(t, "request to the second VIP", want.frame(), out)
	if be1 != backendA || nat1 == nat2 {
		t.Fatalf("sessions: %v nat %#04x and nat %#04x: want backend A with two NAT ids", be1.addr, nat1, nat2)
	}
	for _, s := range []struct {
		vip netip.Addr
		idx uint32
		nat uint16
	}{{vip, backendA.idx, nat1}, {vip2, backendA2.idx, nat2}} {
		var fv IcmplbFwdVal
		if err := h.objs.CtFwd.Lookup(IcmplbFwdKey{Client: Addr(client1), Vip: Addr(s.vip), EchoId: Net16(0x4242)}, &fv); err != nil ||
			fv.BackendIdx != s.idx || Host16(fv.NatId) != s.nat {
			t.Errorf("session of %s: %+v, %v; want slot %d, NAT id %#04x", s.vip, fv, err, s.idx, s.nat)
		}
	}

	// A reply of the second session sent to the first service's SNAT
	// address answers no request of that address: passed untouched.
	wrong := replyTo(req2, backendA, h.cfg.SNAT, nat2)
	h.requireUntouched(t, wrong.frame(), xdpPass, IcmplbReasonREASON_REPLY_MISMATCH)

	rep2 := replyTo(req2, backendA, snat2, nat2)
	out = h.run(t, rep2.frame(), xdpTX, IcmplbReasonREASON_REPLY_RETURNED)
	requireChecksumsVerify(t, out)
	back := rep2
	back.ethSrc, back.ethDst, back.src, back.dst, back.echoID = rep2.ethDst, hop1MAC, vip2, client1, 0x4242
	requireFrame(t, "reply of the second VIP", back.frame(), out)
	h.returnReply(t, replyTo(req1, backendA, h.cfg.SNAT, nat1), client1, 0x4242, hop1MAC)

	for _, c := range []struct {
		idx  uint32
		want uint64
	}{{backendA.idx, 1}, {backendA2.idx, 1}} {
		var perCPU []IcmplbBackendCounters
		if err := h.objs.BackendStats.Lookup(c.idx, &perCPU); err != nil {
			t.Fatal(err)
		}
		var req, rep uint64
		for _, v := range perCPU {
			req, rep = req+v.Requests, rep+v.Replies
		}
		if req != c.want || rep != c.want {
			t.Errorf("slot %d: %d requests, %d replies; want %d each", c.idx, req, rep, c.want)
		}
	}
	for table := range uint32(2) {
		if n := svcCount(t, h, table, IcmplbReasonREASON_REQUEST_FORWARDED); n != 1 {
			t.Errorf("service of table %d counted %d forwarded requests, want 1", table, n)
		}
	}
}

// A table may only lead to its own service's slots, and a table with no
// backend drops: neither can send a request to another service's backend.
func TestServiceTableGuards(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	table := addService2(t, h, backendA.idx) // service 1's slot
	req := echoRequest(client1, hop1MAC, 0x77, 1)
	req.dst = vip2
	h.run(t, req.frame(), xdpDrop, IcmplbReasonREASON_NO_BACKEND)
	for s := range h.cfg.MaglevSize {
		if err := table.Put(s, ^uint32(0)); err != nil {
			t.Fatal(err)
		}
	}
	h.run(t, req.frame(), xdpDrop, IcmplbReasonREASON_NO_BACKEND)
	if n := svcCount(t, h, 1, IcmplbReasonREASON_NO_BACKEND); n != 2 {
		t.Errorf("service 2 counted %d no_backend drops, want 2", n)
	}
	if n := svcCount(t, h, 0, IcmplbReasonREASON_NO_BACKEND); n != 0 {
		t.Errorf("service 1 counted %d no_backend drops of service 2's requests", n)
	}
	// A VIP removed from services: its requests are the kernel's.
	if err := h.objs.Services.Delete(Addr(vip2)); err != nil {
		t.Fatal(err)
	}
	h.requireUntouched(t, req.frame(), xdpPass, IcmplbReasonREASON_NOT_VIP)
}

// A service with no healthy backend, set to pass: its requests go to the
// kernel untouched, counted as all_down for it.
func TestServiceAllDownPass(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	// A known session, whose service is cached in its forward entry.
	h.forward(t, echoRequest(client1, hop1MAC, 0x32, 1))
	h.forward(t, echoRequest(client1, hop1MAC, 0x32, 2))
	if err := h.objs.Services.Put(Addr(vip), IcmplbService{Snat: Addr(h.cfg.SNAT), Table: 0,
		Flags: IcmplbServiceFlagsSERVICE_F_PASS}); err != nil {
		t.Fatal(err)
	}
	h.requireUntouched(t, echoRequest(client1, hop1MAC, 0x31, 1).frame(), xdpPass, IcmplbReasonREASON_ALL_DOWN)
	h.requireUntouched(t, echoRequest(client1, hop1MAC, 0x32, 3).frame(), xdpPass, IcmplbReasonREASON_ALL_DOWN)
	if n := svcCount(t, h, 0, IcmplbReasonREASON_ALL_DOWN); n != 2 {
		t.Errorf("service counted %d all_down requests, want 2", n)
	}
}

// A known session caches its service (SNAT address, table) in its forward
// entry; a change of the service, marked by its new generation, reaches
// the session's next request.
func TestKnownSessionSeesServiceChange(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	req := echoRequest(client1, hop1MAC, 0x33, 1)
	h.forward(t, req)
	req.seq = 2
	h.forward(t, req)
	newSNAT := netip.MustParseAddr("10.0.0.77")
	h.addService(t, vip, newSNAT, 0)
	req.seq = 3
	out := h.run(t, req.frame(), xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED)
	if src := netip.AddrFrom4([4]byte(out[26:30])); src != newSNAT {
		t.Fatalf("the known session's request left from %v after its service's SNAT became %v", src, newSNAT)
	}

	// The ring holds one SNAT address: while requests 1 and 2 from the
	// old one await replies, request 3 waits in the inflight map, and
	// each reply is returned only from the address its request left from.
	natID := binary.BigEndian.Uint16(out[38:40])
	if _, _, ok := h.ringOf(t, backendA, natID, 3); ok {
		t.Fatal("request 3 from the new SNAT address took a ring slot while the ring awaits replies to the old one")
	}
	if _, ok := h.overflowed(t, backendA, natID, 3); !ok {
		t.Fatal("request 3 from the new SNAT address is neither in the ring nor in the inflight map")
	}
	third, first, second := req, req, req
	first.seq, second.seq = 1, 2
	h.requireUntouched(t, replyTo(third, backendA, vip, natID).frame(), xdpPass, IcmplbReasonREASON_REPLY_MISMATCH)
	h.requireUntouched(t, replyTo(first, backendA, newSNAT, natID).frame(), xdpPass, IcmplbReasonREASON_REPLY_MISMATCH)
	h.returnReply(t, replyTo(first, backendA, vip, natID), client1, 0x33, hop1MAC)
	h.returnReply(t, replyTo(third, backendA, newSNAT, natID), client1, 0x33, hop1MAC)
	h.returnReply(t, replyTo(second, backendA, vip, natID), client1, 0x33, hop1MAC)

	// The ring awaits nothing: it takes the new address.
	req.seq = 4
	h.run(t, req.frame(), xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED)
	rv, _, ok := h.ringOf(t, backendA, natID, 4)
	if !ok || rv.Snat != Addr(newSNAT) {
		t.Fatalf("request 4, the ring empty: in the ring %v, the ring's SNAT %v; want it there, from %v", ok, rv.Snat, newSNAT)
	}
	h.returnReply(t, replyTo(req, backendA, newSNAT, natID), client1, 0x33, hop1MAC)
}

// A session whose backend becomes unhealthy moves to another backend: the
// move is counted on the backend it left, the reply to its request still
// on the way from there reaches the client, and its old NAT id is freed
// once no reply is awaited.
func TestSessionMovesOffUnhealthyBackend(t *testing.T) {
	h := newHarness(t, testConfig(vip))
	h.setBackend(t, backendA, backendReady)
	h.setBackend(t, backendB, backendReady)
	h.pointMaglev(t, backendA.idx)
	req := echoRequest(client1, hop1MAC, 0x51, 1)
	be, nat := h.forward(t, req)
	if be != backendA {
		t.Fatalf("first request went to %v", be.addr)
	}
	// As the agent ejects A: out of the table first, then unhealthy.
	h.pointMaglev(t, backendB.idx)
	h.setBackend(t, backendA, backendReady&^IcmplbBackendFlagsBACKEND_F_HEALTHY)
	req.seq = 2
	if be2, _ := h.forward(t, req); be2 != backendB {
		t.Fatalf("the session stayed on %v, which is unhealthy", be2.addr)
	}
	var perCPU []IcmplbBackendCounters
	if err := h.objs.BackendStats.Lookup(backendA.idx, &perCPU); err != nil {
		t.Fatal(err)
	}
	var moved uint64
	for _, c := range perCPU {
		moved += c.Moved
	}
	if moved != 1 {
		t.Errorf("backend A counted %d sessions moved off it, want 1", moved)
	}
	var rv IcmplbRevVal
	oldKey := IcmplbRevKey{Backend: Addr(backendA.addr), NatId: Net16(nat)}
	if err := h.objs.CtRev.Lookup(oldKey, &rv); err != nil || rv.Flags&IcmplbRevFlagsREV_F_RETIRED == 0 {
		t.Errorf("the old NAT id %#04x at A: %+v, %v; want it retired, awaiting the reply of sequence 1", nat, rv, err)
	}
	first := req
	first.seq = 1
	h.returnReply(t, replyTo(first, backendA, vip, nat), client1, 0x51, hop1MAC)
	h.sweep(t)
	if err := h.objs.CtRev.Lookup(oldKey, &rv); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("the old NAT id %#04x at A is still held after its reply: %+v, %v", nat, rv, err)
	}
	// An unhealthy backend still in a table (a racing update) gets no
	// new session.
	h.pointMaglev(t, backendA.idx)
	h.run(t, echoRequest(client2, hop2MAC, 0x52, 1).frame(), xdpDrop, IcmplbReasonREASON_NO_BACKEND)
}

// A reply to the agent's probe (echo id PROBE_ECHO_ID) to a SNAT address is
// the kernel's, even when a session's request with that id and sequence is
// awaited: no NAT id is ever PROBE_ECHO_ID.
func TestProbeReplyPassed(t *testing.T) {
	h := readyHarness(t, testConfig(vip))
	req := echoRequest(client1, hop1MAC, uint16(IcmplbLayoutPROBE_ECHO_ID), 1)
	_, nat := h.forward(t, req)
	if nat == uint16(IcmplbLayoutPROBE_ECHO_ID) {
		t.Fatal("a session got the probes' id as its NAT id")
	}
	probe := replyTo(req, backendA, h.cfg.SNAT, uint16(IcmplbLayoutPROBE_ECHO_ID))
	h.requireUntouched(t, probe.frame(), xdpPass, IcmplbReasonREASON_PROBE_REPLY)
	// The session's own reply is still returned.
	h.returnReply(t, replyTo(req, backendA, h.cfg.SNAT, nat), client1, uint16(IcmplbLayoutPROBE_ECHO_ID), hop1MAC)
}
