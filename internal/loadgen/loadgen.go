// SPDX-License-Identifier: MIT

// Package loadgen generates ICMP echo traffic at millions of frames per
// second and counts what comes back, for icmplb's end-to-end throughput
// benchmark and the icmplb-loadgen tool (neither is part of the product).
//
// The generator is an XDP program (loadgen, bpf/bench.c) run by
// BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES): each
// repetition writes a whole Ethernet/IPv4/ICMP frame into a page of the
// kernel's pool and returns XDP_TX, which the kernel turns into a redirect
// out of the interface named as the ingress device. The kernel runs it all
// on the calling thread's CPU, and on a veth the receiving side's NAPI runs
// there too, so one pinned generator measures a path per core.
//
// Needs Linux 5.18+ (live frames), root (CAP_BPF, CAP_NET_ADMIN), and on a
// veth a receiving peer with NAPI: a native XDP program, or GRO on.
package loadgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/icmplb/icmplb/bpf"
)

// Frame sizes: an ICMP echo with no payload, and a full standard Ethernet
// frame (the veth MTU of 1500 bytes). DefaultSize is ping's.
const (
	MinSize     = 14 + 20 + 8
	MaxSize     = 14 + 1500
	DefaultSize = 98
)

// Settings say what the generator sends. Frame n (counted per CPU from the
// generator's load) comes from Client + (n / Sessions) % Clients with echo
// id IDBase + n % Sessions and sequence number n / Sessions (its low 16
// bits): every session is visited once per pass, and its sequence number is
// the pass.
type Settings struct {
	SrcMAC, DstMAC net.HardwareAddr
	// Client is the first client address; Clients addresses from it on are
	// cycled over (0 means 1).
	Client  netip.Addr
	Clients uint32
	// Dst is the destination address, the VIP.
	Dst netip.Addr
	// Sessions echo ids from IDBase on are cycled over (0 means 1).
	Sessions uint32
	IDBase   uint16
	// Reply sends echo replies instead of requests.
	Reply bool
	// TTL of the frames; 0 means 64.
	TTL uint8
	// Size of a frame in bytes, Ethernet header included; 0 means
	// DefaultSize.
	Size int
}

// withDefaults fills in the zero values that stand for defaults.
func (s Settings) withDefaults() Settings {
	if s.Clients == 0 {
		s.Clients = 1
	}
	if s.Sessions == 0 {
		s.Sessions = 1
	}
	if s.TTL == 0 {
		s.TTL = 64
	}
	if s.Size == 0 {
		s.Size = DefaultSize
	}
	return s
}

// Validate reports the first setting no frame can be built from.
func (s Settings) Validate() error {
	s = s.withDefaults()
	for _, m := range []struct {
		name string
		mac  net.HardwareAddr
	}{{"source MAC", s.SrcMAC}, {"destination MAC", s.DstMAC}} {
		switch {
		case len(m.mac) != 6:
			return fmt.Errorf("loadgen: %s %q: want 6 bytes", m.name, m.mac)
		case m.mac[0]&1 != 0:
			return fmt.Errorf("loadgen: %s %s is a group address: want unicast", m.name, m.mac)
		case [6]byte(m.mac) == [6]byte{}:
			return fmt.Errorf("loadgen: %s is all zeros", m.name)
		}
	}
	if !s.Client.Is4() || s.Client.IsUnspecified() {
		return fmt.Errorf("loadgen: client address %v: want a specified IPv4 address", s.Client)
	}
	if first := uint64(binary.BigEndian.Uint32(s.Client.AsSlice())); first+uint64(s.Clients)-1 > 0xffffffff {
		return fmt.Errorf("loadgen: %d clients from %v run past 255.255.255.255", s.Clients, s.Client)
	}
	if !s.Dst.Is4() || s.Dst.IsUnspecified() {
		return fmt.Errorf("loadgen: destination address %v: want a specified IPv4 address", s.Dst)
	}
	if s.Sessions > 1<<16 {
		return fmt.Errorf("loadgen: %d sessions: echo ids are 16 bits, at most %d", s.Sessions, 1<<16)
	}
	if uint32(s.IDBase)+s.Sessions > 1<<16 {
		return fmt.Errorf("loadgen: %d sessions from echo id %d run past id 65535", s.Sessions, s.IDBase)
	}
	if s.Size < MinSize || s.Size > MaxSize {
		return fmt.Errorf("loadgen: frame size %d: want %d..%d bytes", s.Size, MinSize, MaxSize)
	}
	return nil
}

