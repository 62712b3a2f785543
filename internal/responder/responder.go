// SPDX-License-Identifier: MIT

// Package responder answers ICMP echo requests itself, with a chosen delay
// and loss, so end-to-end tests and demos have backends whose latency and
// loss are known in advance.
//
// The responder reads echo requests from a raw ICMPv4 socket and sends the
// replies from user space. The kernel answers pings on its own as well, so
// its echo replies must be switched off in the responder's namespace
// (DisableKernelEcho), or every request is answered twice.
//
// # Loss scheme
//
// Requests are numbered 0, 1, 2, … in the order the responder reads them and
// grouped into consecutive blocks of 100 (0-99, 100-199, …). In every block
// exactly round(Loss*100) requests are dropped; which ones is a pseudo-random
// choice made by a PCG generator seeded with (Seed, block number). Over any
// whole number of blocks the loss is therefore exact (300 requests at Loss
// 0.3 lose exactly 90), the pattern inside a block looks random, and a given
// seed always drops the same request numbers. Config.Dropped tells how many
// of the first n requests are dropped, for runs that end mid-block. All
// requests share the one numbering whoever sends them, so a test that
// expects exact figures must be the only pinger of the responder's host.
//
// # Timing
//
// Each reply waits on its own timer, so requests overlap freely. On an idle
// machine replies leave within about 0.1ms after the delay has passed (Go's
// own timers alone would be up to a millisecond late; see earlyWake); on a
// busy one they leave as late as the scheduler lets them. A reply never
// leaves before its delay.
//
// # Recording
//
// The delay is what was asked for, not what happened: a test that judges a
// measurement of this backend must compare it with what the responder really
// did in the same run. With Config.Record set, the responder keeps an
// Exchange per request it read (Exchanges): when the kernel received the
// request, when the reply was written and whether the scheme dropped it.
// Exchange.Hold is then a lower bound of any round trip measured through
// this backend for that request.
package responder

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/icmplb/icmplb/internal/topology"
)

// BlockSize is the number of consecutive requests over which the loss
// scheme drops an exact share; see the package documentation.
const BlockSize = 100

// Config says how the responder answers.
type Config struct {
	// Delay is how long each reply is held back after its request arrives.
	Delay time.Duration
	// Jitter, if positive, adds a uniformly distributed offset in
	// [-Jitter, +Jitter] to Delay per request; the sum is clamped at 0.
	Jitter time.Duration
	// Loss is the fraction of requests left unanswered, 0 to 1, applied
	// per block of BlockSize requests as the package documentation describes.
	Loss float64
	// Seed makes the choice of dropped requests (and the jitter)
	// reproducible.
	Seed uint64
	// Record keeps an Exchange per request for Exchanges. Memory grows
	// with the requests (about 200 bytes each), so it is for tests and
	// bounded runs.
	Record bool
}

func (c Config) validate() error {
	switch {
	case c.Delay < 0:
		return fmt.Errorf("responder: negative delay %v", c.Delay)
	case c.Jitter < 0:
		return fmt.Errorf("responder: negative jitter %v", c.Jitter)
	case math.IsNaN(c.Loss) || c.Loss < 0 || c.Loss > 1:
		return fmt.Errorf("responder: loss %v outside [0, 1]", c.Loss)
	}
	return nil
}

// dropsPerBlock is how many requests of each block the scheme drops.
func (c Config) dropsPerBlock() int {
	return int(math.Round(c.Loss * BlockSize))
}

// blockDrops marks the requests of one block that the scheme drops.
func (c Config) blockDrops(block uint64) (drop [BlockSize]bool) {
	k := c.dropsPerBlock()
	if k == 0 {
		return drop
	}
	// The block number is the PCG stream, so each block gets an
	// independent pattern without having to replay earlier blocks.
	rng := rand.New(rand.NewPCG(c.Seed, block))
	for _, i := range rng.Perm(BlockSize)[:k] {
		drop[i] = true
	}
	return drop
}

// Drops reports whether the scheme drops request number i (counting from
// 0 in the order the responder reads requests).
func (c Config) Drops(i uint64) bool {
	d := c.blockDrops(i / BlockSize)
	return d[i%BlockSize]
}

