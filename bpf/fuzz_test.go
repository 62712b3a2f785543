// SPDX-License-Identifier: MIT

package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// FuzzXDP feeds sequences of arbitrary frames through the XDP program with
// BPF_PROG_TEST_RUN and checks what must hold for any correct balancer:
//
//   - XDP_PASS leaves the frame byte for byte as it came, length included;
//   - XDP_DROP is allowed; XDP_ABORTED and any other verdict are not;
//   - every run counts exactly one reason in the stats map, with the verdict
//     reasonTable gives it: XDP_TX goes with REQUEST_FORWARDED,
//     REPLY_RETURNED or ERROR_RETURNED and no other verdict does;
//   - XDP_TX takes only a valid frame (Ethernet/IPv4 without options or
//     fragmentation, both checksums verifying, TTL above 0; or Ethernet/IPv6
//     with ICMPv6 right behind its header, the payload length within the
//     frame, the checksum verifying with its pseudo-header, hop limit above
//     0: an echo request to its family's VIP from an address a client can
//     have, an echo reply or an ICMP error to its family's SNAT address) and
//     leaves a valid frame of the same length in which only the fields the
//     NAT owns differ: MACs, IP addresses (and IPv4 checksum), echo id and
//     ICMP checksum (of an error: its ICMPv6 checksum, and its quote's
//     addresses, IPv4 checksum, ICMP checksum and echo id). The source MAC
//     is a valid unicast address;
//   - a forwarded request goes from the SNAT address of its family to a
//     backend of its family that is up, to its MAC, with a NAT id no other
//     session holds at that backend, and a session stays on its backend and
//     NAT id while that backend stays up;
//   - a returned reply answers a request of its family this input had
//     forwarded (same backend, NAT id and sequence number), came from the
//     MAC that request went to, and goes from the VIP to that request's
//     client: its address, echo id and MAC;
//   - a returned error quotes a request of its family this input had
//     forwarded, came from the MAC that request went to, and goes from the
//     VIP to that request's client, quoting the request as the client sent
//     it.
//
// The program's state (conntrack, requests in flight) lives for the whole
// input, so an input is a script (encoding below). Replies are
// built from what the program really sent, so the fuzzer reaches the reply
// path without guessing NAT ids.
//
// The seed corpus in testdata/fuzz/FuzzXDP runs with every `go test`;
// `make fuzz` fuzzes (root). TestFuzzSeedCorpus keeps the seeds in step with
// fuzzSeeds.
func FuzzXDP(f *testing.F) {
	requireRoot(f)
	hs := newFuzzHarnesses(f)
	f.Fuzz(func(t *testing.T, data []byte) { hs.play(t, data) })
}

// fuzzHarnesses has one loaded program per SNAT choice of the header: a
// program is loaded once per fuzzing process and its state reset per input.
type fuzzHarnesses [2]*fuzzHarness

func newFuzzHarnesses(tb testing.TB) *fuzzHarnesses {
	return &fuzzHarnesses{newFuzzHarness(tb, [2]netip.Addr{vip, vip6}), newFuzzHarness(tb, [2]netip.Addr{snatAlt, snat6Alt})}
}

// play runs one fuzz input and returns how often each reason was counted.
func (hs *fuzzHarnesses) play(t *testing.T, data []byte) map[IcmplbReason]int {
	r := &fuzzRun{
		t:        t,
		flags:    [2][len(fuzzBackends)]IcmplbBackendFlags{fuzzAllUp, fuzzAllUp},
		sessions: map[fuzzSession]fuzzPin{},
		natOwner: map[fuzzNAT]fuzzSession{},
		seen:     map[IcmplbReason]int{},
	}
	if len(data) < fuzzHeaderLen {
		return r.seen
	}
	r.fh = hs[data[0]&fuzzSNATAlt]
	r.fh.reset(t, binary.BigEndian.Uint16(data[1:]), data[3])
	r.play(data[fuzzHeaderLen:])
	return r.seen
}

// Encoding of a fuzz input:
//
//	header  flags(1) natNext(2) natKey(1)
//	        flags bit 0: SNAT is 10.0.0.10 and fd00:1cb::10 (else each
//	        family's VIP); natNext starts every backend's NAT id counter,
//	        natKey seeds its permutation
//	ops     op(1) args; kind = op & 3, option bits above
//	  0 frame    len(2) bytes(len) pad(2) fill(1)
//	             a raw frame: bytes, then pad bytes of fill
//	  1 reply    sel(1) off(2) xor(1) the backend's reply to forwarded
//	             request sel (modulo their number) with byte off xored;
//	             with fuzzAsError, an ICMP error about it from the
//	             backend's next hop instead; of the request's family
//	  2 backend  b(1)                 backend (b&3)%3 gets flags (b>>2)&7,
//	             in the IPv4 service if (b>>5)&3 is 1, in the IPv6 one if
//	             it is 2, else in both
//	  3 resend   sel(1) seq(2)        forwarded request sel's original frame
//	             again, with sequence number seq
//
// Options: fuzzFix (frame, reply) recomputes both checksums before the run,
// so mutations get past checksum verification; then fuzzBadIP and
// fuzzBadICMP (all kinds) spoil one, so that one bit of the input turns a
// valid frame into one failing exactly one check. IPv6 has no header
// checksum: there fuzzBadIP computes the ICMPv6 checksum as ICMPv4 would,
// without the pseudo-header, the likeliest mistake of a sender. fuzzFix
// finds an ICMPv6 message behind hop-by-hop, routing, destination options
// and fragment headers too, so that a frame the program must pass for its
// extension header is otherwise valid. fuzzAsError (reply) sends a host
// (ICMPv6: address) unreachable, or with fuzzTimeExceeded a TTL (hop
// limit) exceeded, with fuzzFragNeeded a fragmentation needed (packet too
// big). fuzzNewHop (resend) sends from another MAC, fuzzNextID (resend)
// with the echo id plus one. Padding keeps large frames small in the
// input: the fuzzer mutates bytes at random, and should mostly hit headers
// and operations.
const (
	fuzzHeaderLen = 4
	fuzzSNATAlt   = 0x01

	fuzzOpFrame   = 0
	fuzzOpReply   = 1
	fuzzOpBackend = 2
	fuzzOpResend  = 3

	fuzzFix     = 0x80
	fuzzNewHop  = 0x80
	fuzzNextID  = 0x40
	fuzzBadICMP = 0x20
	fuzzBadIP   = 0x10

	fuzzAsError      = 0x40
	fuzzTimeExceeded = 0x08
	fuzzFragNeeded   = 0x04

	// Families a backend op changes, (b>>5)&3.
	fuzzOnly4 = 1
	fuzzOnly6 = 2

	// Bounds on one input's work, so that an execution stays short.
	fuzzMaxOps = 64
)

// fuzzBackends and fuzzBackends6 are the backends of the IPv4 and the IPv6
// service every input starts with, all up, each behind a third of its
// service's Maglev slots. Backend i of both families is one dual-stack
// host: the same MAC, so a reply of one family from the other's next hop
// passes every MAC check and only addresses tell them apart.
var (
	fuzzBackends  = [...]backendInfo{backendA, backendB, backendC}
	fuzzBackends6 = [len(fuzzBackends)]backendInfo{
		{idx: 10, addr: netip.MustParseAddr("fd00:1cb::b"), mac: backendA.mac},
		{idx: 11, addr: netip.MustParseAddr("fd00:1cb::c"), mac: backendB.mac},
		{idx: 12, addr: netip.MustParseAddr("fd00:1cb::d"), mac: backendC.mac},
	}
	fuzzAllUp = [len(fuzzBackends)]IcmplbBackendFlags{backendReady, backendReady, backendReady}
)

// fuzzFamily is where an address family's fields sit in an untagged frame
// and which backends serve it; its index (0 IPv4, 1 IPv6) picks its service,
// table and flags everywhere else.
type fuzzFamily struct {
	i         int
	name      string
	src, dst  int // offsets of the IP addresses
	icmp      int // offset of the ICMP message
	backends  *[len(fuzzBackends)]backendInfo
	echoTypes [2]byte // request, reply
}

var fuzzFamilies = [2]fuzzFamily{
	{i: 0, name: "IPv4", src: 26, dst: 30, icmp: 34, backends: &fuzzBackends, echoTypes: [2]byte{8, 0}},
	{i: 1, name: "IPv6", src: 22, dst: 38, icmp: 54, backends: &fuzzBackends6, echoTypes: [2]byte{128, 129}},
}

func (fam *fuzzFamily) addr(f []byte, off int) netip.Addr {
	if fam.i == 1 {
		return addr6At(f, off)
	}
	return addrAt(f, off)
}

type fuzzHarness struct {
	*harness
	// vips, snats and tables are the services' of each family.
	vips, snats [2]netip.Addr
	tables      [2]*ebpf.Map
	keys        []uint32
	vals        []uint64
	cpus        int
}

func newFuzzHarness(f testing.TB, snats [2]netip.Addr) *fuzzHarness {
	cfg := testConfig(snats[0])
	// Larger than any input's sessions, so that no LRU eviction makes a
	// run depend on earlier inputs.
	cfg.ConntrackSize = 4096
	cfg.InflightSize = 4096
	h := newHarness(f, cfg)
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		f.Fatal(err)
	}
	fh := &fuzzHarness{harness: h, vips: [2]netip.Addr{vip, vip6}, snats: snats, cpus: cpus}
	table6, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: cfg.MaglevSize})
	if err != nil {
		f.Fatalf("create the IPv6 Maglev table: %v", err)
	}
	f.Cleanup(func() { table6.Close() })
	if err := h.objs.MaglevTables.Put(uint32(1), table6); err != nil {
		f.Fatalf("maglev_tables[1]: %v", err)
	}
	h.addService(f, vip6, snats[1], 1)
	fh.tables = [2]*ebpf.Map{h.table, table6}
	for r := range IcmplbReasonREASON_MAX {
		fh.keys = append(fh.keys, uint32(r))
	}
	fh.vals = make([]uint64, len(fh.keys)*cpus)
	return fh
}

// reset gives every input the same start: no sessions, no requests in
// flight, all backends up.
func (fh *fuzzHarness) reset(t *testing.T, natNext uint16, natKey byte) {
	t.Helper()
	for _, m := range []*ebpf.Map{fh.objs.CtFwd, fh.objs.CtRev, fh.objs.Inflight} {
		clearMap(t, m)
	}
	for fam := range fuzzFamilies {
		fh.pointMaglevActive(t, fam, fuzzAllUp)
		for i, be := range fuzzFamilies[fam].backends {
			fh.setFlags(t, fam, i, backendReady)
			pool := IcmplbNatPool{Next: uint32(natNext)}
			for k := range pool.Key {
				pool.Key[k] = (uint32(natKey)+1)*0x9e3779b1 ^ uint32(k)*0x85ebca6b ^ be.idx
			}
			if err := fh.objs.NatPools.Put(be.idx, pool); err != nil {
				t.Fatalf("nat_pools[%d]: %v", be.idx, err)
			}
		}
	}
}

// pointMaglevActive spreads the Maglev slots of family fam's service over
// its active backends, as the agent does, so that a session whose backend
// left can move.
func (fh *fuzzHarness) pointMaglevActive(t testing.TB, fam int, flags [len(fuzzBackends)]IcmplbBackendFlags) {
	t.Helper()
	var idxs []uint32
	for i, be := range fuzzFamilies[fam].backends {
		if flags[i]&backendActive != 0 {
			idxs = append(idxs, be.idx)
		}
	}
	if len(idxs) == 0 {
		return
	}
	for slot := range fh.cfg.MaglevSize {
		if err := fh.tables[fam].Put(slot, idxs[int(slot)%len(idxs)]); err != nil {
			t.Fatalf("maglev table %d[%d]: %v", fam, slot, err)
		}
	}
}

