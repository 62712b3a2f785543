// SPDX-License-Identifier: MIT

package balancer

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/icmplb/icmplb/config"
)

// Capability bits (linux/capability.h).
const (
	capNetAdmin = 12
	capNetRaw   = 13
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// checkPrivileges fails early with the capabilities to grant, rather than
// with EPERM or a verifier message from deep inside the loader. CAP_PERFMON
// is needed too: without it the verifier refuses the data plane's pointer
// arithmetic on map values. CAP_SYS_ADMIN stands in for CAP_BPF and
// CAP_PERFMON, as in the kernel.
// CAP_NET_RAW is the probes' raw ICMP socket, needed when a service probes.
func checkPrivileges(probes bool) error {
	eff, err := effectiveCaps()
	if err != nil {
		return nil // unknown: let the loader report what it hits
	}
	has := func(c uint) bool { return eff&(1<<c) != 0 }
	var missing []string
	for _, c := range []struct {
		bit  uint
		name string
	}{{capBPF, "CAP_BPF"}, {capPerfmon, "CAP_PERFMON"}} {
		if !has(c.bit) && !has(capSysAdmin) {
			missing = append(missing, c.name)
		}
	}
	if !has(capNetAdmin) {
		missing = append(missing, "CAP_NET_ADMIN")
	}
	need := "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
	if probes {
		need = "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and, for its probes, CAP_NET_RAW"
		if !has(capNetRaw) {
			missing = append(missing, "CAP_NET_RAW (or disable probes: --probe.interval 0)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing privileges: icmplb needs %s (lacks %s); run as root or grant them",
			need, strings.Join(missing, ", "))
	}
	return nil
}

func effectiveCaps() (uint64, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

// checkKernel probes what the data plane needs and names what is missing.
func checkKernel() error {
	probes := []struct {
		what string
		err  func() error
	}{
		{"XDP programs", func() error { return features.HaveProgramType(ebpf.XDP) }},
		{"LRU hash maps", func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"per-CPU array maps", func() error { return features.HaveMapType(ebpf.PerCPUArray) }},
		{"BPF ISA v3 (atomics)", features.HaveV3ISA},
	}
	for _, p := range probes {
		if err := p.err(); err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("kernel lacks %s, which icmplb needs (Linux 5.14 or newer): %w", p.what, err)
			}
			return fmt.Errorf("probe kernel for %s: %w", p.what, err)
		}
	}
	return nil
}

// chooseMode resolves "auto". On a veth, native XDP_TX frames are dropped
// unless the peer runs an XDP program, which the balancer cannot see or
// ensure from its side, so auto picks generic mode there.
func chooseMode(mode string, iface *net.Interface, log *slog.Logger) string {
	veth := isVeth(iface)
	switch {
	case mode == config.ModeAuto && veth:
		log.Info("interface is a veth: using generic XDP, since native XDP_TX on a veth is dropped unless its peer has an XDP program",
			"iface", iface.Name)
		return config.ModeGeneric
	case mode == config.ModeAuto:
		return config.ModeNative
	case mode == config.ModeNative && veth:
		log.Warn("native XDP on a veth: replies and forwarded requests are dropped unless the peer veth has an XDP program attached (an XDP_PASS program is enough)",
			"iface", iface.Name)
	}
	return mode
}

func isVeth(iface *net.Interface) bool {
	l, err := netlink.LinkByIndex(iface.Index)
	return err == nil && l.Type() == "veth"
}

func (b *Balancer) attach() error {
	opts := link.XDPOptions{Program: b.objs.Icmplb, Interface: b.iface.Index}
	try := func(mode string) error {
		opts.Flags = link.XDPDriverMode
		if mode == config.ModeGeneric {
			opts.Flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(opts)
		if err != nil {
			return err
		}
		b.link, b.mode = l, mode
		return nil
	}
	err := try(b.mode)
	if err != nil && b.cfg.XDPMode == config.ModeAuto && b.mode == config.ModeNative {
		b.log.Info("native XDP unavailable; falling back to generic", "iface", b.iface.Name, "err", err)
		err = try(config.ModeGeneric)
	}
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrExist) || errors.Is(err, unix.EBUSY) || strings.Contains(err.Error(), "busy") {
		return fmt.Errorf("attach XDP to %s: %s: %w", b.iface.Name, xdpOwner(b.iface), err)
	}
	return fmt.Errorf("attach XDP (%s mode) to %s: %w", b.mode, b.iface.Name, err)
}

// xdpOwner says which XDP program holds the interface and how to remove it.
// The remedy depends on how it was attached: `ip link set dev IFACE xdp off`
// removes a program attached through netlink (ip link, libxdp's legacy mode)
// but the kernel refuses it (EBUSY) for one attached through a bpf_link, as
// icmplb and most current agents attach: that one goes with the process
// holding the link, or with `bpftool link detach`.
func xdpOwner(iface *net.Interface) string {
	l, err := netlink.LinkByIndex(iface.Index)
	if err != nil || l.Attrs().Xdp == nil || !l.Attrs().Xdp.Attached {
		return fmt.Sprintf("another XDP program is attached; find it with `bpftool net show dev %s`, then stop the process holding its link (`bpftool link show`) or detach it",
			iface.Name)
	}
	x := l.Attrs().Xdp
	// XDP_ATTACHED_* of linux/if_link.h, and ip link's keyword for each.
	mode, keyword := "native", "xdpdrv"
	switch x.AttachMode {
	case 2:
		mode, keyword = "generic", "xdpgeneric"
	case 3:
		mode, keyword = "offload", "xdpoffload"
	case 4:
		mode, keyword = "several modes", "xdp"
	}
	prog := "another XDP program"
	if x.ProgId != 0 {
		prog = fmt.Sprintf("XDP program %d%s", x.ProgId, progName(x.ProgId))
	}
	linkID, known := xdpLinkOf(iface.Index, x.ProgId)
	switch {
	case known && linkID != 0:
		return fmt.Sprintf("%s (%s mode) is attached through bpf_link %d, which `ip link set dev %s xdp off` cannot remove: stop the process holding it (another icmplb?) or run `bpftool link detach id %d`",
			prog, mode, linkID, iface.Name, linkID)
	case known:
		return fmt.Sprintf("%s (%s mode) is attached without a bpf_link (by ip link or similar): detach it with `ip link set dev %s %s off`",
			prog, mode, iface.Name, keyword)
	default:
		return fmt.Sprintf("%s (%s mode) is attached: if `bpftool link show` lists an xdp link on %s, stop the process holding it (another icmplb?) or run `bpftool link detach id ID`; otherwise run `ip link set dev %s %s off`",
			prog, mode, iface.Name, iface.Name, keyword)
	}
}

// xdpLinkOf returns the id of the bpf_link attaching prog (0: any program)
// to ifindex, or 0 when no link does; known is false when the links cannot
// be listed (that needs CAP_SYS_ADMIN). Link ids are global but ifindexes are
// per network namespace, hence the match on the program too.
func xdpLinkOf(ifindex int, prog uint32) (id link.ID, known bool) {
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil || info.Type != link.XDPType || info.XDP() == nil {
			continue
		}
		if int(info.XDP().Ifindex) == ifindex && (prog == 0 || info.Program == ebpf.ProgramID(prog)) {
			return info.ID, true
		}
	}
	return 0, it.Err() == nil
}

// progName is ` "name"` of a program, or "" when it cannot be read.
func progName(id uint32) string {
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return ""
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil || info.Name == "" {
		return ""
	}
	return fmt.Sprintf(" %q", info.Name)
}
