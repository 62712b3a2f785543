// SPDX-License-Identifier: MIT

// Package topology builds throw-away L2 networks of hosts in network
// namespaces for end-to-end tests and demos.
//
// A topology is one switch namespace holding a Linux bridge and, per host, a
// namespace whose eth0 is a veth plugged into that bridge. Everything is
// created inside the namespaces themselves (veth pairs are born in the switch
// namespace with their peer placed straight into the host namespace), so the
// root network namespace is never touched: its links, addresses, routes and
// sysctls belong to the machine. The only trace outside the namespaces is the
// bind-mount files under /run/netns, which Close removes.
//
// The package shells out to iproute2's ip instead of speaking netlink itself,
// so what a test does can be replayed by hand.
package topology

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/icmplb/icmplb/internal/testenv"
)

// Host is one machine of the topology: a network namespace with one
// interface eth0 plugged into the bridge.
type Host struct {
	Name  string           // logical name, e.g. "h1"
	NS    string           // network namespace name (unique per run)
	Iface string           // interface inside NS, always "eth0"
	Port  string           // the bridge-side veth in the switch namespace
	Addr  netip.Prefix     // primary address, e.g. 10.0.0.1/24
	Addr6 netip.Prefix     // primary IPv6 address, e.g. fd00:1cb::1/64; zero if none
	Extra []netip.Prefix   // more addresses on eth0, either family (e.g. the VIP as /32)
	MAC   net.HardwareAddr // MAC of eth0, read back after creation
}

// HostSpec describes one host to build.
type HostSpec struct {
	// Name is the logical name; it also appears in the namespace and port
	// names, hence the short, plain alphabet (see New).
	Name string
	Addr netip.Prefix
	// Addr6 is optional and must be IPv6; it gives a dual-stack host a
	// primary address of each family, so that tests can ask for either.
	Addr6 netip.Prefix
	// Extra may mix families: ip takes either, and a VIP is just one more
	// address whichever its family.
	Extra []netip.Prefix
}

// Spec describes a topology: hosts on one bridge.
type Spec struct {
	Hosts []HostSpec
}

// Topology is a built network. Its fields are read-only for callers.
type Topology struct {
	Prefix   string           // prefix of every namespace name of this topology
	SwitchNS string           // namespace holding the bridge and the host ports
	Bridge   string           // bridge name inside SwitchNS
	Hosts    map[string]*Host // by logical name

	order []string // host names in Spec order, for stable iteration

	mu      sync.Mutex
	created []string // namespaces this topology made, in creation order
	clients map[string]*http.Client
}

const (
	bridgeName = "br0"
	hostIface  = "eth0"
	switchName = "sw" // logical name of the switch namespace, reserved for hosts
	netnsDir   = "/run/netns"

	// cmdTimeout bounds every ip invocation so that a wedged kernel or
	// iproute2 turns into a test failure instead of a hung CI job.
	cmdTimeout = 30 * time.Second
	// upTimeout is how long links may take to report operstate UP, and
	// IPv6 addresses to leave the tentative state.
	upTimeout = 5 * time.Second
)

var (
	// The prefix may not contain '-': it separates the prefix from the host
	// name, and DeleteNamed("a") must not match the namespaces of prefix "a-b".
	prefixRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,16}$`)
	// Host names end up in the port name "p"+name, and IFNAMSIZ is 16.
	hostRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,14}$`)
)

// New builds spec under a fresh random prefix, so concurrent runs and
// leftovers of killed runs never collide with it. On error everything it
// created is removed again.
func New(spec Spec) (*Topology, error) {
	return NewNamed(randomPrefix(), spec)
}

// randomPrefix is short on purpose: it shows up in every namespace name a
// human types, and 24 random bits make a clash between concurrent runs
// negligible (NewNamed refuses to reuse names anyway).
func randomPrefix() string {
	var b [3]byte
	rand.Read(b[:]) // never fails on Linux (Go 1.24+ crypto/rand)
	return "tp" + hex.EncodeToString(b[:])
}

