// SPDX-License-Identifier: MIT

package main

// Issue 7, defect 1: clients that open connections to the metrics port and
// hold them must not exhaust the agent's descriptors, stop its scrapes, or
// make it believe its interface is gone.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

const (
	// floodConns is how many connections the flood opens and holds: with
	// the agent's own descriptors, more than its limit of 1024.
	floodConns    = 1000
	floodNoFile   = 1024
	floodDuration = 8 * time.Second
	// floodMaxConns is the agent's default --web.max-connections.
	floodMaxConns = config.DefaultMaxConnections
)

// floodResult is what a flood run measured.
type floodResult struct {
	opened, dialErrors int
	scrapes, failures  int
	firstFailure       error
	slowest            time.Duration
	baseFDs, peakFDs   int
	exited             bool
	// closedByAgent counts the flood's connections the agent closed.
	closedByAgent int
}

func (r floodResult) String() string {
	return fmt.Sprintf("%d of %d flood connections opened (%d dial errors), %d closed by the agent by the end; "+
		"%d fresh scrapes, %d failed (first: %v), slowest %v; agent descriptors %d before, %d at peak; exited: %v",
		r.opened, floodConns, r.dialErrors, r.closedByAgent, r.scrapes, r.failures, r.firstFailure,
		r.slowest.Round(time.Millisecond), r.baseFDs, r.peakFDs, r.exited)
}

// countFDs is the number of descriptors process pid holds open.
func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1 // the process is gone
	}
	return len(ents)
}

// TestIdleConnectionFlood reproduces defect 1 of issue 7 end to end: the agent
// runs under `prlimit --nofile=1024:1024`, a client opens 1000 connections to
// its metrics port, sends `GET /healthz HTTP/1.1` once on each and holds
// them. For 8 s the agent must stay alive and fresh scrapes of /metrics must
// succeed, with its descriptors bounded by the connection limit. The agent
// before the fix (no idle timeout, no connection limit, an interface check
// that took "too many open files" for "gone") exited within seconds.
func TestIdleConnectionFlood(t *testing.T) {
	testenv.Privileged(t)
	prlimit := testenv.Tool(t, "prlimit", "util-linux")
	topo := topology.NewT(t, topology.Seed())
	a := agenttest.Start(t, "icmplb", topo.Command(lb, prlimit, fmt.Sprintf("--nofile=%d:%d", floodNoFile, floodNoFile),
		agenttest.Binary(t), "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--web.listen-address", metricsAddr), agenttest.Env())
	a.WaitLog(t, "msg=attached", agenttest.AttachTimeout)
	r := flood(t, topo, a)
	t.Logf("flood: %v", r)
	if r.exited {
		t.Fatalf("the agent exited under the flood (%v): %v", a.Err(), r)
	}
	if r.failures > 0 || r.scrapes < 10 {
		t.Errorf("fresh scrapes under the flood: %d done, %d failed (first: %v); want at least 10, none failed",
			r.scrapes, r.failures, r.firstFailure)
	}
	// The limit and the newcomer, and a few the agent opens itself (netlink
	// sockets of the neighbour refresh).
	if bound := r.baseFDs + floodMaxConns + 1 + 8; r.peakFDs > bound {
		t.Errorf("agent held %d descriptors at peak, %d before the flood: more than the connection limit %d allows",
			r.peakFDs, r.baseFDs, floodMaxConns)
	}
	if strings.Contains(a.Log(), "is gone") {
		t.Errorf("the agent reported its interface gone:\n%s", a.Log())
	}
}

// flood runs the flood against the agent a and measures.
func flood(t *testing.T, topo *topology.Topology, a *agenttest.Proc) floodResult {
	t.Helper()
	pid := a.Cmd.Process.Pid
	// The pid is the agent's own: ip netns exec and prlimit exec in place.
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || filepath.Base(exe) != "icmplb" {
		t.Fatalf("pid %d is %q (%v), not the agent", pid, exe, err)
	}
	if limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid)); err != nil ||
		!strings.Contains(strings.Join(strings.Fields(string(limits)), " "), fmt.Sprintf("Max open files %d %d", floodNoFile, floodNoFile)) {
		t.Fatalf("the agent does not run with %d descriptors at most (%v):\n%s", floodNoFile, err, limits)
	}
	r := floodResult{baseFDs: countFDs(t, pid)}
	r.peakFDs = r.baseFDs

	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	if err := topo.InNS(lb, func() error {
		d := net.Dialer{Timeout: 2 * time.Second}
		for range floodConns {
			c, err := d.Dial("tcp", metricsAddr)
			if err != nil {
				r.dialErrors++
				continue
			}
			conns = append(conns, c)
			c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r.opened = len(conns)

	// Fresh scrapes: a new connection each, from the lb namespace.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := topo.InNS(lb, func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	for end := time.Now().Add(floodDuration); time.Now().Before(end); {
		select {
		case <-a.Done():
			r.exited = true
			return r
		default:
		}
		start := time.Now()
		err := scrapeOnce(client)
		r.scrapes++
		r.slowest = max(r.slowest, time.Since(start))
		if err != nil {
			r.failures++
			if r.firstFailure == nil {
				r.firstFailure = err
			}
		}
		r.peakFDs = max(r.peakFDs, countFDs(t, pid))
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case <-a.Done():
		r.exited = true
	default:
	}
	for _, c := range conns {
		if closedByPeer(c) {
			r.closedByAgent++
		}
	}
	return r
}

// scrapeOnce fetches /metrics and checks it holds the agent's metrics.
func scrapeOnce(client *http.Client) error {
	resp, err := client.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "icmplb_build_info") {
		return fmt.Errorf("HTTP %s, %d bytes without icmplb_build_info", resp.Status, len(body))
	}
	return nil
}

// closedByPeer drains what c received and tells whether the peer closed it.
func closedByPeer(c net.Conn) bool {
	buf := make([]byte, 4096)
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}
