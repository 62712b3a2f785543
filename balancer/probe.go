// SPDX-License-Identifier: MIT

package balancer

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	ebpf "github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
)

// probeID is the echo identifier of every probe: the data plane never
// hands it out as a NAT id and passes replies carrying it to the kernel
// (reason probe_reply), so a probe's reply cannot be a session's nor the
// reverse.
const probeID = int(ebpf.IcmplbLayoutPROBE_ECHO_ID)

// probeToken is the random data a probe carries: its reply must echo it,
// so that nobody on the segment can keep a dead backend up by answering
// for it without seeing the probe.
const probeToken = 16

// prober pings backends from the agent's own raw ICMP sockets, one per
// family that has probed backends: one sender per (service, backend), one
// reader per socket.
type prober struct {
	result func(k slotKey, ok bool, rtt time.Duration)

	wg      sync.WaitGroup // the readers and the senders
	mu      sync.Mutex
	conns   map[*probeFamily]*icmp.PacketConn // opened by open, guarded by mu
	seq     uint16
	pending map[uint16]*probeReq
	targets map[slotKey]probeTarget
}

type probeReq struct {
	to    netip.Addr
	token [probeToken]byte
	sent  time.Time
	done  chan time.Duration
}

type probeTarget struct {
	cfg  config.Probe
	stop context.CancelFunc
}

// probeFamily is what differs between ICMPv4 and ICMPv6 probes; the
// probes' id, data and metrics are the same.
type probeFamily struct {
	name            string
	network, listen string // of icmp.ListenPacket
	proto           int    // of icmp.ParseMessage
	request, reply  icmp.Type
	// filter keeps the probes' echo replies; its program's offsets
	// depend on what the socket delivers (see probeFilter4, probeFilter6).
	filter []bpf.Instruction
}

var (
	probeV4 = &probeFamily{name: "ICMP", network: "ip4:icmp", listen: "0.0.0.0", proto: 1,
		request: ipv4.ICMPTypeEcho, reply: ipv4.ICMPTypeEchoReply, filter: probeFilter4}
	// The kernel fills in the ICMPv6 checksum (with its pseudo-header) of
	// whatever a raw ICMPv6 socket sends, so requests are sent without.
	probeV6 = &probeFamily{name: "ICMPv6", network: "ip6:ipv6-icmp", listen: "::", proto: 58,
		request: ipv6.ICMPTypeEchoRequest, reply: ipv6.ICMPTypeEchoReply, filter: probeFilter6}
)

func probeFamilyOf(a netip.Addr) *probeFamily {
	if a.Unmap().Is4() {
		return probeV4
	}
	return probeV6
}

// newProber makes a prober without sockets: open adds them. It reports
// each probe's outcome to result.
func newProber(result func(k slotKey, ok bool, rtt time.Duration)) *prober {
	return &prober{result: result, conns: map[*probeFamily]*icmp.PacketConn{},
		pending: map[uint16]*probeReq{}, targets: map[slotKey]probeTarget{}}
}

// open opens the raw socket (it needs CAP_NET_RAW) that probes addresses
// of a's family, unless it is open. Only families in use get one: a host
// booted with ipv6.disable=1 cannot open an ICMPv6 socket, and an IPv4-only
// agent must run there.
func (p *prober) open(a netip.Addr) error {
	f := probeFamilyOf(a)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns[f] != nil {
		return nil
	}
	conn, err := icmp.ListenPacket(f.network, f.listen)
	if err != nil {
		return fmt.Errorf("open the %s probe socket (raw %s needs CAP_NET_RAW; or disable probes with %s 0): %w",
			f.name, f.name, "--probe.interval", err)
	}
	// A raw ICMP socket gets a copy of every ICMP message to this host: a
	// flood of them would bury the probes' replies in its queue. The
	// kernel keeps only echo replies with the probes' id.
	raw, err := bpf.Assemble(f.filter)
	if err == nil {
		if f == probeV4 {
			err = conn.IPv4PacketConn().SetBPF(raw)
		} else {
			err = conn.IPv6PacketConn().SetBPF(raw)
		}
	}
	if err != nil {
		conn.Close()
		return fmt.Errorf("filter the %s probe socket: %w", f.name, err)
	}
	p.conns[f] = conn
	p.wg.Go(func() { p.read(conn, f) })
	return nil
}

// probeFilter4 accepts ICMP echo replies (type 0) with the probes' echo id;
// a raw IPv4 socket sees each from its IPv4 header on.
var probeFilter4 = []bpf.Instruction{
	bpf.LoadMemShift{Off: 0},                                              // X = IPv4 header length
	bpf.LoadIndirect{Off: 0, Size: 1},                                     // ICMP type
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0, SkipTrue: 3},               // not an echo reply
	bpf.LoadIndirect{Off: 4, Size: 2},                                     // echo id
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(probeID), SkipTrue: 1}, // not a probe's
	bpf.RetConstant{Val: 0xffff},
	bpf.RetConstant{Val: 0},
}

