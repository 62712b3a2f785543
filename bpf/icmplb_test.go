// SPDX-License-Identifier: MIT

package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/icmplb/icmplb/internal/testenv"
	"golang.org/x/sys/unix"
)

// Verdicts as BPF_PROG_RUN reports them: the kernel's enum xdp_action, which
// bpf2go exports from the test object.
const (
	xdpDrop = uint32(IcmplbTestXdpActionXDP_DROP)
	xdpPass = uint32(IcmplbTestXdpActionXDP_PASS)
	xdpTX   = uint32(IcmplbTestXdpActionXDP_TX)
)

type mac [6]byte

func (m mac) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

var (
	vip      = netip.MustParseAddr("10.0.0.100")
	snatAlt  = netip.MustParseAddr("10.0.0.10")
	client1  = netip.MustParseAddr("10.0.0.1")
	client2  = netip.MustParseAddr("10.0.0.4")
	stranger = netip.MustParseAddr("10.0.0.200")

	lbMAC   = mac{0x02, 0, 0, 0, 0, 0x64}
	hop1MAC = mac{0x02, 0, 0, 0, 0, 0x01}
	hop2MAC = mac{0x02, 0, 0, 0, 0, 0x04}

	backendA = backendInfo{idx: 2, addr: netip.MustParseAddr("10.0.0.11"), mac: mac{0x02, 0, 0, 0, 0, 0x0b}}
	backendB = backendInfo{idx: 5, addr: netip.MustParseAddr("10.0.0.12"), mac: mac{0x02, 0, 0, 0, 0, 0x0c}}
	backendC = backendInfo{idx: 7, addr: netip.MustParseAddr("10.0.0.13"), mac: mac{0x02, 0, 0, 0, 0, 0x0d}}
)

// Short names for the flags of struct backend.
const (
	backendActive = IcmplbBackendFlagsBACKEND_F_ACTIVE
	backendNeigh  = IcmplbBackendFlagsBACKEND_F_NEIGH
	backendReady  = IcmplbBackendFlagsBACKEND_F_UP
)

type backendInfo struct {
	idx  uint32
	addr netip.Addr
	mac  mac
}

// packet describes an Ethernet + IPv4 frame; frame() serialises it with both
// checksums computed from scratch, so expected outputs never borrow the
// program's incremental arithmetic.
type packet struct {
	ethDst, ethSrc mac
	tos            uint8
	ipID           uint16
	frag           uint16
	ttl            uint8
	proto          uint8
	src, dst       netip.Addr
	options        []byte
	icmpType       uint8
	icmpCode       uint8
	echoID, seq    uint16
	payload        []byte
	// l4 replaces the ICMP message when set (TCP, UDP).
	l4 []byte
	// trailer is link-layer padding after the IP datagram.
	trailer []byte
}

func defaultPayload() []byte {
	p := make([]byte, 56)
	for i := range p {
		p[i] = byte(0x30 + i)
	}
	return p
}

func echoRequest(from netip.Addr, hop mac, echoID, seq uint16) packet {
	return packet{
		ethDst:   lbMAC,
		ethSrc:   hop,
		tos:      0x10,
		ipID:     0xbeef,
		frag:     0x4000, // DF, as Linux ping sets it: must not count as a fragment
		ttl:      61,
		proto:    unix.IPPROTO_ICMP,
		src:      from,
		dst:      vip,
		icmpType: 8,
		echoID:   echoID,
		seq:      seq,
		payload:  defaultPayload(),
	}
}

// replyTo is what backend be answers to req after NAT: addressed to snat and
// carrying the NAT id.
func replyTo(req packet, be backendInfo, snat netip.Addr, natID uint16) packet {
	r := req
	r.ethDst = lbMAC
	r.ethSrc = be.mac
	r.tos = 0
	r.ipID = 0x4321
	r.frag = 0
	r.ttl = 64
	r.src = be.addr
	r.dst = snat
	r.icmpType = 0
	r.echoID = natID
	return r
}

func (p packet) frame() []byte {
	l4 := p.l4
	if l4 == nil {
		l4 = make([]byte, 8+len(p.payload))
		l4[0] = p.icmpType
		l4[1] = p.icmpCode
		binary.BigEndian.PutUint16(l4[4:], p.echoID)
		binary.BigEndian.PutUint16(l4[6:], p.seq)
		copy(l4[8:], p.payload)
		binary.BigEndian.PutUint16(l4[2:], checksum(l4))
	}
	hlen := 20 + len(p.options)
	ip := make([]byte, hlen)
	ip[0] = 4<<4 | byte(hlen/4)
	ip[1] = p.tos
	binary.BigEndian.PutUint16(ip[2:], uint16(hlen+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], p.ipID)
	binary.BigEndian.PutUint16(ip[6:], p.frag)
	ip[8] = p.ttl
	ip[9] = p.proto
	src, dst := p.src.As4(), p.dst.As4()
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	copy(ip[20:], p.options)
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))

	f := ethHeader(p.ethDst, p.ethSrc, 0x0800)
	f = append(f, ip...)
	f = append(f, l4...)
	return append(f, p.trailer...)
}

func (p packet) frameWith(mut func(p *packet)) []byte {
	mut(&p)
	return p.frame()
}

func ethHeader(dst, src mac, etherType uint16) []byte {
	f := make([]byte, 14, 128)
	copy(f[0:], dst[:])
	copy(f[6:], src[:])
	binary.BigEndian.PutUint16(f[12:], etherType)
	return f
}

// checksum is the RFC 1071 Internet checksum: the complement of the
// ones'-complement sum of all 16-bit words.
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// fieldAt names the header field of an Ethernet/IPv4/ICMP frame that byte off
// belongs to, so a mismatch reads as "ip dst" rather than "offset 31".
func fieldAt(f []byte, off int) string {
	switch {
	case off < 6:
		return "eth dst"
	case off < 12:
		return "eth src"
	case off < 14:
		return "ethertype"
	}
	if len(f) < 34 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		return fmt.Sprintf("L3 byte %d", off-14)
	}
	ipOff := off - 14
	hlen := int(f[14]&0xf) * 4
	names := []string{"ip version/ihl", "ip tos", "ip tot_len", "ip tot_len", "ip id", "ip id",
		"ip frag_off", "ip frag_off", "ip ttl", "ip protocol", "ip checksum", "ip checksum",
		"ip src", "ip src", "ip src", "ip src", "ip dst", "ip dst", "ip dst", "ip dst"}
	if ipOff < 20 {
		return names[ipOff]
	}
	if ipOff < hlen {
		return fmt.Sprintf("ip options byte %d", ipOff-20)
	}
	if totLen := int(binary.BigEndian.Uint16(f[16:])); ipOff >= totLen {
		return fmt.Sprintf("trailer byte %d", ipOff-totLen)
	}
	icmpNames := []string{"icmp type", "icmp code", "icmp checksum", "icmp checksum",
		"icmp id", "icmp id", "icmp seq", "icmp seq"}
	if i := ipOff - hlen; i < 8 {
		return icmpNames[i]
	} else {
		return fmt.Sprintf("payload byte %d", i-8)
	}
}

func diffFrames(want, got []byte) string {
	var b strings.Builder
	if len(want) != len(got) {
		fmt.Fprintf(&b, "length: want %d, got %d\n", len(want), len(got))
	}
	var fields []string
	for i := 0; i < min(len(want), len(got)); i++ {
		if want[i] == got[i] {
			continue
		}
		if fields == nil {
			fmt.Fprintf(&b, "first difference at offset %d (%s): want %#02x, got %#02x\n",
				i, fieldAt(want, i), want[i], got[i])
		}
		if f := fieldAt(want, i); !slices.Contains(fields, f) {
			fields = append(fields, f)
		}
	}
	if len(fields) > 0 {
		fmt.Fprintf(&b, "differing fields: %s\n", strings.Join(fields, ", "))
	}
	fmt.Fprintf(&b, "want % x\ngot  % x", want, got)
	return b.String()
}

func requireFrame(t *testing.T, what string, want, got []byte) {
	t.Helper()
	if !bytes.Equal(want, got) {
		t.Fatalf("%s differs from the expected frame:\n%s", what, diffFrames(want, got))
	}
}

