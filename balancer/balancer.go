// SPDX-License-Identifier: MIT

// Package balancer is icmplb's control plane: it checks the kernel and the
// configuration, loads the XDP data plane, fills its Maglev table and backend
// maps, keeps backends' next-hop MAC addresses resolved from the kernel's
// neighbour table, and attaches the program to an interface with a bpf_link.
// It is the only package that touches BPF objects.
//
// It needs Linux 5.14 or newer (XDP bpf_link, BPF atomics, bpf_for_each_map_elem) and the
// capabilities CAP_BPF and CAP_NET_ADMIN.
package balancer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
)

// Balancer is a loaded and attached data plane.
type Balancer struct {
	cfg   config.Config
	log   *slog.Logger
	iface *net.Interface
	objs  dataPlane
	link  link.Link
	mode  string
	ncpu  int
	// backendOrder lists the configured backends in address order; ifIdx
	// is each one's slot in the data plane's maps, and nslots bounds them.
	backendOrder []netip.Addr
	ifIdx        map[netip.Addr]uint32
	nslots       int
	srcDeny      map[netip.Addr]bool
	mu           sync.Mutex // guards table, states
	table        *Maglev
	states       map[netip.Addr]*backendState
	loss         *lossLedger
	// Helpers run from userspace (BPF_PROG_RUN), loaded apart from the data
	// plane because they need newer kernels: nil where they did not load.
	ctCount struct {
		Prog    *ebpf.Program `ebpf:"conntrack_count"`
		Entries *ebpf.Map     `ebpf:"conntrack_entries"`
	}
	sweep struct {
		Prog *ebpf.Program `ebpf:"sweep"`
	}
	snapMu  sync.Mutex // guards scratch
	scratch scratch
}

// dataPlane is what the balancer loads of the BPF object: all maps and the
// XDP program, not the helper programs that are loaded apart or only tested.
type dataPlane struct {
	bpf.IcmplbMaps
	Icmplb *ebpf.Program `ebpf:"icmplb"`
}

func (d *dataPlane) Close() error {
	var errs []error
	if d.Icmplb != nil {
		errs = append(errs, d.Icmplb.Close())
	}
	return errors.Join(append(errs, d.IcmplbMaps.Close())...)
}

type backendState struct {
	nextHop netip.Addr
	mac     net.HardwareAddr
	up      bool
}

// config.MaxLossTimeout must fit the data plane's ring of epochs: a
// negative difference does not compile.
const _ = uint64(bpf.MaxLossTimeout - config.MaxLossTimeout)

// New checks the interface and the kernel against cfg, loads the data plane,
// resolves the backends' neighbours and attaches to the interface. Close
// undoes it. cfg must have passed config.Config.Validate, which parsing it
// (config.Parse, the CLI) runs; New does not check it again.
func New(cfg config.Config, log *slog.Logger) (*Balancer, error) {
	cfg = cfg.WithDefaults()
	if log == nil {
		log = slog.Default()
	}
	iface, err := net.InterfaceByName(cfg.Iface)
	if err != nil {
		return nil, fmt.Errorf("interface %q not found; list interfaces with `ip link`", cfg.Iface)
	}
	if err := checkHost(cfg, iface, log); err != nil {
		return nil, err
	}
	if err := checkPrivileges(); err != nil {
		return nil, err
	}
	if err := checkKernel(); err != nil {
		return nil, err
	}
	mode := chooseMode(cfg.XDPMode, iface, log)
	warnVLANStrip(iface, log)
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("lift the memlock limit for BPF maps: %w", err)
	}

	b := &Balancer{cfg: cfg, log: log, iface: iface, mode: mode,
		ifIdx: map[netip.Addr]uint32{}, states: map[netip.Addr]*backendState{}}
	if err := b.load(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			b.Close()
		}
	}()
	if err := b.initBackends(); err != nil {
		return nil, err
	}
	if err := b.refreshSrcDeny(); err != nil {
		return nil, err
	}
	b.resolveAll(2 * time.Second)
	b.warnUnresolved()
	b.loss = newLossLedger(b.nslots, monotonic())
	if err := b.attach(); err != nil {
		return nil, err
	}
	ok = true
	if b.upCount() == 0 {
		log.Warn("no backend's next hop is resolved yet: echo requests pass to this host's kernel until one answers ARP",
			"backends", cfg.Backends)
	}
	log.Info("attached", "iface", iface.Name, "mode", b.mode, "vip", cfg.VIP, "snat", cfg.SNAT,
		"backends", len(cfg.Backends), "up", b.upCount())
	return b, nil
}

