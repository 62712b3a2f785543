// SPDX-License-Identifier: MIT

package frames

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// htons turns an EtherType into the byte order AF_PACKET wants.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Sender writes whole frames, headers included, to one interface. Its socket
// is bound with protocol 0, so the kernel never queues received frames on it
// and a fast sender cannot fill its own receive buffer.
type Sender struct {
	fd    int
	iface string
}

// NewSender opens a sender on the interface named iface of the calling
// thread's network namespace.
func NewSender(iface string) (*Sender, error) {
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("frames: sender on %s: %w", iface, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("frames: AF_PACKET socket (needs CAP_NET_RAW): %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: 0, Ifindex: ifc.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("frames: bind to %s: %w", iface, err)
	}
	return &Sender{fd: fd, iface: iface}, nil
}

// Send writes one frame. A full device queue (ENOBUFS) is waited out for up
// to a second: a test wants its frames on the wire, not an error to count.
func (s *Sender) Send(frame []byte) error {
	deadline := time.Time{}
	for {
		_, err := unix.Write(s.fd, frame)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("frames: send on %s: %w", s.iface, err)
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(time.Second)
		} else if time.Now().After(deadline) {
			return fmt.Errorf("frames: send on %s: %w for 1s", s.iface, err)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// Close closes the socket.
func (s *Sender) Close() error { return unix.Close(s.fd) }

// Filter selects what a Capture keeps; the kernel applies it (classic BPF),
// so frames a test does not care about cost no copy to user space.
type Filter int

const (
	// All keeps every frame.
	All Filter = iota
	// ICMPOrVLAN keeps IPv4 ICMP frames and every VLAN-tagged frame,
	// whether the tag is in the frame or in skb metadata.
	ICMPOrVLAN
)

func (f Filter) program() ([]bpf.RawInstruction, error) {
	if f == All {
		return nil, nil
	}
	const accept, drop = 0xffff, 0
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtVLANTagPresent},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0, SkipTrue: 7},
		bpf.LoadAbsolute{Off: 12, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: EtherTypeVLAN, SkipTrue: 5},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: EtherTypeQinQ, SkipTrue: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: EtherTypeIPv4, SkipTrue: 2},
		bpf.LoadAbsolute{Off: 23, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoICMP, SkipTrue: 1},
		bpf.RetConstant{Val: drop},
		bpf.RetConstant{Val: accept},
	})
}

// CaptureOptions tune a Capture.
type CaptureOptions struct {
	Filter Filter
	// Promiscuous also receives unicast frames for other MAC addresses.
	Promiscuous bool
	// Outgoing keeps the frames the host itself sends (dropped by default).
	Outgoing bool
	// RcvBuf is the socket's receive buffer in bytes; 0 means 16 MiB, room
	// for tens of thousands of small frames while the reader is descheduled.
	RcvBuf int
}

// Packet is one captured frame.
type Packet struct {
	// Data is the frame as on the wire: a VLAN tag the kernel had moved
	// into skb metadata is written back after the MAC addresses.
	Data []byte
	// TagFromMeta says Data's outermost tag came from metadata, not from
	// the frame's bytes.
	TagFromMeta bool
	// Outgoing is set for a frame the host sent (CaptureOptions.Outgoing).
	Outgoing bool
	Time     time.Time // when the reader got it
}

// Capture receives the frames of one interface.
type Capture struct {
	file  *os.File
	raw   syscall.RawConn
	iface string
	// Next's buffers, reused: one reader only.
	buf, oob []byte

	mu     sync.Mutex
	closed bool
}

