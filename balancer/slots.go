// SPDX-License-Identifier: MIT

package balancer

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/icmplb/icmplb/bpf"
)

// assignSlots gives every backend its index in the data plane's maps. The
// backends map may be pinned: a backend it already holds keeps its slot, so
// the requests and sessions a restarted agent inherits stay counted under the
// backend they went to. A new backend takes a slot never used before, or
// else the oldest retired one. A retired backend's slot keeps its address
// with flags 0: its replies in flight are still returned, and the slot is
// reused last.
func assignSlots[K comparable](old map[uint32]K, backends []K, capacity uint32) (map[K]uint32, []uint32, error) {
	if uint32(len(backends)) > capacity {
		return nil, nil, fmt.Errorf("%d backends do not fit in %d slots", len(backends), capacity)
	}
	bySlot := map[K]uint32{}
	for idx, addr := range old {
		if cur, dup := bySlot[addr]; !dup || idx < cur {
			bySlot[addr] = idx
		}
	}
	used := map[uint32]bool{}
	slots := map[K]uint32{}
	var fresh []K
	for _, addr := range backends {
		if idx, ok := bySlot[addr]; ok {
			slots[addr] = idx
			used[idx] = true
		} else {
			fresh = append(fresh, addr)
		}
	}
	var retired []uint32
	for idx := range old {
		if !used[idx] {
			retired = append(retired, idx)
		}
	}
	slices.Sort(retired)
	var renewed []uint32
	next := uint32(0)
	for _, addr := range fresh {
		for next < capacity && (used[next] || inOld(old, next)) {
			next++
		}
		var idx uint32
		switch {
		case next < capacity:
			idx = next
		case len(retired) > 0:
			idx, retired = retired[0], retired[1:]
		default:
			return nil, nil, fmt.Errorf("no free backend slot for %v (%d slots)", addr, capacity)
		}
		used[idx] = true
		slots[addr] = idx
		renewed = append(renewed, idx)
	}
	return slots, renewed, nil
}

func inOld[K comparable](old map[uint32]K, idx uint32) bool {
	_, ok := old[idx]
	return ok
}

// newNATPool returns a pool with fresh secret keys, salt and a random
// start, so that NAT ids cannot be guessed from outside, nor after a
// restart.
func newNATPool() (bpf.IcmplbNatPool, error) {
	var buf [24]byte
	if _, err := rand.Read(buf[:]); err != nil {
		return bpf.IcmplbNatPool{}, fmt.Errorf("read random NAT keys: %w", err)
	}
	var p bpf.IcmplbNatPool
	for i := range p.Key {
		p.Key[i] = binary.LittleEndian.Uint32(buf[4*i:])
	}
	p.Next = binary.LittleEndian.Uint32(buf[16:])
	p.Salt = binary.LittleEndian.Uint32(buf[20:])
	return p, nil
}
