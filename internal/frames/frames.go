// SPDX-License-Identifier: MIT

// Package frames builds, sends and captures raw Ethernet frames carrying
// ICMPv4 echo messages, for end-to-end tests that must put on the wire what
// no socket of the kernel would send: forged sources, foreign MAC addresses,
// VLAN tags written in the frame, bad checksums, TTL 0.
//
// Sender and Capture are AF_PACKET sockets. Like every socket they belong to
// the network namespace of the thread that opened them, so tests open them
// inside topology.InNS and use them from any goroutine afterwards. They need
// CAP_NET_RAW; VLAN tags the kernel keeps outside the frame (skb metadata)
// are read from PACKET_AUXDATA (Linux 2.6.27+ for the tag, 3.14+ for its
// protocol) and put back into the captured frame.
package frames

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// EtherType values the package writes and recognises.
const (
	EtherTypeIPv4  = 0x0800
	EtherTypeVLAN  = 0x8100 // IEEE 802.1Q C-tag
	EtherTypeQinQ  = 0x88a8 // IEEE 802.1ad S-tag
	ICMPEchoReply  = 0
	ICMPEchoReq    = 8
	protoICMP      = 1
	ethHeaderLen   = 14
	vlanTagLen     = 4
	ipv4HeaderLen  = 20
	icmpHeaderLen  = 8
	defaultTTL     = 64
	maxFramePaylen = 1500 - ipv4HeaderLen - icmpHeaderLen
)

// VLAN is one 802.1Q/802.1ad tag.
type VLAN struct {
	TPID uint16 // EtherTypeVLAN or EtherTypeQinQ
	TCI  uint16 // priority, DEI and VLAN id
}

// ID is the 12-bit VLAN identifier of the tag.
func (v VLAN) ID() uint16 { return v.TCI & 0x0fff }

// Echo is an Ethernet frame holding an IPv4 ICMP echo request or reply.
// Every field is written as given, so a test can build frames no stack
// would; the zero TTL is written as 64 unless ZeroTTL is set.
type Echo struct {
	DstMAC, SrcMAC net.HardwareAddr
	VLANs          []VLAN // outermost first
	Src, Dst       netip.Addr
	TTL            uint8
	ZeroTTL        bool   // write TTL 0 (a zero TTL field means 64)
	IPID           uint16 // the IP header's identification
	Type           uint8  // ICMPEchoReq or ICMPEchoReply
	Code           uint8
	ID, Seq        uint16
	Payload        []byte
	// BadChecksum writes an ICMP checksum off by one from the right one.
	BadChecksum bool
}

// Marshal returns the frame's bytes. It panics on a field no frame can
// hold (a MAC of another length, a non-IPv4 address, an oversized payload):
// those are bugs of the test that builds the frame, not conditions to handle.
func (e Echo) Marshal() []byte {
	return e.AppendTo(nil)
}

// AppendTo appends the frame to b, for senders that reuse one buffer.
func (e Echo) AppendTo(b []byte) []byte {
	if len(e.DstMAC) != 6 || len(e.SrcMAC) != 6 {
		panic(fmt.Sprintf("frames: MAC addresses %v and %v must have 6 bytes", e.DstMAC, e.SrcMAC))
	}
	if !e.Src.Is4() || !e.Dst.Is4() {
		panic(fmt.Sprintf("frames: addresses %v and %v must be IPv4", e.Src, e.Dst))
	}
	if len(e.Payload) > maxFramePaylen {
		panic(fmt.Sprintf("frames: payload of %d bytes does not fit a 1500-byte MTU", len(e.Payload)))
	}
	b = append(b, e.DstMAC...)
	b = append(b, e.SrcMAC...)
	for _, v := range e.VLANs {
		b = binary.BigEndian.AppendUint16(b, v.TPID)
		b = binary.BigEndian.AppendUint16(b, v.TCI)
	}
	b = binary.BigEndian.AppendUint16(b, EtherTypeIPv4)

	ttl := e.TTL
	switch {
	case e.ZeroTTL:
		ttl = 0
	case ttl == 0:
		ttl = defaultTTL
	}
	ip := len(b)
	b = append(b, 0x45, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(ipv4HeaderLen+icmpHeaderLen+len(e.Payload)))
	b = binary.BigEndian.AppendUint16(b, e.IPID)
	b = append(b, 0x40, 0, ttl, protoICMP, 0, 0) // DF, no fragment offset
	src, dst := e.Src.As4(), e.Dst.As4()
	b = append(b, src[:]...)
	b = append(b, dst[:]...)
	binary.BigEndian.PutUint16(b[ip+10:], Checksum(b[ip:ip+ipv4HeaderLen]))

	icmp := len(b)
	b = append(b, e.Type, e.Code, 0, 0)
	b = binary.BigEndian.AppendUint16(b, e.ID)
	b = binary.BigEndian.AppendUint16(b, e.Seq)
	b = append(b, e.Payload...)
	sum := Checksum(b[icmp:])
	if e.BadChecksum {
		sum++
	}
	binary.BigEndian.PutUint16(b[icmp+2:], sum)
	return b
}

