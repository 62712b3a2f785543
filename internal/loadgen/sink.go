// SPDX-License-Identifier: MIT

package loadgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/icmplb/icmplb/bpf"
)

// Role is what an XDP program of the benchmark does with a frame.
type Role string

// Roles, named after their programs in bpf/bench.c.
const (
	// SinkRole counts each frame by Class and drops it.
	SinkRole Role = "sink"
	// ResponderRole counts like the sink, and answers each echo request to
	// a backend as the backend would, out of the interface it came in.
	ResponderRole Role = "responder"
	// ReflectorRole swaps the MACs and sends every frame back.
	ReflectorRole Role = "reflector"
)

// Class is what the sink counts a frame as (enum sink_class).
type Class = bpf.IcmplbBenchSinkClass

// Classes: every frame is in Frames and in at most one other.
const (
	Frames         = bpf.IcmplbBenchSinkClassSINK_FRAMES
	RequestVIP     = bpf.IcmplbBenchSinkClassSINK_REQUEST_VIP
	RequestBackend = bpf.IcmplbBenchSinkClassSINK_REQUEST_BACKEND
	ReplyClient    = bpf.IcmplbBenchSinkClassSINK_REPLY_CLIENT
	numClasses     = int(bpf.IcmplbBenchSinkClassSINK_CLASSES)
)

// Counts are a sink's frames by Class.
type Counts [numClasses]uint64

// Sub returns c - o, class by class.
func (c Counts) Sub(o Counts) Counts {
	for i := range c {
		c[i] -= o[i]
	}
	return c
}

// Addrs tell the sink's classes apart: echo requests to VIP, echo requests
// to an address of Backends (not the VIP), echo replies to an address of
// Clients.
type Addrs struct {
	VIP      netip.Addr
	Backends netip.Prefix
	Clients  netip.Prefix
}

// Sink is a loaded sink, responder or reflector, attached or not.
type Sink struct {
	role   Role
	prog   *ebpf.Program
	counts *ebpf.Map // nil for the reflector
	link   link.Link
}

// NewSink loads the program of role.
func NewSink(role Role, a Addrs) (*Sink, error) {
	spec, err := bpf.LoadIcmplbBench()
	if err != nil {
		return nil, err
	}
	if role != ReflectorRole {
		if !a.VIP.Is4() || !a.Backends.Addr().Is4() || !a.Clients.Addr().Is4() {
			return nil, fmt.Errorf("loadgen: %s needs an IPv4 VIP and IPv4 backend and client prefixes (%+v)", role, a)
		}
		mask := func(p netip.Prefix) uint32 {
			return binary.NativeEndian.Uint32(binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits())))
		}
		addr := func(x netip.Addr) uint32 { return binary.NativeEndian.Uint32(x.AsSlice()) }
		for name, v := range map[string]uint32{
			bpf.IcmplbBenchVarSinkVip:         addr(a.VIP),
			bpf.IcmplbBenchVarSinkBackendNet:  addr(a.Backends.Masked().Addr()),
			bpf.IcmplbBenchVarSinkBackendMask: mask(a.Backends),
			bpf.IcmplbBenchVarSinkClientNet:   addr(a.Clients.Masked().Addr()),
			bpf.IcmplbBenchVarSinkClientMask:  mask(a.Clients),
		} {
			if err := spec.Variables[name].Set(v); err != nil {
				return nil, fmt.Errorf("loadgen: set %s: %w", name, err)
			}
		}
	}
	s := &Sink{role: role}
	switch role {
	case SinkRole:
		var objs struct {
			Prog   *ebpf.Program `ebpf:"sink"`
			Counts *ebpf.Map     `ebpf:"sink_counts"`
		}
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			return nil, fmt.Errorf("loadgen: load the sink: %w", err)
		}
		s.prog, s.counts = objs.Prog, objs.Counts
	case ResponderRole:
		var objs struct {
			Prog   *ebpf.Program `ebpf:"responder"`
			Counts *ebpf.Map     `ebpf:"sink_counts"`
		}
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			return nil, fmt.Errorf("loadgen: load the responder: %w", err)
		}
		s.prog, s.counts = objs.Prog, objs.Counts
	case ReflectorRole:
		var objs struct {
			Prog *ebpf.Program `ebpf:"reflector"`
		}
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			return nil, fmt.Errorf("loadgen: load the reflector: %w", err)
		}
		s.prog = objs.Prog
	default:
		return nil, fmt.Errorf("loadgen: unknown role %q", role)
	}
	return s, nil
}

// Attach attaches the program to the interface ifindex, in native (driver)
// mode unless generic, through a bpf_link. Like Generator.Run, it finds the
// interface in the calling thread's network namespace.
func (s *Sink) Attach(ifindex int, generic bool) error {
	if s.link != nil {
		return fmt.Errorf("loadgen: %s already attached", s.role)
	}
	flags := link.XDPDriverMode
	if generic {
		flags = link.XDPGenericMode
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: s.prog, Interface: ifindex, Flags: flags})
	if err != nil {
		return fmt.Errorf("loadgen: attach the %s to ifindex %d: %w", s.role, ifindex, err)
	}
	s.link = l
	return nil
}

// Detach removes the program from its interface, if attached.
func (s *Sink) Detach() error {
	if s.link == nil {
		return nil
	}
	err := s.link.Close()
	s.link = nil
	return err
}

// Counts sums the sink's per-CPU counters; the reflector counts nothing.
func (s *Sink) Counts() (Counts, error) {
	var c Counts
	if s.counts == nil {
		return c, nil
	}
	for k := range c {
		var per []uint64
		if err := s.counts.Lookup(uint32(k), &per); err != nil {
			return c, fmt.Errorf("loadgen: read the %s's counters: %w", s.role, err)
		}
		for _, v := range per {
			c[k] += v
		}
	}
	return c, nil
}

// Close detaches and releases the program.
func (s *Sink) Close() error {
	err := s.Detach()
	if s.counts != nil {
		err = errors.Join(err, s.counts.Close())
	}
	return errors.Join(err, s.prog.Close())
}