// probeFilter6 accepts ICMPv6 echo replies (type 129) with the probes' echo
// id. A raw IPv6 socket sees each from its ICMPv6 header on: the kernel has
// pulled the IPv6 header and any extension headers before raw delivery.
var probeFilter6 = []bpf.Instruction{
	bpf.LoadAbsolute{Off: 0, Size: 1}, // ICMPv6 type
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(ipv6.ICMPTypeEchoReply), SkipTrue: 3},
	bpf.LoadAbsolute{Off: 4, Size: 2},                                     // echo id
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(probeID), SkipTrue: 1}, // not a probe's
	bpf.RetConstant{Val: 0xffff},
	bpf.RetConstant{Val: 0},
}

// echoRequest is a probe: the probes' id, seq, and the token as data.
func (f *probeFamily) echoRequest(seq uint16, token []byte) ([]byte, error) {
	msg := icmp.Message{Type: f.request, Body: &icmp.Echo{ID: probeID, Seq: int(seq), Data: token}}
	return msg.Marshal(nil)
}

// echoReply reads a probe's reply from what the socket gave: ok is false
// for anything else.
func (f *probeFamily) echoReply(b []byte) (seq uint16, data []byte, ok bool) {
	m, err := icmp.ParseMessage(f.proto, b)
	if err != nil || m.Type != f.reply {
		return 0, nil, false
	}
	echo, isEcho := m.Body.(*icmp.Echo)
	if !isEcho || echo.ID != probeID {
		return 0, nil, false
	}
	return uint16(echo.Seq), echo.Data, true
}

// set makes targets the probed backends: new ones start, gone ones stop,
// and one whose settings changed restarts.
func (p *prober) set(targets map[slotKey]config.Probe) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, t := range p.targets {
		if cfg, ok := targets[k]; !ok || cfg != t.cfg {
			t.stop()
			delete(p.targets, k)
		}
	}
	for k, cfg := range targets {
		if _, ok := p.targets[k]; ok || cfg.Interval == 0 {
			continue
		}
		ctx, stop := context.WithCancel(context.Background())
		p.targets[k] = probeTarget{cfg: cfg, stop: stop}
		p.wg.Go(func() { p.run(ctx, k, cfg) })
	}
}

// close stops every probe and waits until none can report any more.
func (p *prober) close() {
	p.set(nil)
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// run probes one backend every interval until ctx ends.
func (p *prober) run(ctx context.Context, k slotKey, cfg config.Probe) {
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	for {
		rtt, err := p.probe(ctx, k.addr, cfg.Timeout)
		if ctx.Err() != nil {
			return
		}
		p.result(k, err == nil, rtt)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

var errProbeTimeout = errors.New("probe timed out")

// probe sends one echo request and waits for its reply.
func (p *prober) probe(ctx context.Context, to netip.Addr, timeout time.Duration) (time.Duration, error) {
	r := &probeReq{to: to, done: make(chan time.Duration, 1)}
	if _, err := rand.Read(r.token[:]); err != nil {
		return 0, err
	}
	p.mu.Lock()
	p.seq++
	seq := p.seq
	p.pending[seq] = r
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pending, seq)
		p.mu.Unlock()
	}()
	f := probeFamilyOf(to)
	p.mu.Lock()
	conn := p.conns[f]
	p.mu.Unlock()
	if conn == nil {
		return 0, fmt.Errorf("no %s probe socket for %s", f.name, to)
	}
	b, err := f.echoRequest(seq, r.token[:])
	if err != nil {
		return 0, err
	}
	r.sent = time.Now()
	if _, err := conn.WriteTo(b, &net.IPAddr{IP: to.AsSlice()}); err != nil {
		return 0, err
	}
	select {
	case rtt := <-r.done:
		return rtt, nil
	case <-time.After(timeout):
		return 0, errProbeTimeout
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// read hands each probe reply that conn receives to its waiting probe.
// Everything else the raw socket sees (every message of its family to this
// host that the filter let through) is ignored.
func (p *prober) read(conn *icmp.PacketConn, f *probeFamily) {
	buf := make([]byte, 1500)
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		at := time.Now()
		seq, data, ok := f.echoReply(buf[:n])
		if !ok {
			continue
		}
		from, ok := netip.AddrFromSlice(peer.(*net.IPAddr).IP)
		if !ok {
			continue
		}
		p.mu.Lock()
		r := p.pending[seq]
		if r != nil && r.to == from.Unmap() && bytes.Equal(data, r.token[:]) {
			delete(p.pending, seq)
			r.done <- at.Sub(r.sent)
		}
		p.mu.Unlock()
	}
}
