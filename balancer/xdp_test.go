// SPDX-License-Identifier: MIT

package balancer

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

var remedyRE = regexp.MustCompile("`((?:ip|bpftool) [^`]+)`")

// TestXDPOwnerRemedy puts another XDP program on the balancer's interface,
// once through a bpf_link and once through netlink, and checks that the
// agent's refusal names a remedy that removes it: `ip link set ... xdp off`
// cannot detach a bpf_link.
func TestXDPOwnerRemedy(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Spec{Hosts: []topology.HostSpec{
		{Name: topology.SeedBalancer, Addr: netip.MustParsePrefix("10.0.0.10/24")},
	}})
	prog, err := bpf.NewXDPPass()
	if err != nil {
		t.Fatalf("load xdp_pass: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	inLB := func(fn func(iface *net.Interface) error) error {
		return topo.InNS(topology.SeedBalancer, func() error {
			iface, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			return fn(iface)
		})
	}
	attached := func() bool {
		var on bool
		if err := inLB(func(iface *net.Interface) error {
			l, err := netlink.LinkByIndex(iface.Index)
			on = err == nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return on
	}
	// runRemedy runs the command msg suggests in the balancer's namespace.
	runRemedy := func(msg string) error {
		m := remedyRE.FindAllStringSubmatch(msg, -1)
		if len(m) == 0 {
			t.Fatalf("no command in %q", msg)
		}
		argv := strings.Fields(m[len(m)-1][1])
		_, err := topo.Run(topology.SeedBalancer, argv[0], argv[1:]...)
		return err
	}

	t.Run("BPFLink", func(t *testing.T) {
		var l link.Link
		var msg string
		if err := inLB(func(iface *net.Interface) (err error) {
			l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: link.XDPGenericMode})
			if err != nil {
				return err
			}
			msg = xdpOwner(iface)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		t.Logf("remedy: %s", msg)
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{fmt.Sprintf("through bpf_link %d", info.ID), fmt.Sprintf("`bpftool link detach id %d`", info.ID), "generic mode", `"xdp_pass"`} {
			if !strings.Contains(msg, want) {
				t.Errorf("%q does not contain %q", msg, want)
			}
		}
		// The old remedy, which the issue found failing.
		if _, err := topo.Run(topology.SeedBalancer, "ip", "link", "set", "dev", "eth0", "xdp", "off"); err == nil && !attached() {
			t.Fatalf("ip link set xdp off detached a bpf_link: the remedy need not differ")
		}
		if _, err := exec.LookPath("bpftool"); err != nil {
			t.Skip("bpftool (Debian package bpftool) not installed: the suggested command is not run")
		}
		if err := runRemedy(msg); err != nil {
			t.Fatalf("suggested command: %v", err)
		}
		if attached() {
			t.Errorf("still attached after the suggested command of %q", msg)
		}
	})

	for _, m := range []struct {
		flags   int
		keyword string
	}{{nl.XDP_FLAGS_SKB_MODE, "xdpgeneric"}, {nl.XDP_FLAGS_DRV_MODE, "xdpdrv"}} {
		t.Run("Netlink/"+m.keyword, func(t *testing.T) {
			var msg string
			if err := inLB(func(iface *net.Interface) error {
				l, err := netlink.LinkByIndex(iface.Index)
				if err != nil {
					return err
				}
				if err := netlink.LinkSetXdpFdWithFlags(l, prog.FD(), m.flags); err != nil {
					return err
				}
				msg = xdpOwner(iface)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			t.Logf("remedy: %s", msg)
			if want := "`ip link set dev eth0 " + m.keyword + " off`"; !strings.Contains(msg, "without a bpf_link") || !strings.Contains(msg, want) {
				t.Errorf("%q does not name %s", msg, want)
			}
			if err := runRemedy(msg); err != nil {
				t.Fatalf("suggested command: %v", err)
			}
			if attached() {
				t.Errorf("still attached after the suggested command of %q", msg)
			}
		})
	}

	// Through New: the refusal is one line with the link's remedy.
	t.Run("New", func(t *testing.T) {
		var l link.Link
		var newErr error
		if err := inLB(func(iface *net.Interface) (err error) {
			l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: link.XDPGenericMode})
			if err != nil {
				return err
			}
			c := config.Default()
			c.Iface, c.VIP, c.Backends = "eth0", netip.MustParseAddr("10.0.0.100"), []config.Backend{{Addr: netip.MustParseAddr("10.0.0.2"), Weight: 1}}
			b, err := New(c, slog.New(slog.DiscardHandler))
			if err == nil {
				b.Close()
				return errors.New("New attached over another program")
			}
			newErr = err
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		t.Logf("refusal: %v", newErr)
		if msg := newErr.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "bpftool link detach id") ||
			strings.Contains(msg, "xdp off`") && !strings.Contains(msg, "cannot remove") {
			t.Errorf("refusal %q", msg)
		}
	})
}
