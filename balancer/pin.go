// SPDX-License-Identifier: MIT

package balancer

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
)

// With --bpffs every map of the data plane and the XDP link are pinned under
// BPFFS/icmplb/IFACE. The program then outlives the agent: a new agent (the
// same binary or a newer one with the same map layout) reuses the maps and
// swaps its own program into the pinned link, which never detaches, so no
// packet is passed to the kernel while the agent restarts, sessions keep
// their backends and NAT ids, and every counter carries on.

// linkPin is the pinned XDP link's name in the pin directory.
const linkPin = "link"

// pinning marks every map to be pinned (reused when present) and returns
// the load options, or nil without --bpffs. It refuses pinned maps of
// another layout before loading touches them.
func (b *Balancer) pinning(spec *ebpf.CollectionSpec) (*ebpf.CollectionOptions, error) {
	if b.cfg.BPFFS == "" {
		return nil, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(b.cfg.BPFFS, &fs); err != nil || fs.Type != unix.BPF_FS_MAGIC {
		return nil, fmt.Errorf("%s %s is not a mounted bpffs (mount -t bpf bpf %s)", config.SetBPFFS.Flag, b.cfg.BPFFS, b.cfg.BPFFS)
	}
	dir := PinDir(b.cfg.BPFFS, b.cfg.Iface)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	if err := b.lockPins(dir); err != nil {
		return nil, err
	}
	b.pinDir = dir
	want := layoutFingerprint(spec)
	got, pinned, err := pinnedLayout(dir)
	if err != nil {
		return nil, err
	}
	if pinned && got != want {
		return nil, incompatible(dir, fmt.Sprintf("their layout %#x is not this agent's %#x", got, want))
	}
	if !pinned && !dirEmpty(dir) {
		return nil, incompatible(dir, "they were left by an icmplb without a layout record")
	}
	for name, m := range spec.Maps {
		if isPinnable(name, m) {
			m.Pinning = ebpf.PinByName
		}
	}
	return &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}, nil
}

// lockPins makes this agent the only one using dir: a second agent started
// before the first has exited (a rolling update with surge, a supervisor's
// overlap) waits for it rather than fight over the same maps.
func (b *Balancer) lockPins(dir string) error {
	for range 3 {
		f, err := os.Open(dir)
		if err != nil {
			return fmt.Errorf("open pin directory: %w", err)
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if errors.Is(err, unix.EWOULDBLOCK) {
			b.log.Info("another agent is using the pins; waiting for it to exit to take over", "pins", dir)
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("lock pin directory %s: %w", dir, err)
		}
		// The agent we waited for may have detached and removed the
		// directory: lock the one that is there now.
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(dir, &now) == nil && held.Ino == now.Ino && held.Dev == now.Dev {
			b.pinLock = f
			return nil
		}
		f.Close()
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create pin directory: %w", err)
		}
	}
	return fmt.Errorf("lock pin directory %s: it keeps being replaced", dir)
}

// PinDir is where an agent on iface pins its maps and link under bpffs.
func PinDir(bpffs, iface string) string { return filepath.Join(bpffs, "icmplb", iface) }

// incompatible is the error for pins this agent must not use, with the one
// command that clears them.
func incompatible(dir, why string) error {
	return fmt.Errorf("the maps pinned under %s do not fit this agent (%s: another icmplb version, or changed sizes); "+
		"clear them with `rm -r %s` (this detaches the balancer running there and drops its sessions) and start again", dir, why, dir)
}

// isPinnable: the program's constants (.rodata) are its own, so a new
// agent's settings take effect.
func isPinnable(name string, m *ebpf.MapSpec) bool {
	return !slices.Contains([]string{".rodata", ".data", ".bss"}, name) && m.Type != ebpf.UnspecifiedMap
}

func dirEmpty(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return true
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	return errors.Is(err, io.EOF)
}

// pinnedLayout reads the fingerprint the agent that pinned dir's maps wrote.
func pinnedLayout(dir string) (uint64, bool, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.IcmplbMapLayoutId), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("open pinned layout record: %w", err)
	}
	defer m.Close()
	var v uint64
	if err := m.Lookup(uint32(0), &v); err != nil {
		return 0, false, fmt.Errorf("read pinned layout record: %w", err)
	}
	return v, v != 0, nil
}

