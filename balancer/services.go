// SPDX-License-Identifier: MIT

package balancer

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
)

// slotKey names a backend slot of the data plane: one backend of one
// service. A host serving two VIPs has two slots, so that each service's
// counters, histograms and NAT ids are its own.
type slotKey struct{ vip, addr netip.Addr }

func (k slotKey) String() string { return k.addr.String() + " of " + k.vip.String() }

func (k slotKey) compare(o slotKey) int {
	return cmp.Or(k.vip.Compare(o.vip), k.addr.Compare(o.addr))
}

// slot is a backend slot in use: configured, or removed and draining.
type slot struct {
	idx    uint32
	weight int
	// removed is set when a reload dropped the backend (or its service):
	// its sessions keep their backend until they go idle, then the slot is
	// retired at the first sweep after removedAt that finds none.
	removed   bool
	removedAt uint64 // b.sweeps at removal
	health
}

// service is a configured VIP and its Maglev table in the data plane.
type service struct {
	cfg    config.Service
	table  uint32 // index into maglev_tables
	maglev *Maglev
	inner  *ebpf.Map // the table maglev_tables holds at index table
	// failOpen, pass and allDown are the service's all-down state as its
	// table was last built (see pool).
	failOpen, pass, allDown bool
}

// noBackend fills the Maglev table of a service without a backend taking
// sessions: no slot has that index, so the data plane drops the request as
// no_backend.
const noBackend = ^uint32(0)

// Apply makes services the balanced services, as a reload does. It checks
// everything it can before it changes anything; a check that fails leaves
// the data plane as it was. Sessions on backends that stay keep their
// backend; a removed backend's sessions drain (see slot.removed).
func (b *Balancer) Apply(cfg config.Config) error {
	if err := checkHost(cfg, b.iface, b.log); err != nil {
		return err
	}
	return b.apply(cfg.WithDefaults().ServiceList(), time.Second)
}

