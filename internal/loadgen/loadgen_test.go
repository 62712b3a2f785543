// SPDX-License-Identifier: MIT

package loadgen

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/icmplb/icmplb/internal/testenv"
)

var (
	srcMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xa0}
	dstMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xb0}
	vip    = netip.MustParseAddr("10.0.0.100")
)

func settings() Settings {
	return Settings{SrcMAC: srcMAC, DstMAC: dstMAC, Client: netip.MustParseAddr("10.32.0.1"), Dst: vip}
}

func TestValidate(t *testing.T) {
	if err := settings().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, c := range []struct {
		name string
		edit func(*Settings)
		want string
	}{
		{"short MAC", func(s *Settings) { s.SrcMAC = s.SrcMAC[:5] }, "source MAC"},
		{"group MAC", func(s *Settings) { s.DstMAC = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1} }, "group address"},
		{"zero MAC", func(s *Settings) { s.DstMAC = make(net.HardwareAddr, 6) }, "all zeros"},
		{"no client", func(s *Settings) { s.Client = netip.Addr{} }, "client address"},
		{"IPv6 client", func(s *Settings) { s.Client = netip.MustParseAddr("::1") }, "client address"},
		{"clients past the end", func(s *Settings) { s.Client = netip.MustParseAddr("255.255.255.0"); s.Clients = 257 }, "run past 255.255.255.255"},
		{"no destination", func(s *Settings) { s.Dst = netip.IPv4Unspecified() }, "destination address"},
		{"too many sessions", func(s *Settings) { s.Sessions = 1<<16 + 1 }, "16 bits"},
		{"ids past the end", func(s *Settings) { s.IDBase = 1; s.Sessions = 1 << 16 }, "past id 65535"},
		{"small frame", func(s *Settings) { s.Size = MinSize - 1 }, "frame size"},
		{"big frame", func(s *Settings) { s.Size = MaxSize + 1 }, "frame size"},
	} {
		s := settings()
		c.edit(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate() = %v, want an error with %q", c.name, err, c.want)
		}
	}
	s := settings()
	s.Client, s.Clients = netip.MustParseAddr("255.255.255.0"), 256
	s.IDBase, s.Sessions = 1, 1<<16-1
	if err := s.Validate(); err != nil {
		t.Errorf("ranges that end at the last address and id: %v", err)
	}
}

func TestFrame(t *testing.T) {
	s := settings()
	s.Clients, s.Sessions, s.IDBase = 3, 5, 100
	for _, size := range []int{MinSize, DefaultSize, DefaultSize + 1, MaxSize} {
		s.Size = size
		for _, n := range []uint64{0, 4, 5, 14, 15, 5 << 16} {
			f := s.Frame(n)
			if len(f) != size {
				t.Fatalf("size %d: frame of %d bytes", size, len(f))
			}
			if !bytes.Equal(f[0:6], dstMAC) || !bytes.Equal(f[6:12], srcMAC) || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
				t.Errorf("size %d frame %d: Ethernet header % x", size, n, f[:14])
			}
			if c := Checksum(f[14:34]); c != 0 {
				t.Errorf("size %d frame %d: IP checksum does not verify (%#04x)", size, n, c)
			}
			if c := Checksum(f[34:]); c != 0 {
				t.Errorf("size %d frame %d: ICMP checksum does not verify (%#04x)", size, n, c)
			}
			if got := int(binary.BigEndian.Uint16(f[16:])); got != size-14 {
				t.Errorf("size %d frame %d: IP total length %d", size, n, got)
			}
			round := n / 5
			client := netip.AddrFrom4([4]byte{10, 32, 0, byte(1 + round%3)})
			if got := netip.AddrFrom4([4]byte(f[26:30])); got != client {
				t.Errorf("size %d frame %d: client %v, want %v", size, n, got, client)
			}
			if got := netip.AddrFrom4([4]byte(f[30:34])); got != vip {
				t.Errorf("size %d frame %d: destination %v", size, n, got)
			}
			if f[34] != 8 || f[35] != 0 {
				t.Errorf("size %d frame %d: ICMP type %d code %d, want an echo request", size, n, f[34], f[35])
			}
			if id, seq := binary.BigEndian.Uint16(f[38:]), binary.BigEndian.Uint16(f[40:]); id != uint16(100+n%5) || seq != uint16(round) {
				t.Errorf("size %d frame %d: id %d seq %d, want %d and %d", size, n, id, seq, 100+n%5, uint16(round))
			}
		}
	}
	s.Reply = true
	if f := s.Frame(0); f[34] != 0 || Checksum(f[34:]) != 0 {
		t.Errorf("reply: type %d, checksum residue %#04x", f[34], Checksum(f[34:]))
	}
}

