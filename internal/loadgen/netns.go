// SPDX-License-Identifier: MIT

package loadgen

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/icmplb/icmplb/internal/topology"
)

// Pair is two fresh network namespaces joined by one veth pair, a0 in A and
// b0 in B: the generator's side and the side under test. Everything is made
// inside the namespaces (the veth is born in A with its peer placed straight
// into B), so the root namespace is never touched; IPv6 is off in both, so
// that no neighbour discovery or router solicitation reaches a sink.
type Pair struct {
	A, B           string // namespace names, unique per pair
	AIface, BIface string // a0 and b0
	AMAC, BMAC     net.HardwareAddr
	AIndex, BIndex int
}

const (
	netnsDir   = "/run/netns"
	cmdTimeout = 30 * time.Second
)

// NewPair builds a pair under a random name prefix; on error it removes
// what it made.
func NewPair() (*Pair, error) {
	var r [3]byte
	rand.Read(r[:]) // never fails on Linux (Go 1.24+ crypto/rand)
	prefix := "lg" + hex.EncodeToString(r[:])
	p := &Pair{A: prefix + "-a", B: prefix + "-b", AIface: "a0", BIface: "b0"}
	if err := p.build(); err != nil {
		return nil, errors.Join(fmt.Errorf("loadgen: namespaces %s-*: %w", prefix, err), p.Close())
	}
	return p, nil
}

func (p *Pair) build() error {
	for _, ns := range []string{p.A, p.B} {
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); err == nil {
			return fmt.Errorf("namespace %s already exists", ns)
		}
		if _, err := run("ip", "netns", "add", ns); err != nil {
			return err
		}
		if _, err := p.Exec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
			return err
		}
	}
	if _, err := p.IP(p.A, "link", "add", p.AIface, "type", "veth", "peer", "name", p.BIface, "netns", p.B); err != nil {
		return err
	}
	sides := []struct {
		ns, iface string
		mac       *net.HardwareAddr
		index     *int
	}{{p.A, p.AIface, &p.AMAC, &p.AIndex}, {p.B, p.BIface, &p.BMAC, &p.BIndex}}
	for _, side := range sides {
		if _, err := p.IP(side.ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
		if _, err := p.IP(side.ns, "link", "set", side.iface, "up"); err != nil {
			return err
		}
	}
	// A veth is operationally up once both ends are.
	for _, side := range sides {
		deadline := time.Now().Add(5 * time.Second)
		for {
			out, err := p.IP(side.ns, "-j", "link", "show", "dev", side.iface)
			if err != nil {
				return err
			}
			var links []struct {
				Index     int    `json:"ifindex"`
				OperState string `json:"operstate"`
				Address   string `json:"address"`
			}
			if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
				return fmt.Errorf("parse ip -j link output %q: %v", out, err)
			}
			if links[0].OperState == "UP" {
				if *side.mac, err = net.ParseMAC(links[0].Address); err != nil {
					return err
				}
				*side.index = links[0].Index
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s in %s is %s after 5s, want UP", side.iface, side.ns, links[0].OperState)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// Close removes both namespaces, and with them the veth pair and every
// program attached to it; it may be called again to retry.
func (p *Pair) Close() error {
	var errs []error
	for _, ns := range []string{p.A, p.B} {
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); err != nil {
			continue
		}
		if _, err := run("ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// IP runs ip with args inside namespace ns and returns its output.
func (p *Pair) IP(ns string, args ...string) (string, error) {
	return run("ip", append([]string{"-n", ns}, args...)...)
}

// Exec runs name with args inside namespace ns (ip netns exec) and returns
// its combined output.
func (p *Pair) Exec(ns, name string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Command is a command that runs name inside namespace ns; under ip netns
// exec the process's pid is the program's own (ip execs it in place).
func (p *Pair) Command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.String(), nil
}

// Do runs fn on an OS thread switched into namespace ns, and switches the
// thread back afterwards. What fn looks up by interface index, attaches or
// dials is in ns; fn runs on a goroutine of its own, so it must return its
// failure rather than call t.FailNow.
func (p *Pair) Do(ns string, fn func() error) error {
	return topology.InNetNS(ns, fn)
}