// payload is the fixed payload of every frame: the program never writes it,
// so it must never change (nothing on the path rewrites a payload).
func payload(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i)
	}
	return p
}

// Frame returns frame n as the program writes it: the generator's first
// input, and what tests compare the program's output with.
func (s Settings) Frame(n uint64) []byte {
	s = s.withDefaults()
	f := make([]byte, s.Size)
	copy(f[0:6], s.DstMAC)
	copy(f[6:12], s.SrcMAC)
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	round := n / uint64(s.Sessions)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(s.Size-14))
	ip[8] = s.TTL
	ip[9] = 1 // ICMP
	client := binary.BigEndian.Uint32(s.Client.AsSlice()) + uint32(round%uint64(s.Clients))
	binary.BigEndian.PutUint32(ip[12:16], client)
	copy(ip[16:20], s.Dst.AsSlice())
	binary.BigEndian.PutUint16(ip[10:12], Checksum(ip))
	icmp := f[34:]
	if !s.Reply {
		icmp[0] = 8
	}
	binary.BigEndian.PutUint16(icmp[4:6], s.IDBase+uint16(n%uint64(s.Sessions)))
	binary.BigEndian.PutUint16(icmp[6:8], uint16(round))
	copy(icmp[8:], payload(len(icmp)-8))
	binary.BigEndian.PutUint16(icmp[2:4], Checksum(icmp))
	return f
}

// Checksum is the Internet checksum (RFC 1071) of b: what goes into a
// header whose checksum field is zero, and 0 over data that verifies.
func Checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// config is the program's view of s (struct loadgen_cfg).
func (s Settings) config() bpf.IcmplbBenchLoadgenCfg {
	s = s.withDefaults()
	c := bpf.IcmplbBenchLoadgenCfg{
		Client:   binary.NativeEndian.Uint32(s.Client.AsSlice()),
		Dst:      binary.NativeEndian.Uint32(s.Dst.AsSlice()),
		Clients:  s.Clients,
		Sessions: s.Sessions,
		IdBase:   s.IDBase,
		IpLen:    uint16(s.Size - 14),
		IcmpType: 8,
		Ttl:      s.TTL,
	}
	if s.Reply {
		c.IcmpType = 0
	}
	copy(c.DstMac[:], s.DstMAC)
	copy(c.SrcMac[:], s.SrcMAC)
	// The program sums 16-bit words as they lie in memory; the sum of the
	// payload must be taken the same way.
	p := payload(s.Size - MinSize)
	var sum uint32
	for i := 0; i+1 < len(p); i += 2 {
		sum += uint32(binary.NativeEndian.Uint16(p[i:]))
	}
	if len(p)%2 == 1 {
		sum += uint32(binary.NativeEndian.Uint16([]byte{p[len(p)-1], 0}))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	c.PayloadSum = uint16(sum)
	return c
}

// xdpTX is XDP_TX of enum xdp_action.
const xdpTX = 3

// xdpMd is struct xdp_md, the context BPF_PROG_RUN takes for XDP.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// Generator is a loaded loadgen program with its settings.
type Generator struct {
	objs struct {
		Prog   *ebpf.Program `ebpf:"loadgen"`
		Config *ebpf.Map     `ebpf:"loadgen_config"`
		Sent   *ebpf.Map     `ebpf:"loadgen_sent"`
	}
	frame []byte
}

// NewGenerator loads the generator with settings s.
func NewGenerator(s Settings) (*Generator, error) {
	spec, err := bpf.LoadIcmplbBench()
	if err != nil {
		return nil, err
	}
	g := &Generator{}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, fmt.Errorf("loadgen: load the generator: %w", err)
	}
	if err := g.Set(s); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

// Set changes the settings; the frame count, and with it the position in
// the cycle of sessions, goes on.
func (g *Generator) Set(s Settings) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if err := g.objs.Config.Put(uint32(0), s.config()); err != nil {
		return fmt.Errorf("loadgen: write the settings: %w", err)
	}
	g.frame = s.Frame(0)
	return nil
}

