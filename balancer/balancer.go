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
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
)

// Balancer is a loaded and attached data plane.
type Balancer struct {
	cfg   config.Config // guarded by mu: Apply changes its services
	log   *slog.Logger
	iface *net.Interface
	objs  dataPlane
	link  link.Link
	mode  string
	ncpu  int
	// pinDir is where the maps and the link are pinned; "" without --bpffs.
	// pinLock holds it for this agent alone.
	pinDir  string
	pinLock *os.File
	// tookOver is true when the program was already attached through a
	// pinned link: the agent replaced it without detaching.
	tookOver bool
	// innerSpec makes Maglev tables for maglev_tables.
	innerSpec *ebpf.MapSpec
	srcDeny   map[netip.Addr]bool // what src_deny holds
	ifaceDeny map[netip.Addr]bool // the interface's part of it

	mu       sync.Mutex // guards cfg's services, services, slots, hosts, sessions
	services map[netip.Addr]*service
	slots    map[slotKey]*slot
	byIdx    map[uint32]slotKey
	nslots   int
	hosts    map[netip.Addr]*backendState
	// sessions is the live sessions of each backend slot at the last sweep,
	// and sweeps the number of sweeps run.
	sessions []uint32
	sweeps   uint64

	loss *lossLedger
	// prober pings backends; nil until a service probes.
	prober *prober
	// staleSNATs are SNAT addresses no service uses any more, kept in the
	// data plane until replies to them can no longer come.
	staleSNATs map[bpf.IcmplbIpaddr]time.Time
	// gen changes when a slot changes owner, so that a read of the
	// counters racing with it is done again.
	gen uint64
	// closed is set by Close: nothing touches the maps after it.
	closed bool
	// Helpers run from userspace (BPF_PROG_RUN), loaded apart from the data
	// plane because they need newer kernels: nil where they did not load.
	ctCount struct {
		Prog    *ebpf.Program `ebpf:"conntrack_count"`
		Entries *ebpf.Map     `ebpf:"conntrack_entries"`
	}
	sweepProg struct {
		Prog *ebpf.Program `ebpf:"sweep"`
	}
	// When each group of maps is next due for a sweep.
	nextInflightSweep, nextSessionSweep time.Time
	snapMu                              sync.Mutex // guards scratch
	scratch                             scratch
	ctMu                                sync.Mutex // one run of ctCount at a time: its result map is shared
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

// backendState is what the agent knows of a backend host, whatever the
// services it serves: its next hop and whether that answers ARP or NDP.
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
	probes := false
	for _, s := range cfg.ServiceList() {
		probes = probes || s.Probe.Interval > 0
	}
	if err := checkPrivileges(probes); err != nil {
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

	b := newBalancer(cfg, log)
	b.iface, b.mode = iface, mode
	if err := b.load(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			b.Close()
		}
	}()
	if err := b.adopt(); err != nil {
		return nil, err
	}
	if err := b.refreshSrcDeny(); err != nil {
		return nil, err
	}
	if err := b.apply(cfg.ServiceList(), 2*time.Second); err != nil {
		return nil, err
	}
	b.warnUnresolved()
	if err := b.attachPinned(); err != nil {
		return nil, err
	}
	ok = true
	if b.upCount() == 0 {
		log.Warn("no backend's next hop is resolved yet: echo requests pass to this host's kernel until one answers ARP or NDP")
	}
	svcs := cfg.ServiceList()
	attrs := []any{"iface", iface.Name, "mode", b.mode, "services", len(svcs), "backends", len(b.hosts), "up", b.upCount(),
		"took_over", b.tookOver}
	if len(svcs) == 1 {
		attrs = append(attrs, "vip", svcs[0].VIP, "snat", svcs[0].SNAT)
	}
	log.Info("attached", attrs...)
	return b, nil
}

func newBalancer(cfg config.Config, log *slog.Logger) *Balancer {
	return &Balancer{cfg: cfg, log: log,
		services: map[netip.Addr]*service{}, slots: map[slotKey]*slot{}, byIdx: map[uint32]slotKey{},
		hosts: map[netip.Addr]*backendState{}, staleSNATs: map[bpf.IcmplbIpaddr]time.Time{}}
}

var errClosed = errors.New("the balancer is closed")