// The program writes every header byte and both checksums itself: given a
// page full of garbage (what a far end may have left in a recycled page),
// it writes exactly the frame Frame builds, frame after frame.
func TestProgramWritesFrame(t *testing.T) {
	testenv.Privileged(t)
	s := settings()
	s.Clients, s.Sessions, s.IDBase, s.Size = 3, 5, 100, 99
	g, err := NewGenerator(s)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	unpin, err := Pin(0)
	if err != nil {
		t.Fatal(err)
	}
	defer unpin()
	for _, reply := range []bool{false, true} {
		s.Reply = reply
		if err := g.Set(s); err != nil {
			t.Fatal(err)
		}
		for range 40 {
			n, err := g.Sent()
			if err != nil {
				t.Fatal(err)
			}
			want := s.Frame(n)
			garbage := bytes.Repeat([]byte{0xa5}, len(want))
			copy(garbage[MinSize:], want[MinSize:]) // the payload is the program's input
			opts := ebpf.RunOptions{Data: garbage, DataOut: make([]byte, len(want)), Repeat: 1}
			ret, err := g.Program().Run(&opts)
			if err != nil || ret != xdpTX {
				t.Fatalf("frame %d: verdict %d, err %v", n, ret, err)
			}
			if !bytes.Equal(opts.DataOut, want) {
				t.Fatalf("frame %d (reply %v):\n got % x\nwant % x", n, reply, opts.DataOut, want)
			}
		}
	}
	s.Size = 200
	g.frame = s.Frame(0)
	s.Size = 99
	if err := g.objs.Config.Put(uint32(0), s.config()); err != nil {
		t.Fatal(err)
	}
	if ret, err := g.Program().Run(&ebpf.RunOptions{Data: g.frame, Repeat: 1}); err != nil || ret == xdpTX {
		t.Errorf("a frame longer than the settings say: verdict %d, err %v; want it refused", ret, err)
	}
}

// runPinned runs fn in namespace ns on a thread pinned to CPU 0.
func runPinned(t *testing.T, p *Pair, ns string, fn func() error) {
	t.Helper()
	err := p.Do(ns, func() error {
		unpin, err := Pin(0)
		if err != nil {
			return err
		}
		defer unpin()
		return fn()
	})
	if err != nil {
		t.Fatal(err)
	}
}

func newPair(t *testing.T) *Pair {
	t.Helper()
	testenv.Privileged(t)
	testenv.Tool(t, "sysctl", "procps")
	p, err := NewPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("remove namespaces: %v", err)
		}
	})
	return p
}