// apply is Apply without the host checks, which New runs before loading;
// it waits up to resolve for new backends' next hops before it puts them
// in tables, so that their first requests are not passed to the kernel.
func (b *Balancer) apply(svcs []config.Service, resolve time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errClosed
	}

	// Checks first: routes of new hosts, slots and tables available.
	want := map[slotKey]int{}
	newHosts := map[netip.Addr]netip.Addr{}
	for _, svc := range svcs {
		for _, be := range svc.Backends {
			want[slotKey{svc.VIP, be.Addr}] = be.Weight
			if _, known := b.hosts[be.Addr]; known {
				continue
			}
			if _, seen := newHosts[be.Addr]; seen {
				continue
			}
			hop, err := b.route(be.Addr)
			if err != nil {
				return err
			}
			newHosts[be.Addr] = hop
		}
	}
	old := make(map[uint32]slotKey, len(b.byIdx))
	maps.Copy(old, b.byIdx)
	keys := slices.Collect(maps.Keys(want))
	for k := range b.slots {
		if _, ok := want[k]; !ok {
			keys = append(keys, k) // removed: keeps its slot while draining
		}
	}
	slices.SortFunc(keys, slotKey.compare)
	assigned, renewed, err := assignSlots(old, keys, config.MaxBackends)
	if err != nil {
		return fmt.Errorf("%w: removed backends keep their slots until their sessions end (--nat-idle after their last request); reload again then", err)
	}
	tables := map[netip.Addr]uint32{}
	usedTables := map[uint32]bool{}
	for _, svc := range svcs {
		if s, ok := b.services[svc.VIP]; ok {
			tables[svc.VIP] = s.table
			usedTables[s.table] = true
		}
	}
	next := uint32(0)
	for _, svc := range svcs {
		if _, ok := tables[svc.VIP]; ok {
			continue
		}
		for usedTables[next] {
			next++
		}
		if next >= config.MaxServices {
			return fmt.Errorf("no free Maglev table for service %s (%d at most)", svc.VIP, config.MaxServices)
		}
		tables[svc.VIP] = next
		usedTables[next] = true
	}

	// The probe sockets are the last thing that can be refused (they need
	// CAP_NET_RAW): open those of the probed services' families before
	// anything changes. A socket stays open once opened: a reload that
	// brings its family back then cannot fail on it.
	for _, svc := range svcs {
		if svc.Probe.Interval == 0 {
			continue
		}
		if b.prober == nil {
			b.prober = newProber(func(k slotKey, ok bool, rtt time.Duration) { b.probeResult(k, ok, rtt) })
		}
		if err := b.prober.open(svc.VIP); err != nil {
			return err
		}
	}

	// New hosts: resolve their next hops before they take sessions.
	for addr, hop := range newHosts {
		b.hosts[addr] = &backendState{nextHop: hop}
	}
	if len(newHosts) > 0 {
		b.resolveLocked(slices.Collect(maps.Keys(newHosts)), resolve)
	}

	// Slots: new ones get a fresh NAT pool and zeroed counters, then every
	// slot's entry is written before any table points at it.
	// A retired slot coming back to its own backend starts afresh too: its
	// series went away with it, and must not come back with old counts.
	for k, idx := range assigned {
		if _, live := b.slots[k]; !live && !slices.Contains(renewed, idx) {
			renewed = append(renewed, idx)
		}
	}
	if len(renewed) > 0 {
		b.gen++ // a concurrent read of the counters must not mix owners
	}
	for _, idx := range renewed {
		if err := b.renewSlot(idx); err != nil {
			return err
		}
	}
	for k, idx := range assigned {
		s, ok := b.slots[k]
		if !ok {
			s = newSlot(idx)
			b.slots[k] = s
		}
		s.idx = idx
		if w, live := want[k]; live {
			s.weight, s.removed = w, false
		} else if !s.removed {
			s.weight, s.removed, s.removedAt = 0, true, b.sweeps
			b.log.Info("backend removed: draining its sessions", "vip", k.vip, "backend", k.addr)
		}
		b.byIdx[idx] = k
		b.nslots = max(b.nslots, int(idx)+1)
		if err := b.writeSlot(k); err != nil {
			return err
		}
	}
	if err := b.indexAddrs(); err != nil {
		return err
	}
	b.loss.grow(b.nslots, monotonic())

	// Services: tables first, then the service entry that points at them;
	// removed services go before their tables.
	keep := map[netip.Addr]bool{}
	for _, svc := range svcs {
		keep[svc.VIP] = true
	}
	for vip, s := range b.services {
		if keep[vip] {
			continue
		}
		if err := b.objs.Services.Delete(bpf.Addr(vip)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove service %s: %w", vip, err)
		}
		if err := b.objs.MaglevTables.Delete(s.table); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove the Maglev table of %s: %w", vip, err)
		}
		if s.inner != nil {
			s.inner.Close()
		}
		delete(b.services, vip)
		b.log.Info("service removed", "vip", vip)
	}
	if err := b.writeSNATs(svcs); err != nil {
		return err
	}
	if err := b.writeSrcDeny(svcs); err != nil {
		return err
	}
	for _, svc := range svcs {
		s, ok := b.services[svc.VIP]
		if !ok {
			s = &service{table: tables[svc.VIP]}
			if err := b.clearServiceStats(s.table); err != nil {
				return err
			}
			b.services[svc.VIP] = s
			b.log.Info("service added", "vip", svc.VIP, "snat", svc.SNAT, "backends", len(svc.Backends))
		}
		s.cfg = svc
		if svc.Probe.Interval == 0 {
			// Probes turned off: what they said no longer holds.
			for k, sl := range b.slots {
				if k.vip == svc.VIP {
					sl.probeUp, sl.probeOK, sl.probeKO, sl.probeWhy = true, 0, 0, ""
				}
			}
		}
		if err := b.refreshService(svc.VIP); err != nil {
			return err
		}
	}
	if err := b.writeSNATs(nil); err != nil {
		return err
	}
	if err := b.writeSrcDeny(nil); err != nil {
		return err
	}
	b.cfg.Services = slices.Clone(svcs)
	return b.startProbes()
}