// requireChecksumsVerify reports a broken checksum as such before the byte
// comparison reports it as a mismatch.
func requireChecksumsVerify(t *testing.T, f []byte) {
	t.Helper()
	if len(f) < 34+8 {
		t.Fatalf("frame of %d bytes is too short to hold IPv4 + ICMP echo", len(f))
	}
	hlen := int(f[14]&0xf) * 4
	totLen := int(binary.BigEndian.Uint16(f[16:]))
	if c := checksum(f[14 : 14+hlen]); c != 0 {
		t.Errorf("IP header checksum does not verify (residue %#04x)", c)
	}
	if c := checksum(f[14+hlen : 14+totLen]); c != 0 {
		t.Errorf("ICMP checksum does not verify (residue %#04x)", c)
	}
}

func requireRoot(t testing.TB) {
	t.Helper()
	testenv.Privileged(t)
}

// testCfg is a data plane's settings and the one service tests give it.
type testCfg struct {
	Config
	VIP, SNAT netip.Addr
}

func testConfig(snat netip.Addr) testCfg {
	return testCfg{VIP: vip, SNAT: snat, Config: Config{
		MaglevSize:      13,
		MaxServices:     4,
		MaxBackends:     16,
		ConntrackSize:   1024,
		NATIdle:         60 * time.Second,
		LossTimeout:     time.Second,
		InflightSize:    1024,
		TraceBufferSize: 4096,
	}}
}

// reasonTable is the verdict each reason must come with and the name the
// agent exports it under (balancer.Verdicts; checked in verdicts_test.go).
var reasonTable = [IcmplbReasonREASON_MAX]struct {
	verdict uint32
	name    string
}{
	IcmplbReasonREASON_REQUEST_FORWARDED:    {xdpTX, "request_forwarded"},
	IcmplbReasonREASON_REPLY_RETURNED:       {xdpTX, "reply_returned"},
	IcmplbReasonREASON_NOT_IP:               {xdpPass, "not_ip"},
	IcmplbReasonREASON_NOT_ICMP:             {xdpPass, "not_icmp"},
	IcmplbReasonREASON_NOT_ECHO:             {xdpPass, "not_echo"},
	IcmplbReasonREASON_NOT_VIP:              {xdpPass, "not_vip"},
	IcmplbReasonREASON_FRAGMENT:             {xdpPass, "fragment"},
	IcmplbReasonREASON_IP_OPTIONS:           {xdpPass, "ip_options"},
	IcmplbReasonREASON_MALFORMED:            {xdpPass, "malformed"},
	IcmplbReasonREASON_CONNTRACK_MISS:       {xdpPass, "conntrack_miss"},
	IcmplbReasonREASON_NEIGH_UNRESOLVED:     {xdpPass, "neigh_unresolved"},
	IcmplbReasonREASON_NAT_EXHAUSTED:        {xdpPass, "nat_exhausted"},
	IcmplbReasonREASON_NO_BACKEND:           {xdpDrop, "no_backend"},
	IcmplbReasonREASON_NOT_UNICAST:          {xdpPass, "not_unicast"},
	IcmplbReasonREASON_VLAN:                 {xdpPass, "vlan"},
	IcmplbReasonREASON_BOGUS_SOURCE:         {xdpPass, "bogus_source"},
	IcmplbReasonREASON_TTL_ZERO:             {xdpPass, "ttl_zero"},
	IcmplbReasonREASON_SESSION_MAC_MISMATCH: {xdpDrop, "session_mac_mismatch"},
	IcmplbReasonREASON_REPLY_SPOOFED:        {xdpPass, "reply_spoofed"},
	IcmplbReasonREASON_REPLY_MISMATCH:       {xdpPass, "reply_mismatch"},
	IcmplbReasonREASON_NAT_COLLISION:        {xdpDrop, "nat_collision"},
	IcmplbReasonREASON_INFLIGHT_FULL:        {xdpDrop, "inflight_full"},
	IcmplbReasonREASON_PROBE_REPLY:          {xdpPass, "probe_reply"},
	IcmplbReasonREASON_ALL_DOWN:             {xdpPass, "all_down"},
	IcmplbReasonREASON_ERROR_RETURNED:       {xdpTX, "error_returned"},
	IcmplbReasonREASON_ERROR_UNMATCHED:      {xdpPass, "error_unmatched"},
	IcmplbReasonREASON_ERROR_FOREIGN:        {xdpPass, "error_foreign"},
	IcmplbReasonREASON_ERROR_TRUNCATED:      {xdpPass, "error_truncated"},
}

// ReasonVerdict exports reasonTable to the external test package, which may
// import the balancer (this package may not: the balancer imports it).
func ReasonVerdict(r IcmplbReason) (verdict, name string) {
	e := reasonTable[r]
	return map[uint32]string{xdpDrop: "drop", xdpPass: "pass", xdpTX: "tx"}[e.verdict], e.name
}

type harness struct {
	cfg  testCfg
	objs IcmplbObjects
	// table is the service's Maglev table, at index 0 of maglev_tables.
	table    *ebpf.Map
	backends map[uint32]backendInfo
	// pools holds the NAT id keys written per backend index, so that tests
	// can predict ids with natPermute, their own model of the kernel's.
	pools map[uint32]IcmplbNatPool
}

// newHarness loads a fresh collection so that no test sees another's
// conntrack, NAT allocator or counters.
func newHarness(t testing.TB, cfg testCfg) *harness {
	t.Helper()
	requireRoot(t)
	spec, err := NewSpec(cfg.Config)
	if err != nil {
		t.Fatalf("NewSpec: %v", err)
	}
	h := &harness{cfg: cfg, backends: map[uint32]backendInfo{}, pools: map[uint32]IcmplbNatPool{}}
	if err := spec.LoadAndAssign(&h.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("load: %+v", ve)
		}
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { h.objs.Close() })
	h.table, err = ebpf.NewMap(spec.Maps[IcmplbMapMaglevTables].InnerMap)
	if err != nil {
		t.Fatalf("create the Maglev table: %v", err)
	}
	t.Cleanup(func() { h.table.Close() })
	if err := h.objs.MaglevTables.Put(uint32(0), h.table); err != nil {
		t.Fatalf("maglev_tables[0]: %v", err)
	}
	h.addService(t, cfg.VIP, cfg.SNAT, 0)
	return h
}

// addService writes a service as the agent does: its entry, its SNAT
// address, and both addresses as sources no client can have.
func (h *harness) addService(t testing.TB, vip, snat netip.Addr, table uint32) {
	t.Helper()
	if err := h.objs.Services.Put(Addr(vip), IcmplbService{Snat: Addr(snat), Table: table}); err != nil {
		t.Fatalf("services[%v]: %v", vip, err)
	}
	if err := h.objs.SnatAddrs.Put(Addr(snat), uint32(1)); err != nil {
		t.Fatalf("snat_addrs[%v]: %v", snat, err)
	}
	for _, a := range []netip.Addr{vip, snat} {
		if err := h.objs.SrcDeny.Put(Addr(a), uint8(1)); err != nil {
			t.Fatalf("src_deny[%v]: %v", a, err)
		}
	}
}

// loadTestObjects loads the test-only programs (testprogs.c) with the RTT
// bounds NewSpec gives the product.
func loadTestObjects(t testing.TB) *IcmplbTestObjects {
	t.Helper()
	requireRoot(t)
	spec, err := LoadIcmplbTest()
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Variables[IcmplbTestVarCfgRttBounds].Set(RTTBounds()); err != nil {
		t.Fatalf("set %s: %v", IcmplbTestVarCfgRttBounds, err)
	}
	// The stateless DNAT serves the harness's VIP with backends A and B,
	// IPv4 addresses as its __be32 words.
	word := func(a netip.Addr) uint32 { b := a.As4(); return binary.NativeEndian.Uint32(b[:]) }
	for name, v := range map[string]any{
		IcmplbTestVarDnatVip:     word(vip),
		IcmplbTestVarDnatSnat:    word(vip),
		IcmplbTestVarDnatBackend: [2]uint32{word(backendA.addr), word(backendB.addr)},
		IcmplbTestVarDnatMac:     [2][6]byte{backendA.mac, backendB.mac},
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			t.Fatalf("set %s: %v", name, err)
		}
	}
	var objs IcmplbTestObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("load test programs: %v", err)
	}
	t.Cleanup(func() { objs.Close() })
	return &objs
}

