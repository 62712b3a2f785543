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

// prober pings backends from the agent's own raw ICMP socket: one sender
// per (service, backend), one reader for all replies.
type prober struct {
	conn   *icmp.PacketConn
	result func(k slotKey, ok bool, rtt time.Duration)

	wg      sync.WaitGroup // the reader and the senders
	mu      sync.Mutex
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

// newProber opens the raw socket (it needs CAP_NET_RAW) and reports each
// probe's outcome to result.
func newProber(result func(k slotKey, ok bool, rtt time.Duration)) (*prober, error) {
	conn, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("open the probe socket (raw ICMP needs CAP_NET_RAW; or disable probes with %s 0): %w",
			"--probe.interval", err)
	}
	// A raw ICMP socket gets a copy of every ICMP message to this host: a
	// flood of them would bury the probes' replies in its queue. The
	// kernel keeps only echo replies with the probes' id.
	if err := conn.IPv4PacketConn().SetBPF(probeFilter); err != nil {
		conn.Close()
		return nil, fmt.Errorf("filter the probe socket: %w", err)
	}
	p := &prober{conn: conn, result: result, pending: map[uint16]*probeReq{}, targets: map[slotKey]probeTarget{}}
	p.wg.Go(p.read)
	return p, nil
}

// probeFilter accepts ICMP echo replies (type 0) with the probes' echo id;
// the socket sees each from its IPv4 header on.
var probeFilter = func() []bpf.RawInstruction {
	raw, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadMemShift{Off: 0},                                              // X = IPv4 header length
		bpf.LoadIndirect{Off: 0, Size: 1},                                     // ICMP type
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0, SkipTrue: 3},               // not an echo reply
		bpf.LoadIndirect{Off: 4, Size: 2},                                     // echo id
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(probeID), SkipTrue: 1}, // not a probe's
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		panic(fmt.Sprintf("probe filter: %v", err)) // fixed program: a bug
	}
	return raw
}()

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
	p.conn.Close()
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
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: probeID, Seq: int(seq), Data: r.token[:]}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return 0, err
	}
	r.sent = time.Now()
	if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: to.AsSlice()}); err != nil {
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

// read hands each probe reply to its waiting probe. Everything else the
// raw socket sees (every ICMP message to this host) is ignored.
func (p *prober) read() {
	buf := make([]byte, 1500)
	for {
		n, peer, err := p.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		at := time.Now()
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || echo.ID != probeID {
			continue
		}
		from, ok := netip.AddrFromSlice(peer.(*net.IPAddr).IP)
		if !ok {
			continue
		}
		p.mu.Lock()
		r := p.pending[uint16(echo.Seq)]
		if r != nil && r.to == from.Unmap() && bytes.Equal(echo.Data, r.token[:]) {
			delete(p.pending, uint16(echo.Seq))
			r.done <- at.Sub(r.sent)
		}
		p.mu.Unlock()
	}
}