// startProbes points the prober, opened by apply's checks when a service
// probes, at the slots to probe.
func (b *Balancer) startProbes() error {
	if b.prober != nil {
		b.prober.set(b.probeTargets())
	}
	return nil
}

// route finds a backend's next hop and checks it is out of the balancer's
// interface: replies leave by XDP_TX, so the balancer only works one-arm.
func (b *Balancer) route(addr netip.Addr) (netip.Addr, error) {
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		return netip.Addr{}, fmt.Errorf("no route to backend %s: %v", addr, err)
	}
	r := routes[0]
	if r.LinkIndex != b.iface.Index {
		out := fmt.Sprint(r.LinkIndex)
		if l, err := net.InterfaceByIndex(r.LinkIndex); err == nil {
			out = l.Name
		}
		return netip.Addr{}, fmt.Errorf("backend %s is routed via %s, not %s: icmplb sends to backends out of the interface it listens on",
			addr, out, b.iface.Name)
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok && gw.Unmap().IsValid() && !gw.IsUnspecified() {
		return gw.Unmap(), nil
	}
	// An IPv4 route via an IPv6 router (RFC 8950, `via inet6`) names its
	// gateway in RTA_VIA instead: the MAC is that router's, found by NDP.
	if v, ok := r.Via.(*netlink.Via); ok {
		if gw, ok := netip.AddrFromSlice(v.Addr); ok && !gw.IsUnspecified() {
			return gw.Unmap(), nil
		}
	}
	return addr, nil
}

// renewSlot readies a slot for a backend new to it: fresh NAT keys, and no
// counts of the slot's previous owner.
func (b *Balancer) renewSlot(idx uint32) error {
	pool, err := newNATPool()
	if err != nil {
		return err
	}
	if err := b.objs.NatPools.Put(idx, pool); err != nil {
		return fmt.Errorf("write NAT pool %d: %w", idx, err)
	}
	if err := b.objs.BackendStats.Put(idx, make([]bpf.IcmplbBackendCounters, b.ncpu)); err != nil {
		return fmt.Errorf("clear counters of slot %d: %w", idx, err)
	}
	zeros := make([]uint64, b.ncpu)
	for k := range bpf.RTTBuckets {
		if err := b.objs.RttHist.Put(uint32(bpf.RTTKey(int(idx), k)), zeros); err != nil {
			return fmt.Errorf("clear RTT histogram of slot %d: %w", idx, err)
		}
	}
	for e := range bpf.Epochs {
		if err := b.objs.Epochs.Put(uint32(bpf.EpochKey(int(idx), uint64(e))), make([]bpf.IcmplbEpochCount, b.ncpu)); err != nil {
			return fmt.Errorf("clear epochs of slot %d: %w", idx, err)
		}
	}
	b.loss.reset(idx, monotonic())
	return nil
}

// clearServiceStats zeroes a table index's counters for a new service.
func (b *Balancer) clearServiceStats(table uint32) error {
	zeros := make([]uint64, b.ncpu)
	for r := range len(Verdicts) {
		if err := b.objs.SvcStats.Put(table*uint32(len(Verdicts))+uint32(r), zeros); err != nil {
			return fmt.Errorf("clear counters of table %d: %w", table, err)
		}
	}
	return nil
}

// writeSlot writes a slot's backend entry. A draining slot stays active, so
// that its sessions keep their backend while the Maglev table gives it no
// new one.
func (b *Balancer) writeSlot(k slotKey) error {
	st := b.hosts[k.addr]
	v := bpf.IcmplbBackend{Addr: bpf.Addr(k.addr), Vip: bpf.Addr(k.vip), Flags: bpf.IcmplbBackendFlagsBACKEND_F_ACTIVE}
	healthy := b.wantHealthy(k)
	if healthy {
		v.Flags |= bpf.IcmplbBackendFlagsBACKEND_F_HEALTHY
	}
	// The last known MAC stays when the neighbour is lost: replies to
	// requests already sent still come from it and must match.
	copy(v.Mac[:], st.mac)
	if st.up {
		v.Flags |= bpf.IcmplbBackendFlagsBACKEND_F_NEIGH
	}
	if err := b.objs.Backends.Put(b.slots[k].idx, v); err != nil {
		return fmt.Errorf("write backend %s of %s: %w", k.addr, k.vip, err)
	}
	b.slots[k].healthyFlag = healthy
	return nil
}