// setBackend writes what the agent writes for a backend: its slot, its
// address index while it is active, and, for an index or address new to
// the slot, a NAT pool with random keys and a random starting counter.
func (h *harness) setBackend(t testing.TB, be backendInfo, flags IcmplbBackendFlags) {
	t.Helper()
	v := IcmplbBackend{Addr: Addr(be.addr), Mac: be.mac, Flags: flags, Vip: Addr(h.cfg.VIP)}
	if err := h.objs.Backends.Put(be.idx, v); err != nil {
		t.Fatalf("backends[%d]: %v", be.idx, err)
	}
	if flags&backendActive != 0 {
		if err := h.objs.BackendAddrs.Put(Addr(be.addr), be.idx); err != nil {
			t.Fatalf("backend_addrs[%v]: %v", be.addr, err)
		}
	} else if err := h.objs.BackendAddrs.Delete(Addr(be.addr)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("delete backend_addrs[%v]: %v", be.addr, err)
	}
	if old, ok := h.backends[be.idx]; !ok || old.addr != be.addr {
		pool := IcmplbNatPool{Next: rand.Uint32()}
		for i := range pool.Key {
			pool.Key[i] = rand.Uint32()
		}
		h.setPool(t, be.idx, pool)
	}
	h.backends[be.idx] = be
}

func (h *harness) setPool(t testing.TB, idx uint32, pool IcmplbNatPool) {
	t.Helper()
	if err := h.objs.NatPools.Put(idx, pool); err != nil {
		t.Fatalf("nat_pools[%d]: %v", idx, err)
	}
	h.pools[idx] = pool
	t.Logf("nat_pools[%d] = keys %#08x, next %d", idx, pool.Key, pool.Next)
}

// setNATNext sets the counter of backend idx's NAT pool, keeping its keys.
func (h *harness) setNATNext(t testing.TB, idx uint32, next uint32) {
	t.Helper()
	pool := h.pool(t, idx)
	pool.Next = next
	if err := h.objs.NatPools.Put(idx, pool); err != nil {
		t.Fatalf("nat_pools[%d]: %v", idx, err)
	}
	h.pools[idx] = pool
}

// pool is backend idx's NAT pool as the kernel holds it (its counter
// moves with every counted id).
func (h *harness) pool(t testing.TB, idx uint32) IcmplbNatPool {
	t.Helper()
	if _, ok := h.pools[idx]; !ok {
		t.Fatalf("test bug: no NAT pool for backend %d", idx)
	}
	var pool IcmplbNatPool
	if err := h.objs.NatPools.Lookup(idx, &pool); err != nil {
		t.Fatalf("nat_pools[%d]: %v", idx, err)
	}
	return pool
}

// poolNext reads the counter of backend idx's NAT pool from the kernel.
func (h *harness) poolNext(t testing.TB, idx uint32) uint32 {
	t.Helper()
	var pool IcmplbNatPool
	if err := h.objs.NatPools.Lookup(idx, &pool); err != nil {
		t.Fatalf("nat_pools[%d]: %v", idx, err)
	}
	return pool.Next
}

// natID is the NAT id backend idx's pool counts out for counter value n,
// to a session whose home is taken.
func (h *harness) natID(t testing.TB, idx uint32, n uint32) uint16 {
	t.Helper()
	return natCounted(h.pool(t, idx).Key, n)
}

// homeID is the home NAT id at backend idx of the session of client and
// echoID to vip, if it has one.
func (h *harness) homeID(t testing.TB, idx uint32, vip, client netip.Addr, echoID uint16) (uint16, bool) {
	t.Helper()
	return natHome(h.pool(t, idx), vip, client, echoID)
}

// aHome is a NAT id of the home half of backend idx's pool, from n: for
// tests that need some home id to force (forceNATID).
func (h *harness) aHome(t testing.TB, idx uint32, n uint16) uint16 {
	t.Helper()
	return natPermute(h.pool(t, idx).Key, n&(natHomes-1))
}

// forceNATID makes id the NAT id req's session gets when it opens at
// backend idx. An id of the home half (aHome) becomes the session's home,
// by the pool's salt (which moves every other session's home too: those
// away from their home are found through ct_fwd, as in production after a
// change of Maglev table), with a sweep if a session holds it. An id of
// the counted half becomes the counter's
// next, and the session's home is taken by a request of another session,
// still awaited.
func (h *harness) forceNATID(t testing.TB, idx uint32, id uint16, req packet) {
	t.Helper()
	pool := h.pool(t, idx)
	x := natUnpermute(pool.Key, id)
	if x < natHomes {
		h.forceHome(t, idx, id, req)
		// A home is never taken over, only freed by the sweeper: an idle
		// session there (an earlier one of the test) goes as it would.
		var held IcmplbRevVal
		if h.objs.CtRev.Lookup(IcmplbRevKey{Backend: Addr(h.backends[idx].addr), NatId: Net16(id)}, &held) == nil {
			h.sweep(t)
		}
		return
	}
	pool.Next = uint32(x &^ natHomes)
	h.setPool(t, idx, pool)
	h.holdHome(t, idx, req)
}

// forceHome makes id, of the home half of backend idx's pool (aHome), the
// home of req's session there, by the pool's salt.
func (h *harness) forceHome(t testing.TB, idx uint32, id uint16, req packet) {
	t.Helper()
	pool := h.pool(t, idx)
	x := natUnpermute(pool.Key, id)
	// The salt is mixed in before the home's bits are taken: search for
	// one (about 32768 tries).
	for pool.Salt = 0; ; pool.Salt++ {
		if c, _ := natHomeValue(pool, req.dst, req.src, req.echoID); c == x {
			break
		}
		if pool.Salt == 1<<24 {
			t.Fatalf("test bug: no salt gives home value %#04x", x)
		}
	}
	h.setPool(t, idx, pool)
	if got, ok := h.homeID(t, idx, req.dst, req.src, req.echoID); !ok || got != id {
		t.Fatalf("test bug: forcing home %#04x gave %#04x (%v)", id, got, ok)
	}
}

// holdHome gives the home of req's session at backend idx, if it has one,
// to another session with a request still awaited, so that req's session
// opens with a counted id.
func (h *harness) holdHome(t testing.TB, idx uint32, req packet) {
	t.Helper()
	home, ok := h.homeID(t, idx, req.dst, req.src, req.echoID)
	if !ok {
		return
	}
	now := monotonicNow(t)
	holder := IcmplbRevVal{Client: Addr(netip.MustParseAddr("192.0.2.77")), EchoId: Net16(77), BackendIdx: idx,
		Vip: Addr(req.dst), LastSeenNs: now}
	holder.SentNs[0], holder.Seq[0] = now, Net16(4)
	if err := h.objs.CtRev.Put(IcmplbRevKey{Backend: Addr(h.backends[idx].addr), NatId: Net16(home)}, holder); err != nil {
		t.Fatalf("hold home %#04x: %v", home, err)
	}
}

// pointMaglev fills every slot, cycling through idxs.
func (h *harness) pointMaglev(t testing.TB, idxs ...uint32) {
	t.Helper()
	for slot := uint32(0); slot < h.cfg.MaglevSize; slot++ {
		if err := h.table.Put(slot, idxs[int(slot)%len(idxs)]); err != nil {
			t.Fatalf("maglev[%d]: %v", slot, err)
		}
	}
}

func (h *harness) stats(t testing.TB) [IcmplbReasonREASON_MAX]uint64 {
	t.Helper()
	var out [IcmplbReasonREASON_MAX]uint64
	for r := range IcmplbReasonREASON_MAX {
		var perCPU []uint64
		if err := h.objs.Stats.Lookup(uint32(r), &perCPU); err != nil {
			t.Fatalf("stats[%d]: %v", r, err)
		}
		for _, n := range perCPU {
			out[r] += n
		}
	}
	return out
}