// Dropped returns how many of the first n requests the scheme drops: exactly
// round(Loss*100) per whole block of 100, plus the drops among the leading
// part of a final partial block.
func (c Config) Dropped(n uint64) uint64 {
	whole := n / BlockSize
	total := whole * uint64(c.dropsPerBlock())
	if rest := n % BlockSize; rest > 0 {
		d := c.blockDrops(whole)
		for _, x := range d[:rest] {
			if x {
				total++
			}
		}
	}
	return total
}

// Responder answers ICMP echo requests (type 8, code 0) sent to a unicast
// address of the network namespace it was opened in.
type Responder struct {
	cfg  Config
	conn *net.IPConn
	pc   *ipv4.PacketConn

	// Only Serve's goroutine touches these, so they need no lock.
	jitter  *rand.Rand
	block   uint64
	drops   [BlockSize]bool
	haveBlk bool

	requests, replied, dropped, failed atomic.Uint64
	serving                            atomic.Bool

	mu        sync.Mutex
	closed    bool
	timers    map[*time.Timer]struct{}
	inflight  sync.WaitGroup // scheduled replies not yet sent or cancelled
	exchanges []Exchange     // with Config.Record; guarded by mu
}

// Exchange is what the responder did with one echo request it read.
type Exchange struct {
	// N numbers the requests in the order read, as the loss scheme does.
	N uint64
	// Src is the request's source; ID and Seq its echo identifier and
	// sequence number as they arrived (behind a NAT, the NAT's).
	Src     netip.Addr
	ID, Seq int
	// Arrived is when the kernel received the request (SO_TIMESTAMPNS):
	// the responder may read it later, and a measurement through this
	// backend counts that wait too. Read is when Serve read it, from which
	// the delay counts.
	Arrived, Read time.Time
	// Dropped is set when the loss scheme dropped the request.
	Dropped bool
	// Due is when the reply was scheduled to leave: Read plus the delay
	// (with its jitter). Zero for a dropped request.
	Due time.Time
	// Sending is taken just before the reply was written to the socket,
	// Sent once the write returned; both stay zero if the reply was
	// cancelled by Close or is still waiting, and Sent stays zero if the
	// write failed.
	Sending, Sent time.Time
}

// Replied reports whether the reply was sent.
func (e Exchange) Replied() bool { return !e.Sent.IsZero() }

// Hold is how long the request was held on this host: from its arrival to
// the moment its reply was handed to the kernel. No round trip measured
// through this backend can be shorter: whatever measures it saw the request
// before it arrived here and the reply after it was sent. Zero if no reply
// was sent.
func (e Exchange) Hold() time.Duration {
	if !e.Replied() {
		return 0
	}
	return e.Sending.Sub(e.Arrived)
}

// Delay is the delay the responder applied: from the read to the due time.
func (e Exchange) Delay() time.Duration {
	if e.Due.IsZero() {
		return 0
	}
	return e.Due.Sub(e.Read)
}

// Late is how long after its due time the reply was handed to the kernel:
// the scheduler's part of the hold.
func (e Exchange) Late() time.Duration {
	if !e.Replied() {
		return 0
	}
	return e.Sending.Sub(e.Due)
}

// Exchanges returns a copy of the record of every request read so far (see
// Config.Record), in the order read; nil without Config.Record.
func (r *Responder) Exchanges() []Exchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Exchange(nil), r.exchanges...)
}

// Listen opens a raw ICMPv4 socket in the calling thread's current network
// namespace; the socket keeps receiving from that namespace however the
// thread moves afterwards, so tests open it inside topology.InNS and serve
// it from anywhere.
func Listen(cfg Config) (*Responder, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("responder: listen: %w", err)
	}
	conn := c.(*net.IPConn)
	pc := ipv4.NewPacketConn(conn)
	// The raw socket would otherwise be woken for every ICMP message the
	// host receives, including replies to its own pings.
	var f ipv4.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv4.ICMPTypeEcho)
	if err := pc.SetICMPFilter(&f); err != nil {
		conn.Close()
		return nil, fmt.Errorf("responder: set ICMP filter: %w", err)
	}
	// Replies go out from the address the request was sent to, as the
	// kernel's do; on a host with several addresses (a VIP, say) routing
	// alone could pick another, which the pinger would not recognise.
	if err := pc.SetControlMessage(ipv4.FlagDst, true); err != nil {
		conn.Close()
		return nil, fmt.Errorf("responder: enable IP_PKTINFO: %w", err)
	}
	// The kernel's receive timestamps tell when a request really arrived,
	// however long the responder took to read it.
	if err := setsockoptInt(conn, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		conn.Close()
		return nil, fmt.Errorf("responder: enable SO_TIMESTAMPNS: %w", err)
	}
	return &Responder{
		cfg:    cfg,
		conn:   conn,
		pc:     pc,
		jitter: newJitterRand(cfg.Seed),
		timers: make(map[*time.Timer]struct{}),
	}, nil
}

