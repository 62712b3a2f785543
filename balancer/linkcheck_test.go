// SPDX-License-Identifier: MIT

package balancer

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// TestLinkGone: only "no such device" means the interface is gone; running
// out of descriptors or buffers, a timeout or a closed socket does not.
func TestLinkGone(t *testing.T) {
	for _, tc := range []struct {
		err  error
		gone bool
	}{
		{nil, false},
		{netlink.LinkNotFoundError{}, true},
		{unix.ENODEV, true},
		{fmt.Errorf("get link: %w", unix.ENODEV), true},
		{fmt.Errorf("lookup: %w", netlink.LinkNotFoundError{}), true},
		{unix.EMFILE, false}, // the issue 7 case: "too many open files"
		{unix.ENFILE, false},
		{unix.ENOBUFS, false},
		{unix.EAGAIN, false}, // the socket timeout
		{unix.EBADF, false},
		{unix.EINTR, false},
		{syscall.Errno(0), false},
		{errors.New("Wrong sender portid 1, expected 0"), false},
	} {
		if got := linkGone(tc.err); got != tc.gone {
			t.Errorf("linkGone(%#v = %v) = %v, want %v", tc.err, tc.err, got, tc.gone)
		}
	}
}

// syncBuffer collects a logger's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLinkCheckerRenameAndDelete runs the checker against a real interface in
// a namespace of its own: a rename is logged and not fatal, a failed question
// is a warning, a deletion is "gone".
func TestLinkCheckerRenameAndDelete(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Spec{Hosts: []topology.HostSpec{
		{Name: "lc", Addr: netip.MustParsePrefix("10.0.0.1/24")},
	}})
	run := func(args ...string) {
		t.Helper()
		if out, err := topo.Run("lc", "ip", args...); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	// A veth pair: the dummy driver is not in every kernel.
	run("link", "add", "dl0", "type", "veth", "peer", "name", "dl0p")
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	var c *linkChecker
	if err := topo.InNS("lc", func() error {
		ifc, err := net.InterfaceByName("dl0")
		if err != nil {
			return err
		}
		c, err = newLinkChecker(ifc, log)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)

	if err := c.check(); err != nil || logs.String() != "" {
		t.Fatalf("present interface: %v, log %q", err, logs.String())
	}
	run("link", "set", "dl0", "name", "dl1")
	if err := c.check(); err != nil {
		t.Fatalf("after a rename: %v, want nil", err)
	}
	if l := logs.String(); !strings.Contains(l, "interface renamed") || !strings.Contains(l, "from=dl0 to=dl1") {
		t.Errorf("rename not logged: %q", l)
	}
	if err := c.check(); err != nil || strings.Count(logs.String(), "interface renamed") != 1 {
		t.Errorf("second check after the rename: %v; the rename must be logged once: %q", err, logs.String())
	}
	run("link", "del", "dl1")
	err := c.check()
	if err == nil || !strings.Contains(err.Error(), "interface dl1 is gone") {
		t.Errorf("after deletion: %v, want the interface dl1 gone", err)
	}

	// A question that cannot be asked is no answer: the descriptors of
	// issue 7 ran out.
	c.lookup = func(int) (netlink.Link, error) { return nil, unix.EMFILE }
	if err := c.check(); err != nil {
		t.Errorf("check failing with EMFILE: %v, want a warning only", err)
	}
	if l := logs.String(); !strings.Contains(l, "cannot check the interface") || !strings.Contains(l, "too many open files") {
		t.Errorf("failed check not logged: %q", l)
	}
}