func (h *harness) backendCounters(t testing.TB, idx uint32) IcmplbBackendCounters {
	t.Helper()
	var perCPU []IcmplbBackendCounters
	if err := h.objs.BackendStats.Lookup(idx, &perCPU); err != nil {
		t.Fatalf("backend_stats[%d]: %v", idx, err)
	}
	var sum IcmplbBackendCounters
	for _, c := range perCPU {
		sum.Requests += c.Requests
		sum.RequestBytes += c.RequestBytes
		sum.Replies += c.Replies
		sum.ReplyBytes += c.ReplyBytes
		sum.RttSumNs += c.RttSumNs
		sum.Late += c.Late
		sum.Unmatched += c.Unmatched
		sum.Moved += c.Moved
		for k, n := range c.Errors {
			sum.Errors[k] += n
		}
	}
	return sum
}

// traffic keeps the packet and byte counts of c, which the NAT tests check;
// the measurement fields have tests of their own (rtt_test.go).
func traffic(c IcmplbBackendCounters) IcmplbBackendCounters {
	return IcmplbBackendCounters{Requests: c.Requests, RequestBytes: c.RequestBytes, Replies: c.Replies, ReplyBytes: c.ReplyBytes}
}

func monotonicNow(t testing.TB) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatalf("clock_gettime: %v", err)
	}
	return uint64(ts.Nano())
}

// run executes the program once on a private copy of in (test runs with
// repeat would reuse a rewritten buffer) and checks the verdict and that
// exactly the wanted reason counter moved, by one.
func (h *harness) run(t *testing.T, in []byte, wantVerdict uint32, wantReason IcmplbReason) []byte {
	t.Helper()
	if wantReason >= IcmplbReasonREASON_MAX || reasonTable[wantReason].verdict != wantVerdict {
		t.Fatalf("test bug: reason %d does not come with verdict %d", wantReason, wantVerdict)
	}
	before := h.stats(t)
	verdict, out := h.runRaw(t, in)
	after := h.stats(t)
	if verdict != wantVerdict {
		t.Errorf("verdict %d, want %d", verdict, wantVerdict)
	}
	for r := range IcmplbReasonREASON_MAX {
		want := uint64(0)
		if r == wantReason {
			want = 1
		}
		if d := after[r] - before[r]; d != want {
			t.Errorf("stats[%s] moved by %d, want %d (want reason %s)", reasonTable[r].name, d, want, reasonTable[wantReason].name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// runRaw runs the program once on a copy of in, checking nothing: for loops
// that set up state by the thousand, where run's counter reads would cost
// most of the time.
func (h *harness) runRaw(t testing.TB, in []byte) (uint32, []byte) {
	t.Helper()
	opts := ebpf.RunOptions{Data: bytes.Clone(in), DataOut: make([]byte, len(in)+256)}
	verdict, err := h.objs.Icmplb.Run(&opts)
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN of a %d-byte frame: %v", len(in), err)
	}
	return verdict, opts.DataOut
}

// requireUntouched runs a frame the balancer must leave to the kernel.
func (h *harness) requireUntouched(t *testing.T, in []byte, wantVerdict uint32, wantReason IcmplbReason) {
	t.Helper()
	out := h.run(t, in, wantVerdict, wantReason)
	requireFrame(t, "output of a frame that must not be modified", in, out)
}

// forward sends req and checks it left rewritten towards one of the
// configured backends; it returns that backend and the NAT id it was given.
func (h *harness) forward(t *testing.T, req packet) (backendInfo, uint16) {
	t.Helper()
	in := req.frame()
	out := h.run(t, in, xdpTX, IcmplbReasonREASON_REQUEST_FORWARDED)
	if len(out) != len(in) {
		t.Fatalf("output is %d bytes, input %d:\n%s", len(out), len(in), diffFrames(in, out))
	}
	var be backendInfo
	found := false
	for _, b := range h.backends {
		if a := b.addr.As4(); bytes.Equal(out[30:34], a[:]) {
			be, found = b, true
		}
	}
	if !found {
		t.Fatalf("request went to %v, not a configured backend:\n%s",
			netip.AddrFrom4([4]byte(out[30:34])), diffFrames(in, out))
	}
	natID := binary.BigEndian.Uint16(out[38:40])
	requireChecksumsVerify(t, out)
	requireFrame(t, "forwarded request", h.forwardedFrame(req, be, natID), out)
	return be, natID
}

// forwardedFrame is req as it must leave towards be with natID.
func (h *harness) forwardedFrame(req packet, be backendInfo, natID uint16) []byte {
	want := req
	want.ethSrc = req.ethDst
	want.ethDst = be.mac
	want.src = h.cfg.SNAT
	want.dst = be.addr
	want.echoID = natID
	return want.frame()
}

// returnedFrame is the backend's reply rep as it must leave for the client.
func (h *harness) returnedFrame(rep packet, client netip.Addr, echoID uint16, hop mac) []byte {
	want := rep
	want.ethSrc = rep.ethDst
	want.ethDst = hop
	want.src = h.cfg.VIP
	want.dst = client
	want.echoID = echoID
	return want.frame()
}

// returnReply sends the backend's reply and checks it left restored for the
// client: from the VIP, with the client's echo id, to the client's hop MAC.
func (h *harness) returnReply(t *testing.T, rep packet, client netip.Addr, echoID uint16, hop mac) {
	t.Helper()
	in := rep.frame()
	out := h.run(t, in, xdpTX, IcmplbReasonREASON_REPLY_RETURNED)
	if len(out) != len(in) {
		t.Fatalf("output is %d bytes, input %d:\n%s", len(out), len(in), diffFrames(in, out))
	}
	requireChecksumsVerify(t, out)
	requireFrame(t, "returned reply", h.returnedFrame(rep, client, echoID, hop), out)
}

// requireConntrack checks both directions of a session's conntrack state.
func (h *harness) requireConntrack(t *testing.T, client netip.Addr, echoID uint16, hop mac, be backendInfo, natID uint16) {
	t.Helper()
	var fv IcmplbFwdVal
	fk := IcmplbFwdKey{Client: Addr(client), Vip: Addr(h.cfg.VIP), EchoId: Net16(echoID)}
	if err := h.objs.CtFwd.Lookup(fk, &fv); err != nil {
		t.Fatalf("ct_fwd[%v, id %#04x]: %v", client, echoID, err)
	}
	if got, want := (IcmplbFwdVal{Backend: fv.Backend, BackendIdx: fv.BackendIdx, NatId: fv.NatId, ClientMac: fv.ClientMac}),
		(IcmplbFwdVal{Backend: Addr(be.addr), BackendIdx: be.idx, NatId: Net16(natID), ClientMac: hop}); got != want {
		t.Errorf("ct_fwd[%v, id %#04x] = {backend %v, idx %d, nat id %#04x, mac %v}, want {%v, %d, %#04x, %v}",
			client, echoID, AddrFrom(fv.Backend), fv.BackendIdx, Host16(fv.NatId), mac(fv.ClientMac),
			be.addr, be.idx, natID, hop)
	}

	var rv IcmplbRevVal
	rk := IcmplbRevKey{Backend: Addr(be.addr), NatId: Net16(natID)}
	if err := h.objs.CtRev.Lookup(rk, &rv); err != nil {
		t.Fatalf("ct_rev[%v, nat id %#04x]: %v", be.addr, natID, err)
	}
	if AddrFrom(rv.Client) != client || Host16(rv.EchoId) != echoID || rv.BackendIdx != be.idx {
		t.Errorf("ct_rev[%v, nat id %#04x] = {client %v, id %#04x, idx %d}, want {%v, %#04x, %d}",
			be.addr, natID, AddrFrom(rv.Client), Host16(rv.EchoId), rv.BackendIdx, client, echoID, be.idx)
	}
	if now := monotonicNow(t); rv.LastSeenNs == 0 || rv.LastSeenNs > now {
		t.Errorf("ct_rev last_seen_ns %d, want a past CLOCK_MONOTONIC time (now %d)", rv.LastSeenNs, now)
	}
}

// requireNoSession checks that a request left no forward conntrack entry.
func (h *harness) requireNoSession(t *testing.T, client netip.Addr, echoID uint16) {
	t.Helper()
	var fv IcmplbFwdVal
	if err := h.objs.CtFwd.Lookup(IcmplbFwdKey{Client: Addr(client), Vip: Addr(h.cfg.VIP), EchoId: Net16(echoID)}, &fv); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("ct_fwd[%v, id %#04x] = %+v (err %v), want no session", client, echoID, fv, err)
	}
}

func inflightKey(be backendInfo, natID, seq uint16) IcmplbInflightKey {
	return IcmplbInflightKey{Backend: Addr(be.addr), NatId: Net16(natID), Seq: Net16(seq)}
}

// ringOf returns the ring slot of request (be, natID, seq) in its session's
// ct_rev entry, with the entry, if the request is there and not older than
// twice the loss timeout (past that it is forgotten where it lies).
func (h *harness) ringOf(t testing.TB, be backendInfo, natID, seq uint16) (IcmplbRevVal, int, bool) {
	t.Helper()
	var rv IcmplbRevVal
	err := h.objs.CtRev.Lookup(IcmplbRevKey{Backend: Addr(be.addr), NatId: Net16(natID)}, &rv)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return rv, 0, false
	}
	if err != nil {
		t.Fatalf("ct_rev[%v, %#04x]: %v", be.addr, natID, err)
	}
	i := int(seq) & (int(IcmplbLayoutINFLIGHT_RING) - 1)
	sent := rv.SentNs[i]
	return rv, i, sent != 0 && Host16(rv.Seq[i]) == seq && sent+2*uint64(h.cfg.LossTimeout) >= monotonicNow(t)
}

// inflight returns request (be, natID, seq) awaiting its reply, if any, from
// its session's ring or else the inflight map, as an inflight map value.
func (h *harness) inflight(t testing.TB, be backendInfo, natID, seq uint16) (IcmplbInflightVal, bool) {
	t.Helper()
	if rv, i, ok := h.ringOf(t, be, natID, seq); ok {
		return IcmplbInflightVal{SentNs: rv.SentNs[i], BackendIdx: rv.BackendIdx, Client: rv.Client, EchoId: rv.EchoId,
			ReplyCsum: rv.ReplyCsum[i], ClientMac: rv.ClientMac, Sampled: uint16(rv.Sampled>>i) & 1, Vip: rv.Vip, Snat: rv.Snat}, true
	}
	return h.overflowed(t, be, natID, seq)
}

// overflowed returns request (be, natID, seq) from the inflight map, where
// requests that found their ring slot taken wait.
func (h *harness) overflowed(t testing.TB, be backendInfo, natID, seq uint16) (IcmplbInflightVal, bool) {
	t.Helper()
	var iv IcmplbInflightVal
	err := h.objs.Inflight.Lookup(inflightKey(be, natID, seq), &iv)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return iv, false
	}
	if err != nil {
		t.Fatalf("inflight[%v, %#04x, seq %d]: %v", be.addr, natID, seq, err)
	}
	return iv, true
}