func (fh *fuzzHarness) setFlags(t *testing.T, fam, i int, flags IcmplbBackendFlags) {
	t.Helper()
	be := fuzzFamilies[fam].backends[i]
	v := IcmplbBackend{Addr: Addr(be.addr), Mac: be.mac, Flags: flags, Vip: Addr(fh.vips[fam])}
	if err := fh.objs.Backends.Put(be.idx, v); err != nil {
		t.Fatalf("backends[%d]: %v", be.idx, err)
	}
	// As the agent does: the address is indexed while the backend is active.
	if flags&backendActive != 0 {
		if err := fh.objs.BackendAddrs.Put(Addr(be.addr), be.idx); err != nil {
			t.Fatalf("backend_addrs[%v]: %v", be.addr, err)
		}
	} else if err := fh.objs.BackendAddrs.Delete(Addr(be.addr)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("delete backend_addrs[%v]: %v", be.addr, err)
	}
}

func clearMap(t *testing.T, m *ebpf.Map) {
	t.Helper()
	var keys [][]byte
	var cur []byte
	for {
		next := make([]byte, m.KeySize())
		var err error
		if cur == nil {
			err = m.NextKey(nil, next)
		} else {
			err = m.NextKey(cur, next)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			t.Fatalf("clear %s: %v", m, err)
		}
		keys = append(keys, next)
		cur = next
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("clear %s: %v", m, err)
		}
	}
}

// stats sums the per-CPU reason counters in one batch lookup: the fuzzer
// reads them twice per frame.
func (fh *fuzzHarness) stats(t *testing.T) []uint64 {
	t.Helper()
	n, err := fh.objs.Stats.BatchLookup(new(ebpf.MapBatchCursor), fh.keys, fh.vals, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("stats batch lookup: %v", err)
	}
	if n != len(fh.keys) {
		t.Fatalf("stats batch lookup returned %d of %d reasons", n, len(fh.keys))
	}
	sums := make([]uint64, len(fh.keys))
	for i, k := range fh.keys {
		for c := range fh.cpus {
			sums[k] += fh.vals[i*fh.cpus+c]
		}
	}
	return sums
}

type fuzzSession struct {
	client netip.Addr
	echoID uint16
}

type fuzzNAT struct {
	backend uint32
	natID   uint16
}

// fuzzPin is where a session's last forwarded request went.
type fuzzPin struct {
	backend int // index into its family's backends
	natID   uint16
	step    int
}

// fuzzForward is a request the program forwarded (XDP_TX).
type fuzzForward struct {
	step    int
	fam     *fuzzFamily
	session fuzzSession
	hop     mac // the request's source MAC: where its reply must go
	backend int // index into fam.backends
	natID   uint16
	seq     uint16
	in, out []byte
}

type fuzzRun struct {
	t        *testing.T
	fh       *fuzzHarness
	flags    [2][len(fuzzBackends)]IcmplbBackendFlags // per family
	changed  [2][len(fuzzBackends)]int                // step of each backend's last flag change
	step     int
	forwards []fuzzForward
	sessions map[fuzzSession]fuzzPin
	natOwner map[fuzzNAT]fuzzSession
	seen     map[IcmplbReason]int
	history  []string
}

func (r *fuzzRun) play(ops []byte) {
	take := func(n int) ([]byte, bool) {
		if len(ops) < n {
			return nil, false
		}
		b := ops[:n]
		ops = ops[n:]
		return b, true
	}
	for range fuzzMaxOps {
		op, ok := take(1)
		if !ok {
			return
		}
		r.step++
		switch kind := op[0] & 3; kind {
		case fuzzOpFrame:
			n, ok := take(2)
			if !ok {
				return
			}
			b, _ := take(min(int(binary.BigEndian.Uint16(n)), len(ops)))
			f := bytes.Clone(b)
			if pad, ok := take(3); ok {
				f = append(f, bytes.Repeat(pad[2:], int(binary.BigEndian.Uint16(pad)))...)
			}
			fuzzChecksums(f, op[0])
			r.run(kind, "frame", f)
		case fuzzOpReply:
			a, ok := take(4)
			if !ok {
				return
			}
			if len(r.forwards) == 0 {
				continue
			}
			fw := r.forwards[int(a[0])%len(r.forwards)]
			reply, errorAbout := fuzzReplyTo, fuzzErrorAbout
			if fw.fam.i == 1 {
				reply, errorAbout = fuzzReplyTo6, fuzzErrorAbout6
			}
			f, what := reply(fw.out), "reply"
			if op[0]&fuzzAsError != 0 {
				f, what = errorAbout(fw.out, op[0]), "error"
			}
			if off := int(binary.BigEndian.Uint16(a[1:])); off < len(f) {
				f[off] ^= a[3]
			}
			fuzzChecksums(f, op[0])
			r.run(kind, fmt.Sprintf("%s about step %d (byte %d ^ %#02x)",
				what, fw.step, binary.BigEndian.Uint16(a[1:]), a[3]), f)
		case fuzzOpBackend:
			a, ok := take(1)
			if !ok {
				return
			}
			i, flags := int(a[0]&3)%len(fuzzBackends), IcmplbBackendFlags(a[0]>>2)&backendReady
			for fam := range fuzzFamilies {
				if only := int(a[0]>>5) & 3; only == fuzzOnly4 && fam != 0 || only == fuzzOnly6 && fam != 1 {
					continue
				}
				be := fuzzFamilies[fam].backends[i]
				r.history = append(r.history, fmt.Sprintf("step %d: backend %v flags %#x", r.step, be.addr, flags))
				if r.flags[fam][i] != flags {
					r.flags[fam][i] = flags
					r.changed[fam][i] = r.step
				}
				r.fh.setFlags(r.t, fam, i, flags)
				r.fh.pointMaglevActive(r.t, fam, r.flags[fam])
			}
		case fuzzOpResend:
			a, ok := take(3)
			if !ok {
				return
			}
			if len(r.forwards) == 0 {
				continue
			}
			fw := r.forwards[int(a[0])%len(r.forwards)]
			f := bytes.Clone(fw.in)
			copy(f[fw.fam.icmp+6:], a[1:3])
			if op[0]&fuzzNewHop != 0 {
				f[11] ^= 0x80
			}
			if op[0]&fuzzNextID != 0 {
				binary.BigEndian.PutUint16(f[fw.fam.icmp+4:], fw.session.echoID+1)
			}
			fuzzChecksums(f, fuzzFix|op[0]&(fuzzBadIP|fuzzBadICMP))
			r.run(kind, fmt.Sprintf("resend of step %d", fw.step), f)
		}
	}
}

// fuzzReplyTo is the backend's answer to a request the program forwarded:
// back from the backend's MAC and address, with the same echo data.
func fuzzReplyTo(req []byte) []byte {
	f := bytes.Clone(req)
	copy(f[0:6], req[6:12])
	copy(f[6:12], req[0:6])
	copy(f[26:30], req[30:34])
	copy(f[30:34], req[26:30])
	f[22] = 64
	f[34] = 0
	fuzzChecksums(f, fuzzFix)
	return f
}

// fuzzErrorAbout is the ICMP error a router behind the backend's MAC sends
// about a request the program forwarded, quoting as much of it as RFC 1812
// allows in 576 bytes.
func fuzzErrorAbout(req []byte, op byte) []byte {
	typ, code := byte(3), byte(1)
	switch {
	case op&fuzzTimeExceeded != 0:
		typ, code = 11, 0
	case op&fuzzFragNeeded != 0:
		typ, code = 3, 4
	}
	quote := req[14:]
	if tot := int(binary.BigEndian.Uint16(req[16:])); tot < len(quote) {
		quote = quote[:tot]
	}
	quote = quote[:min(len(quote), 576-20-8)]
	f := make([]byte, 14+20+8, 14+20+8+len(quote))
	copy(f[0:6], req[6:12])
	copy(f[6:12], req[0:6])
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	f[14] = 0x45
	binary.BigEndian.PutUint16(f[16:], uint16(20+8+len(quote)))
	f[22], f[23] = 64, unix.IPPROTO_ICMP
	copy(f[26:30], router.AsSlice())
	copy(f[30:34], req[26:30])
	f[34], f[35] = typ, code
	if code == 4 {
		binary.BigEndian.PutUint16(f[40:], 1400)
	}
	f = append(f, quote...)
	fuzzChecksums(f, fuzzFix)
	return f
}

// fuzzReplyTo6 is fuzzReplyTo for an ICMPv6 request.
func fuzzReplyTo6(req []byte) []byte {
	f := bytes.Clone(req)
	copy(f[0:6], req[6:12])
	copy(f[6:12], req[0:6])
	copy(f[22:38], req[38:54])
	copy(f[38:54], req[22:38])
	f[21] = 64
	f[54] = 129
	fuzzChecksums(f, fuzzFix)
	return f
}

// fuzzErrorAbout6 is fuzzErrorAbout for an ICMPv6 request: an error from
// router6 quoting as much of it as RFC 4443 2.4 allows in the minimum MTU.
func fuzzErrorAbout6(req []byte, op byte) []byte {
	typ, code, param := byte(1), byte(3), uint32(0)
	switch {
	case op&fuzzTimeExceeded != 0:
		typ, code = 3, 0
	case op&fuzzFragNeeded != 0:
		typ, code, param = 2, 0, 1280
	}
	quote := req[14:]
	if n := 40 + int(binary.BigEndian.Uint16(req[18:])); n < len(quote) {
		quote = quote[:n]
	}
	quote = quote[:min(len(quote), 1280-40-8)]
	f := make([]byte, 14+40+8, 14+40+8+len(quote))
	copy(f[0:6], req[6:12])
	copy(f[6:12], req[0:6])
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	f[14] = 0x60
	binary.BigEndian.PutUint16(f[18:], uint16(8+len(quote)))
	f[20], f[21] = unix.IPPROTO_ICMPV6, 64
	r := router6.As16()
	copy(f[22:38], r[:])
	copy(f[38:54], req[22:38])
	f[54], f[55] = typ, code
	binary.BigEndian.PutUint32(f[58:], param)
	f = append(f, quote...)
	fuzzChecksums(f, fuzzFix)
	return f
}

// fuzzChecksums applies the checksum options of op to f in place: fuzzFix
// recomputes the IPv4 header and ICMP checksums, or the ICMPv6 checksum
// (after up to two VLAN tags) as far as the frame's own header lengths
// reach, then fuzzBadIP and fuzzBadICMP spoil them (see the encoding).
func fuzzChecksums(f []byte, op byte) {
	off := 12
	for range 2 {
		if off+2 > len(f) {
			return
		}
		if et := binary.BigEndian.Uint16(f[off:]); et != 0x8100 && et != 0x88a8 {
			break
		}
		off += 4
	}
	if off+2 > len(f) {
		return
	}
	switch binary.BigEndian.Uint16(f[off:]) {
	case 0x0800:
		fuzzChecksums4(f[off+2:], op)
	case 0x86dd:
		fuzzChecksums6(f[off+2:], op)
	}
}

func fuzzChecksums4(ip []byte, op byte) {
	if len(ip) < 20 {
		return
	}
	hlen := int(ip[0]&0xf) * 4
	if hlen < 20 || hlen > len(ip) {
		return
	}
	if op&fuzzFix != 0 {
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], checksum(ip[:hlen]))
	}
	if op&fuzzBadIP != 0 {
		ip[11] ^= 1
	}
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if ip[9] != unix.IPPROTO_ICMP || tot < hlen+4 || tot > len(ip) {
		return
	}
	msg := ip[hlen:tot]
	if op&fuzzFix != 0 {
		msg[2], msg[3] = 0, 0
		binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	}
	if op&fuzzBadICMP != 0 {
		msg[3] ^= 1
	}
}