// layoutFingerprint hashes what a pinned map's user must agree on: each
// map's type, flags, key and value types member by member, and the size of
// the Maglev tables. A change of a struct that keeps its size (two fields
// swapped) changes it too, which the kernel's own check of sizes misses.
func layoutFingerprint(spec *ebpf.CollectionSpec) uint64 {
	h := fnv.New64a()
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range spec.Maps {
			if !yield(n) {
				return
			}
		}
	})
	for _, n := range names {
		m := spec.Maps[n]
		if !isPinnable(n, m) {
			continue
		}
		fmt.Fprintf(h, "%s %v %d %d %#x;", n, m.Type, m.KeySize, m.ValueSize, m.Flags)
		writeType(h, m.Key, 0)
		writeType(h, m.Value, 0)
		if m.InnerMap != nil {
			fmt.Fprintf(h, "inner %v %d %d %d;", m.InnerMap.Type, m.InnerMap.KeySize, m.InnerMap.ValueSize, m.InnerMap.MaxEntries)
		}
	}
	return max(h.Sum64(), 1) // 0 means "no record"
}

func writeType(w io.Writer, t btf.Type, depth int) {
	if t == nil || depth > 8 {
		fmt.Fprint(w, "-;")
		return
	}
	switch v := btf.UnderlyingType(t).(type) {
	case *btf.Struct:
		fmt.Fprintf(w, "struct %s %d{", v.Name, v.Size)
		for _, m := range v.Members {
			fmt.Fprintf(w, "%s@%d:%d ", m.Name, m.Offset, m.BitfieldSize)
			writeType(w, m.Type, depth+1)
		}
		fmt.Fprint(w, "}")
	case *btf.Union:
		fmt.Fprintf(w, "union %s %d{", v.Name, v.Size)
		for _, m := range v.Members {
			fmt.Fprintf(w, "%s@%d ", m.Name, m.Offset)
			writeType(w, m.Type, depth+1)
		}
		fmt.Fprint(w, "}")
	case *btf.Array:
		fmt.Fprintf(w, "[%d]", v.Nelems)
		writeType(w, v.Type, depth+1)
	case *btf.Int:
		fmt.Fprintf(w, "int%d%v;", v.Size, v.Encoding)
	case *btf.Enum:
		fmt.Fprintf(w, "enum %s %d;", v.Name, v.Size)
	default:
		fmt.Fprintf(w, "%T;", v)
	}
}

// writeLayout records this agent's layout for the next one.
func (b *Balancer) writeLayout(spec *ebpf.CollectionSpec) error {
	if b.pinDir == "" {
		return nil
	}
	if err := b.objs.LayoutId.Put(uint32(0), layoutFingerprint(spec)); err != nil {
		return fmt.Errorf("record the maps' layout: %w", err)
	}
	return nil
}

// attachPinned takes the pinned XDP link over when there is one: the new
// program replaces the old in one update, so the interface is never without
// one. Otherwise it attaches and, with --bpffs, pins the new link.
func (b *Balancer) attachPinned() error {
	if b.pinDir == "" {
		return b.attach()
	}
	path := filepath.Join(b.pinDir, linkPin)
	l, err := link.LoadPinnedLink(path, nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := b.attach(); err != nil {
			return err
		}
		if err := b.link.Pin(path); err != nil {
			return fmt.Errorf("pin the XDP link at %s: %w", path, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("open the pinned XDP link %s: %w (remove it to attach afresh)", path, err)
	}
	info, err := l.Info()
	if err != nil || info.Type != link.XDPType || info.XDP() == nil || int(info.XDP().Ifindex) != b.iface.Index {
		l.Close()
		return incompatible(b.pinDir, fmt.Sprintf("%s is not an XDP link on %s", path, b.iface.Name))
	}
	if err := l.Update(b.objs.Icmplb); err != nil {
		l.Close()
		return fmt.Errorf("replace the program of the pinned XDP link %s: %w", path, err)
	}
	b.link, b.tookOver = l, true
	return nil
}

// Detach removes the program from the interface and the pinned maps with
// it: the next agent starts afresh. Without --bpffs, Close does the same.
func (b *Balancer) Detach() error {
	var errs []error
	if b.link != nil && b.pinDir != "" {
		if err := b.link.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin the XDP link: %w", err))
		}
	}
	if b.pinDir != "" {
		if err := os.RemoveAll(b.pinDir); err != nil {
			errs = append(errs, fmt.Errorf("remove pinned maps: %w", err))
		}
	}
	errs = append(errs, b.Close())
	return errors.Join(errs...)
}