// requireInflight checks that req, forwarded to be with natID, waits for
// the reply that backend be would send, whose ICMP checksum the test
// computes from scratch (0xffff and 0 are one ones'-complement zero).
func (h *harness) requireInflight(t *testing.T, req packet, be backendInfo, natID uint16) IcmplbInflightVal {
	t.Helper()
	iv, ok := h.inflight(t, be, natID, req.seq)
	if !ok {
		t.Fatalf("no in-flight entry for %v nat id %#04x seq %d", be.addr, natID, req.seq)
	}
	f := replyTo(req, be, h.cfg.SNAT, natID).frame()
	wantCsum := binary.BigEndian.Uint16(f[36:])
	if wantCsum == 0xffff {
		wantCsum = 0
	}
	if AddrFrom(iv.Client) != req.src || Host16(iv.EchoId) != req.echoID || mac(iv.ClientMac) != req.ethSrc ||
		iv.BackendIdx != be.idx || Host16(iv.ReplyCsum) != wantCsum {
		t.Errorf("inflight[%v, %#04x, seq %d] = {client %v, id %#04x, mac %v, idx %d, reply csum %#04x}, want {%v, %#04x, %v, %d, %#04x}",
			be.addr, natID, req.seq, AddrFrom(iv.Client), Host16(iv.EchoId), mac(iv.ClientMac), iv.BackendIdx, Host16(iv.ReplyCsum),
			req.src, req.echoID, req.ethSrc, be.idx, wantCsum)
	}
	if now := monotonicNow(t); iv.SentNs == 0 || iv.SentNs > now {
		t.Errorf("inflight sent_ns %d, want a past CLOCK_MONOTONIC time (now %d)", iv.SentNs, now)
	}
	return iv
}

// sweep runs the sweeper program once, as the agent does periodically.
func (h *harness) sweep(t testing.TB) {
	t.Helper()
	if _, err := h.objs.Sweep.Run(SweepRun(SweepAll)); err != nil {
		t.Fatalf("run sweep: %v", err)
	}
}

// inflightCount counts the requests awaiting replies: in the inflight map,
// and in the sessions' rings those not older than twice the loss timeout.
func (h *harness) inflightCount(t testing.TB) int {
	t.Helper()
	var (
		k  IcmplbInflightKey
		v  IcmplbInflightVal
		rk IcmplbRevKey
		rv IcmplbRevVal
		n  int
	)
	it := h.objs.Inflight.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate inflight: %v", err)
	}
	now := monotonicNow(t)
	rit := h.objs.CtRev.Iterate()
	for rit.Next(&rk, &rv) {
		for _, sent := range rv.SentNs {
			if sent != 0 && sent+2*uint64(h.cfg.LossTimeout) >= now {
				n++
			}
		}
	}
	if err := rit.Err(); err != nil {
		t.Fatalf("iterate ct_rev: %v", err)
	}
	return n
}

// backdate moves the send time of an in-flight request d into the past, so
// that tests of the loss timeouts need not sleep through them.
func (h *harness) backdate(t testing.TB, be backendInfo, natID, seq uint16, d time.Duration) {
	t.Helper()
	if rv, i, ok := h.ringOf(t, be, natID, seq); ok {
		rv.SentNs[i] -= uint64(d)
		if err := h.objs.CtRev.Put(IcmplbRevKey{Backend: Addr(be.addr), NatId: Net16(natID)}, rv); err != nil {
			t.Fatalf("backdate ring: %v", err)
		}
		return
	}
	iv, ok := h.overflowed(t, be, natID, seq)
	if !ok {
		t.Fatalf("no in-flight entry for %v nat id %#04x seq %d to backdate", be.addr, natID, seq)
	}
	iv.SentNs -= uint64(d)
	if err := h.objs.Inflight.Put(inflightKey(be, natID, seq), iv); err != nil {
		t.Fatalf("backdate inflight: %v", err)
	}
}

func TestRequestForwarded(t *testing.T) {
	h := newHarness(t, testConfig(vip))
	h.setBackend(t, backendA, backendReady)
	h.pointMaglev(t, backendA.idx)

	req := echoRequest(client1, hop1MAC, 0x1234, 1)
	be, natID := h.forward(t, req)
	if be != backendA {
		t.Fatalf("request went to backend %d, want %d", be.idx, backendA.idx)
	}
	h.requireConntrack(t, client1, 0x1234, hop1MAC, backendA, natID)
	h.requireInflight(t, req, backendA, natID)
	want := IcmplbBackendCounters{Requests: 1, RequestBytes: uint64(len(req.frame()))}
	if got := traffic(h.backendCounters(t, backendA.idx)); got != want {
		t.Errorf("backend_stats[%d] = %+v, want %+v", backendA.idx, got, want)
	}
	if sent, answered := epochTotals(t, h, backendA.idx); sent != 1 || answered != 0 {
		t.Errorf("epochs count %d sent, %d answered; want 1, 0", sent, answered)
	}
}