func attach(t *testing.T, p *Pair, ns string, ifindex int, role Role) *Sink {
	t.Helper()
	s, err := NewSink(role, Addrs{VIP: vip, Backends: netip.MustParsePrefix("10.0.0.0/24"), Clients: netip.MustParsePrefix("10.32.0.0/11")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	runPinned(t, p, ns, func() error { return s.Attach(ifindex, false) })
	return s
}

// waitCounts reads the sink until class reaches want or stops moving.
func waitCounts(t *testing.T, s *Sink, class Class, want uint64) Counts {
	t.Helper()
	var last Counts
	for deadline := time.Now().Add(2 * time.Second); ; {
		c, err := s.Counts()
		if err != nil {
			t.Fatal(err)
		}
		if c[class] >= want || c == last && time.Now().After(deadline) {
			return c
		}
		last = c
		time.Sleep(20 * time.Millisecond)
	}
}

// The generator's frames all arrive, counted exactly, at a sink on the far
// veth, and, through a reflector there, at a sink on its own side: frames
// that come back to the page pool rewritten by the far end do not change
// what it sends.
func TestGeneratorToSink(t *testing.T) {
	p := newPair(t)
	const frames = 200_000
	s := settings()
	s.SrcMAC, s.DstMAC, s.Sessions = p.AMAC, p.BMAC, 64
	g, err := NewGenerator(s)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	far := attach(t, p, p.B, p.BIndex, SinkRole)
	var r Result
	runPinned(t, p, p.A, func() (err error) { r, err = g.Run(p.AIndex, frames, 0); return err })
	if r.Frames != frames {
		t.Fatalf("generator sent %d frames, want %d", r.Frames, frames)
	}
	c := waitCounts(t, far, RequestVIP, frames)
	if c[Frames] != frames || c[RequestVIP] != frames {
		t.Errorf("sink on %s counted %v (by class), want %d frames, all echo requests to the VIP", p.BIface, c, frames)
	}
	t.Logf("generator → sink: %d frames in %v, %.0f pps", r.Frames, r.Elapsed, r.PPS())

	if err := far.Close(); err != nil {
		t.Fatal(err)
	}
	attach(t, p, p.B, p.BIndex, ReflectorRole)
	near := attach(t, p, p.A, p.AIndex, SinkRole)
	runPinned(t, p, p.A, func() (err error) { r, err = g.Run(p.AIndex, frames, 0); return err })
	c = waitCounts(t, near, RequestVIP, frames)
	if r.Frames != frames || c[Frames] != frames || c[RequestVIP] != frames {
		t.Errorf("generator → reflector → sink: sent %d, sink counted %v (by class), want %d", r.Frames, c, frames)
	}
	t.Logf("generator → reflector → sink: %d frames in %v, %.0f pps", r.Frames, r.Elapsed, r.PPS())
}

// The responder answers a request to a backend as that backend would, out
// of the interface it came in, and counts it; echo replies to clients are
// counted and dropped.
func TestResponder(t *testing.T) {
	p := newPair(t)
	const frames = 10_000
	s := settings()
	s.SrcMAC, s.DstMAC = p.AMAC, p.BMAC
	s.Dst = netip.MustParseAddr("10.0.0.2") // a backend
	g, err := NewGenerator(s)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	resp := attach(t, p, p.B, p.BIndex, ResponderRole)
	sink := attach(t, p, p.A, p.AIndex, SinkRole)
	runPinned(t, p, p.A, func() error { _, err := g.Run(p.AIndex, frames, 0); return err })
	// What came back is a reply from the backend to the client: the sink
	// counts replies whose destination is a client.
	got := waitCounts(t, sink, ReplyClient, frames)
	if c, _ := resp.Counts(); c[RequestBackend] != frames || got[ReplyClient] != frames || got[Frames] != frames {
		t.Errorf("responder counted %v, sink %v (by class); want %d requests answered and %d replies", c, got, frames, frames)
	}

	// The reply itself: the request with MACs and addresses swapped, type 0
	// and a checksum that verifies.
	var out []byte
	runPinned(t, p, p.B, func() error {
		req := s.Frame(0)
		opts := ebpf.RunOptions{Data: req, DataOut: make([]byte, len(req)), Repeat: 1}
		ret, err := resp.prog.Run(&opts)
		if err == nil && ret != xdpTX {
			t.Errorf("responder verdict %d", ret)
		}
		out = opts.DataOut
		return err
	})
	req := s.Frame(0)
	if !bytes.Equal(out[0:6], req[6:12]) || !bytes.Equal(out[6:12], req[0:6]) ||
		!bytes.Equal(out[26:30], req[30:34]) || !bytes.Equal(out[30:34], req[26:30]) ||
		out[34] != 0 || Checksum(out[14:34]) != 0 || Checksum(out[34:]) != 0 || !bytes.Equal(out[38:], req[38:]) {
		t.Errorf("reply\n% x\nto request\n% x", out, req)
	}
}