func fuzzChecksums6(ip []byte, op byte) {
	if len(ip) < 40 {
		return
	}
	end := 40 + int(binary.BigEndian.Uint16(ip[4:]))
	if end > len(ip) {
		return
	}
	nh, off := ip[6], 40
walk:
	for range 4 {
		switch nh {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if off+2 > end {
				return
			}
			nh, off = ip[off], off+(int(ip[off+1])+1)*8
		case 44: // fragment
			if off+8 > end {
				return
			}
			nh, off = ip[off], off+8
		default:
			break walk
		}
	}
	if nh != unix.IPPROTO_ICMPV6 || off+4 > end {
		return
	}
	msg := ip[off:end]
	if op&fuzzFix != 0 {
		msg[2], msg[3] = 0, 0
		binary.BigEndian.PutUint16(msg[2:], checksum6(addr6At(ip, 8), addr6At(ip, 24), msg))
	}
	if op&fuzzBadIP != 0 {
		msg[2], msg[3] = 0, 0
		binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	}
	if op&fuzzBadICMP != 0 {
		msg[3] ^= 1
	}
}

// xdpLinearMax is the most BPF_PROG_TEST_RUN puts in the linear part of an
// XDP frame (a page less XDP headroom and skb_shared_info); longer input goes
// on in fragments, which the program does not read.
const xdpLinearMax = 4096 - 256 - 320

func (r *fuzzRun) run(kind byte, what string, in []byte) {
	t := r.t
	t.Helper()
	before := r.fh.stats(t)
	opts := ebpf.RunOptions{Data: bytes.Clone(in), DataOut: make([]byte, len(in)+4096)}
	verdict, err := r.fh.objs.Icmplb.Run(&opts)
	after := r.fh.stats(t)
	var moved uint64
	reason := IcmplbReasonREASON_MAX
	for i := range after {
		if d := after[i] - before[i]; d != 0 {
			moved += d
			reason = IcmplbReason(i)
		}
	}
	if err != nil {
		// The kernel refuses input shorter than an Ethernet header.
		if errors.Is(err, unix.EINVAL) && len(in) < 14 {
			r.history = append(r.history, fmt.Sprintf("step %d: %s, %d bytes: refused by the kernel", r.step, what, len(in)))
			if moved != 0 {
				r.fail(what, in, nil, "counters moved by %d for a frame the kernel refused to run", moved)
			}
			return
		}
		r.fail(what, in, nil, "BPF_PROG_TEST_RUN: %v", err)
	}
	out := opts.DataOut
	fuzzSignal(kind, len(in) >= 14 && binary.BigEndian.Uint16(in[12:]) == 0x86dd, verdict, reason)
	r.seen[reason]++
	r.history = append(r.history, fmt.Sprintf("step %d: %s, %d bytes: verdict %s, reason %d",
		r.step, what, len(in), verdictName(verdict), reason))

	if moved != 1 {
		r.fail(what, in, out, "verdict %s moved the reason counters by %d in all, want 1", verdictName(verdict), moved)
	}
	if reason < IcmplbReasonREASON_MAX && reasonTable[reason].verdict != verdict {
		r.fail(what, in, out, "verdict %s counted as reason %d (%s), which comes with %s",
			verdictName(verdict), reason, reasonTable[reason].name, verdictName(reasonTable[reason].verdict))
	}
	tx := reason == IcmplbReasonREASON_REQUEST_FORWARDED || reason == IcmplbReasonREASON_REPLY_RETURNED ||
		reason == IcmplbReasonREASON_ERROR_RETURNED
	switch verdict {
	case xdpPass:
		if !bytes.Equal(in, out) {
			r.fail(what, in, out, "XDP_PASS changed the frame:\n%s", diffFrames(in, out))
		}
	case xdpDrop:
	case xdpTX:
		if !tx {
			r.fail(what, in, out, "XDP_TX counted as reason %d, want REQUEST_FORWARDED, REPLY_RETURNED or ERROR_RETURNED", reason)
		}
		if msg := r.checkTX(in, out, reason); msg != "" {
			r.fail(what, in, out, "%s", msg)
		}
		return
	default:
		r.fail(what, in, out, "verdict %s (reason %d), want XDP_PASS, XDP_DROP or XDP_TX", verdictName(verdict), reason)
	}
	if tx {
		r.fail(what, in, out, "verdict %s counted as reason %d, which only XDP_TX may count", verdictName(verdict), reason)
	}
}

func verdictName(v uint32) string {
	switch v {
	case 0:
		return "XDP_ABORTED"
	case xdpDrop:
		return "XDP_DROP"
	case xdpPass:
		return "XDP_PASS"
	case xdpTX:
		return "XDP_TX"
	case 4:
		return "XDP_REDIRECT"
	}
	return fmt.Sprintf("verdict %d", v)
}

// fuzzOwned marks the offsets of a frame a rewrite may change, given as
// half-open ranges.
func fuzzOwned(ranges ...[2]int) []bool {
	owned := make([]bool, ranges[len(ranges)-1][1])
	for _, r := range ranges {
		for i := r[0]; i < r[1]; i++ {
			owned[i] = true
		}
	}
	return owned
}

// The offsets a NAT rewrite may change. IPv4: MACs, IP checksum and
// addresses, ICMP checksum and echo id. IPv6: MACs, addresses, ICMPv6
// checksum and echo id.
var (
	fuzzNATOwned  = fuzzOwned([2]int{0, 12}, [2]int{24, 34}, [2]int{36, 40})
	fuzzNATOwned6 = fuzzOwned([2]int{0, 12}, [2]int{22, 54}, [2]int{56, 60})
)

// changedUnowned returns the first offset at which out differs from in
// outside owned, or -1.
func changedUnowned(in, out []byte, owned []bool) int {
	for i := range out {
		if in[i] != out[i] && (i >= len(owned) || !owned[i]) {
			return i
		}
	}
	return -1
}

func addrAt(f []byte, off int) netip.Addr { return netip.AddrFrom4([4]byte(f[off : off+4])) }

// addr6At keeps an IPv4-mapped address in its IPv6 form: on the wire of an
// IPv6 frame it is not the IPv4 address it maps.
func addr6At(f []byte, off int) netip.Addr { return netip.AddrFrom16([16]byte(f[off : off+16])) }

func macAt(f []byte, off int) mac { return mac(f[off : off+6]) }

func validUnicast(m mac) bool { return m[0]&1 == 0 && m != mac{} }