func TestSessionStaysOnBackend(t *testing.T) {
	h := newHarness(t, testConfig(vip))
	for _, be := range []backendInfo{backendA, backendB, backendC} {
		h.setBackend(t, be, backendReady)
	}
	h.pointMaglev(t, backendA.idx, backendB.idx, backendC.idx)

	first, natID := h.forward(t, echoRequest(client1, hop1MAC, 0x0101, 1))
	second, natID2 := h.forward(t, echoRequest(client1, hop1MAC, 0x0101, 2))
	if second != first || natID2 != natID {
		t.Fatalf("second request went to backend %d with NAT id %#04x, first to %d with %#04x",
			second.idx, natID2, first.idx, natID)
	}

	// Conntrack, not the table, decides where a known session goes.
	other := backendA
	if first == backendA {
		other = backendB
	}
	h.pointMaglev(t, other.idx)
	third, natID3 := h.forward(t, echoRequest(client1, hop1MAC, 0x0101, 3))
	if third != first || natID3 != natID {
		t.Fatalf("after the table changed, request went to backend %d with NAT id %#04x, want %d with %#04x",
			third.idx, natID3, first.idx, natID)
	}
	h.requireConntrack(t, client1, 0x0101, hop1MAC, first, natID)
	if got := h.backendCounters(t, first.idx).Requests; got != 3 {
		t.Errorf("backend_stats[%d].requests = %d, want 3", first.idx, got)
	}

	fresh, _ := h.forward(t, echoRequest(client1, hop1MAC, 0x0102, 1))
	if fresh != other {
		t.Errorf("new session went to backend %d, want %d (the only one in the table)", fresh.idx, other.idx)
	}
}

func TestSessionMovesWhenBackendLeaves(t *testing.T) {
	requireRoot(t)
	successor := backendInfo{idx: backendA.idx, addr: netip.MustParseAddr("10.0.0.21"), mac: mac{0x02, 0, 0, 0, 0, 0x15}}
	tests := []struct {
		name string
		// leave takes backendA out of service and returns where the session
		// must go next.
		leave func(t *testing.T, h *harness) backendInfo
	}{
		{"removed", func(t *testing.T, h *harness) backendInfo {
			h.setBackend(t, backendA, 0)
			h.pointMaglev(t, backendB.idx)
			return backendB
		}},
		{"neighbour lost", func(t *testing.T, h *harness) backendInfo {
			h.setBackend(t, backendA, backendActive)
			h.pointMaglev(t, backendB.idx)
			return backendB
		}},
		// A NAT id allocated at the old address means nothing to the new one.
		{"index reused for another address", func(t *testing.T, h *harness) backendInfo {
			h.setBackend(t, successor, backendReady)
			return successor
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, testConfig(vip))
			h.setBackend(t, backendA, backendReady)
			h.setBackend(t, backendB, backendReady)
			h.pointMaglev(t, backendA.idx)

			h.forward(t, echoRequest(client1, hop1MAC, 0x0707, 1))
			next := tt.leave(t, h)
			req := echoRequest(client1, hop1MAC, 0x0707, 2)
			be, natID := h.forward(t, req)
			if be != next {
				t.Fatalf("session went to %v (index %d), want %v (index %d)", be.addr, be.idx, next.addr, next.idx)
			}
			h.requireConntrack(t, client1, 0x0707, hop1MAC, next, natID)
			h.returnReply(t, replyTo(req, next, vip, natID), client1, 0x0707, hop1MAC)
		})
	}
}

func TestReplyReturned(t *testing.T) {
	h := newHarness(t, testConfig(vip))
	h.setBackend(t, backendA, backendReady)
	h.pointMaglev(t, backendA.idx)

	req := echoRequest(client1, hop1MAC, 0x1234, 9)
	_, natID := h.forward(t, req)
	rep := replyTo(req, backendA, vip, natID)
	h.returnReply(t, rep, client1, 0x1234, hop1MAC)

	want := IcmplbBackendCounters{
		Requests:     1,
		RequestBytes: uint64(len(req.frame())),
		Replies:      1,
		ReplyBytes:   uint64(len(rep.frame())),
	}
	if got := traffic(h.backendCounters(t, backendA.idx)); got != want {
		t.Errorf("backend_stats[%d] = %+v, want %+v", backendA.idx, got, want)
	}
}

func TestIdentifierCollision(t *testing.T) {
	h := newHarness(t, testConfig(vip))
	h.setBackend(t, backendA, backendReady)
	h.pointMaglev(t, backendA.idx)

	const echoID = 0x0042
	req1 := echoRequest(client1, hop1MAC, echoID, 1)
	req2 := echoRequest(client2, hop2MAC, echoID, 1)
	_, nat1 := h.forward(t, req1)
	_, nat2 := h.forward(t, req2)
	if nat1 == nat2 {
		t.Fatalf("clients %v and %v share NAT id %#04x on one backend", client1, client2, nat1)
	}
	h.requireConntrack(t, client1, echoID, hop1MAC, backendA, nat1)
	h.requireConntrack(t, client2, echoID, hop2MAC, backendA, nat2)

	// Replies in the opposite order, so a "last session wins" bug shows.
	h.returnReply(t, replyTo(req2, backendA, vip, nat2), client2, echoID, hop2MAC)
	h.returnReply(t, replyTo(req1, backendA, vip, nat1), client1, echoID, hop1MAC)
}

func TestTrailingEthernetPadding(t *testing.T) {
	h := newHarness(t, testConfig(vip))
	h.setBackend(t, backendA, backendReady)
	h.pointMaglev(t, backendA.idx)

	req := echoRequest(client1, hop1MAC, 0x5a5a, 3)
	req.payload = []byte{1, 2, 3, 4}
	// Padding bytes are not always zero on the wire; non-zero ones would show
	// up in the checksums if they were wrongly summed.
	req.trailer = bytes.Repeat([]byte{0xa5}, 60-14-20-8-len(req.payload))
	if n := len(req.frame()); n != 60 {
		t.Fatalf("test frame is %d bytes, want the 60-byte minimum", n)
	}
	_, natID := h.forward(t, req)
	rep := replyTo(req, backendA, vip, natID)
	h.returnReply(t, rep, client1, 0x5a5a, hop1MAC)

	want := IcmplbBackendCounters{Requests: 1, RequestBytes: 60, Replies: 1, ReplyBytes: 60}
	if got := traffic(h.backendCounters(t, backendA.idx)); got != want {
		t.Errorf("backend_stats[%d] = %+v, want %+v (frame length, padding included)", backendA.idx, got, want)
	}
}

func TestSNATDifferentFromVIP(t *testing.T) {
	h := newHarness(t, testConfig(snatAlt))
	h.setBackend(t, backendA, backendReady)
	h.pointMaglev(t, backendA.idx)

	req := echoRequest(client1, hop1MAC, 0x0909, 1)
	_, natID := h.forward(t, req)
	h.returnReply(t, replyTo(req, backendA, snatAlt, natID), client1, 0x0909, hop1MAC)

	t.Run("reply to VIP", func(t *testing.T) {
		h.requireUntouched(t, replyTo(req, backendA, vip, natID).frame(), xdpPass, IcmplbReasonREASON_NOT_VIP)
	})
	t.Run("request to SNAT", func(t *testing.T) {
		r := req
		r.dst = snatAlt
		h.requireUntouched(t, r.frame(), xdpPass, IcmplbReasonREASON_NOT_VIP)
	})
}

func TestNoBackend(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name  string
		setup func(t *testing.T, h *harness)
	}{
		{"inactive backend", func(t *testing.T, h *harness) {
			h.setBackend(t, backendA, backendNeigh)
			h.pointMaglev(t, backendA.idx)
		}},
		{"empty backend slot", func(t *testing.T, h *harness) {
			h.pointMaglev(t, backendB.idx)
		}},
		{"index past backends map", func(t *testing.T, h *harness) {
			h.pointMaglev(t, h.cfg.MaxBackends)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, testConfig(vip))
			tt.setup(t, h)
			h.requireUntouched(t, echoRequest(client1, hop1MAC, 1, 1).frame(), xdpDrop, IcmplbReasonREASON_NO_BACKEND)
		})
	}
}