func setsockoptInt(c *net.IPConn, level, opt, v int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		return err
	}
	return serr
}

// newJitterRand uses a PCG stream that no block of the loss scheme uses, so
// jitter and loss are independent.
func newJitterRand(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, math.MaxUint64))
}

// Serve answers requests until Close and then returns nil. Each reply is
// sent by its own timer, so any number of requests can be waiting out
// their delay at once. Serve may be called only once.
func (r *Responder) Serve() error {
	if !r.serving.CompareAndSwap(false, true) {
		return errors.New("responder: Serve called twice")
	}
	buf := make([]byte, 1<<16)
	oob := make([]byte, 256)
	for {
		n, oobn, _, src, err := r.conn.ReadMsgIP(buf, oob)
		read := time.Now()
		if err != nil {
			if r.isClosed() {
				return nil
			}
			return fmt.Errorf("responder: read: %w", err)
		}
		// A raw IPv4 socket delivers the IP header too.
		if n < 20 || buf[0]>>4 != 4 || int(buf[0]&0x0f)*4 > n {
			continue
		}
		arrived, dst := parseControl(oob[:oobn])
		if arrived.IsZero() || arrived.After(read) {
			arrived = read
		}
		r.handle(arrived, read, buf[int(buf[0]&0x0f)*4:n], dst, src)
	}
}

// parseControl finds the kernel's receive timestamp and the request's
// destination address among a read's control messages; either is zero when
// absent.
func parseControl(oob []byte) (arrived time.Time, dst net.IP) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return arrived, nil
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS &&
			len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})):
			ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
			arrived = time.Unix(ts.Unix())
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO &&
			len(m.Data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&m.Data[0]))
			dst = net.IPv4(pi.Addr[0], pi.Addr[1], pi.Addr[2], pi.Addr[3])
		}
	}
	return arrived, dst
}

// handle takes the read time from Serve, so the delay counts from the
// moment the request was read and not from when parsing finished.
func (r *Responder) handle(arrived, read time.Time, b []byte, dst net.IP, src *net.IPAddr) {
	m, err := icmp.ParseMessage(ipv4.ICMPTypeEcho.Protocol(), b)
	if err != nil || m.Type != ipv4.ICMPTypeEcho || m.Code != 0 {
		return
	}
	echo, ok := m.Body.(*icmp.Echo)
	if !ok {
		return
	}
	// The request's destination becomes the reply's source, as the
	// kernel does it. Like the kernel (icmp_echo_ignore_broadcasts),
	// broadcast and multicast pings go unanswered and uncounted.
	out := &ipv4.ControlMessage{}
	if dst != nil {
		if dst.IsMulticast() || dst.Equal(net.IPv4bcast) {
			return
		}
		out.Src = dst
	}

	i := r.requests.Add(1) - 1
	ex := Exchange{N: i, ID: echo.ID, Seq: echo.Seq, Arrived: arrived, Read: read}
	if a, ok := netip.AddrFromSlice(src.IP); ok {
		ex.Src = a.Unmap()
	}
	if r.drop(i) {
		ex.Dropped = true
		r.record(ex)
		r.dropped.Add(1)
		return
	}
	reply, err := (&icmp.Message{
		Type: ipv4.ICMPTypeEchoReply,
		Body: &icmp.Echo{ID: echo.ID, Seq: echo.Seq, Data: echo.Data},
	}).Marshal(nil) // a fresh buffer: Serve reuses the one Data points into
	if err != nil {
		r.record(ex)
		r.failed.Add(1)
		return
	}
	ex.Due = read.Add(r.delay())
	r.schedule(ex, reply, out, src)
}

