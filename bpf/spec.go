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
	// VIP is the virtual IPv4 address clients ping.
	VIP netip.Addr
	// SNAT is the source address requests carry towards backends; replies
	// from backends come back to it.
	SNAT netip.Addr
	// MaglevSize is the number of slots of the Maglev table (a prime).
	MaglevSize uint32
	// MaxBackends bounds the backend index space.
	MaxBackends uint32
	// ConntrackSize is the capacity of each conntrack LRU map.
	ConntrackSize uint32
	// NATIdle is how long a session must be idle before its NAT id may be
	// given to another session.
	NATIdle time.Duration
}

// NewSpec returns the data plane's CollectionSpec specialised for c, ready to
// be loaded.
func NewSpec(c Config) (*ebpf.CollectionSpec, error) {
	if !c.VIP.Is4() || !c.SNAT.Is4() {
		return nil, fmt.Errorf("VIP %s and SNAT %s must be IPv4 addresses", c.VIP, c.SNAT)
	}
	if c.MaglevSize == 0 || c.MaxBackends == 0 || c.ConntrackSize == 0 {
		return nil, fmt.Errorf("map sizes must be positive (maglev %d, backends %d, conntrack %d)",
			c.MaglevSize, c.MaxBackends, c.ConntrackSize)
	}
	spec, err := LoadIcmplb()
	if err != nil {
		return nil, err
	}
	consts := map[string]any{
		IcmplbVarCfgVip:        Addr(c.VIP),
		IcmplbVarCfgSnat:       Addr(c.SNAT),
		IcmplbVarCfgMaglevSize: c.MaglevSize,
		IcmplbVarCfgNatIdleNs:  uint64(c.NATIdle.Nanoseconds()),
	}
	for name, v := range consts {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	spec.Maps[IcmplbMapMaglev].MaxEntries = c.MaglevSize
	spec.Maps[IcmplbMapBackends].MaxEntries = c.MaxBackends
	spec.Maps[IcmplbMapBackendStats].MaxEntries = c.MaxBackends
	spec.Maps[IcmplbMapCtFwd].MaxEntries = c.ConntrackSize
	spec.Maps[IcmplbMapCtRev].MaxEntries = c.ConntrackSize
	return spec, nil
}

// Addr returns an IPv4 address as the data plane stores it: a uint32 whose
// in-memory bytes are in network order.
func Addr(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// AddrFrom is the inverse of Addr.
func AddrFrom(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
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
