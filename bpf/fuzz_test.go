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
//     reasonTable gives it: XDP_TX goes with REQUEST_FORWARDED or
//     REPLY_RETURNED and no other verdict does;
//   - XDP_TX takes only a valid frame (Ethernet/IPv4 without options or
//     fragmentation, both checksums verifying, TTL above 0, an echo request to
//     the VIP from an address a client can have, an echo reply or an ICMP
//     error to the SNAT address) and leaves a valid frame of the same length
//     in which only the fields the NAT owns differ: MACs, IP addresses and
//     checksum, echo id and ICMP checksum (of an error: its quote's). The
//     source MAC is a valid unicast address;
//   - a forwarded request goes from the SNAT address to a backend that is up,
//     to its MAC, with a NAT id no other session holds at that backend, and a
//     session stays on its backend and NAT id while that backend stays up;
//   - a returned reply answers a request this input had forwarded (same
//     backend, NAT id and sequence number), came from the MAC that request
//     went to, and goes from the VIP to that request's client: its address,
//     echo id and MAC;
//   - a returned error quotes a request this input had forwarded, came from
//     the MAC that request went to, and goes from the VIP to that request's
//     client, quoting the request as the client sent it.
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
	return &fuzzHarnesses{newFuzzHarness(tb, vip), newFuzzHarness(tb, snatAlt)}
}

// play runs one fuzz input and returns how often each reason was counted.
func (hs *fuzzHarnesses) play(t *testing.T, data []byte) map[IcmplbReason]int {
	r := &fuzzRun{
		t:        t,
		flags:    [len(fuzzBackends)]IcmplbBackendFlags{backendReady, backendReady, backendReady},
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
//	        flags bit 0: SNAT is 10.0.0.10 (else the VIP); natNext starts
//	        every backend's NAT id counter, natKey seeds its permutation
//	ops     op(1) args; kind = op & 3, option bits above
//	  0 frame    len(2) bytes(len) pad(2) fill(1)
//	             a raw frame: bytes, then pad bytes of fill
//	  1 reply    sel(1) off(2) xor(1) the backend's reply to forwarded
//	             request sel (modulo their number) with byte off xored;
//	             with fuzzAsError, an ICMP error about it from the
//	             backend's next hop instead
//	  2 backend  b(1)                 backend (b&3)%3 gets flags (b>>2)&3
//	  3 resend   sel(1) seq(2)        forwarded request sel's original frame
//	             again, with sequence number seq
//
// Options: fuzzFix (frame, reply) recomputes both checksums before the run,
// so mutations get past checksum verification; then fuzzBadIP and
// fuzzBadICMP (all kinds) spoil one, so that one bit of the input turns a
// valid frame into one failing exactly one check. fuzzAsError (reply) sends
// a host unreachable, or with fuzzTimeExceeded a TTL exceeded, with
// fuzzFragNeeded a fragmentation needed. fuzzNewHop (resend) sends
// from another MAC, fuzzNextID (resend) with the echo id plus one. Padding
// keeps large frames small in the input: the fuzzer mutates bytes at
// random, and should mostly hit headers and operations.
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

	// Bounds on one input's work, so that an execution stays short.
	fuzzMaxOps = 64
)

// fuzzBackends are the backends every input starts with, all up, each
// behind a third of the Maglev slots.
var fuzzBackends = [...]backendInfo{backendA, backendB, backendC}

type fuzzHarness struct {
	*harness
	keys []uint32
	vals []uint64
	cpus int
}

func newFuzzHarness(f testing.TB, snat netip.Addr) *fuzzHarness {
	cfg := testConfig(snat)
	// Larger than any input's sessions, so that no LRU eviction makes a
	// run depend on earlier inputs.
	cfg.ConntrackSize = 4096
	cfg.InflightSize = 4096
	h := newHarness(f, cfg)
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		f.Fatal(err)
	}
	fh := &fuzzHarness{harness: h, cpus: cpus}
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
	fh.pointMaglevActive(t, [len(fuzzBackends)]IcmplbBackendFlags{backendReady, backendReady, backendReady})
	for i, be := range fuzzBackends {
		fh.setFlags(t, i, backendReady)
		pool := IcmplbNatPool{Next: uint32(natNext)}
		for k := range pool.Key {
			pool.Key[k] = (uint32(natKey)+1)*0x9e3779b1 ^ uint32(k)*0x85ebca6b ^ be.idx
		}
		if err := fh.objs.NatPools.Put(be.idx, pool); err != nil {
			t.Fatalf("nat_pools[%d]: %v", be.idx, err)
		}
	}
}