func (b *Balancer) load() error {
	spec, err := bpf.NewSpec(bpf.Config{
		MaglevSize:      uint32(b.cfg.MaglevSize),
		MaxServices:     config.MaxServices,
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
	b.innerSpec = spec.Maps[bpf.IcmplbMapMaglevTables].InnerMap.Copy()
	opts, err := b.pinning(spec)
	if err != nil {
		return err
	}
	if err := spec.LoadAndAssign(&b.objs, opts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return incompatible(opts.Maps.PinPath, err.Error())
		}
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("the kernel's verifier rejected the data plane (kernel too old? icmplb needs Linux 5.14+): %v", ve)
		}
		return fmt.Errorf("load the data plane: %w", err)
	}
	helperOpts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		bpf.IcmplbMapCtFwd: b.objs.CtFwd, bpf.IcmplbMapCtRev: b.objs.CtRev, bpf.IcmplbMapInflight: b.objs.Inflight,
		bpf.IcmplbMapSlotSessions: b.objs.SlotSessions,
	}}
	if err := ctSpec.Copy().LoadAndAssign(&b.ctCount, helperOpts); err != nil {
		b.log.Warn("conntrack occupancy will not be reported: the kernel cannot count map elements (needs Linux 6.6+)", "err", err)
		b.ctCount.Prog, b.ctCount.Entries = nil, nil
	}
	// The in-flight map is not an LRU: without the sweeper it would fill
	// with lost requests and then refuse every new one.
	if err := ctSpec.LoadAndAssign(&b.sweepProg, helperOpts); err != nil {
		return fmt.Errorf("load the conntrack sweeper (needs Linux 5.14+ for bpf_for_each_map_elem): %w", err)
	}
	if err := b.writeLayout(spec); err != nil {
		return err
	}
	b.ncpu, err = ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("count possible CPUs: %w", err)
	}
	return nil
}

func (b *Balancer) upCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, st := range b.hosts {
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
	// While requests wait to be settled, settling every quarter epoch keeps
	// loss visible within about loss timeout + 1.3 s of the request. Without
	// any, the judge's tick settles and sweeps: an idle agent wakes up for
	// its periodic work once a second, not five times (each wakeup is most
	// of what an idle agent costs). Traffic is then seen a second later at
	// most, before any of it can be settled.
	const busyEvery = time.Duration(1<<bpf.EpochShift) / 4
	settle := time.NewTimer(busyEvery)
	defer settle.Stop()
	busy := true
	judge := time.NewTicker(time.Second)
	defer judge.Stop()
	settleAndSweep := func() {
		pending, err := b.settleLoss()
		if err != nil {
			b.log.Warn("settle lost requests", "err", err)
		}
		if err := b.sweep(time.Now()); err != nil {
			b.log.Warn("sweep expired conntrack entries", "err", err)
		}
		if busy = pending; busy {
			settle.Reset(busyEvery)
		}
	}
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
		case <-judge.C:
			if err := b.judge(); err != nil {
				b.log.Warn("judge backends' health", "err", err)
			}
			if !busy {
				settleAndSweep()
			}
		case <-settle.C:
			settleAndSweep()
		}
	}
}

// Close releases the agent's hold on the data plane. Without --bpffs that
// detaches the program and frees its maps; with it, the pinned link keeps
// the program attached for the next agent (see Detach).
func (b *Balancer) Close() error {
	// The prober's goroutines report to probeResult, which takes b.mu:
	// stop them, without it, before taking it for the rest.
	b.mu.Lock()
	p := b.prober
	b.prober, b.closed = nil, true
	b.mu.Unlock()
	if p != nil {
		p.close()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	if b.link != nil {
		if err := b.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach XDP from %s: %w", b.iface.Name, err))
		}
		b.link = nil
	}
	for _, s := range b.services {
		if s.inner != nil {
			s.inner.Close()
		}
	}
	if err := b.objs.Close(); err != nil {
		errs = append(errs, err)
	}
	if b.ctCount.Prog != nil {
		b.ctCount.Prog.Close()
		b.ctCount.Entries.Close()
	}
	if b.sweepProg.Prog != nil {
		b.sweepProg.Prog.Close()
	}
	if b.pinLock != nil {
		b.pinLock.Close() // the next agent may take over
	}
	return errors.Join(errs...)
}