func (b *Balancer) load() error {
	spec, err := bpf.NewSpec(bpf.Config{
		VIP: b.cfg.VIP, SNAT: b.cfg.SNAT,
		MaglevSize:      uint32(b.cfg.MaglevSize),
		MaxBackends:     config.MaxBackends,
		ConntrackSize:   uint32(b.cfg.ConntrackSize),
		NATIdle:         b.cfg.NATIdle,
		LossTimeout:     b.cfg.LossTimeout,
		InflightSize:    uint32(b.cfg.InflightSize),
		TraceSample:     uint32(b.cfg.TraceSample),
		TraceBufferSize: uint32(b.cfg.TraceBufferSize),
	})
	if err != nil {
		return err
	}
	// The occupancy counter needs a kfunc of Linux 6.6: load it on its own so
	// that older kernels run without that one metric.
	ctSpec := spec.Copy()
	opts, err := b.pinning(spec)
	if err != nil {
		return err
	}
	if err := spec.LoadAndAssign(&b.objs, opts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return fmt.Errorf("a map pinned under %s does not match this configuration (sizes changed?): remove that directory and restart: %w",
				opts.Maps.PinPath, err)
		}
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("the kernel's verifier rejected the data plane (kernel too old? icmplb needs Linux 5.14+): %v", ve)
		}
		return fmt.Errorf("load the data plane: %w", err)
	}
	helperOpts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		bpf.IcmplbMapCtFwd: b.objs.CtFwd, bpf.IcmplbMapCtRev: b.objs.CtRev, bpf.IcmplbMapInflight: b.objs.Inflight,
	}}
	if err := ctSpec.Copy().LoadAndAssign(&b.ctCount, helperOpts); err != nil {
		b.log.Warn("conntrack occupancy will not be reported: the kernel cannot count map elements (needs Linux 6.6+)", "err", err)
		b.ctCount.Prog, b.ctCount.Entries = nil, nil
	}
	// The in-flight map is not an LRU: without the sweeper it would fill
	// with lost requests and then refuse every new one.
	if err := ctSpec.LoadAndAssign(&b.sweep, helperOpts); err != nil {
		return fmt.Errorf("load the conntrack sweeper (needs Linux 5.14+ for bpf_for_each_map_elem): %w", err)
	}
	b.ncpu, err = ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("count possible CPUs: %w", err)
	}
	return nil
}

// initBackends gives every configured backend its slot and checks it is
// reached through the balancer's interface: replies leave by XDP_TX, so the
// balancer only works one-arm.
func (b *Balancer) initBackends() error {
	sorted := slices.Clone(b.cfg.Backends)
	slices.SortFunc(sorted, func(x, y netip.Addr) int { return x.Compare(y) })
	for _, addr := range sorted {
		routes, err := netlink.RouteGet(addr.AsSlice())
		if err != nil || len(routes) == 0 {
			return fmt.Errorf("no route to backend %s: %v", addr, err)
		}
		r := routes[0]
		if r.LinkIndex != b.iface.Index {
			out := fmt.Sprint(r.LinkIndex)
			if l, err := net.InterfaceByIndex(r.LinkIndex); err == nil {
				out = l.Name
			}
			return fmt.Errorf("backend %s is routed via %s, not %s: icmplb sends to backends out of the interface it listens on",
				addr, out, b.iface.Name)
		}
		hop := addr
		if gw, ok := netip.AddrFromSlice(r.Gw); ok && gw.Unmap().IsValid() && !gw.IsUnspecified() {
			hop = gw.Unmap()
		}
		b.backendOrder = append(b.backendOrder, addr)
		b.states[addr] = &backendState{nextHop: hop}
	}
	old, err := b.readSlots()
	if err != nil {
		return err
	}
	slots, renewed, err := assignSlots(old, sorted, config.MaxBackends)
	if err != nil {
		return err
	}
	b.ifIdx = slots
	for _, idx := range renewed {
		pool, err := newNATPool()
		if err != nil {
			return err
		}
		if err := b.objs.NatPools.Put(idx, pool); err != nil {
			return fmt.Errorf("write NAT pool %d: %w", idx, err)
		}
		// A reused slot's old requests must not be answered as this
		// backend's; they answer to another address and fail the match.
	}
	for idx, addr := range old {
		if _, live := slots[addr]; live && slots[addr] == idx {
			continue
		}
		var v bpf.IcmplbBackend
		if err := b.objs.Backends.Lookup(idx, &v); err != nil {
			return fmt.Errorf("read backend slot %d: %w", idx, err)
		}
		v.Flags = 0
		if err := b.objs.Backends.Put(idx, v); err != nil {
			return fmt.Errorf("retire backend slot %d (%s): %w", idx, addr, err)
		}
	}
	for _, idx := range slots {
		b.nslots = max(b.nslots, int(idx)+1)
	}
	for _, addr := range sorted {
		if _, ok := old[slots[addr]]; ok && old[slots[addr]] == addr {
			// Keep the pinned MAC until the neighbour table confirms one:
			// replies in flight come from it.
			var v bpf.IcmplbBackend
			if err := b.objs.Backends.Lookup(slots[addr], &v); err == nil {
				b.states[addr].mac = net.HardwareAddr(v.Mac[:])
			}
		}
		if err := b.writeBackend(addr); err != nil {
			return err
		}
		if err := b.objs.BackendAddrs.Put(bpf.Addr(addr), slots[addr]); err != nil {
			return fmt.Errorf("index backend %s: %w", addr, err)
		}
	}
	return b.rebuildTable()
}