// bogusSource: addresses no client's request can come from (RFC 1122
// 3.2.1.3, RFC 4291 2.5 and the balancer's own), to which a reply would go
// astray. An IPv4-mapped address in an IPv6 header is one no IPv6 host
// sends from (RFC 4038 4.2).
func (r *fuzzRun) bogusSource(a netip.Addr) bool {
	if slices.Contains(r.fh.vips[:], a) || slices.Contains(r.fh.snats[:], a) {
		return true
	}
	if a.Is4() {
		b := a.As4()
		return b[0] == 0 || b[0] == 127 || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	return a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.Is4In6()
}

// checkTX returns what is wrong with sending in as out, counted as reason,
// or "".
func (r *fuzzRun) checkTX(in, out []byte, reason IcmplbReason) string {
	if len(out) != len(in) {
		return fmt.Sprintf("output is %d bytes, input %d", len(out), len(in))
	}
	if len(in) < 14 {
		return fmt.Sprintf("sent a %d-byte frame, shorter than an Ethernet header", len(in))
	}
	switch et := binary.BigEndian.Uint16(in[12:]); et {
	case 0x0800:
		return r.checkTX4(in, out, reason)
	case 0x86dd:
		return r.checkTX6(in, out, reason)
	default:
		return fmt.Sprintf("sent a frame of ethertype %#04x", et)
	}
}

func (r *fuzzRun) checkTX4(in, out []byte, reason IcmplbReason) string {
	// The input must have been one the balancer owns.
	if len(in) < 42 {
		return fmt.Sprintf("sent a %d-byte frame, too short for IPv4 + ICMP echo", len(in))
	}
	if in[14] != 0x45 {
		return fmt.Sprintf("sent a frame with IP version/ihl byte %#02x, want 0x45", in[14])
	}
	if frag := binary.BigEndian.Uint16(in[20:]); frag&0x3fff != 0 {
		return fmt.Sprintf("sent a fragment (frag_off %#04x)", frag)
	}
	totLen := int(binary.BigEndian.Uint16(in[16:]))
	if totLen < 28 || 14+totLen > len(in) {
		return fmt.Sprintf("sent a frame with tot_len %d in %d bytes", totLen, len(in))
	}
	if c := checksum(in[14:34]); c != 0 {
		return fmt.Sprintf("sent a frame whose input IP checksum does not verify (residue %#04x)", c)
	}
	if c := checksum(in[34 : 14+totLen]); c != 0 {
		return fmt.Sprintf("sent a frame whose input ICMP checksum does not verify (residue %#04x)", c)
	}
	if in[22] == 0 {
		return "sent a frame that arrived with TTL 0"
	}
	if in[23] == unix.IPPROTO_ICMP && (in[34] == 3 || in[34] == 11) {
		if reason != IcmplbReasonREASON_ERROR_RETURNED {
			return fmt.Sprintf("sent an ICMP error counted as reason %d", reason)
		}
		if msg := r.checkError(in, out, totLen); msg != "" {
			return msg
		}
	} else {
		if in[23] != unix.IPPROTO_ICMP || in[35] != 0 || (in[34] != 8 && in[34] != 0) {
			return fmt.Sprintf("sent protocol %d, ICMP type %d code %d: not an echo", in[23], in[34], in[35])
		}
		if i := changedUnowned(in, out, fuzzNATOwned); i >= 0 {
			return fmt.Sprintf("changed %s, which the NAT does not own:\n%s", fieldAt(in, i), diffFrames(in, out))
		}
	}
	if c := checksum(out[14:34]); c != 0 {
		return fmt.Sprintf("output IP checksum does not verify (residue %#04x)", c)
	}
	if c := checksum(out[34 : 14+totLen]); c != 0 {
		return fmt.Sprintf("output ICMP checksum does not verify (residue %#04x)", c)
	}
	if src := macAt(out, 6); !validUnicast(src) {
		return fmt.Sprintf("output source MAC %v is not a valid unicast address", src)
	}
	if in[34] == 3 || in[34] == 11 {
		return ""
	}
	return r.checkEcho(&fuzzFamilies[0], in, out, reason)
}

func (r *fuzzRun) checkTX6(in, out []byte, reason IcmplbReason) string {
	if len(in) < 14+40+8 {
		return fmt.Sprintf("sent a %d-byte frame, too short for IPv6 + ICMPv6 echo", len(in))
	}
	if v := in[14] >> 4; v != 6 {
		return fmt.Sprintf("sent an IPv6 frame of IP version %d", v)
	}
	if in[20] != unix.IPPROTO_ICMPV6 {
		return fmt.Sprintf("sent an IPv6 frame whose next header is %d, not ICMPv6", in[20])
	}
	plen := int(binary.BigEndian.Uint16(in[18:]))
	if plen < 8 || 54+plen > len(in) {
		return fmt.Sprintf("sent a frame with payload length %d in %d bytes", plen, len(in))
	}
	if c := checksum6(addr6At(in, 22), addr6At(in, 38), in[54:54+plen]); c != 0 {
		return fmt.Sprintf("sent a frame whose input ICMPv6 checksum does not verify (residue %#04x)", c)
	}
	if in[21] == 0 {
		return "sent a frame that arrived with hop limit 0"
	}
	isError := in[54] == 1 || in[54] == 2 || in[54] == 3
	if isError {
		if reason != IcmplbReasonREASON_ERROR_RETURNED {
			return fmt.Sprintf("sent an ICMPv6 error counted as reason %d", reason)
		}
		if msg := r.checkError6(in, out, plen); msg != "" {
			return msg
		}
	} else {
		if in[55] != 0 || (in[54] != 128 && in[54] != 129) {
			return fmt.Sprintf("sent ICMPv6 type %d code %d: not an echo", in[54], in[55])
		}
		if i := changedUnowned(in, out, fuzzNATOwned6); i >= 0 {
			return fmt.Sprintf("changed byte %d of an IPv6 echo, which the NAT does not own:\n%s", i, diffFrames(in, out))
		}
	}
	if c := checksum6(addr6At(out, 22), addr6At(out, 38), out[54:54+plen]); c != 0 {
		return fmt.Sprintf("output ICMPv6 checksum does not verify (residue %#04x)", c)
	}
	if src := macAt(out, 6); !validUnicast(src) {
		return fmt.Sprintf("output source MAC %v is not a valid unicast address", src)
	}
	if isError {
		return ""
	}
	return r.checkEcho(&fuzzFamilies[1], in, out, reason)
}

// checkEcho checks a sent echo of family fam against the reason it was
// counted as and what the input had forwarded before.
func (r *fuzzRun) checkEcho(fam *fuzzFamily, in, out []byte, reason IcmplbReason) string {
	if in[fam.icmp] == fam.echoTypes[0] {
		if reason != IcmplbReasonREASON_REQUEST_FORWARDED {
			return fmt.Sprintf("sent an echo request counted as reason %d", reason)
		}
		return r.checkRequest(fam, in, out)
	}
	if reason != IcmplbReasonREASON_REPLY_RETURNED {
		return fmt.Sprintf("sent an echo reply counted as reason %d", reason)
	}
	return r.checkReply(fam, in, out)
}

func (r *fuzzRun) checkRequest(fam *fuzzFamily, in, out []byte) string {
	vip, snat := r.fh.vips[fam.i], r.fh.snats[fam.i]
	if dst := fam.addr(in, fam.dst); dst != vip {
		return fmt.Sprintf("forwarded a request to %v, not the %s VIP %v", dst, fam.name, vip)
	}
	client := fam.addr(in, fam.src)
	if r.bogusSource(client) {
		return fmt.Sprintf("forwarded a request from %v, an address no client can have", client)
	}
	if src := fam.addr(out, fam.src); src != snat {
		return fmt.Sprintf("forwarded request from %v, want the %s SNAT address %v", src, fam.name, snat)
	}
	bi := slices.IndexFunc(fam.backends[:], func(be backendInfo) bool { return be.addr == fam.addr(out, fam.dst) })
	if bi < 0 {
		return fmt.Sprintf("forwarded a request to %v, not an %s backend", fam.addr(out, fam.dst), fam.name)
	}
	be := fam.backends[bi]
	if r.flags[fam.i][bi] != backendReady {
		return fmt.Sprintf("forwarded a request to backend %v, which has flags %#x (not up)", be.addr, r.flags[fam.i][bi])
	}
	if dst := macAt(out, 0); dst != be.mac {
		return fmt.Sprintf("forwarded a request for backend %v to MAC %v, want its MAC %v", be.addr, dst, be.mac)
	}

	id, seq := fam.icmp+4, fam.icmp+6
	s := fuzzSession{client: client, echoID: binary.BigEndian.Uint16(in[id:])}
	natID := binary.BigEndian.Uint16(out[id:])
	if p, ok := r.sessions[s]; ok && r.changed[fam.i][p.backend] < p.step && (p.backend != bi || p.natID != natID) {
		return fmt.Sprintf("session %v id %#04x left backend %v NAT id %#04x (step %d) for %v NAT id %#04x while it stayed up",
			s.client, s.echoID, fam.backends[p.backend].addr, p.natID, p.step, be.addr, natID)
	}
	key := fuzzNAT{backend: be.idx, natID: natID}
	if owner, ok := r.natOwner[key]; ok && owner != s {
		return fmt.Sprintf("gave NAT id %#04x at backend %v to session %v id %#04x; session %v id %#04x holds it",
			natID, be.addr, s.client, s.echoID, owner.client, owner.echoID)
	}
	r.natOwner[key] = s
	r.sessions[s] = fuzzPin{backend: bi, natID: natID, step: r.step}
	r.forwards = append(r.forwards, fuzzForward{
		step: r.step, fam: fam, session: s, hop: macAt(in, 6), backend: bi, natID: natID,
		seq: binary.BigEndian.Uint16(in[seq:]), in: bytes.Clone(in), out: bytes.Clone(out),
	})
	r.history[len(r.history)-1] += fmt.Sprintf(" (%v id %#04x seq %d -> %v NAT id %#04x)",
		s.client, s.echoID, binary.BigEndian.Uint16(in[seq:]), be.addr, natID)
	return ""
}

func (r *fuzzRun) checkReply(fam *fuzzFamily, in, out []byte) string {
	vip, snat := r.fh.vips[fam.i], r.fh.snats[fam.i]
	if dst := fam.addr(in, fam.dst); dst != snat {
		return fmt.Sprintf("returned a reply sent to %v, not the %s SNAT address %v", dst, fam.name, snat)
	}
	id, seq := fam.icmp+4, fam.icmp+6
	from, natID, seqNo := fam.addr(in, fam.src), binary.BigEndian.Uint16(in[id:]), binary.BigEndian.Uint16(in[seq:])
	var answers []fuzzForward
	for _, fw := range r.forwards {
		if fw.fam == fam && fam.backends[fw.backend].addr == from && fw.natID == natID && fw.seq == seqNo {
			answers = append(answers, fw)
		}
	}
	if len(answers) == 0 {
		return fmt.Sprintf("returned an %s reply from %v NAT id %#04x seq %d, which answers no forwarded request", fam.name, from, natID, seqNo)
	}
	var problems []string
	for _, fw := range answers {
		be := fam.backends[fw.backend]
		var p string
		switch {
		case macAt(in, 6) != be.mac:
			p = fmt.Sprintf("came from MAC %v, not backend %v's %v", macAt(in, 6), be.addr, be.mac)
		case fam.addr(out, fam.src) != vip:
			p = fmt.Sprintf("left from %v, not the VIP %v", fam.addr(out, fam.src), vip)
		case fam.addr(out, fam.dst) != fw.session.client || binary.BigEndian.Uint16(out[id:]) != fw.session.echoID:
			p = fmt.Sprintf("went to %v id %#04x, not the requester %v id %#04x",
				fam.addr(out, fam.dst), binary.BigEndian.Uint16(out[id:]), fw.session.client, fw.session.echoID)
		case macAt(out, 0) != fw.hop:
			p = fmt.Sprintf("went to MAC %v, not the requester's %v", macAt(out, 0), fw.hop)
		case !validUnicast(fw.hop):
			p = fmt.Sprintf("went to MAC %v, not a unicast address", fw.hop)
		default:
			r.history[len(r.history)-1] += fmt.Sprintf(" (answers step %d: to %v id %#04x)", fw.step, fw.session.client, fw.session.echoID)
			return ""
		}
		problems = append(problems, fmt.Sprintf("as the answer to step %d it %s", fw.step, p))
	}
	return "returned reply is wrong: " + strings.Join(problems, "; ")
}

// The offsets the translation of an error may change. IPv4: MACs, the IP
// checksum and addresses, and in the quote its IP checksum and addresses,
// its ICMP checksum and echo id; the error's own ICMP checksum covers no
// address of its header and a quote whose sum is unchanged. IPv6: MACs,
// the addresses and, through its pseudo-header, the ICMPv6 checksum, and in
// the quote its addresses, ICMPv6 checksum and echo id.
var (
	fuzzErrorOwned  = fuzzOwned([2]int{0, 12}, [2]int{24, 34}, [2]int{52, 62}, [2]int{64, 68})
	fuzzErrorOwned6 = fuzzOwned([2]int{0, 12}, [2]int{22, 54}, [2]int{56, 58}, [2]int{70, 102}, [2]int{104, 108})
)

// fuzzCsumNorm folds the two ones'-complement zeros of a checksum into one.
func fuzzCsumNorm(c uint16) uint16 {
	if c == 0xffff {
		return 0
	}
	return c
}

func (r *fuzzRun) checkError(in, out []byte, totLen int) string {
	vip, snat := r.fh.vips[0], r.fh.snats[0]
	if totLen < 20+8+28 {
		return fmt.Sprintf("returned an error of tot_len %d, too short to quote IPv4 + an echo header", totLen)
	}
	if i := changedUnowned(in, out, fuzzErrorOwned); i >= 0 {
		return fmt.Sprintf("changed byte %d of an error, which the translation does not own:\n%s", i, diffFrames(in, out))
	}
	if dst := addrAt(in, 30); dst != snat {
		return fmt.Sprintf("returned an error sent to %v, not the SNAT address %v", dst, snat)
	}
	if in[42] != 0x45 || in[51] != unix.IPPROTO_ICMP || in[62] != 8 || in[63] != 0 || addrAt(in, 54) != snat {
		return fmt.Sprintf("returned an error quoting %x, not an echo request from the SNAT address", in[42:70])
	}
	if (checksum(in[42:62]) == 0) != (checksum(out[42:62]) == 0) {
		return "the quoted IP header's checksum verifies in one of input and output only"
	}
	from, natID, seq := addrAt(in, 58), binary.BigEndian.Uint16(in[66:]), binary.BigEndian.Uint16(in[68:])
	var problems []string
	for _, fw := range r.forwards {
		if fw.fam.i != 0 || fuzzBackends[fw.backend].addr != from || fw.natID != natID || fw.seq != seq {
			continue
		}
		be := fuzzBackends[fw.backend]
		var p string
		switch {
		case macAt(in, 6) != be.mac:
			p = fmt.Sprintf("came from MAC %v, not backend %v's %v", macAt(in, 6), be.addr, be.mac)
		case addrAt(out, 26) != vip || addrAt(out, 58) != vip:
			p = fmt.Sprintf("left from %v quoting a request to %v, not the VIP %v", addrAt(out, 26), addrAt(out, 58), vip)
		case addrAt(out, 30) != fw.session.client || addrAt(out, 54) != fw.session.client ||
			binary.BigEndian.Uint16(out[66:]) != fw.session.echoID:
			p = fmt.Sprintf("went to %v quoting %v id %#04x, not the requester %v id %#04x",
				addrAt(out, 30), addrAt(out, 54), binary.BigEndian.Uint16(out[66:]), fw.session.client, fw.session.echoID)
		case macAt(out, 0) != fw.hop || !validUnicast(fw.hop):
			p = fmt.Sprintf("went to MAC %v, not the requester's unicast %v", macAt(out, 0), fw.hop)
		case fuzzCsumNorm(binary.BigEndian.Uint16(out[64:])) != fuzzCsumNorm(binary.BigEndian.Uint16(fw.in[36:])):
			p = fmt.Sprintf("quotes ICMP checksum %#04x, not the request's %#04x",
				binary.BigEndian.Uint16(out[64:]), binary.BigEndian.Uint16(fw.in[36:]))
		default:
			r.history[len(r.history)-1] += fmt.Sprintf(" (about step %d: to %v id %#04x)", fw.step, fw.session.client, fw.session.echoID)
			return ""
		}
		problems = append(problems, fmt.Sprintf("as the error about step %d it %s", fw.step, p))
	}
	if len(problems) == 0 {
		return fmt.Sprintf("returned an error about %v NAT id %#04x seq %d, which quotes no forwarded request", from, natID, seq)
	}
	return "returned error is wrong: " + strings.Join(problems, "; ")
}

// checkError6 is checkError for ICMPv6: the quote starts at q, its ICMPv6
// message 40 bytes later.
func (r *fuzzRun) checkError6(in, out []byte, plen int) string {
	const q, qi = 62, 62 + 40
	vip, snat := r.fh.vips[1], r.fh.snats[1]
	if plen < 8+48 {
		return fmt.Sprintf("returned an error of payload length %d, too short to quote IPv6 + an echo header", plen)
	}
	if i := changedUnowned(in, out, fuzzErrorOwned6); i >= 0 {
		return fmt.Sprintf("changed byte %d of an ICMPv6 error, which the translation does not own:\n%s", i, diffFrames(in, out))
	}
	if dst := addr6At(in, 38); dst != snat {
		return fmt.Sprintf("returned an error sent to %v, not the IPv6 SNAT address %v", dst, snat)
	}
	if in[q]>>4 != 6 || in[q+6] != unix.IPPROTO_ICMPV6 || in[qi] != 128 || in[qi+1] != 0 || addr6At(in, q+8) != snat {
		return fmt.Sprintf("returned an error quoting %x, not an echo request from the SNAT address", in[q:qi+8])
	}
	from, natID, seq := addr6At(in, q+24), binary.BigEndian.Uint16(in[qi+4:]), binary.BigEndian.Uint16(in[qi+6:])
	var problems []string
	for _, fw := range r.forwards {
		if fw.fam.i != 1 || fuzzBackends6[fw.backend].addr != from || fw.natID != natID || fw.seq != seq {
			continue
		}
		be := fuzzBackends6[fw.backend]
		var p string
		switch {
		case macAt(in, 6) != be.mac:
			p = fmt.Sprintf("came from MAC %v, not backend %v's %v", macAt(in, 6), be.addr, be.mac)
		case addr6At(out, 22) != vip || addr6At(out, q+24) != vip:
			p = fmt.Sprintf("left from %v quoting a request to %v, not the VIP %v", addr6At(out, 22), addr6At(out, q+24), vip)
		case addr6At(out, 38) != fw.session.client || addr6At(out, q+8) != fw.session.client ||
			binary.BigEndian.Uint16(out[qi+4:]) != fw.session.echoID:
			p = fmt.Sprintf("went to %v quoting %v id %#04x, not the requester %v id %#04x",
				addr6At(out, 38), addr6At(out, q+8), binary.BigEndian.Uint16(out[qi+4:]), fw.session.client, fw.session.echoID)
		case macAt(out, 0) != fw.hop || !validUnicast(fw.hop):
			p = fmt.Sprintf("went to MAC %v, not the requester's unicast %v", macAt(out, 0), fw.hop)
		case fuzzCsumNorm(binary.BigEndian.Uint16(out[qi+2:])) != fuzzCsumNorm(binary.BigEndian.Uint16(fw.in[56:])):
			p = fmt.Sprintf("quotes ICMPv6 checksum %#04x, not the request's %#04x",
				binary.BigEndian.Uint16(out[qi+2:]), binary.BigEndian.Uint16(fw.in[56:]))
		default:
			r.history[len(r.history)-1] += fmt.Sprintf(" (about step %d: to %v id %#04x)", fw.step, fw.session.client, fw.session.echoID)
			return ""
		}
		problems = append(problems, fmt.Sprintf("as the error about step %d it %s", fw.step, p))
	}
	if len(problems) == 0 {
		return fmt.Sprintf("returned an ICMPv6 error about %v NAT id %#04x seq %d, which quotes no forwarded request", from, natID, seq)
	}
	return "returned error is wrong: " + strings.Join(problems, "; ")
}

func (r *fuzzRun) fail(what string, in, out []byte, format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("step %d (%s): %s\ninput  %s\noutput %s\nhistory of this input:\n  %s",
		r.step, what, fmt.Sprintf(format, args...), shortHex(in), shortHex(out), strings.Join(r.history, "\n  "))
}

func shortHex(b []byte) string {
	if b == nil {
		return "(none)"
	}
	if len(b) > 96 {
		return fmt.Sprintf("% x … (%d bytes)", b[:96], len(b))
	}
	return fmt.Sprintf("% x", b)
}

// fuzzCover is written by fuzzSignal so that its cases are not optimised
// away.
var fuzzCover [96]uint8

// fuzzSignal turns what the program did into Go coverage, the only feedback
// the fuzzer gets: each operation kind and verdict, and each reason of each
// family (untagged IPv6, or anything else), has its own branch, so an input
// that reaches a new one is kept and mutated further.
func fuzzSignal(kind byte, v6 bool, verdict uint32, reason IcmplbReason) {
	switch kind<<2 | byte(verdict&3) {
	case 0:
		fuzzCover[0]++
	case 1:
		fuzzCover[1]++
	case 2:
		fuzzCover[2]++
	case 3:
		fuzzCover[3]++
	case 4:
		fuzzCover[4]++
	case 5:
		fuzzCover[5]++
	case 6:
		fuzzCover[6]++
	case 7:
		fuzzCover[7]++
	case 8:
		fuzzCover[8]++
	case 9:
		fuzzCover[9]++
	case 10:
		fuzzCover[10]++
	case 11:
		fuzzCover[11]++
	case 12:
		fuzzCover[12]++
	case 13:
		fuzzCover[13]++
	case 14:
		fuzzCover[14]++
	case 15:
		fuzzCover[15]++
	}
	fam := 0
	if v6 {
		fam = 32
	}
	switch fam | int(reason)&31 {
	case 0:
		fuzzCover[32]++
	case 1:
		fuzzCover[33]++
	case 2:
		fuzzCover[34]++
	case 3:
		fuzzCover[35]++
	case 4:
		fuzzCover[36]++
	case 5:
		fuzzCover[37]++
	case 6:
		fuzzCover[38]++
	case 7:
		fuzzCover[39]++
	case 8:
		fuzzCover[40]++
	case 9:
		fuzzCover[41]++
	case 10:
		fuzzCover[42]++
	case 11:
		fuzzCover[43]++
	case 12:
		fuzzCover[44]++
	case 13:
		fuzzCover[45]++
	case 14:
		fuzzCover[46]++
	case 15:
		fuzzCover[47]++
	case 16:
		fuzzCover[48]++
	case 17:
		fuzzCover[49]++
	case 18:
		fuzzCover[50]++
	case 19:
		fuzzCover[51]++
	case 20:
		fuzzCover[52]++
	case 21:
		fuzzCover[53]++
	case 22:
		fuzzCover[54]++
	case 23:
		fuzzCover[55]++
	case 24:
		fuzzCover[56]++
	case 25:
		fuzzCover[57]++
	case 26:
		fuzzCover[58]++
	case 27:
		fuzzCover[59]++
	case 28:
		fuzzCover[60]++
	case 29:
		fuzzCover[61]++
	case 30:
		fuzzCover[62]++
	case 31:
		fuzzCover[63]++
	case 32:
		fuzzCover[64]++
	case 33:
		fuzzCover[65]++
	case 34:
		fuzzCover[66]++
	case 35:
		fuzzCover[67]++
	case 36:
		fuzzCover[68]++
	case 37:
		fuzzCover[69]++
	case 38:
		fuzzCover[70]++
	case 39:
		fuzzCover[71]++
	case 40:
		fuzzCover[72]++
	case 41:
		fuzzCover[73]++
	case 42:
		fuzzCover[74]++
	case 43:
		fuzzCover[75]++
	case 44:
		fuzzCover[76]++
	case 45:
		fuzzCover[77]++
	case 46:
		fuzzCover[78]++
	case 47:
		fuzzCover[79]++
	case 48:
		fuzzCover[80]++
	case 49:
		fuzzCover[81]++
	case 50:
		fuzzCover[82]++
	case 51:
		fuzzCover[83]++
	case 52:
		fuzzCover[84]++
	case 53:
		fuzzCover[85]++
	case 54:
		fuzzCover[86]++
	case 55:
		fuzzCover[87]++
	case 56:
		fuzzCover[88]++
	case 57:
		fuzzCover[89]++
	case 58:
		fuzzCover[90]++
	case 59:
		fuzzCover[91]++
	case 60:
		fuzzCover[92]++
	case 61:
		fuzzCover[93]++
	case 62:
		fuzzCover[94]++
	case 63:
		fuzzCover[95]++
	}
}

var updateFuzzCorpus = flag.Bool("update-fuzz-corpus", false, "rewrite the seed corpus testdata/fuzz/FuzzXDP from fuzzSeeds")

// TestFuzzSeedCorpus checks that the committed seed corpus is what
// fuzzSeeds builds; -update-fuzz-corpus rewrites it. Files the fuzzer adds
// (its findings) are left alone.
func TestFuzzSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzXDP")
	seeds := fuzzSeeds()
	names := map[string]bool{}
	for _, s := range seeds {
		if names[s.name] {
			t.Fatalf("two seeds named %s", s.name)
		}
		names[s.name] = true
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.data)
		path := filepath.Join(dir, s.name)
		if *updateFuzzCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("seed %s is missing or stale (%v): run `go test ./bpf -run TestFuzzSeedCorpus -update-fuzz-corpus`", path, err)
		}
	}
}

