// SPDX-License-Identifier: MIT

package balancer

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkCheckTimeout bounds one question to the kernel, so that a netlink
// socket that never answers cannot stall the control loop.
const linkCheckTimeout = 2 * time.Second

// linkChecker watches the attached interface by asking the kernel about its
// index over a netlink socket opened once at startup. The check therefore
// needs no new descriptor: when the process runs out of them (say, to idle
// HTTP clients), it still gets a true answer, and a question it cannot ask is
// never mistaken for "the interface is gone" (issue 7).
type linkChecker struct {
	h      *netlink.Handle
	lookup func(index int) (netlink.Link, error) // h.LinkByIndex but in tests
	index  int
	name   string // as last seen, to log a rename once
	log    *slog.Logger
}

func newLinkChecker(iface *net.Interface, log *slog.Logger) (*linkChecker, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open a netlink socket to watch %s: %w", iface.Name, err)
	}
	if err := h.SetSocketTimeout(linkCheckTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("set the timeout of the netlink socket watching %s: %w", iface.Name, err)
	}
	return &linkChecker{h: h, lookup: h.LinkByIndex, index: iface.Index, name: iface.Name, log: log}, nil
}

func (c *linkChecker) close() { c.h.Close() }

// linkGone reports whether err of a lookup by index means that no interface
// has that index any more. Only the kernel's "no such device" does (netlink
// turns ENODEV into LinkNotFoundError); anything else (EMFILE, ENOBUFS, a
// timeout) says nothing about the interface.
func linkGone(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// check returns an error only when the interface is gone, which takes the
// XDP program with it. A failed question is a warning; a rename is logged and
// changes nothing: the program is attached to the index, not the name.
func (c *linkChecker) check() error {
	l, err := c.lookup(c.index)
	switch {
	case err == nil:
	case linkGone(err):
		return fmt.Errorf("interface %s is gone (index %d); the XDP program went with it", c.name, c.index)
	default:
		c.log.Warn("cannot check the interface; assuming it is still there", "iface", c.name, "index", c.index, "err", err)
		return nil
	}
	if name := l.Attrs().Name; name != c.name {
		c.log.Warn("interface renamed; the XDP program stays attached", "from", c.name, "to", name, "index", c.index)
		c.name = name
	}
	return nil
}