// NewCapture opens a capture on the interface named iface of the calling
// thread's network namespace. It sees frames from the moment it returns.
func NewCapture(iface string, opt CaptureOptions) (*Capture, error) {
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("frames: capture on %s: %w", iface, err)
	}
	// The socket starts with protocol 0 (receives nothing) so that the
	// filter is in place before the first frame is queued; bind then
	// turns reception on.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("frames: AF_PACKET socket (needs CAP_NET_RAW): %w", err)
	}
	fail := func(what string, err error) (*Capture, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("frames: capture on %s: %s: %w", iface, what, err)
	}
	rcvbuf := opt.RcvBuf
	if rcvbuf == 0 {
		rcvbuf = 16 << 20
	}
	// FORCE ignores net.core.rmem_max, which is small in a fresh namespace.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		return fail("SO_RCVBUFFORCE", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
		return fail("PACKET_AUXDATA", err)
	}
	if !opt.Outgoing {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
			return fail("PACKET_IGNORE_OUTGOING", err)
		}
	}
	prog, err := opt.Filter.program()
	if err != nil {
		return fail("assemble filter", err)
	}
	if prog != nil {
		fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
			return fail("SO_ATTACH_FILTER", err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
		return fail("bind", err)
	}
	if opt.Promiscuous {
		mr := unix.PacketMreq{Ifindex: int32(ifc.Index), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mr); err != nil {
			return fail("promiscuous mode", err)
		}
	}
	// A non-blocking descriptor lets Go's poller wait for it, so Close
	// wakes a reader blocked in Next.
	file := os.NewFile(uintptr(fd), "packet:"+iface)
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("frames: capture on %s: %w", iface, err)
	}
	return &Capture{
		file: file, raw: raw, iface: iface,
		buf: make([]byte, 65536+vlanTagLen),
		oob: make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.TpacketAuxdata{})))),
	}, nil
}

// ErrClosed is returned by Next after Close.
var ErrClosed = errors.New("frames: capture closed")

// Next returns the next frame, waiting up to timeout (forever if timeout is
// 0). It returns os.ErrDeadlineExceeded on timeout and ErrClosed after Close.
// Only one goroutine may call Next.
func (c *Capture) Next(timeout time.Duration) (Packet, error) {
	if timeout > 0 {
		c.file.SetReadDeadline(time.Now().Add(timeout))
	} else {
		c.file.SetReadDeadline(time.Time{})
	}
	buf, oob := c.buf, c.oob
	var n, oobn int
	var from unix.Sockaddr
	var rerr error
	err := c.raw.Read(func(fd uintptr) bool {
		// Room for a tag in front of the frame: the kernel writes it from
		// offset vlanTagLen, and the MACs move back over the gap.
		n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf[vlanTagLen:], oob, 0)
		return !errors.Is(rerr, unix.EAGAIN)
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		if c.isClosed() {
			return Packet{}, ErrClosed
		}
		return Packet{}, err
	}
	p := Packet{Data: buf[vlanTagLen : vlanTagLen+n], Time: time.Now()}
	if ll, ok := from.(*unix.SockaddrLinklayer); ok {
		p.Outgoing = ll.Pkttype == unix.PACKET_OUTGOING
	}
	if aux, ok := auxdata(oob[:oobn]); ok && aux.Status&unix.TP_STATUS_VLAN_VALID != 0 && n >= 12 {
		tpid := uint16(EtherTypeVLAN)
		if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
			tpid = aux.Vlan_tpid
		}
		copy(buf[0:12], buf[vlanTagLen:vlanTagLen+12])
		binary.BigEndian.PutUint16(buf[12:], tpid)
		binary.BigEndian.PutUint16(buf[14:], aux.Vlan_tci)
		p.Data = buf[:vlanTagLen+n]
		p.TagFromMeta = true
	}
	p.Data = append([]byte(nil), p.Data...)
	return p, nil
}

func auxdata(oob []byte) (unix.TpacketAuxdata, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return unix.TpacketAuxdata{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA &&
			len(m.Data) >= int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
			return *(*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0])), true
		}
	}
	return unix.TpacketAuxdata{}, false
}

// Drops returns how many frames the kernel dropped for want of buffer space
// since the previous call (PACKET_STATISTICS resets on read): a test that
// counts frames must check it is zero, or it counts what it missed.
func (c *Capture) Drops() (uint64, error) {
	var st *unix.TpacketStats
	var gerr error
	err := c.raw.Control(func(fd uintptr) {
		st, gerr = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
	})
	if err == nil {
		err = gerr
	}
	if err != nil {
		return 0, fmt.Errorf("frames: capture on %s: PACKET_STATISTICS: %w", c.iface, err)
	}
	return uint64(st.Drops), nil
}

// Close stops the capture; a Next waiting on another goroutine returns
// ErrClosed.
func (c *Capture) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	return c.file.Close()
}

func (c *Capture) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}