// NewNamed builds spec with the fixed namespace prefix prefix, for humans and
// scripts that must find the namespaces again (see DeleteNamed). It refuses
// to start if any namespace it would create already exists, so it never
// adopts, and later deletes, namespaces it did not make.
func NewNamed(prefix string, spec Spec) (*Topology, error) {
	t, err := plan(prefix, spec)
	if err != nil {
		return nil, err
	}
	if err := t.build(); err != nil {
		if cerr := t.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
		return nil, fmt.Errorf("topology %s: %w", prefix, err)
	}
	return t, nil
}

// NewT builds spec for a test, skipping it when the machine cannot host
// namespaces and removing the topology when the test ends.
func NewT(tb testenv.TB, spec Spec) *Topology {
	tb.Helper()
	testenv.Privileged(tb)
	t, err := New(spec)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Logf("topology %s: enter a host with ip netns exec %s-HOST, remove leftovers with go run ./cmd/icmplb-seedtopo down %[1]s", t.Prefix, t.Prefix)
	tb.Cleanup(func() {
		if err := t.Close(); err != nil {
			tb.Errorf("topology close: %v", err)
		}
	})
	return t
}

// plan validates spec and fills in every name without touching the system.
func plan(prefix string, spec Spec) (*Topology, error) {
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("topology: prefix %q: want 1-16 of [A-Za-z0-9_]", prefix)
	}
	if len(spec.Hosts) == 0 {
		return nil, errors.New("topology: spec has no hosts")
	}
	t := &Topology{
		Prefix:   prefix,
		SwitchNS: prefix + "-" + switchName,
		Bridge:   bridgeName,
		Hosts:    make(map[string]*Host, len(spec.Hosts)),
	}
	for _, hs := range spec.Hosts {
		switch {
		case !hostRE.MatchString(hs.Name):
			return nil, fmt.Errorf("topology: host name %q: want 1-14 of [A-Za-z0-9_]", hs.Name)
		case hs.Name == switchName:
			return nil, fmt.Errorf("topology: host name %q is reserved for the switch namespace", hs.Name)
		case t.Hosts[hs.Name] != nil:
			return nil, fmt.Errorf("topology: duplicate host %q", hs.Name)
		case !hs.Addr.IsValid():
			return nil, fmt.Errorf("topology: host %q has no address", hs.Name)
		case hs.Addr6.IsValid() && !hs.Addr6.Addr().Is6():
			return nil, fmt.Errorf("topology: host %q: Addr6 %s is not IPv6", hs.Name, hs.Addr6)
		case hs.Addr6.Addr().Is4In6():
			// The kernel would take it as IPv6, but no test means that.
			return nil, fmt.Errorf("topology: host %q: Addr6 %s is an IPv4-mapped address", hs.Name, hs.Addr6)
		}
		for _, p := range hs.Extra {
			if !p.IsValid() {
				return nil, fmt.Errorf("topology: host %q has an invalid extra address", hs.Name)
			}
		}
		t.Hosts[hs.Name] = &Host{
			Name:  hs.Name,
			NS:    prefix + "-" + hs.Name,
			Iface: hostIface,
			Port:  "p" + hs.Name,
			Addr:  hs.Addr,
			Addr6: hs.Addr6,
			Extra: slices.Clone(hs.Extra),
		}
		t.order = append(t.order, hs.Name)
	}
	return t, nil
}