// TestFuzzSeedsReachEveryReason runs the seed corpus and fails when some
// verdict reason is reached by no seed: the fuzzer then starts from at least
// one input behind every check of the program.
func TestFuzzSeedsReachEveryReason(t *testing.T) {
	requireRoot(t)
	start := time.Now()
	hs := newFuzzHarnesses(t)
	seen := map[IcmplbReason]int{}
	for _, s := range fuzzSeeds() {
		t.Run(s.name, func(t *testing.T) {
			for r, n := range hs.play(t, s.data) {
				seen[r] += n
			}
		})
	}
	// Reachable only from state no input builds quickly: eight NAT ids in a
	// row held by live sessions, a NAT id reused while its request is in
	// flight, a full inflight map. Unit tests cover them. And
	// all_down needs the agent's pass flag on the service, which no
	// input sets: TestServiceAllDownPass covers it.
	unreachable := []IcmplbReason{
		IcmplbReasonREASON_NAT_EXHAUSTED, IcmplbReasonREASON_NAT_COLLISION, IcmplbReasonREASON_INFLIGHT_FULL,
		IcmplbReasonREASON_ALL_DOWN,
	}
	for r := range IcmplbReasonREASON_MAX {
		if seen[r] == 0 && !slices.Contains(unreachable, r) {
			t.Errorf("no seed reaches reason %d: add one to fuzzSeeds", r)
		}
	}
	t.Logf("%d seeds, reasons reached: %v, in %v", len(fuzzSeeds()), seen, time.Since(start).Round(time.Millisecond))
}

// fuzzInput builds a fuzz input; see the encoding at fuzzHeaderLen.
type fuzzInput []byte

func newFuzzInput() fuzzInput { return fuzzInput{0, 0, 0, 0} }

func (in fuzzInput) snatAlt() fuzzInput {
	in[0] |= fuzzSNATAlt
	return in
}

func (in fuzzInput) nat(next uint16, key byte) fuzzInput {
	binary.BigEndian.PutUint16(in[1:], next)
	in[3] = key
	return in
}

func (in fuzzInput) frame(f []byte) fuzzInput { return in.rawFrame(0, f) }

// fixedFrame asks for the checksums to be recomputed before the run: the
// mutations of such a seed keep reaching the checks behind them.
func (in fuzzInput) fixedFrame(f []byte) fuzzInput { return in.rawFrame(fuzzFix, f) }

// rawFrame encodes f, its trailing run of one byte value as padding.
func (in fuzzInput) rawFrame(opts byte, f []byte) fuzzInput {
	n := len(f)
	for n > 0 && f[n-1] == f[len(f)-1] {
		n--
	}
	pad := len(f) - n
	if pad < 4 {
		n, pad = len(f), 0
	}
	in = append(in, fuzzOpFrame|opts, byte(n>>8), byte(n))
	in = append(in, f[:n]...)
	fill := byte(0)
	if pad > 0 {
		fill = f[n]
	}
	return append(in, byte(pad>>8), byte(pad), fill)
}

func (in fuzzInput) reply(sel int) fuzzInput { return in.mutReply(sel, 0, 0, false) }

func (in fuzzInput) mutReply(sel, off int, xor byte, fix bool) fuzzInput {
	op := byte(fuzzOpReply)
	if fix {
		op |= fuzzFix
	}
	return in.opReply(op, sel, off, xor)
}

func (in fuzzInput) opReply(op byte, sel, off int, xor byte) fuzzInput {
	return append(in, fuzzOpReply|op, byte(sel), byte(off>>8), byte(off), xor)
}

func (in fuzzInput) backend(i int, flags IcmplbBackendFlags) fuzzInput {
	return append(in, fuzzOpBackend, byte(i)|byte(flags)<<2)
}

// backendOf changes backend i of one family only: fuzzOnly4 or fuzzOnly6.
func (in fuzzInput) backendOf(only byte, i int, flags IcmplbBackendFlags) fuzzInput {
	return append(in, fuzzOpBackend, byte(i)|byte(flags)<<2|only<<5)
}