func TestFrameShorterThanEthernet(t *testing.T) {
	h := newHarness(t, testConfig(vip))
	in := ethHeader(lbMAC, hop1MAC, 0x0800)[:13]
	before := h.stats(t)
	verdict, err := h.objs.Icmplb.Run(&ebpf.RunOptions{Data: in, DataOut: make([]byte, 256)})
	if err != nil {
		// The kernel refuses test input shorter than ETH_HLEN, so the program's
		// Ethernet bounds check cannot be reached from here.
		if !errors.Is(err, unix.EINVAL) {
			t.Fatalf("BPF_PROG_TEST_RUN of a 13-byte frame: %v, want EINVAL", err)
		}
		if after := h.stats(t); after != before {
			t.Fatalf("rejected run moved counters: %v -> %v", before, after)
		}
		return
	}
	after := h.stats(t)
	if verdict != xdpPass || after[IcmplbReasonREASON_MALFORMED]-before[IcmplbReasonREASON_MALFORMED] != 1 {
		t.Fatalf("13-byte frame: verdict %d, stats %v -> %v; want pass, MALFORMED", verdict, before, after)
	}
}

func TestPassUntouched(t *testing.T) {
	requireRoot(t)
	req := echoRequest(client1, hop1MAC, 0x1234, 1)
	var homeA uint16 // the NAT id of req's session at A, once a setup opened it
	reqFrame := func(mut func(p *packet)) []byte {
		p := req
		mut(&p)
		return p.frame()
	}
	// refreshIPChecksum keeps a deliberately odd header otherwise valid.
	refreshIPChecksum := func(f []byte) []byte {
		hlen := max(int(f[14]&0xf)*4, 20)
		f[24], f[25] = 0, 0
		binary.BigEndian.PutUint16(f[24:], checksum(f[14:14+hlen]))
		return f
	}
	arp := append(ethHeader(mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, hop1MAC, 0x0806),
		0, 1, 8, 0, 6, 4, 0, 1, // Ethernet/IPv4 request
		2, 0, 0, 0, 0, 1, 10, 0, 0, 1,
		0, 0, 0, 0, 0, 0, 10, 0, 0, 100)
	ipv6 := append(ethHeader(lbMAC, hop1MAC, 0x86dd),
		0x60, 0, 0, 0, 0, 8, 58, 64, // ICMPv6, payload 8
		0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
		0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64,
		128, 0, 0, 0, 0x12, 0x34, 0, 1)
	// An echo request to the VIP, byte for byte, behind a tag.
	vlan := func(tpid uint16) []byte {
		f := req.frame()
		tagged := append(ethHeader(lbMAC, hop1MAC, tpid), 0, 10, 0x08, 0x00)
		return append(tagged, f[14:]...)
	}

	tests := []struct {
		name   string
		frame  func() []byte
		setup  func(t *testing.T, h *harness)
		reason IcmplbReason
	}{
		{name: "ARP", frame: func() []byte { return arp }, reason: IcmplbReasonREASON_NOT_IP},
		{name: "IPv6 echo to no VIP", frame: func() []byte { return ipv6 }, reason: IcmplbReasonREASON_NOT_VIP},
		{name: "802.1Q tagged echo", frame: func() []byte { return vlan(0x8100) }, reason: IcmplbReasonREASON_VLAN},
		{name: "802.1ad tagged echo", frame: func() []byte { return vlan(0x88a8) }, reason: IcmplbReasonREASON_VLAN},
		{name: "802.1ad tag around 802.1Q tag", reason: IcmplbReasonREASON_VLAN, frame: func() []byte {
			f := vlan(0x8100)
			return append(append(ethHeader(lbMAC, hop1MAC, 0x88a8), 0, 20), f[12:]...)
		}},
		// A tag with no room for its inner ethertype: the tag alone decides.
		{name: "802.1Q tag cut short", reason: IcmplbReasonREASON_VLAN, frame: func() []byte {
			return append(ethHeader(lbMAC, hop1MAC, 0x8100), 0, 10)
		}},
		{name: "echo to VIP in a broadcast frame", reason: IcmplbReasonREASON_NOT_UNICAST, frame: func() []byte {
			return reqFrame(func(p *packet) { p.ethDst = mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} })
		}},
		{name: "echo to VIP in a multicast frame", reason: IcmplbReasonREASON_NOT_UNICAST, frame: func() []byte {
			return reqFrame(func(p *packet) { p.ethDst = mac{0x01, 0x00, 0x5e, 0, 0, 1} })
		}},
		{name: "TCP SYN to VIP", reason: IcmplbReasonREASON_NOT_ICMP, frame: func() []byte {
			return reqFrame(func(p *packet) {
				p.proto = unix.IPPROTO_TCP
				p.l4 = []byte{0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0}
			})
		}},
		{name: "UDP to VIP", reason: IcmplbReasonREASON_NOT_ICMP, frame: func() []byte {
			return reqFrame(func(p *packet) {
				p.proto = unix.IPPROTO_UDP
				p.l4 = []byte{0x9c, 0x40, 0, 53, 0, 12, 0, 0, 'p', 'i', 'n', 'g'}
			})
		}},
		{name: "destination unreachable to VIP quoting no datagram", reason: IcmplbReasonREASON_ERROR_FOREIGN, frame: func() []byte {
			return reqFrame(func(p *packet) { p.icmpType, p.icmpCode, p.echoID, p.seq = 3, 1, 0, 0 })
		}},
		{name: "timestamp request to VIP", reason: IcmplbReasonREASON_NOT_ECHO, frame: func() []byte {
			return reqFrame(func(p *packet) { p.icmpType, p.payload = 13, make([]byte, 12) })
		}},
		{name: "echo request code 1", reason: IcmplbReasonREASON_NOT_ECHO, frame: func() []byte {
			return reqFrame(func(p *packet) { p.icmpCode = 1 })
		}},
		{name: "echo reply code 1", reason: IcmplbReasonREASON_NOT_ECHO, frame: func() []byte {
			return replyTo(req, backendA, vip, 0).frameWith(func(p *packet) { p.icmpCode = 1 })
		}},
		{name: "echo request to another address", reason: IcmplbReasonREASON_NOT_VIP, frame: func() []byte {
			return reqFrame(func(p *packet) { p.dst = stranger })
		}},
		{name: "echo reply to another address", reason: IcmplbReasonREASON_NOT_VIP, frame: func() []byte {
			return replyTo(req, backendA, stranger, 0).frame()
		}},
		{name: "Ethernet header only", reason: IcmplbReasonREASON_MALFORMED, frame: func() []byte {
			return ethHeader(lbMAC, hop1MAC, 0x0800)
		}},
		{name: "shorter than IP header", reason: IcmplbReasonREASON_MALFORMED, frame: func() []byte {
			return req.frame()[:14+19]
		}},
		{name: "shorter than ICMP header", reason: IcmplbReasonREASON_MALFORMED, frame: func() []byte {
			// A datagram whose tot_len honestly covers only half an echo header.
			f := req.frame()[:14+20+4]
			binary.BigEndian.PutUint16(f[16:], 24)
			return refreshIPChecksum(f)
		}},
		{name: "frame cut inside ICMP header", reason: IcmplbReasonREASON_MALFORMED, frame: func() []byte {
			return reqFrame(func(p *packet) { p.payload = nil })[:14+20+6]
		}},
		{name: "tot_len beyond frame", reason: IcmplbReasonREASON_MALFORMED, frame: func() []byte {
			f := req.frame()
			binary.BigEndian.PutUint16(f[16:], uint16(len(f)-14+1))
			return refreshIPChecksum(f)
		}},
		{name: "tot_len shorter than IP header", reason: IcmplbReasonREASON_MALFORMED, frame: func() []byte {
			f := req.frame()
			binary.BigEndian.PutUint16(f[16:], 19)
			return refreshIPChecksum(f)
		}},
		{name: "IP version 6 in IPv4 ethertype", reason: IcmplbReasonREASON_MALFORMED, frame: func() []byte {
			f := req.frame()
			f[14] = 6<<4 | 5
			return refreshIPChecksum(f)
		}},
		{name: "ihl 4", reason: IcmplbReasonREASON_MALFORMED, frame: func() []byte {
			f := req.frame()
			f[14] = 4<<4 | 4
			return refreshIPChecksum(f)
		}},
		{name: "ihl 6 with options", reason: IcmplbReasonREASON_IP_OPTIONS, frame: func() []byte {
			return reqFrame(func(p *packet) { p.options = []byte{1, 1, 1, 0} })
		}},
		{name: "more fragments", reason: IcmplbReasonREASON_FRAGMENT, frame: func() []byte {
			return reqFrame(func(p *packet) { p.frag = 0x2000 })
		}},
		{name: "fragment offset", reason: IcmplbReasonREASON_FRAGMENT, frame: func() []byte {
			return reqFrame(func(p *packet) { p.frag = 0x0007 })
		}},
		{name: "last fragment with DF clear", reason: IcmplbReasonREASON_FRAGMENT, frame: func() []byte {
			return reqFrame(func(p *packet) { p.frag = 0x0b90 })
		}},
		{name: "bad IP checksum", reason: IcmplbReasonREASON_MALFORMED, frame: func() []byte {
			f := req.frame()
			f[25] ^= 0x01
			return f
		}},
		{name: "conntrack miss", reason: IcmplbReasonREASON_CONNTRACK_MISS, frame: func() []byte {
			return replyTo(req, backendA, vip, 0x7777).frame()
		}},
		{name: "reply with NAT id from another backend", reason: IcmplbReasonREASON_CONNTRACK_MISS,
			setup: func(t *testing.T, h *harness) {
				_, homeA = h.forward(t, req)
			},
			// The id req's session got at A, from B.
			frame: func() []byte { return replyTo(req, backendB, vip, homeA).frame() },
		},
		{name: "echo request with TTL 0", reason: IcmplbReasonREASON_TTL_ZERO, frame: func() []byte {
			return reqFrame(func(p *packet) { p.ttl = 0 })
		}},
		{name: "echo request with bad ICMP checksum", reason: IcmplbReasonREASON_MALFORMED, frame: func() []byte {
			f := req.frame()
			f[37] ^= 0x01
			return f
		}},
		{name: "echo request from a multicast MAC", reason: IcmplbReasonREASON_BOGUS_SOURCE, frame: func() []byte {
			return reqFrame(func(p *packet) { p.ethSrc = mac{0x01, 0x00, 0x5e, 0, 0, 1} })
		}},
		{name: "neighbour unresolved", reason: IcmplbReasonREASON_NEIGH_UNRESOLVED,
			setup: func(t *testing.T, h *harness) { h.setBackend(t, backendA, backendActive) },
			frame: func() []byte { return req.frame() },
		},
		{name: "neighbour lost during session", reason: IcmplbReasonREASON_NEIGH_UNRESOLVED,
			setup: func(t *testing.T, h *harness) {
				h.forward(t, req)
				h.setBackend(t, backendA, backendActive)
			},
			frame: func() []byte { return reqFrame(func(p *packet) { p.seq = 2 }) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, testConfig(vip))
			h.setBackend(t, backendA, backendReady)
			h.pointMaglev(t, backendA.idx)
			if tt.setup != nil {
				tt.setup(t, h)
			}
			h.requireUntouched(t, tt.frame(), xdpPass, tt.reason)
		})
	}
}