// pointMaglevActive spreads the Maglev slots over the active backends, as
// the agent does, so that a session whose backend left can move.
func (fh *fuzzHarness) pointMaglevActive(t testing.TB, flags [len(fuzzBackends)]IcmplbBackendFlags) {
	t.Helper()
	var idxs []uint32
	for i, be := range fuzzBackends {
		if flags[i]&backendActive != 0 {
			idxs = append(idxs, be.idx)
		}
	}
	if len(idxs) > 0 {
		fh.pointMaglev(t, idxs...)
	}
}

func (fh *fuzzHarness) setFlags(t *testing.T, i int, flags IcmplbBackendFlags) {
	t.Helper()
	be := fuzzBackends[i]
	v := IcmplbBackend{Addr: Addr(be.addr), Mac: be.mac, Flags: flags, Vip: Addr(fh.cfg.VIP)}
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
	backend int // index into fuzzBackends
	natID   uint16
	step    int
}

// fuzzForward is a request the program forwarded (XDP_TX).
type fuzzForward struct {
	step    int
	session fuzzSession
	hop     mac // the request's source MAC: where its reply must go
	backend int
	natID   uint16
	seq     uint16
	in, out []byte
}

type fuzzRun struct {
	t        *testing.T
	fh       *fuzzHarness
	flags    [len(fuzzBackends)]IcmplbBackendFlags
	changed  [len(fuzzBackends)]int // step of each backend's last flag change
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
			f, what := fuzzReplyTo(fw.out), "reply"
			if op[0]&fuzzAsError != 0 {
				f, what = fuzzErrorAbout(fw.out, op[0]), "error"
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
			r.history = append(r.history, fmt.Sprintf("step %d: backend %v flags %#x", r.step, fuzzBackends[i].addr, flags))
			if r.flags[i] != flags {
				r.flags[i] = flags
				r.changed[i] = r.step
			}
			r.fh.setFlags(r.t, i, flags)
			r.fh.pointMaglevActive(r.t, r.flags)
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
			copy(f[40:], a[1:3])
			if op[0]&fuzzNewHop != 0 {
				f[11] ^= 0x80
			}
			if op[0]&fuzzNextID != 0 {
				binary.BigEndian.PutUint16(f[38:], fw.session.echoID+1)
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

// fuzzChecksums applies the checksum options of op to f in place: fuzzFix
// recomputes the IPv4 header and ICMP checksums (after up to two VLAN tags)
// as far as the frame's own header lengths reach, then fuzzBadIP and
// fuzzBadICMP flip a bit of either.
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
	if off+2 > len(f) || binary.BigEndian.Uint16(f[off:]) != 0x0800 {
		return
	}
	ip := f[off+2:]
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
	fuzzSignal(kind, verdict, reason)
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

// fuzzNATOwned are the offsets a NAT rewrite may change: MACs, IP checksum
// and addresses, ICMP checksum and echo id.
var fuzzNATOwned = func() (owned [42]bool) {
	for _, r := range [][2]int{{0, 12}, {24, 34}, {36, 40}} {
		for i := r[0]; i < r[1]; i++ {
			owned[i] = true
		}
	}
	return owned
}()

func addrAt(f []byte, off int) netip.Addr { return netip.AddrFrom4([4]byte(f[off : off+4])) }

func macAt(f []byte, off int) mac { return mac(f[off : off+6]) }

func validUnicast(m mac) bool { return m[0]&1 == 0 && m != mac{} }

// bogusSource: addresses no client's request can come from (RFC 1122
// 3.2.1.3 and the balancer's own), to which a reply would go astray.
func (r *fuzzRun) bogusSource(a netip.Addr) bool {
	b := a.As4()
	return b[0] == 0 || b[0] == 127 || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) ||
		a == r.fh.cfg.VIP || a == r.fh.cfg.SNAT
}

// checkTX returns what is wrong with sending in as out, counted as reason,
// or "".
func (r *fuzzRun) checkTX(in, out []byte, reason IcmplbReason) string {
	if len(out) != len(in) {
		return fmt.Sprintf("output is %d bytes, input %d", len(out), len(in))
	}
	// The input must have been one the balancer owns.
	if len(in) < 42 {
		return fmt.Sprintf("sent a %d-byte frame, too short for IPv4 + ICMP echo", len(in))
	}
	if et := binary.BigEndian.Uint16(in[12:]); et != 0x0800 {
		return fmt.Sprintf("sent a frame of ethertype %#04x", et)
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
		return r.checkError(in, out, totLen)
	}
	if in[23] != unix.IPPROTO_ICMP || in[35] != 0 || (in[34] != 8 && in[34] != 0) {
		return fmt.Sprintf("sent protocol %d, ICMP type %d code %d: not an echo", in[23], in[34], in[35])
	}

	for i := range out {
		if in[i] != out[i] && (i >= len(fuzzNATOwned) || !fuzzNATOwned[i]) {
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
	if in[34] == 8 {
		if reason != IcmplbReasonREASON_REQUEST_FORWARDED {
			return fmt.Sprintf("sent an echo request counted as reason %d", reason)
		}
		return r.checkRequest(in, out)
	}
	if reason != IcmplbReasonREASON_REPLY_RETURNED {
		return fmt.Sprintf("sent an echo reply counted as reason %d", reason)
	}
	return r.checkReply(in, out)
}

func (r *fuzzRun) checkRequest(in, out []byte) string {
	cfg := r.fh.cfg
	if dst := addrAt(in, 30); dst != cfg.VIP {
		return fmt.Sprintf("forwarded a request to %v, not the VIP %v", dst, cfg.VIP)
	}
	client := addrAt(in, 26)
	if r.bogusSource(client) {
		return fmt.Sprintf("forwarded a request from %v, an address no client can have", client)
	}
	if src := addrAt(out, 26); src != cfg.SNAT {
		return fmt.Sprintf("forwarded request from %v, want the SNAT address %v", src, cfg.SNAT)
	}
	bi := slices.IndexFunc(fuzzBackends[:], func(be backendInfo) bool { return be.addr == addrAt(out, 30) })
	if bi < 0 {
		return fmt.Sprintf("forwarded a request to %v, not a backend", addrAt(out, 30))
	}
	be := fuzzBackends[bi]
	if r.flags[bi] != backendReady {
		return fmt.Sprintf("forwarded a request to backend %v, which has flags %#x (not up)", be.addr, r.flags[bi])
	}
	if dst := macAt(out, 0); dst != be.mac {
		return fmt.Sprintf("forwarded a request for backend %v to MAC %v, want its MAC %v", be.addr, dst, be.mac)
	}

	s := fuzzSession{client: client, echoID: binary.BigEndian.Uint16(in[38:])}
	natID := binary.BigEndian.Uint16(out[38:])
	if p, ok := r.sessions[s]; ok && r.changed[p.backend] < p.step && (p.backend != bi || p.natID != natID) {
		return fmt.Sprintf("session %v id %#04x left backend %v NAT id %#04x (step %d) for %v NAT id %#04x while it stayed up",
			s.client, s.echoID, fuzzBackends[p.backend].addr, p.natID, p.step, be.addr, natID)
	}
	key := fuzzNAT{backend: be.idx, natID: natID}
	if owner, ok := r.natOwner[key]; ok && owner != s {
		return fmt.Sprintf("gave NAT id %#04x at backend %v to session %v id %#04x; session %v id %#04x holds it",
			natID, be.addr, s.client, s.echoID, owner.client, owner.echoID)
	}
	r.natOwner[key] = s
	r.sessions[s] = fuzzPin{backend: bi, natID: natID, step: r.step}
	r.forwards = append(r.forwards, fuzzForward{
		step: r.step, session: s, hop: macAt(in, 6), backend: bi, natID: natID,
		seq: binary.BigEndian.Uint16(in[40:]), in: bytes.Clone(in), out: bytes.Clone(out),
	})
	r.history[len(r.history)-1] += fmt.Sprintf(" (%v id %#04x seq %d -> %v NAT id %#04x)",
		s.client, s.echoID, binary.BigEndian.Uint16(in[40:]), be.addr, natID)
	return ""
}

func (r *fuzzRun) checkReply(in, out []byte) string {
	cfg := r.fh.cfg
	if dst := addrAt(in, 30); dst != cfg.SNAT {
		return fmt.Sprintf("returned a reply sent to %v, not the SNAT address %v", dst, cfg.SNAT)
	}
	from, natID, seq := addrAt(in, 26), binary.BigEndian.Uint16(in[38:]), binary.BigEndian.Uint16(in[40:])
	var answers []fuzzForward
	for _, fw := range r.forwards {
		if fuzzBackends[fw.backend].addr == from && fw.natID == natID && fw.seq == seq {
			answers = append(answers, fw)
		}
	}
	if len(answers) == 0 {
		return fmt.Sprintf("returned a reply from %v NAT id %#04x seq %d, which answers no forwarded request", from, natID, seq)
	}
	var problems []string
	for _, fw := range answers {
		be := fuzzBackends[fw.backend]
		var p string
		switch {
		case macAt(in, 6) != be.mac:
			p = fmt.Sprintf("came from MAC %v, not backend %v's %v", macAt(in, 6), be.addr, be.mac)
		case addrAt(out, 26) != cfg.VIP:
			p = fmt.Sprintf("left from %v, not the VIP %v", addrAt(out, 26), cfg.VIP)
		case addrAt(out, 30) != fw.session.client || binary.BigEndian.Uint16(out[38:]) != fw.session.echoID:
			p = fmt.Sprintf("went to %v id %#04x, not the requester %v id %#04x",
				addrAt(out, 30), binary.BigEndian.Uint16(out[38:]), fw.session.client, fw.session.echoID)
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

// fuzzErrorOwned are the offsets the translation of an error may change:
// MACs, the IP checksum and addresses, and in the quote its IP checksum and
// addresses, its ICMP checksum and echo id. The error's own ICMP checksum
// covers no address of its header and a quote whose sum is unchanged.
var fuzzErrorOwned = func() (owned [14 + 20 + 8 + 28]bool) {
	for _, r := range [][2]int{{0, 12}, {24, 34}, {52, 62}, {64, 68}} {
		for i := r[0]; i < r[1]; i++ {
			owned[i] = true
		}
	}
	return owned
}()

func (r *fuzzRun) checkError(in, out []byte, totLen int) string {
	cfg := r.fh.cfg
	if totLen < 20+8+28 {
		return fmt.Sprintf("returned an error of tot_len %d, too short to quote IPv4 + an echo header", totLen)
	}
	for i := range out {
		if in[i] != out[i] && (i >= len(fuzzErrorOwned) || !fuzzErrorOwned[i]) {
			return fmt.Sprintf("changed byte %d of an error, which the translation does not own:\n%s", i, diffFrames(in, out))
		}
	}
	if dst := addrAt(in, 30); dst != cfg.SNAT {
		return fmt.Sprintf("returned an error sent to %v, not the SNAT address %v", dst, cfg.SNAT)
	}
	if in[42] != 0x45 || in[51] != unix.IPPROTO_ICMP || in[62] != 8 || in[63] != 0 || addrAt(in, 54) != cfg.SNAT {
		return fmt.Sprintf("returned an error quoting %x, not an echo request from the SNAT address", in[42:70])
	}
	if (checksum(in[42:62]) == 0) != (checksum(out[42:62]) == 0) {
		return "the quoted IP header's checksum verifies in one of input and output only"
	}
	from, natID, seq := addrAt(in, 58), binary.BigEndian.Uint16(in[66:]), binary.BigEndian.Uint16(in[68:])
	var problems []string
	for _, fw := range r.forwards {
		if fuzzBackends[fw.backend].addr != from || fw.natID != natID || fw.seq != seq {
			continue
		}
		be := fuzzBackends[fw.backend]
		norm := func(c uint16) uint16 {
			if c == 0xffff {
				return 0
			}
			return c
		}
		var p string
		switch {
		case macAt(in, 6) != be.mac:
			p = fmt.Sprintf("came from MAC %v, not backend %v's %v", macAt(in, 6), be.addr, be.mac)
		case addrAt(out, 26) != cfg.VIP || addrAt(out, 58) != cfg.VIP:
			p = fmt.Sprintf("left from %v quoting a request to %v, not the VIP %v", addrAt(out, 26), addrAt(out, 58), cfg.VIP)
		case addrAt(out, 30) != fw.session.client || addrAt(out, 54) != fw.session.client ||
			binary.BigEndian.Uint16(out[66:]) != fw.session.echoID:
			p = fmt.Sprintf("went to %v quoting %v id %#04x, not the requester %v id %#04x",
				addrAt(out, 30), addrAt(out, 54), binary.BigEndian.Uint16(out[66:]), fw.session.client, fw.session.echoID)
		case macAt(out, 0) != fw.hop || !validUnicast(fw.hop):
			p = fmt.Sprintf("went to MAC %v, not the requester's unicast %v", macAt(out, 0), fw.hop)
		case norm(binary.BigEndian.Uint16(out[64:])) != norm(binary.BigEndian.Uint16(fw.in[36:])):
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
var fuzzCover [64]uint8

// fuzzSignal turns what the program did into Go coverage, the only feedback
// the fuzzer gets: each operation kind and verdict, and each reason, has its
// own branch, so an input that reaches a new one is kept and mutated further.
func fuzzSignal(kind byte, verdict uint32, reason IcmplbReason) {
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
	switch reason {
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
	return seeds
}