func (in fuzzInput) resend(sel int, seq uint16, opts byte) fuzzInput {
	return append(in, fuzzOpResend|opts, byte(sel), byte(seq>>8), byte(seq))
}

type fuzzSeed struct {
	name string
	data fuzzInput
}

// Offsets in an untagged option-less frame, for the seeds' mutations.
const (
	offEthSrc   = 6
	offIPTTL    = 22
	offIPFrag   = 20
	offIPCheck  = 24
	offIPSrc    = 26
	offIPDst    = 30
	offICMPCode = 35
	offEchoID   = 38
	offEchoSeq  = 40
	offPayload  = 42
)

// The same for IPv6, and for an ICMPv6 error the fields of its quote.
const (
	off6PayloadLen = 18
	off6HopLimit   = 21
	off6Src        = 22
	off6Dst        = 38
	off6Type       = 54
	off6Code       = 55
	off6Checksum   = 56
	off6EchoID     = 58
	off6EchoSeq    = 60
	off6Payload    = 62

	off6QuoteNextHdr  = 62 + 6
	off6QuoteType     = 62 + 40
	off6QuoteChecksum = 62 + 42
	off6QuotePayload  = 62 + 48
)

// fuzzSeeds is the seed corpus: valid exchanges in every shape the program
// must handle, each check's reason, and malformed frames of every kind.
func fuzzSeeds() []fuzzSeed {
	req := echoRequest(client1, hop1MAC, 0x1234, 1)
	reqWith := func(mut func(p *packet)) []byte { return req.frameWith(mut) }
	// edit changes a valid request's bytes, then fixes its checksums so
	// that only the edit is wrong.
	edit := func(mut func(f []byte)) []byte {
		f := req.frame()
		mut(f)
		fuzzChecksums(f, fuzzFix)
		return f
	}
	tagged := func(f []byte, tpids ...uint16) []byte {
		out := bytes.Clone(f[:12])
		for _, tpid := range tpids {
			out = binary.BigEndian.AppendUint16(out, tpid)
			out = binary.BigEndian.AppendUint16(out, 10) // VLAN 10
		}
		return append(out, f[12:]...)
	}
	sized := func(n int) []byte { // a valid request frame of n bytes
		return reqWith(func(p *packet) { p.payload = bytes.Repeat([]byte{0x5a}, n-14-20-8) })
	}
	from := func(a string) []byte { return reqWith(func(p *packet) { p.src = netip.MustParseAddr(a) }) }
	// zeroICMPChecksum picks the last payload word so that the ICMP
	// checksum is 0x0000, where ones'-complement slips show.
	zeroICMPChecksum := func() []byte {
		f := req.frame()
		n := len(f)
		f[n-2], f[n-1] = 0, 0
		fuzzChecksums(f, fuzzFix)
		copy(f[n-2:], f[36:38])
		fuzzChecksums(f, fuzzFix)
		return f
	}
	in := newFuzzInput
	seeds := []fuzzSeed{
		// Valid exchanges.
		{"request", in().fixedFrame(req.frame())},
		{"request-reply", in().fixedFrame(req.frame()).reply(0)},
		{"request-reply-snat", in().snatAlt().fixedFrame(req.frame()).reply(0)},
		{"request-reply-ttl1", in().fixedFrame(reqWith(func(p *packet) { p.ttl = 1 })).reply(0)},
		{"request-reply-padding", in().fixedFrame(reqWith(func(p *packet) {
			p.payload = []byte{1, 2, 3, 4}
			p.trailer = bytes.Repeat([]byte{0xa5}, 60-14-20-8-4)
		})).reply(0)},
		{"request-reply-no-payload", in().fixedFrame(reqWith(func(p *packet) {
			p.payload, p.trailer = nil, make([]byte, 60-14-20-8)
		})).reply(0)},
		{"request-reply-odd-payload", in().fixedFrame(reqWith(func(p *packet) { p.payload = defaultPayload()[:37] })).reply(0)},
		{"request-reply-1514", in().fixedFrame(sized(1514)).reply(0)},
		{"request-reply-linear-max", in().fixedFrame(sized(xdpLinearMax)).reply(0)},
		{"request-reply-trailer-in-fragment", in().fixedFrame(reqWith(func(p *packet) {
			p.trailer = bytes.Repeat([]byte{0xa5}, 3600-98)
		})).reply(0)},
		{"request-reply-icmp-checksum-0000", in().frame(zeroICMPChecksum()).reply(0)},
		{"request-reply-icmp-checksum-ffff", in().frame(func() []byte {
			f := zeroICMPChecksum()
			f[36], f[37] = 0xff, 0xff // the other ones'-complement zero
			return f
		}()).reply(0)},
		{"request-reply-echo-id-ffff", in().fixedFrame(echoRequest(client1, hop1MAC, 0xffff, 0xffff).frame()).reply(0)},
		{"request-reply-echo-id-0", in().fixedFrame(echoRequest(client1, hop1MAC, 0, 0).frame()).reply(0)},
		{"request-reply-shorter-tot-len", in().fixedFrame(edit(func(f []byte) {
			binary.BigEndian.PutUint16(f[16:], 20+8+40) // the rest is trailer
		})).reply(0)},
		{"two-clients-same-echo-id", in().
			fixedFrame(echoRequest(client1, hop1MAC, 0x42, 1).frame()).
			fixedFrame(echoRequest(client2, hop2MAC, 0x42, 1).frame()).
			reply(1).reply(0)},
		{"session-seqs", in().fixedFrame(req.frame()).resend(0, 2, 0).resend(0, 3, 0).reply(2).reply(0).reply(1)},
		{"session-duplicate-request", in().fixedFrame(req.frame()).resend(0, 1, 0).reply(0).reply(1)},
		{"session-second-echo-id", in().fixedFrame(req.frame()).resend(0, 1, fuzzNextID).reply(1).reply(0)},
		{"session-new-hop", in().fixedFrame(req.frame()).resend(0, 2, fuzzNewHop).reply(0).reply(1)},
		{"client-is-backend", in().fixedFrame(echoRequest(backendA.addr, backendA.mac, 9, 1).frame()).reply(0)},
		{"many-sessions", func() fuzzInput {
			s := in()
			for i := range 12 {
				s = s.fixedFrame(echoRequest(netip.AddrFrom4([4]byte{10, 1, 0, byte(i + 1)}), hop1MAC, uint16(i), 1).frame())
			}
			for i := 11; i >= 0; i-- {
				s = s.reply(i)
			}
			return s
		}()},
		{"nat-counter-wraps", func() fuzzInput {
			s := in().nat(0xfffe, 7)
			for i := range 4 {
				s = s.fixedFrame(echoRequest(client1, hop1MAC, uint16(0x100+i), 1).frame())
			}
			return s.reply(3).reply(2).reply(1).reply(0)
		}()},

		// ICMP errors about forwarded requests.
		{"error-unreachable", in().fixedFrame(req.frame()).opReply(fuzzAsError, 0, 0, 0)},
		{"error-time-exceeded", in().snatAlt().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzTimeExceeded, 0, 0, 0)},
		{"error-frag-needed", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFragNeeded, 0, 0, 0)},
		{"error-then-reply", in().fixedFrame(req.frame()).opReply(fuzzAsError, 0, 0, 0).reply(0)},
		{"error-twice", in().fixedFrame(req.frame()).opReply(fuzzAsError, 0, 0, 0).opReply(fuzzAsError, 0, 0, 0)},
		{"error-second-request", in().fixedFrame(req.frame()).resend(0, 2, 0).opReply(fuzzAsError, 1, 0, 0).reply(0)},
		{"error-truncated", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, 17, 0x70^0x30).reply(0)},
		{"error-spoofed-mac", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, offEthSrc+5, 0x10).reply(0)},
		{"error-quote-mismatch", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, 70+9, 0xff).reply(0)},
		{"error-quote-not-echo", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, 62, 0x08).reply(0)},
		{"error-quote-bad-ip-checksum", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, 53, 0x01)},
		{"error-bad-checksum", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix|fuzzBadICMP, 0, 0, 0).reply(0)},

		// Backends leaving and coming back.
		{"backends-down-then-request", in().backend(0, 0).backend(1, 0).backend(2, 0).fixedFrame(req.frame())},
		{"backends-neigh-unresolved", in().backend(0, backendActive).backend(1, backendActive).backend(2, backendActive).fixedFrame(req.frame())},
		{"backends-neigh-only", in().backend(0, backendNeigh).backend(1, backendNeigh).backend(2, backendNeigh).fixedFrame(req.frame())},
		{"session-moves", in().fixedFrame(req.frame()).backend(0, 0).backend(1, 0).resend(0, 2, 0).reply(0).reply(1)},
		{"session-backend-neigh-lost", in().fixedFrame(req.frame()).
			backend(0, backendActive).backend(1, backendActive).backend(2, backendActive).resend(0, 2, 0).reply(0)},
		{"backend-flaps", in().fixedFrame(req.frame()).backend(0, 0).backend(0, backendReady).
			backend(1, 0).backend(1, backendReady).backend(2, 0).backend(2, backendReady).resend(0, 2, 0).reply(1).reply(0)},

		// Replies that must not reach a client.
		{"reply-duplicate", in().fixedFrame(req.frame()).reply(0).reply(0)},
		{"reply-wrong-seq", in().fixedFrame(req.frame()).mutReply(0, offEchoSeq+1, 0x01, true)},
		{"reply-wrong-nat-id", in().fixedFrame(req.frame()).mutReply(0, offEchoID+1, 0x01, true)},
		{"reply-spoofed-mac", in().fixedFrame(req.frame()).mutReply(0, offEthSrc+5, 0x10, true).reply(0)},
		{"reply-from-other-address", in().fixedFrame(req.frame()).mutReply(0, offIPSrc+3, 0x20, true).reply(0)},
		{"reply-from-other-backend", in().fixedFrame(req.frame()).mutReply(0, offIPSrc+3, 0x0b^0x0c, true).reply(0)},
		{"reply-payload-changed", in().fixedFrame(req.frame()).mutReply(0, offPayload+9, 0xff, true).reply(0)},
		{"reply-bad-icmp-checksum", in().fixedFrame(req.frame()).opReply(fuzzFix|fuzzBadICMP, 0, 0, 0).reply(0)},
		{"reply-bad-icmp-checksum-payload", in().fixedFrame(req.frame()).mutReply(0, offPayload+9, 0xff, false).reply(0)},
		{"reply-bad-ip-checksum", in().fixedFrame(req.frame()).opReply(fuzzFix|fuzzBadIP, 0, 0, 0).reply(0)},
		{"reply-ttl0", in().fixedFrame(req.frame()).mutReply(0, offIPTTL, 64, true).reply(0)},
		{"reply-code1", in().fixedFrame(req.frame()).mutReply(0, offICMPCode, 1, true).reply(0)},
		{"reply-fragment", in().fixedFrame(req.frame()).mutReply(0, offIPFrag, 0x20, true).reply(0)},
		{"reply-tot-len-short", in().fixedFrame(req.frame()).mutReply(0, 17, 0x08, true).reply(0)},
		{"reply-to-vip-not-snat", in().snatAlt().fixedFrame(req.frame()).mutReply(0, offIPDst+3, 10^100, true).reply(0)},
		{"reply-without-request", in().frame(replyTo(req, backendA, vip, 0x7777).frame())},
		{"reply-to-probe", in().frame(replyTo(req, backendA, vip, uint16(IcmplbLayoutPROBE_ECHO_ID)).frame())},
		{"reply-before-request", in().reply(0).fixedFrame(req.frame()).reply(0)},

		// Requests the program must leave alone, then a valid exchange.
		{"vlan-8021q", in().fixedFrame(tagged(req.frame(), 0x8100)).fixedFrame(req.frame()).reply(0)},
		{"vlan-8021ad-qinq", in().fixedFrame(tagged(req.frame(), 0x88a8, 0x8100))},
		{"dst-mac-broadcast", in().fixedFrame(reqWith(func(p *packet) { p.ethDst = mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} }))},
		{"dst-mac-multicast", in().fixedFrame(reqWith(func(p *packet) { p.ethDst = mac{0x01, 0x00, 0x5e, 0, 0, 1} }))},
		{"src-mac-multicast", in().fixedFrame(reqWith(func(p *packet) { p.ethSrc = mac{0x01, 0x00, 0x5e, 0, 0, 1} })).reply(0)},
		{"src-mac-zero", in().fixedFrame(reqWith(func(p *packet) { p.ethSrc = mac{} })).reply(0)},
		{"src-0.0.0.0", in().fixedFrame(from("0.0.0.0")).reply(0)},
		{"src-0.1.2.3", in().fixedFrame(from("0.1.2.3")).reply(0)},
		{"src-127.0.0.1", in().fixedFrame(from("127.0.0.1")).reply(0)},
		{"src-224.0.0.1", in().fixedFrame(from("224.0.0.1")).reply(0)},
		{"src-255.255.255.255", in().fixedFrame(from("255.255.255.255")).reply(0)},
		{"src-vip", in().fixedFrame(from(vip.String())).reply(0)},
		{"src-snat", in().snatAlt().fixedFrame(from(snatAlt.String())).reply(0)},
		{"ttl0", in().fixedFrame(reqWith(func(p *packet) { p.ttl = 0 })).reply(0)},
		{"bad-ip-checksum", in().rawFrame(fuzzFix|fuzzBadIP, req.frame()).reply(0)},
		{"bad-icmp-checksum", in().rawFrame(fuzzFix|fuzzBadICMP, req.frame()).reply(0)},
		{"bad-icmp-checksum-payload", in().frame(func() []byte {
			f := req.frame()
			f[offPayload] ^= 0x01
			return f
		}()).reply(0)},
		{"resend-bad-checksums", in().fixedFrame(req.frame()).
			resend(0, 2, fuzzBadICMP).resend(0, 3, fuzzBadIP).reply(0).reply(1)},
		{"icmp-checksum-over-trailer", in().frame(func() []byte {
			f := reqWith(func(p *packet) { p.trailer = []byte{0xa5, 0x5a, 0x33} })
			f[36], f[37] = 0, 0
			binary.BigEndian.PutUint16(f[36:], checksum(f[34:]))
			return f
		}()).reply(0)},
		{"ihl-4", in().fixedFrame(edit(func(f []byte) { f[14] = 0x44 }))},
		{"ihl-6-options", in().fixedFrame(reqWith(func(p *packet) { p.options = []byte{1, 1, 1, 0} })).reply(0)},
		{"ihl-15", in().fixedFrame(edit(func(f []byte) { f[14] = 0x4f }))},
		{"version-6", in().fixedFrame(edit(func(f []byte) { f[14] = 0x65 }))},
		{"tot-len-beyond-frame", in().fixedFrame(edit(func(f []byte) { binary.BigEndian.PutUint16(f[16:], uint16(len(f)-14+1)) }))},
		{"tot-len-20", in().fixedFrame(edit(func(f []byte) { binary.BigEndian.PutUint16(f[16:], 20) }))},
		{"tot-len-24", in().fixedFrame(edit(func(f []byte) { binary.BigEndian.PutUint16(f[16:], 24) }))},
		{"tot-len-0", in().fixedFrame(edit(func(f []byte) { binary.BigEndian.PutUint16(f[16:], 0) }))},
		{"eth-header-only", in().frame(req.frame()[:14])},
		{"shorter-than-eth", in().frame(req.frame()[:13])},
		{"empty", in().frame(nil)},
		{"cut-in-ip-header", in().frame(req.frame()[:14+19])},
		{"cut-in-icmp-header", in().frame(req.frame()[:14+20+6])},
		{"fragment-mf", in().fixedFrame(reqWith(func(p *packet) { p.frag = 0x2000 }))},
		{"fragment-offset", in().fixedFrame(reqWith(func(p *packet) { p.frag = 0x0007 }))},
		{"dest-unreachable", in().fixedFrame(reqWith(func(p *packet) { p.icmpType, p.icmpCode = 3, 1 }))},
		{"timestamp-request", in().fixedFrame(reqWith(func(p *packet) { p.icmpType, p.payload = 13, make([]byte, 12) }))},
		{"request-code1", in().fixedFrame(reqWith(func(p *packet) { p.icmpCode = 1 }))},
		{"tcp-to-vip", in().fixedFrame(reqWith(func(p *packet) {
			p.proto = unix.IPPROTO_TCP
			p.l4 = []byte{0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0}
		}))},
		{"udp-to-vip", in().fixedFrame(reqWith(func(p *packet) {
			p.proto = unix.IPPROTO_UDP
			p.l4 = []byte{0x9c, 0x40, 0, 53, 0, 12, 0, 0, 'p', 'i', 'n', 'g'}
		}))},
		{"ipv6", in().frame(append(ethHeader(lbMAC, hop1MAC, 0x86dd), make([]byte, 48)...))},
		{"arp", in().frame(append(ethHeader(mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, hop1MAC, 0x0806),
			0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 100))},
		{"request-to-other-address", in().fixedFrame(reqWith(func(p *packet) { p.dst = stranger }))},
		{"request-to-snat", in().snatAlt().fixedFrame(reqWith(func(p *packet) { p.dst = snatAlt }))},
		{"jumbo-9000", in().fixedFrame(sized(9000)).fixedFrame(req.frame()).reply(0)},
		{"request-in-fragments", in().fixedFrame(sized(xdpLinearMax + 1))},
	}
	return append(seeds, fuzzSeeds6()...)
}