// Sent is the number of frames the program has written, over all CPUs.
func (g *Generator) Sent() (uint64, error) {
	var per []uint64
	if err := g.objs.Sent.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("loadgen: read the frame count: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Program is the generator's XDP program.
func (g *Generator) Program() *ebpf.Program { return g.objs.Prog }

// Close releases the program and its maps.
func (g *Generator) Close() error {
	return errors.Join(g.objs.Prog.Close(), g.objs.Config.Close(), g.objs.Sent.Close())
}

// Result is what one Run sent.
type Result struct {
	Frames  uint64        // frames the program wrote and returned XDP_TX for
	Elapsed time.Duration // wall time of the run
}

// PPS is the rate of the run in frames per second.
func (r Result) PPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Frames) / r.Elapsed.Seconds()
}

// Bounds of the repetitions of one BPF_PROG_RUN call, which Run sizes to
// take about callTime at the rate seen so far: short enough to stop close to
// a deadline on a slow path, long enough for the syscall to be noise.
const (
	minChunk = 1 << 10
	maxChunk = 1 << 16
	callTime = 20 * time.Millisecond
)

// Run sends frames out of the interface ifindex until frames were sent
// (0: no limit) or d has passed (0: no limit; one must be set). The
// interface is looked up in the network namespace of the calling thread,
// which must therefore be locked to its OS thread (see Pin) when the
// process's namespace is not the interface's. Frames counts what the
// program wrote: cilium/ebpf repeats a whole call that a signal interrupted,
// so the repetitions asked for are not a count.
func (g *Generator) Run(ifindex int, frames uint64, d time.Duration) (Result, error) {
	if frames == 0 && d == 0 {
		return Result{}, errors.New("loadgen: run without a frame limit or a duration")
	}
	before, err := g.Sent()
	if err != nil {
		return Result{}, err
	}
	opts := ebpf.RunOptions{
		Data:    g.frame,
		Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		Context: xdpMd{DataEnd: uint32(len(g.frame)), IngressIfindex: uint32(ifindex)},
	}
	start := time.Now()
	var sent uint64
	next := uint64(minChunk)
	for {
		n := next
		if frames != 0 && frames-sent < n {
			n = frames - sent
		}
		opts.Repeat = uint32(n)
		call := time.Now()
		if _, err := g.objs.Prog.Run(&opts); err != nil {
			return Result{}, fmt.Errorf("loadgen: run in live-frames mode on ifindex %d: %w", ifindex, err)
		}
		after, err := g.Sent()
		if err != nil {
			return Result{}, err
		}
		// Live-frames mode returns no verdict: a program that refused the
		// frame (XDP_ABORTED) shows as frames not counted.
		if after-before-sent < n {
			return Result{}, fmt.Errorf("loadgen: %d of %d runs wrote no frame: the settings do not fit the frame", n-(after-before-sent), n)
		}
		sent = after - before
		next = uint64(float64(n) * float64(callTime) / float64(max(time.Since(call), time.Microsecond)))
		next = min(max(next, minChunk), maxChunk)
		if frames != 0 && sent >= frames || d != 0 && time.Since(start) >= d {
			return Result{Frames: sent, Elapsed: time.Since(start)}, nil
		}
	}
}

// Pin locks the calling goroutine to its OS thread and that thread to cpu,
// and returns a function that restores the thread's CPU set and unlocks it.
func Pin(cpu int) (func(), error) {
	runtime.LockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("loadgen: read the CPU set: %w", err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("loadgen: pin to CPU %d: %w", cpu, err)
	}
	return func() {
		// A thread that cannot get its CPU set back stays locked, so that
		// the runtime ends it with the goroutine instead of reusing it.
		if unix.SchedSetaffinity(0, &old) == nil {
			runtime.UnlockOSThread()
		}
	}, nil
}