func (b *Balancer) writeBackend(addr netip.Addr) error {
	st := b.states[addr]
	v := bpf.IcmplbBackend{Addr: bpf.Addr(addr), Flags: bpf.IcmplbBackendFlagsBACKEND_F_ACTIVE}
	// The last known MAC stays when the neighbour is lost: replies to
	// requests already sent still come from it and must match.
	copy(v.Mac[:], st.mac)
	if st.up {
		v.Flags |= bpf.IcmplbBackendFlagsBACKEND_F_NEIGH
	}
	if err := b.objs.Backends.Put(b.ifIdx[addr], v); err != nil {
		return fmt.Errorf("write backend %s: %w", addr, err)
	}
	return nil
}

// rebuildTable spreads sessions over the backends whose neighbour is
// resolved. With none up, it keeps all of them in the table so that the data
// plane passes requests to the kernel (neighbour unresolved) instead of
// dropping them.
func (b *Balancer) rebuildTable() error {
	var up []netip.Addr
	for addr, st := range b.states {
		if st.up {
			up = append(up, addr)
		}
	}
	if len(up) == 0 {
		up = slices.Collect(func(yield func(netip.Addr) bool) {
			for addr := range b.states {
				if !yield(addr) {
					return
				}
			}
		})
	}
	t, err := UpdateMaglev(b.table, up, b.cfg.MaglevSize)
	if err != nil {
		return err
	}
	keys := make([]uint32, len(t.Slots))
	vals := make([]uint32, len(t.Slots))
	for s, addr := range t.Slots {
		keys[s], vals[s] = uint32(s), b.ifIdx[addr]
	}
	if _, err := b.objs.Maglev.BatchUpdate(keys, vals, nil); err != nil {
		return fmt.Errorf("write maglev table: %w", err)
	}
	b.table = t
	return nil
}

func (b *Balancer) upCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, st := range b.states {
		if st.up {
			n++
		}
	}
	return n
}

// Run keeps the backends' neighbour entries resolved and settles lost
// requests until ctx is done, or returns an error when the interface is gone.
func (b *Balancer) Run(ctx context.Context) error {
	lc, err := newLinkChecker(b.iface, b.log)
	if err != nil {
		return err
	}
	defer lc.close()
	neigh := time.NewTicker(b.cfg.NeighInterval)
	defer neigh.Stop()
	// Settling every quarter epoch keeps loss visible within about
	// loss timeout + 1.3 s of the request.
	settle := time.NewTicker(time.Duration(1<<bpf.EpochShift) / 4)
	defer settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-neigh.C:
			// A deleted interface takes the program with it: stop, so that
			// a supervisor restarts the agent rather than leaving it serving
			// metrics of nothing and reporting ready.
			if err := lc.check(); err != nil {
				return err
			}
			if err := b.refreshNeighbours(); err != nil {
				b.log.Warn("refresh neighbours", "err", err)
			}
			if err := b.refreshSrcDeny(); err != nil {
				b.log.Warn("refresh denied source addresses", "err", err)
			}
		case <-settle.C:
			if err := b.settleLoss(); err != nil {
				b.log.Warn("settle lost requests", "err", err)
			}
			if _, err := b.sweep.Prog.Run(&ebpf.RunOptions{}); err != nil {
				b.log.Warn("sweep expired conntrack entries", "err", err)
			}
		}
	}
}

// Close detaches the program and frees its maps.
func (b *Balancer) Close() error {
	var errs []error
	if b.link != nil {
		if err := b.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach XDP from %s: %w", b.iface.Name, err))
		}
		b.link = nil
	}
	if err := b.objs.Close(); err != nil {
		errs = append(errs, err)
	}
	if b.ctCount.Prog != nil {
		b.ctCount.Prog.Close()
		b.ctCount.Entries.Close()
	}
	if b.sweep.Prog != nil {
		b.sweep.Prog.Close()
	}
	return errors.Join(errs...)
}