// record keeps ex of a request that gets no reply.
func (r *Responder) record(ex Exchange) {
	if !r.cfg.Record {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.exchanges = append(r.exchanges, ex)
}

func (r *Responder) drop(i uint64) bool {
	if b := i / BlockSize; !r.haveBlk || b != r.block {
		r.block, r.drops, r.haveBlk = b, r.cfg.blockDrops(b), true
	}
	return r.drops[i%BlockSize]
}

func (r *Responder) delay() time.Duration {
	d := r.cfg.Delay
	if j := r.cfg.Jitter; j > 0 {
		d += time.Duration(r.jitter.Int64N(2*int64(j)+1)) - j
	}
	return max(d, 0)
}

// earlyWake is how long before a reply is due its timer fires. Go's timers
// wake an idle process through epoll_wait, whose timeout is in whole
// milliseconds, so they fire up to a millisecond late (replies measured 0.3
// to 0.7ms late on average); the rest of the wait is a nanosleep, which the
// kernel's high-resolution timers end within tens of microseconds.
const earlyWake = 2 * time.Millisecond

func (r *Responder) schedule(ex Exchange, reply []byte, cm *ipv4.ControlMessage, dst net.Addr) {
	due := ex.Due
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := -1
	if r.cfg.Record {
		r.exchanges = append(r.exchanges, ex)
		rec = len(r.exchanges) - 1
	}
	if r.closed {
		return
	}
	r.inflight.Add(1)
	var t *time.Timer
	t = time.AfterFunc(time.Until(due)-earlyWake, func() {
		defer r.inflight.Done()
		r.mu.Lock()
		delete(r.timers, t)
		closed := r.closed
		r.mu.Unlock()
		if closed {
			return
		}
		sleepUntil(due)
		// Holding mu while sending keeps Close from closing the socket
		// under a send that has already been committed to.
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.closed {
			return
		}
		sending := time.Now()
		_, err := r.pc.WriteTo(reply, cm, dst)
		sent := time.Now()
		if rec >= 0 {
			r.exchanges[rec].Sending = sending
			if err == nil {
				r.exchanges[rec].Sent = sent
			}
		}
		if err != nil {
			r.failed.Add(1)
			return
		}
		r.replied.Add(1)
	})
	r.timers[t] = struct{}{}
}

// sleepUntil blocks the goroutine's thread in nanosleep until t. That costs
// a thread per reply in its last earlyWake, which a test tool can afford,
// and the runtime hands the thread's P to other goroutines meanwhile.
func sleepUntil(t time.Time) {
	rem := time.Until(t)
	if rem <= 0 {
		return
	}
	ts := unix.NsecToTimespec(int64(rem))
	// The runtime's preemption signals interrupt the sleep; nanosleep then
	// leaves the remaining time in ts.
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

func (r *Responder) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// Close stops Serve, cancels replies still waiting out their delay and
// closes the socket. Once it returns, Stats no longer change.
func (r *Responder) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	for t := range r.timers {
		if t.Stop() {
			r.inflight.Done()
		}
	}
	clear(r.timers)
	r.mu.Unlock()
	r.inflight.Wait()
	return r.conn.Close()
}

// Stats returns how many echo requests have arrived, how many have been
// answered and how many the loss scheme dropped. A reply still waiting out
// its delay, cancelled by Close or failing to send counts as neither
// replied nor dropped (see SendErrors).
func (r *Responder) Stats() (requests, replied, dropped uint64) {
	return r.requests.Load(), r.replied.Load(), r.dropped.Load()
}

// SendErrors returns how many replies could not be built or sent.
func (r *Responder) SendErrors() uint64 { return r.failed.Load() }

// DisableKernelEcho stops the kernel of host from answering pings itself
// (net.ipv4.icmp_echo_ignore_all=1), which a responder there needs; the
// setting belongs to the host's namespace and goes away with it.
func DisableKernelEcho(t *topology.Topology, host string) error {
	_, err := t.Run(host, "sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1")
	return err
}

// DisableKernelEchoHere is DisableKernelEcho for the namespace of the
// calling process, for a responder started with ip netns exec.
func DisableKernelEchoHere() error {
	return os.WriteFile("/proc/sys/net/ipv4/icmp_echo_ignore_all", []byte("1\n"), 0)
}