// indexAddrs points each backend address at its first slot, for replies
// that match no request, and forgets addresses no slot has.
func (b *Balancer) indexAddrs() error {
	want := map[bpf.IcmplbIpaddr]uint32{}
	for k, s := range b.slots {
		a := bpf.Addr(k.addr)
		if cur, ok := want[a]; !ok || s.idx < cur {
			want[a] = s.idx
		}
	}
	return syncAddrMap(b.objs.BackendAddrs, want, "backend index")
}

// writeSNATs makes snat_addrs the services' SNAT addresses, each with the
// number of services using it.
// incoming's are added too, so that a reload lists every new SNAT address
// before any service sends from it. An address no service uses any more
// stays until replies to requests sent from it can no longer come (twice
// the loss timeout), so that the last of them still find their clients.
func (b *Balancer) writeSNATs(incoming []config.Service) error {
	now := time.Now()
	want := map[bpf.IcmplbIpaddr]uint32{}
	for _, s := range b.services {
		want[bpf.Addr(s.cfg.SNAT)]++
	}
	for _, s := range incoming {
		if a := bpf.Addr(s.SNAT); want[a] == 0 {
			want[a] = 1
		}
	}
	var k bpf.IcmplbIpaddr
	var v uint32
	it := b.objs.SnatAddrs.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			if _, retiring := b.staleSNATs[k]; !retiring {
				b.staleSNATs[k] = now.Add(2*b.cfg.LossTimeout + time.Second)
			}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read SNAT addresses: %w", err)
	}
	for a, until := range b.staleSNATs {
		_, used := want[a]
		switch {
		case used:
			delete(b.staleSNATs, a)
		case now.Before(until):
			want[a] = 0
		default:
			delete(b.staleSNATs, a)
		}
	}
	return syncAddrMap(b.objs.SnatAddrs, want, "SNAT addresses")
}

// syncAddrMap makes a hash map of addresses hold want: it writes every
// entry of want before it deletes the others, so that no address the data
// plane needs is missing in between.
func syncAddrMap(m *ebpf.Map, want map[bpf.IcmplbIpaddr]uint32, what string) error {
	for k, v := range want {
		if err := m.Put(k, v); err != nil {
			return fmt.Errorf("write %s %s: %w", what, bpf.AddrFrom(k), err)
		}
	}
	var k bpf.IcmplbIpaddr
	var v uint32
	var stale []bpf.IcmplbIpaddr
	it := m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", what, err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove %s %s: %w", what, bpf.AddrFrom(k), err)
		}
	}
	return nil
}

// rebuildTable recomputes a service's Maglev table and, when it changed,
// fills a new table and swaps it in with one update of maglev_tables: the
// data plane reads the old table or the new one, never a mix.
func (b *Balancer) rebuildTable(vip netip.Addr) error {
	s := b.services[vip]
	weights, _, _, _ := b.pool(vip)
	t, err := UpdateMaglev(s.maglev, weights, b.cfg.MaglevSize)
	if err != nil {
		return fmt.Errorf("Maglev table of %s: %w", vip, err)
	}
	if s.inner != nil && s.maglev != nil && slices.Equal(t.Backends, s.maglev.Backends) && slices.Equal(t.Slots, s.maglev.Slots) {
		return nil
	}
	inner, err := ebpf.NewMap(b.innerSpec)
	if err != nil {
		return fmt.Errorf("create a Maglev table for %s: %w", vip, err)
	}
	idx := make([]uint32, len(t.Backends))
	for i, addr := range t.Backends {
		idx[i] = b.slots[slotKey{vip, addr}].idx
	}
	keys := make([]uint32, len(t.Slots))
	vals := make([]uint32, len(t.Slots))
	for i, o := range t.Slots {
		keys[i], vals[i] = uint32(i), noBackend
		if len(t.Backends) > 0 {
			vals[i] = idx[o]
		}
	}
	if _, err := inner.BatchUpdate(keys, vals, nil); err != nil {
		inner.Close()
		return fmt.Errorf("fill the Maglev table of %s: %w", vip, err)
	}
	if err := b.objs.MaglevTables.Put(s.table, inner); err != nil {
		inner.Close()
		return fmt.Errorf("switch the Maglev table of %s: %w", vip, err)
	}
	if s.inner != nil {
		s.inner.Close()
	}
	s.inner, s.maglev = inner, t
	return nil
}

