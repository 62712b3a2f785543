// SPDX-License-Identifier: MIT

package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
)

// Config holds the load-time settings of the data plane: the constants the
// program is specialised with and the sizes of its maps.
type Config struct {
	// MaglevSize is the number of slots of each service's Maglev table (a
	// prime).
	MaglevSize uint32
	// MaxServices bounds the services (VIPs) and their Maglev tables.
	MaxServices uint32
	// MaxBackends bounds the backend index space.
	MaxBackends uint32
	// ConntrackSize is the capacity of the conntrack maps: ping sessions.
	ConntrackSize uint32
	// NATIdle is how long a session must be idle before its NAT id may be
	// given to another session.
	NATIdle time.Duration
	// LossTimeout is how long a request waits for its reply before it is
	// lost; at most MaxLossTimeout.
	LossTimeout time.Duration
	// InflightSize is the capacity of the map of requests awaiting replies.
	InflightSize uint32
	// TraceSample sends one exchange in TraceSample to userspace; 0: none.
	TraceSample uint32
	// TraceBufferSize is the size in bytes of the trace ring buffer, a power
	// of two multiple of the page size.
	TraceBufferSize uint32
}

// Layout of the data plane's histograms and epoch rings (enum layout, bpf/abi.h).
const (
	RTTBuckets      = int(IcmplbLayoutRTT_BUCKETS)
	RTTBucketOffset = int(IcmplbLayoutRTT_BUCKET_OFFSET)
	RTTSchema       = int32(IcmplbLayoutRTT_SCHEMA)
	EpochShift      = int(IcmplbLayoutEPOCH_SHIFT)
	Epochs          = int(IcmplbLayoutEPOCHS)
)

// RTTKey is the key of backend slot idx's RTT bucket k in rtt_hist, as the
// data plane computes it (reply_measured, bpf/measure.h).
func RTTKey(idx, k int) int { return idx*RTTBuckets + k }

// EpochKey is the key of backend slot idx's counters of epoch e in epochs,
// as the data plane computes it (epoch_slot, bpf/measure.h).
func EpochKey(idx int, e uint64) int { return idx*Epochs + int(e%uint64(Epochs)) }

// srcDenyIface bounds the sources denied for the interface's addresses: its
// own, and its subnets' network and broadcast addresses.
const srcDenyIface = 256

// MaxLossTimeout keeps a request's epoch slot alive until its loss is
// counted: the ring of Epochs slots must outlast the timeout by a few epochs.
const MaxLossTimeout = time.Duration(Epochs-4) << EpochShift

// NewSpec returns the data plane's CollectionSpec specialised for c, ready to
// be loaded.
func NewSpec(c Config) (*ebpf.CollectionSpec, error) {
	// c comes from the config package, which validated every setting
	// (config.Config.Validate); the bounds are not checked twice.
	spec, err := LoadIcmplb()
	if err != nil {
		return nil, err
	}
	consts := map[string]any{
		IcmplbVarCfgMaglevSize:    c.MaglevSize,
		IcmplbVarCfgNatIdleNs:     uint64(c.NATIdle.Nanoseconds()),
		IcmplbVarCfgLossTimeoutNs: uint64(c.LossTimeout.Nanoseconds()),
		IcmplbVarCfgTraceSample:   c.TraceSample,
		IcmplbVarCfgRttBounds:     RTTBounds(),
	}
	for name, v := range consts {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	spec.Maps[IcmplbMapServices].MaxEntries = c.MaxServices
	// Every VIP and SNAT address, the SNAT addresses a reload retired and
	// still keeps, and the interface's own (see balancer/srcdeny.go).
	spec.Maps[IcmplbMapSrcDeny].MaxEntries = 3*c.MaxServices + srcDenyIface
	// A SNAT address per service at most.
	spec.Maps[IcmplbMapSnatAddrs].MaxEntries = c.MaxServices
	spec.Maps[IcmplbMapMaglevTables].MaxEntries = c.MaxServices
	spec.Maps[IcmplbMapMaglevTables].InnerMap.MaxEntries = c.MaglevSize
	spec.Maps[IcmplbMapSlotSessions].MaxEntries = c.MaxBackends
	spec.Maps[IcmplbMapLossLedger].MaxEntries = c.MaxBackends
	spec.Maps[IcmplbMapSvcStats].MaxEntries = c.MaxServices * uint32(IcmplbReasonREASON_MAX)
	spec.Maps[IcmplbMapBackends].MaxEntries = c.MaxBackends
	spec.Maps[IcmplbMapBackendStats].MaxEntries = c.MaxBackends
	spec.Maps[IcmplbMapBackendAddrs].MaxEntries = c.MaxBackends
	spec.Maps[IcmplbMapNatPools].MaxEntries = c.MaxBackends
	spec.Maps[IcmplbMapCtFwd].MaxEntries = c.ConntrackSize
	spec.Maps[IcmplbMapCtRev].MaxEntries = c.ConntrackSize
	spec.Maps[IcmplbMapInflight].MaxEntries = c.InflightSize
	spec.Maps[IcmplbMapRttHist].MaxEntries = c.MaxBackends * uint32(RTTBuckets)
	spec.Maps[IcmplbMapEpochs].MaxEntries = c.MaxBackends * uint32(Epochs)
	spec.Maps[IcmplbMapEvents].MaxEntries = c.TraceBufferSize
	return spec, nil
}

// Addr returns an address as the data plane stores it (struct ipaddr): IPv6,
// or IPv4 mapped into IPv6, in network byte order in memory. The zero
// netip.Addr is the zero ipaddr, which is no address of either family.
func Addr(a netip.Addr) IcmplbIpaddr {
	var v IcmplbIpaddr
	if !a.IsValid() {
		return v
	}
	b := a.As16()
	for i := range v.W {
		v.W[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return v
}

// AddrFrom is the inverse of Addr: an IPv4 address comes back unmapped.
func AddrFrom(v IcmplbIpaddr) netip.Addr {
	if v == (IcmplbIpaddr{}) {
		return netip.Addr{}
	}
	var b [16]byte
	for i, w := range v.W {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return netip.AddrFrom16(b).Unmap()
}

// Net16 returns a 16-bit protocol field (such as an echo identifier) as the
// data plane stores it: in network byte order in memory.
func Net16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// Host16 is the inverse of Net16.
func Host16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

// How often the agent sweeps each group of maps. A sweep walks every bucket
// of a map, so each is swept only as often as its timeout needs: requests
// in flight expire twice the loss timeout (1 s at least) after they were
// sent, a quarter of which is late enough; sessions expire after the NAT
// idle time (1 s at least), and the sessions gauge and the retirement of
// drained backends can wait the same.
const (
	SweepInflightEvery = 500 * time.Millisecond
	SweepSessionsEvery = 2 * time.Second
)

// SweepAll is the sweep program's argument for every map.
const SweepAll = IcmplbSweepWhatSWEEP_INFLIGHT | IcmplbSweepWhatSWEEP_SESSIONS

// SweepRun is one run of the sweep program over the maps of what.
func SweepRun(what IcmplbSweepWhat) *ebpf.RunOptions {
	return &ebpf.RunOptions{Context: IcmplbSweepArgs{What: what}}
}