// Checksum is the Internet checksum (RFC 1071) of b, ready to be stored.
func Checksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Frame is a parsed frame. ICMP fields are set only when IsEcho is.
type Frame struct {
	DstMAC, SrcMAC net.HardwareAddr
	VLANs          []VLAN // outermost first, including a tag from skb metadata
	EtherType      uint16 // after the tags

	IsIPv4   bool
	Src, Dst netip.Addr
	TTL      uint8
	Protocol uint8

	IsEcho     bool // an ICMP echo request or reply
	Type, Code uint8
	Checksum   uint16
	ChecksumOK bool // the ICMP checksum verifies over the whole message
	ID, Seq    uint16
	Payload    []byte // aliases the parsed buffer
}

// ErrShort means the buffer ends inside a header.
var ErrShort = errors.New("frames: truncated frame")

// Parse decodes b. It reads as far as it can: an Ethernet frame that is not
// IPv4 ICMP parses without error and with IsIPv4 or IsEcho false.
func Parse(b []byte) (Frame, error) {
	var f Frame
	if len(b) < ethHeaderLen {
		return f, ErrShort
	}
	f.DstMAC, f.SrcMAC = net.HardwareAddr(b[0:6]), net.HardwareAddr(b[6:12])
	off := 12
	for {
		if len(b) < off+2 {
			return f, ErrShort
		}
		et := binary.BigEndian.Uint16(b[off:])
		if et != EtherTypeVLAN && et != EtherTypeQinQ {
			f.EtherType = et
			off += 2
			break
		}
		if len(b) < off+vlanTagLen {
			return f, ErrShort
		}
		f.VLANs = append(f.VLANs, VLAN{TPID: et, TCI: binary.BigEndian.Uint16(b[off+2:])})
		off += vlanTagLen
	}
	if f.EtherType != EtherTypeIPv4 {
		return f, nil
	}
	ip := b[off:]
	if len(ip) < ipv4HeaderLen || ip[0]>>4 != 4 {
		return f, ErrShort
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < ipv4HeaderLen || total < ihl || len(ip) < total {
		return f, ErrShort
	}
	f.IsIPv4 = true
	f.TTL, f.Protocol = ip[8], ip[9]
	f.Src = netip.AddrFrom4([4]byte(ip[12:16]))
	f.Dst = netip.AddrFrom4([4]byte(ip[16:20]))
	icmp := ip[ihl:total]
	if f.Protocol != protoICMP || len(icmp) < icmpHeaderLen {
		return f, nil
	}
	f.Type, f.Code = icmp[0], icmp[1]
	if (f.Type != ICMPEchoReq && f.Type != ICMPEchoReply) || f.Code != 0 {
		return f, nil
	}
	f.IsEcho = true
	f.Checksum = binary.BigEndian.Uint16(icmp[2:])
	f.ChecksumOK = Checksum(icmp) == 0
	f.ID = binary.BigEndian.Uint16(icmp[4:])
	f.Seq = binary.BigEndian.Uint16(icmp[6:])
	f.Payload = icmp[icmpHeaderLen:]
	return f, nil
}