// sweep expires what is due at now: requests in flight every
// bpf.SweepInflightEvery, sessions (and their counts per slot, and the
// retirement of drained backends) every bpf.SweepSessionsEvery. A group
// whose maps are empty is not walked: an idle agent walks nothing.
func (b *Balancer) sweep(now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	if len(b.staleSNATs) > 0 {
		if err := b.writeSNATs(nil); err != nil {
			return err
		}
		if err := b.writeSrcDeny(nil); err != nil {
			return err
		}
	}
	n := b.nslots
	if n == 0 {
		return nil
	}
	inflightDue, sessions := !now.Before(b.nextInflightSweep), !now.Before(b.nextSessionSweep)
	if !inflightDue && !sessions {
		return nil
	}
	c, known, err := b.countEntries()
	if err != nil {
		return err
	}
	var what bpf.IcmplbSweepWhat
	if inflightDue {
		b.nextInflightSweep = now.Add(bpf.SweepInflightEvery)
		if !known || c.inflight > 0 {
			what |= bpf.IcmplbSweepWhatSWEEP_INFLIGHT
		}
	}
	if sessions {
		b.nextSessionSweep = now.Add(bpf.SweepSessionsEvery)
		if !known || c.fwd > 0 || c.rev > 0 {
			what |= bpf.IcmplbSweepWhatSWEEP_SESSIONS
		}
	}
	counts := make([]uint32, n)
	if what&bpf.IcmplbSweepWhatSWEEP_SESSIONS != 0 {
		keys := make([]uint32, n)
		for i := range keys {
			keys[i] = uint32(i)
		}
		if _, err := b.objs.SlotSessions.BatchUpdate(keys, make([]uint32, n), nil); err != nil {
			return fmt.Errorf("clear session counts: %w", err)
		}
	}
	if what != 0 {
		if _, err := b.sweepProg.Prog.Run(bpf.SweepRun(what)); err != nil {
			return err
		}
	}
	if !sessions {
		return nil
	}
	if what&bpf.IcmplbSweepWhatSWEEP_SESSIONS != 0 {
		var cursor ebpf.MapBatchCursor
		keys := make([]uint32, n)
		for i := range keys {
			keys[i] = uint32(i)
		}
		if _, err := b.objs.SlotSessions.BatchLookup(&cursor, keys, counts, nil); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("read session counts: %w", err)
		}
	}
	b.sessions = counts
	b.sweeps++
	var errs []error
	for k, s := range b.slots {
		if !s.removed || s.removedAt >= b.sweeps-1 || counts[s.idx] > 0 {
			continue
		}
		if err := b.retire(k); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// retire frees a drained slot: its entry keeps the address with flags 0, so
// that it is reused last (see assignSlots), and its metrics go away.
func (b *Balancer) retire(k slotKey) error {
	s := b.slots[k]
	v := bpf.IcmplbBackend{Addr: bpf.Addr(k.addr), Vip: bpf.Addr(k.vip)}
	// Its MAC stays: a late reply still comes from it, and is unmatched,
	// not spoofed.
	copy(v.Mac[:], b.hosts[k.addr].mac)
	if err := b.objs.Backends.Put(s.idx, v); err != nil {
		return fmt.Errorf("retire backend %s of %s: %w", k.addr, k.vip, err)
	}
	// byIdx keeps the key: a retired slot is reused last.
	delete(b.slots, k)
	inUse := false
	for o := range b.slots {
		inUse = inUse || o.addr == k.addr
	}
	if !inUse {
		delete(b.hosts, k.addr)
	}
	b.log.Info("removed backend drained", "vip", k.vip, "backend", k.addr)
	return b.indexAddrs()
}

// servicesOf are the VIPs whose tables include addr.
func (b *Balancer) servicesOf(addr netip.Addr) []netip.Addr {
	var out []netip.Addr
	for vip, s := range b.services {
		for _, be := range s.cfg.Backends {
			if be.Addr == addr {
				out = append(out, vip)
				break
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// adopt takes over what a previous agent left in pinned maps: backend
// slots (sessions keep their backends and counters), services and their
// Maglev tables (so the first table of this agent moves the fewest
// sessions), and the loss ledger. Fresh maps hold nothing to adopt.
func (b *Balancer) adopt() error {
	b.loss = newLossLedger()
	b.mu.Lock()
	defer b.mu.Unlock()
	var idx uint32
	var v bpf.IcmplbBackend
	it := b.objs.Backends.Iterate()
	for it.Next(&idx, &v) {
		if v.Addr == (bpf.IcmplbIpaddr{}) {
			continue
		}
		k := slotKey{bpf.AddrFrom(v.Vip), bpf.AddrFrom(v.Addr)}
		b.byIdx[idx] = k
		b.nslots = max(b.nslots, int(idx)+1)
		if v.Flags&bpf.IcmplbBackendFlagsBACKEND_F_ACTIVE == 0 {
			continue
		}
		b.slots[k] = newSlot(idx)
		if _, ok := b.hosts[k.addr]; !ok {
			hop, err := b.route(k.addr)
			if err != nil {
				hop = k.addr // gone: it only drains
			}
			// Until the neighbour table says otherwise, the pinned MAC is
			// the one replies in flight come from.
			b.hosts[k.addr] = &backendState{nextHop: hop, mac: append(net.HardwareAddr(nil), v.Mac[:]...),
				up: v.Flags&bpf.IcmplbBackendFlagsBACKEND_F_NEIGH != 0}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read backend slots: %w", err)
	}
	var vip bpf.IcmplbIpaddr
	var sv bpf.IcmplbService
	sit := b.objs.Services.Iterate()
	for sit.Next(&vip, &sv) {
		a := bpf.AddrFrom(vip)
		s := &service{cfg: config.Service{VIP: a, SNAT: bpf.AddrFrom(sv.Snat)}, table: sv.Table}
		var inner *ebpf.Map
		if err := b.objs.MaglevTables.Lookup(sv.Table, &inner); err == nil {
			s.inner = inner
			s.maglev = b.readTable(a, inner)
		}
		b.services[a] = s
	}
	if err := sit.Err(); err != nil {
		return fmt.Errorf("read services: %w", err)
	}
	if b.pinDir != "" {
		if err := b.loss.restore(b.objs.LossLedger, b.nslots, monotonic()); err != nil {
			return err
		}
	}
	b.loss.grow(b.nslots, monotonic())
	return nil
}

// readTable reads a pinned Maglev table back, or nil when it is not one
// this agent can continue from.
func (b *Balancer) readTable(vip netip.Addr, inner *ebpf.Map) *Maglev {
	n := b.cfg.MaglevSize
	if int(inner.MaxEntries()) != n {
		return nil
	}
	keys := make([]uint32, n)
	vals := make([]uint32, n)
	var cursor ebpf.MapBatchCursor
	got, err := inner.BatchLookup(&cursor, keys, vals, nil)
	if got != n && err != nil {
		return nil
	}
	pos := map[netip.Addr]uint16{}
	var backends []netip.Addr
	for _, v := range vals {
		k, ok := b.byIdx[v]
		if !ok || k.vip != vip {
			return nil
		}
		if _, seen := pos[k.addr]; !seen {
			pos[k.addr] = 0
			backends = append(backends, k.addr)
		}
	}
	slices.SortFunc(backends, netip.Addr.Compare)
	for i, a := range backends {
		pos[a] = uint16(i)
	}
	m := &Maglev{Backends: backends, Slots: make([]uint16, n)}
	for i, v := range vals {
		m.Slots[keys[i]] = pos[b.byIdx[v].addr]
	}
	return m
}