// zeroICMPChecksum picks the last payload word of p so that the ICMP checksum
// of at(p) is 0x0000: the value where an incremental update that mixes up
// ones'-complement zeros would disagree with a from-scratch sum. at must
// carry p's payload over; replies are steered through their request's
// payload, since a reply must echo its request's data.
func zeroICMPChecksum(t *testing.T, p packet, at func(packet) packet) packet {
	t.Helper()
	p.payload = bytes.Clone(p.payload)
	n := len(p.payload)
	p.payload[n-2], p.payload[n-1] = 0, 0
	f := at(p).frame()
	binary.BigEndian.PutUint16(p.payload[n-2:], binary.BigEndian.Uint16(f[36:]))
	if f := at(p).frame(); f[36]|f[37] != 0 {
		t.Fatalf("test bug: ICMP checksum %#02x%02x, want zero", f[36], f[37])
	}
	return p
}

// zeroIPChecksum picks the IP id of p so that the IP checksum of at(p) is
// 0x0000; at must carry the IP id over.
func zeroIPChecksum(t *testing.T, p packet, at func(packet) packet) packet {
	t.Helper()
	p.ipID = 0
	p.ipID = binary.BigEndian.Uint16(at(p).frame()[24:])
	if f := at(p).frame(); f[24]|f[25] != 0 {
		t.Fatalf("test bug: IP checksum %#02x%02x, want zero", f[24], f[25])
	}
	return p
}

func TestChecksumCorners(t *testing.T) {
	cfg := testConfig(snatAlt)
	// Every NAT id counts as idle, so the allocator hands out exactly the
	// id the pool's counter names even though sessions pile up on one
	// backend.
	cfg.NATIdle = 0
	h := newHarness(t, cfg)
	h.setBackend(t, backendA, backendReady)
	h.pointMaglev(t, backendA.idx)

	edges := []uint16{0x0000, 0x0001, 0x00ff, 0x7fff, 0x8000, 0xff00, 0xfffe, 0xffff}
	// The probes' id is never a NAT id: its neighbour stands in for it.
	natEdges := []uint16{0x0000, 0x0001, 0x00ff, 0x7fff, 0x8000, 0xff00, 0xfffd, 0xffff}
	identity := func(p packet) packet { return p }
	variants := []string{"random", "request in", "request out", "reply in", "reply out", "reply in as 0xffff"}
	rng := rand.New(rand.NewPCG(1071, 1624))
	session := 0
	for _, variant := range variants {
		for _, echoID := range edges {
			t.Run(fmt.Sprintf("%s/echo id %#04x", variant, echoID), func(t *testing.T) {
				for _, natID := range natEdges {
					session++
					client := netip.AddrFrom4([4]byte{10, 1, byte(session >> 8), byte(session)})
					req := echoRequest(client, hop1MAC, echoID, uint16(rng.Uint32()))
					req.ipID = uint16(rng.Uint32())
					for i := range req.payload {
						req.payload[i] = byte(rng.Uint32())
					}
					forwarded := func(p packet) packet {
						p.src, p.dst, p.echoID = cfg.SNAT, backendA.addr, natID
						return p
					}
					replyIn := func(p packet) packet { return replyTo(p, backendA, cfg.SNAT, natID) }
					restored := func(p packet) packet {
						p.src, p.dst, p.echoID = cfg.VIP, client, echoID
						return p
					}
					switch variant {
					case "request in":
						req = zeroIPChecksum(t, zeroICMPChecksum(t, req, identity), identity)
					case "request out":
						req = zeroIPChecksum(t, zeroICMPChecksum(t, req, forwarded), forwarded)
					case "reply in", "reply in as 0xffff":
						req = zeroICMPChecksum(t, req, replyIn)
					case "reply out":
						req = zeroICMPChecksum(t, req, func(p packet) packet { return restored(replyIn(p)) })
					}
					h.forceNATID(t, backendA.idx, natID, req)
					if _, got := h.forward(t, req); got != natID {
						t.Fatalf("NAT id %#04x, want %#04x", got, natID)
					}

					rep := replyIn(req)
					switch variant {
					case "reply in":
						rep = zeroIPChecksum(t, rep, identity)
					case "reply out":
						rep = zeroIPChecksum(t, rep, restored)
					case "reply in as 0xffff":
						// The other ones'-complement zero: it verifies as
						// well, and a backend may send it.
						in := rep.frame()
						in[36], in[37] = 0xff, 0xff
						out := h.run(t, in, xdpTX, IcmplbReasonREASON_REPLY_RETURNED)
						requireChecksumsVerify(t, out)
						want := h.returnedFrame(rep, client, echoID, hop1MAC)
						// Either zero may come out when the sum is zero.
						if binary.BigEndian.Uint16(want[36:]) == 0 && binary.BigEndian.Uint16(out[36:]) == 0xffff {
							want[36], want[37] = 0xff, 0xff
						}
						requireFrame(t, "returned reply", want, out)
						continue
					}
					h.returnReply(t, rep, client, echoID, hop1MAC)
				}
			})
		}
	}
}