func (t *Topology) build() error {
	var all []string
	all = append(all, t.SwitchNS)
	for _, n := range t.order {
		all = append(all, t.Hosts[n].NS)
	}
	for _, ns := range all {
		if nsExists(ns) {
			return fmt.Errorf("namespace %s already exists", ns)
		}
	}

	// The first "ip netns add" on a machine turns /run/netns into a shared
	// bind mount; doing that from several processes at once can stack
	// mounts, so the switch namespace goes first and alone.
	if err := t.addNS(t.SwitchNS); err != nil {
		return err
	}
	errs := make([]error, len(all))
	var wg sync.WaitGroup
	for i, ns := range all[1:] {
		wg.Go(func() { errs[i] = t.addNS(ns) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}

	// One ip process builds the whole switch side. Each veth is born in the
	// switch namespace with its peer created directly in the host namespace,
	// so no interface ever exists in the root namespace, not even briefly.
	// forward_delay 0 and STP off put ports in forwarding state at once;
	// multicast snooping off keeps the bridge from filtering IPv6 ND and
	// other multicast until it has seen queries. The ageing time stays at
	// its default: 0 would make the bridge flood every frame like a hub, and
	// an XDP program on one host would then see others' unicast traffic.
	sw := []string{
		"link set lo up",
		fmt.Sprintf("link add %s up type bridge forward_delay 0 stp_state 0 mcast_snooping 0", t.Bridge),
	}
	for _, n := range t.order {
		h := t.Hosts[n]
		sw = append(sw, fmt.Sprintf("link add %s up master %s type veth peer name %s netns %s",
			h.Port, t.Bridge, h.Iface, h.NS))
	}
	if err := ipBatch(t.SwitchNS, sw); err != nil {
		return err
	}

	for i, n := range t.order {
		wg.Go(func() { errs[i] = t.Hosts[n].configure() })
	}
	wg.Wait()
	if err := errors.Join(errs[:len(t.order)]...); err != nil {
		return err
	}
	return t.checkPorts()
}

// addNS creates one namespace and records it for Close only if ip says it
// made it, so a name clash never makes Close delete someone else's namespace.
func (t *Topology) addNS(ns string) error {
	if _, err := ip("", "netns", "add", ns); err != nil {
		return err
	}
	t.mu.Lock()
	t.created = append(t.created, ns)
	t.mu.Unlock()
	return nil
}

// addrs returns every address of the host in the order they are added.
func (h *Host) addrs() []netip.Prefix {
	all := []netip.Prefix{h.Addr}
	if h.Addr6.IsValid() {
		all = append(all, h.Addr6)
	}
	return append(all, h.Extra...)
}

func (h *Host) hasIPv6() bool {
	return slices.ContainsFunc(h.addrs(), func(p netip.Prefix) bool { return p.Addr().Is6() })
}

// configure addresses the host, brings it up and waits until the kernel
// reports eth0 operationally UP, which needs the bridge-side port up too,
// and, on a host with IPv6 addresses, until none of them is tentative.
func (h *Host) configure() error {
	v6 := h.hasIPv6()
	if v6 {
		if err := h.noDAD(); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	cmds := []string{"link set lo up"}
	for _, p := range h.addrs() {
		// Without nodad an IPv6 address is tentative for about a second
		// (DAD), and a socket cannot bind or send from it meanwhile.
		nodad := ""
		if p.Addr().Is6() {
			nodad = " nodad"
		}
		cmds = append(cmds, fmt.Sprintf("addr add %s dev %s%s", p, h.Iface, nodad))
	}
	cmds = append(cmds, fmt.Sprintf("link set %s up", h.Iface))
	if err := ipBatch(h.NS, cmds); err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	if err := h.waitUp(); err != nil {
		return err
	}
	if v6 {
		return h.waitIPv6()
	}
	return nil
}

// noDAD turns duplicate address detection off on eth0 before it comes up:
// nodad covers only the addresses configure adds, not the link-local
// address the kernel makes when the link comes up, which NDP may use. It
// also makes sure IPv6 is on for eth0, whatever the kernel's defaults for a
// new namespace are.
func (h *Host) noDAD() error {
	return InNetNS(h.NS, func() error {
		// /proc/sys/net shows the namespace of the thread that opens it,
		// which InNetNS has switched.
		for _, kv := range [][2]string{{"disable_ipv6", "0"}, {"accept_dad", "0"}} {
			p := filepath.Join("/proc/sys/net/ipv6/conf", h.Iface, kv[0])
			if err := os.WriteFile(p, []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", p, kv[1], err)
			}
		}
		return nil
	})
}

// waitUp waits until eth0 reports operstate UP and reads its MAC.
func (h *Host) waitUp() error {
	deadline := time.Now().Add(upTimeout)
	for {
		out, err := ip(h.NS, "-j", "link", "show", "dev", h.Iface)
		if err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
		var links []struct {
			OperState string `json:"operstate"`
			Address   string `json:"address"`
		}
		if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
			return fmt.Errorf("host %s: parse ip -j link output %q: %v", h.Name, out, err)
		}
		if links[0].OperState == "UP" {
			mac, err := net.ParseMAC(links[0].Address)
			if err != nil {
				return fmt.Errorf("host %s: %w", h.Name, err)
			}
			h.MAC = mac
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("host %s: %s in %s is %s after %v, want UP",
				h.Name, h.Iface, h.NS, links[0].OperState, upTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitIPv6 waits until every IPv6 address of the host is on eth0 and none
// there is tentative, the link-local address included, so that the host can
// send from each of them and answer neighbour solicitations at once.
func (h *Host) waitIPv6() error {
	want := map[netip.Addr]bool{}
	for _, p := range h.addrs() {
		if p.Addr().Is6() {
			want[p.Addr()] = true
		}
	}
	deadline := time.Now().Add(upTimeout)
	for {
		out, err := ip(h.NS, "-j", "-6", "addr", "show", "dev", h.Iface)
		if err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
		var links []struct {
			AddrInfo []struct {
				Local     netip.Addr `json:"local"`
				Scope     string     `json:"scope"`
				Tentative bool       `json:"tentative"`
				DADFailed bool       `json:"dadfailed"`
			} `json:"addr_info"`
		}
		if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
			return fmt.Errorf("host %s: parse ip -j addr output %q: %v", h.Name, out, err)
		}
		var pending []string
		found, linkLocal := 0, false
		for _, a := range links[0].AddrInfo {
			if a.DADFailed {
				return fmt.Errorf("host %s: %s on %s failed duplicate address detection", h.Name, a.Local, h.Iface)
			}
			if a.Tentative {
				pending = append(pending, a.Local.String()+" tentative")
				continue
			}
			if want[a.Local] {
				found++
			}
			if a.Scope == "link" {
				linkLocal = true
			}
		}
		if found == len(want) && linkLocal && len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			if !linkLocal {
				pending = append(pending, "no usable link-local address")
			}
			return fmt.Errorf("host %s: IPv6 on %s not ready after %v: %d of %d addresses usable; %s",
				h.Name, h.Iface, upTimeout, found, len(want), strings.Join(pending, ", "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkPorts verifies from the switch side that every port is UP and
// forwarding: a host's eth0 can be UP while its bridge port still blocks.
func (t *Topology) checkPorts() error {
	deadline := time.Now().Add(upTimeout)
	for {
		out, err := ip(t.SwitchNS, "-j", "-d", "link", "show", "master", t.Bridge)
		if err != nil {
			return err
		}
		var ports []struct {
			IfName    string `json:"ifname"`
			OperState string `json:"operstate"`
			LinkInfo  struct {
				SlaveData struct {
					State string `json:"state"`
				} `json:"info_slave_data"`
			} `json:"linkinfo"`
		}
		if err := json.Unmarshal(out, &ports); err != nil {
			return fmt.Errorf("parse ip -j link output %q: %w", out, err)
		}
		ready := map[string]bool{}
		var notReady []string
		for _, p := range ports {
			if p.OperState == "UP" && p.LinkInfo.SlaveData.State == "forwarding" {
				ready[p.IfName] = true
			} else {
				notReady = append(notReady, fmt.Sprintf("%s %s/%s", p.IfName, p.OperState, p.LinkInfo.SlaveData.State))
			}
		}
		missing := 0
		for _, n := range t.order {
			if !ready[t.Hosts[n].Port] {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d bridge ports not up and forwarding after %v: %s",
				missing, upTimeout, strings.Join(notReady, ", "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Close removes every namespace the topology created; with them go all of
// its interfaces and the processes' view of them. It is safe to call more
// than once, also after a failed or partial build: each call deletes what is
// still there, so a later call retries what an earlier one could not remove.
func (t *Topology) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.clients {
		c.CloseIdleConnections()
	}
	clear(t.clients)
	var left []string
	for _, ns := range t.created {
		if nsExists(ns) {
			left = append(left, ns)
		}
	}
	err := deleteNS(left)
	t.created = slices.DeleteFunc(t.created, func(ns string) bool { return !nsExists(ns) })
	return err
}

// DeleteNamed removes every namespace of the topology with the given prefix,
// as made by NewNamed, possibly by another process. It is not an error if
// there is none.
func DeleteNamed(prefix string) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("topology: prefix %q: want 1-16 of [A-Za-z0-9_]", prefix)
	}
	ents, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			names = append(names, e.Name())
		}
	}
	return deleteNS(names)
}

func deleteNS(names []string) error {
	if len(names) == 0 {
		return nil
	}
	cmds := make([]string, len(names))
	for i, ns := range names {
		cmds[i] = "netns del " + ns
	}
	// -force: one namespace that cannot be removed must not keep the rest.
	return ipBatch("", cmds, "-force")
}

func nsExists(ns string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, ns))
	return err == nil
}

// HostNames returns the host names in the order of the Spec.
func (t *Topology) HostNames() []string { return slices.Clone(t.order) }

// Host returns the named host, or nil if there is none.
func (t *Topology) Host(name string) *Host { return t.Hosts[name] }

// Addr returns the primary address of the named host, or the zero Addr if
// there is no such host.
func (t *Topology) Addr(host string) netip.Addr {
	if h := t.Hosts[host]; h != nil {
		return h.Addr.Addr()
	}
	return netip.Addr{}
}

// Addr6 returns the primary IPv6 address of the named host, or the zero Addr
// if there is no such host or it has none.
func (t *Topology) Addr6(host string) netip.Addr {
	if h := t.Hosts[host]; h != nil && h.Addr6.IsValid() {
		return h.Addr6.Addr()
	}
	return netip.Addr{}
}

// Command returns a command that runs name inside the host's namespace via
// "ip netns exec". For an unknown host the command fails when started.
func (t *Topology) Command(host string, name string, args ...string) *exec.Cmd {
	h := t.Hosts[host]
	if h == nil {
		cmd := exec.Command(name, args...)
		cmd.Err = fmt.Errorf("topology %s: no host %q", t.Prefix, host)
		return cmd
	}
	return nsCommand(h.NS, name, args...)
}

// Run runs name inside the host's namespace and returns its combined output;
// the error carries that output too, so a failed ping explains itself.
func (t *Topology) Run(host string, name string, args ...string) (string, error) {
	return run(t.Command(host, name, args...), host)
}

// SwitchCommand is Command for the switch namespace, where the bridge and the
// host ports live.
func (t *Topology) SwitchCommand(name string, args ...string) *exec.Cmd {
	return nsCommand(t.SwitchNS, name, args...)
}

// SwitchRun is Run for the switch namespace.
func (t *Topology) SwitchRun(name string, args ...string) (string, error) {
	return run(t.SwitchCommand(name, args...), switchName)
}

func nsCommand(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

func run(cmd *exec.Cmd, where string) (string, error) {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %w: %s",
			strings.Join(cmd.Args, " "), where, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// ip runs one ip command, inside ns unless ns is empty, and returns stdout.
func ip(ns string, args ...string) ([]byte, error) {
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// ipBatch feeds cmds to a single "ip -batch -": each ip process costs a few
// milliseconds, a batch line almost nothing.
func ipBatch(ns string, cmds []string, opts ...string) error {
	args := slices.Concat(opts, []string{"-batch", "-"})
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s <<%q: %w: %s", strings.Join(args, " "), cmds, err, bytes.TrimSpace(out))
	}
	return nil
}
