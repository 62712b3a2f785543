// SPDX-License-Identifier: MIT

package balancer

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/icmplb/icmplb/bpf"
)

// pinnedMaps keep a restarted agent's sessions: the NAT ids it handed out
// and where they lead, the requests awaiting replies, and which backend owns
// which slot and NAT pool, so that replies in flight during a restart still
// match and are counted under the backend that got the request.
var pinnedMaps = []string{bpf.IcmplbMapCtFwd, bpf.IcmplbMapCtRev, bpf.IcmplbMapInflight,
	bpf.IcmplbMapBackends, bpf.IcmplbMapNatPools}

// pinning marks the conntrack maps to be pinned under BPFFS/icmplb/IFACE
// (reused when present) and returns the load options, or nil without BPFFS.
// The program's link is not pinned: the program goes when the agent goes.
func (b *Balancer) pinning(spec *ebpf.CollectionSpec) (*ebpf.CollectionOptions, error) {
	if b.cfg.BPFFS == "" {
		return nil, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(b.cfg.BPFFS, &fs); err != nil || fs.Type != unix.BPF_FS_MAGIC {
		return nil, fmt.Errorf("--bpffs %s is not a mounted bpffs (mount -t bpf bpf %s)", b.cfg.BPFFS, b.cfg.BPFFS)
	}
	dir := filepath.Join(b.cfg.BPFFS, "icmplb", b.cfg.Iface)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	for _, name := range pinnedMaps {
		spec.Maps[name].Pinning = ebpf.PinByName
	}
	return &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}, nil
}