// fuzzSeeds6 are the IPv6 seeds, and those of both families at once.
func fuzzSeeds6() []fuzzSeed {
	req := echoRequest6(client6a, hop1MAC, 0x1234, 1)
	with := func(mut func(p *packet6)) []byte {
		p := req
		mut(&p)
		return p.frame()
	}
	// edit changes a valid request's bytes, then fixes its checksum.
	edit := func(mut func(f []byte)) []byte {
		f := req.frame()
		mut(f)
		fuzzChecksums(f, fuzzFix)
		return f
	}
	sized := func(n int) []byte {
		return with(func(p *packet6) { p.payload = bytes.Repeat([]byte{0x5a}, n-14-40-8) })
	}
	from := func(a string) []byte { return with(func(p *packet6) { p.src = netip.MustParseAddr(a) }) }
	// zeroChecksum picks the last payload word so that the ICMPv6
	// checksum is 0x0000.
	zeroChecksum := func() []byte {
		f := req.frame()
		n := len(f)
		f[n-2], f[n-1] = 0, 0
		fuzzChecksums(f, fuzzFix)
		copy(f[n-2:], f[off6Checksum:off6Checksum+2])
		fuzzChecksums(f, fuzzFix)
		return f
	}
	// Neighbour discovery's messages carry an address after 4 bytes.
	nd := func(flags byte, target netip.Addr) []byte {
		a := target.As16()
		return append([]byte{flags, 0, 0, 0}, a[:]...)
	}
	hbh := []byte{58, 0, 1, 4, 0, 0, 0, 0} // PadN
	be0 := fuzzBackends6[0]
	req4 := echoRequest(client1, hop1MAC, 0x1234, 1)
	in := newFuzzInput
	return []fuzzSeed{
		// Valid exchanges.
		{"v6-request", in().fixedFrame(req.frame())},
		{"v6-request-reply", in().fixedFrame(req.frame()).reply(0)},
		{"v6-request-reply-snat", in().snatAlt().fixedFrame(req.frame()).reply(0)},
		{"v6-request-reply-hop-limit-1", in().fixedFrame(with(func(p *packet6) { p.hopLimit = 1 })).reply(0)},
		{"v6-request-reply-padding", in().fixedFrame(append(with(func(p *packet6) { p.payload = []byte{1, 2, 3, 4} }),
			bytes.Repeat([]byte{0xa5}, 6)...)).reply(0)},
		{"v6-request-reply-no-payload", in().fixedFrame(with(func(p *packet6) { p.payload = nil })).reply(0)},
		{"v6-request-reply-payload-length-8", in().fixedFrame(edit(func(f []byte) {
			binary.BigEndian.PutUint16(f[off6PayloadLen:], 8) // the rest is trailer
		})).reply(0)},
		{"v6-request-reply-odd-payload", in().fixedFrame(with(func(p *packet6) { p.payload = defaultPayload()[:37] })).reply(0)},
		{"v6-request-reply-1514", in().fixedFrame(sized(1514)).reply(0)},
		{"v6-request-reply-linear-max", in().fixedFrame(sized(xdpLinearMax)).reply(0)},
		{"v6-request-in-fragments", in().fixedFrame(sized(xdpLinearMax + 1))},
		{"v6-jumbo-9000", in().fixedFrame(sized(9000)).fixedFrame(req.frame()).reply(0)},
		{"v6-request-reply-icmp-checksum-0000", in().frame(zeroChecksum()).reply(0)},
		{"v6-request-reply-icmp-checksum-ffff", in().frame(func() []byte {
			f := zeroChecksum()
			f[off6Checksum], f[off6Checksum+1] = 0xff, 0xff
			return f
		}()).reply(0)},
		{"v6-request-reply-echo-id-ffff", in().fixedFrame(echoRequest6(client6a, hop1MAC, 0xffff, 0xffff).frame()).reply(0)},
		{"v6-request-reply-echo-id-0", in().fixedFrame(echoRequest6(client6a, hop1MAC, 0, 0).frame()).reply(0)},
		{"v6-two-clients-same-echo-id", in().
			fixedFrame(echoRequest6(client6a, hop1MAC, 0x42, 1).frame()).
			fixedFrame(echoRequest6(client6b, hop2MAC, 0x42, 1).frame()).
			reply(1).reply(0)},
		{"v6-session-seqs", in().fixedFrame(req.frame()).resend(0, 2, 0).resend(0, 3, 0).reply(2).reply(0).reply(1)},
		{"v6-session-duplicate-request", in().fixedFrame(req.frame()).resend(0, 1, 0).reply(0).reply(1)},
		{"v6-session-second-echo-id", in().fixedFrame(req.frame()).resend(0, 1, fuzzNextID).reply(1).reply(0)},
		{"v6-session-new-hop", in().fixedFrame(req.frame()).resend(0, 2, fuzzNewHop).reply(0).reply(1)},
		{"v6-client-is-backend", in().fixedFrame(echoRequest6(be0.addr, be0.mac, 9, 1).frame()).reply(0)},
		{"v6-src-link-local", in().fixedFrame(from("fe80::1")).reply(0)},
		{"v6-many-sessions", func() fuzzInput {
			s := in()
			for i := range 12 {
				c := netip.AddrFrom16([16]byte{0xfd, 0, 0x01, 0xcb, 0, 1, 15: byte(i + 1)})
				s = s.fixedFrame(echoRequest6(c, hop1MAC, uint16(i), 1).frame())
			}
			for i := 11; i >= 0; i-- {
				s = s.reply(i)
			}
			return s
		}()},
		{"dual-stack-same-echo-id", in().fixedFrame(req4.frame()).fixedFrame(req.frame()).reply(1).reply(0)},
		{"dual-stack-nat-counter-wraps", func() fuzzInput {
			s := in().nat(0xfffe, 7)
			for i := range 3 {
				s = s.fixedFrame(echoRequest(client1, hop1MAC, uint16(0x100+i), 1).frame()).
					fixedFrame(echoRequest6(client6a, hop1MAC, uint16(0x100+i), 1).frame())
			}
			return s.reply(5).reply(4).reply(3).reply(2).reply(1).reply(0)
		}()},

		// ICMPv6 errors about forwarded requests.
		{"v6-error-unreachable", in().fixedFrame(req.frame()).opReply(fuzzAsError, 0, 0, 0)},
		{"v6-error-packet-too-big", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFragNeeded, 0, 0, 0)},
		{"v6-error-time-exceeded", in().snatAlt().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzTimeExceeded, 0, 0, 0)},
		{"v6-error-from-backend", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, off6Src+15, 0x50^0x0b)},
		{"v6-error-then-reply", in().fixedFrame(req.frame()).opReply(fuzzAsError, 0, 0, 0).reply(0)},
		{"v6-error-twice", in().fixedFrame(req.frame()).opReply(fuzzAsError, 0, 0, 0).opReply(fuzzAsError, 0, 0, 0)},
		{"v6-error-second-request", in().fixedFrame(req.frame()).resend(0, 2, 0).opReply(fuzzAsError, 1, 0, 0).reply(0)},
		{"v6-error-of-1514", in().fixedFrame(sized(1514)).opReply(fuzzAsError|fuzzFragNeeded, 0, 0, 0)},
		// Payload length 8+47: one byte short of the quoted echo header.
		{"v6-error-truncated", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, off6PayloadLen+1, 0x70^0x37).reply(0)},
		{"v6-error-spoofed-mac", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, offEthSrc+5, 0x10).reply(0)},
		{"v6-error-quote-not-echo", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, off6QuoteType, 128^129).reply(0)},
		{"v6-error-quote-hop-by-hop", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, off6QuoteNextHdr, 58).reply(0)},
		{"v6-error-quote-checksum-mismatch", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, off6QuoteChecksum+1, 0x01).reply(0)},
		{"v6-error-quote-payload-changed", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, off6QuotePayload+9, 0xff)},
		{"v6-error-bad-checksum", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix|fuzzBadICMP, 0, 0, 0).reply(0)},
		{"v6-error-ipv4-style-checksum", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix|fuzzBadIP, 0, 0, 0).reply(0)},
		{"v6-error-hop-limit-0", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, off6HopLimit, 64).reply(0)},
		{"v6-error-to-other-address", in().snatAlt().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, off6Dst+15, 0x10).reply(0)},
		{"v6-parameter-problem", in().fixedFrame(req.frame()).opReply(fuzzAsError|fuzzFix, 0, off6Type, 1^4).reply(0)},

		// Backends leaving and coming back, one family or both.
		{"v6-backends-down-then-request", in().backendOf(fuzzOnly6, 0, 0).backendOf(fuzzOnly6, 1, 0).backendOf(fuzzOnly6, 2, 0).
			fixedFrame(req.frame()).fixedFrame(req4.frame()).reply(0)},
		{"v4-backends-down-then-request", in().backendOf(fuzzOnly4, 0, 0).backendOf(fuzzOnly4, 1, 0).backendOf(fuzzOnly4, 2, 0).
			fixedFrame(req4.frame()).fixedFrame(req.frame()).reply(0)},
		{"v6-backends-neigh-unresolved", in().backendOf(fuzzOnly6, 0, backendActive).backendOf(fuzzOnly6, 1, backendActive).
			backendOf(fuzzOnly6, 2, backendActive).fixedFrame(req.frame())},
		{"v6-session-moves", in().fixedFrame(req.frame()).backendOf(fuzzOnly6, 0, 0).backendOf(fuzzOnly6, 1, 0).
			resend(0, 2, 0).reply(0).reply(1)},
		{"dual-stack-sessions-move", in().fixedFrame(req4.frame()).fixedFrame(req.frame()).backend(0, 0).backend(1, 0).
			resend(0, 2, 0).resend(1, 2, 0).reply(3).reply(2).reply(1).reply(0)},
		{"v6-backend-flaps", in().fixedFrame(req.frame()).backendOf(fuzzOnly6, 0, 0).backendOf(fuzzOnly6, 0, backendReady).
			backendOf(fuzzOnly6, 1, 0).backendOf(fuzzOnly6, 1, backendReady).backendOf(fuzzOnly6, 2, 0).
			backendOf(fuzzOnly6, 2, backendReady).resend(0, 2, 0).reply(1).reply(0)},

		// Replies that must not reach a client.
		{"v6-reply-duplicate", in().fixedFrame(req.frame()).reply(0).reply(0)},
		{"v6-reply-wrong-seq", in().fixedFrame(req.frame()).mutReply(0, off6EchoSeq+1, 0x01, true)},
		{"v6-reply-wrong-nat-id", in().fixedFrame(req.frame()).mutReply(0, off6EchoID+1, 0x01, true)},
		{"v6-reply-spoofed-mac", in().fixedFrame(req.frame()).mutReply(0, offEthSrc+5, 0x10, true).reply(0)},
		{"v6-reply-from-other-address", in().fixedFrame(req.frame()).mutReply(0, off6Src+15, 0x20, true).reply(0)},
		{"v6-reply-from-other-backend", in().fixedFrame(req.frame()).mutReply(0, off6Src+15, 0x0b^0x0c, true).reply(0)},
		{"v6-reply-payload-changed", in().fixedFrame(req.frame()).mutReply(0, off6Payload+9, 0xff, true).reply(0)},
		{"v6-reply-bad-icmp-checksum", in().fixedFrame(req.frame()).opReply(fuzzFix|fuzzBadICMP, 0, 0, 0).reply(0)},
		{"v6-reply-ipv4-style-checksum", in().fixedFrame(req.frame()).opReply(fuzzFix|fuzzBadIP, 0, 0, 0).reply(0)},
		{"v6-reply-hop-limit-0", in().fixedFrame(req.frame()).mutReply(0, off6HopLimit, 64, true).reply(0)},
		{"v6-reply-code1", in().fixedFrame(req.frame()).mutReply(0, off6Code, 1, true).reply(0)},
		{"v6-reply-payload-length-short", in().fixedFrame(req.frame()).mutReply(0, off6PayloadLen+1, 0x40^0x38, true).reply(0)},
		{"v6-reply-payload-length-beyond", in().fixedFrame(req.frame()).mutReply(0, off6PayloadLen+1, 0x08, true).reply(0)},
		{"v6-reply-to-other-address", in().snatAlt().fixedFrame(req.frame()).mutReply(0, off6Dst+15, 0x10, true).reply(0)},
		{"v6-reply-without-request", in().frame(replyTo6(req, be0, vip6, 0x7777).frame())},
		{"v6-reply-to-probe", in().frame(replyTo6(req, be0, vip6, uint16(IcmplbLayoutPROBE_ECHO_ID)).frame())},
		{"v6-reply-before-request", in().reply(0).fixedFrame(req.frame()).reply(0)},

		// Frames the program must leave alone, then a valid exchange.
		{"v6-hop-by-hop", in().fixedFrame(with(func(p *packet6) { p.ext, p.extFirst = hbh, 0 })).fixedFrame(req.frame()).reply(0)},
		{"v6-routing-header", in().fixedFrame(with(func(p *packet6) { p.ext, p.extFirst = []byte{58, 0, 4, 0, 0, 0, 0, 0}, 43 }))},
		{"v6-destination-options", in().fixedFrame(with(func(p *packet6) { p.ext, p.extFirst = hbh, 60 }))},
		{"v6-fragment-header", in().fixedFrame(with(func(p *packet6) { p.ext, p.extFirst = []byte{58, 0, 0, 1, 0, 0, 0, 9}, 44 }))},
		{"v6-atomic-fragment", in().fixedFrame(with(func(p *packet6) { p.ext, p.extFirst = []byte{58, 0, 0, 0, 0, 0, 0, 9}, 44 }))},
		{"v6-ndp-solicitation", in().fixedFrame(with(func(p *packet6) {
			p.hopLimit, p.icmpType, p.body = 255, 135, nd(0, vip6)
		})).fixedFrame(req.frame()).reply(0)},
		{"v6-ndp-solicitation-multicast", in().fixedFrame(with(func(p *packet6) {
			p.ethDst, p.dst = mac{0x33, 0x33, 0xff, 0, 1, 0}, netip.MustParseAddr("ff02::1:ff00:100")
			p.hopLimit, p.icmpType, p.body = 255, 135, nd(0, vip6)
		}))},
		{"v6-ndp-advertisement-from-backend", in().fixedFrame(with(func(p *packet6) {
			p.ethSrc, p.src, p.hopLimit, p.icmpType, p.body = be0.mac, be0.addr, 255, 136, nd(0x60, be0.addr)
		}))},
		{"v6-ndp-advertisement-to-snat", in().snatAlt().fixedFrame(with(func(p *packet6) {
			p.ethSrc, p.src, p.dst, p.hopLimit, p.icmpType, p.body = be0.mac, be0.addr, snat6Alt, 255, 136, nd(0x60, be0.addr)
		}))},
		{"v6-bad-icmp-checksum", in().rawFrame(fuzzFix|fuzzBadICMP, req.frame()).reply(0)},
		{"v6-ipv4-style-checksum", in().rawFrame(fuzzFix|fuzzBadIP, req.frame()).reply(0)},
		{"v6-payload-length-beyond-frame", in().fixedFrame(edit(func(f []byte) {
			binary.BigEndian.PutUint16(f[off6PayloadLen:], uint16(len(f)-54+1))
		}))},
		{"v6-payload-length-0", in().fixedFrame(edit(func(f []byte) { binary.BigEndian.PutUint16(f[off6PayloadLen:], 0) }))},
		{"v6-payload-length-7", in().fixedFrame(edit(func(f []byte) { binary.BigEndian.PutUint16(f[off6PayloadLen:], 7) }))},
		{"v6-cut-in-ip-header", in().frame(req.frame()[:14+39])},
		{"v6-cut-in-icmp-header", in().frame(req.frame()[:14+40+6])},
		{"v6-version-4", in().fixedFrame(edit(func(f []byte) { f[14] = 0x40 }))},
		{"v6-hop-limit-0", in().fixedFrame(with(func(p *packet6) { p.hopLimit = 0 })).reply(0)},
		{"v6-src-unspecified", in().fixedFrame(from("::")).reply(0)},
		{"v6-src-loopback", in().fixedFrame(from("::1")).reply(0)},
		{"v6-src-multicast", in().fixedFrame(from("ff02::1")).reply(0)},
		{"v6-src-4-mapped", in().fixedFrame(from("::ffff:10.0.0.1")).reply(0)},
		{"v6-src-vip", in().fixedFrame(from(vip6.String())).reply(0)},
		{"v6-src-snat", in().snatAlt().fixedFrame(from(snat6Alt.String())).reply(0)},
		{"v6-src-ipv4-vip-mapped", in().fixedFrame(from("::ffff:" + vip.String())).reply(0)},
		{"v6-src-mac-multicast", in().fixedFrame(with(func(p *packet6) { p.ethSrc = mac{0x33, 0x33, 0, 0, 0, 1} })).reply(0)},
		{"v6-dst-mac-multicast", in().fixedFrame(with(func(p *packet6) { p.ethDst = mac{0x33, 0x33, 0, 0, 0, 1} }))},
		{"v6-vlan-8021q", in().fixedFrame(func() []byte {
			f := req.frame()
			return append(append(bytes.Clone(f[:12]), 0x81, 0x00, 0, 10), f[12:]...)
		}()).fixedFrame(req.frame()).reply(0)},
		{"v6-to-other-address", in().fixedFrame(with(func(p *packet6) { p.dst = router6 }))},
		{"v6-to-snat", in().snatAlt().fixedFrame(with(func(p *packet6) { p.dst = snat6Alt }))},
		{"v6-to-ipv4-vip-mapped", in().fixedFrame(with(func(p *packet6) { p.dst = netip.MustParseAddr("::ffff:" + vip.String()) }))},
		{"v6-udp-to-vip", in().fixedFrame(edit(func(f []byte) { f[14+6] = unix.IPPROTO_UDP }))},
		{"ipv4-in-ipv6-ethertype", in().fixedFrame(func() []byte {
			f := req4.frame()
			binary.BigEndian.PutUint16(f[12:], 0x86dd)
			return f
		}())},
		{"ipv6-in-ipv4-ethertype", in().fixedFrame(func() []byte {
			f := req.frame()
			binary.BigEndian.PutUint16(f[12:], 0x0800)
			return f
		}())},
	}
}
