// SPDX-License-Identifier: MIT

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// bpffs mounts a private bpffs for the test; ip netns exec shares the test's
// mounts with the agent.
func bpffs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "bpf", "bpf", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount bpffs: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}

// TestPinnedSessionsSurviveRestart restarts the agent with another backend
// added: without its pinned conntrack, about half of the sessions would move
// to the new backend by Maglev; with it, every session stays where it was.
func TestPinnedSessionsSurviveRestart(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	fs := bpffs(t)
	base := []string{"run", "--iface", "eth0", "--vip", vip, "--bpffs", fs}

	first := startAgent(t, topo, nil, append(base, "--backend", backend1)...)
	for _, r := range pingSessions(topo, topology.SeedClient, 16, 5000, 2, "0.02") {
		if r.sent != 2 || r.received != 2 {
			t.Fatalf("before restart: %s", r)
		}
	}
	if _, err := stopAgent(first); err != nil {
		t.Fatalf("stop: %v", err)
	}
	pinned, _ := filepath.Glob(filepath.Join(fs, "icmplb", "eth0", "*"))
	var names []string
	for _, p := range pinned {
		names = append(names, filepath.Base(p))
	}
	// The link, and every map a restart must carry on: sessions, requests
	// in flight, slots, services and their tables, and every counter.
	for _, want := range []string{"link", "layout_id", "ct_fwd", "ct_rev", "inflight", "backends", "nat_pools",
		"services", "snat_addrs", "maglev_tables", "stats", "svc_stats", "backend_stats", "rtt_hist", "epochs", "loss_ledger"} {
		if !slices.Contains(names, want) {
			t.Errorf("%s is not pinned; pinned: %v", want, names)
		}
	}

	before := icmpOf(t, topo, topology.SeedBackend2)
	startAgent(t, topo, nil, append(base, "--backend", backend1, "--backend", backend2)...)
	for _, r := range pingSessions(topo, topology.SeedClient, 16, 5000, 2, "0.02") {
		if r.sent != 2 || r.received != 2 {
			t.Fatalf("after restart: %s", r)
		}
	}
	if after := icmpOf(t, topo, topology.SeedBackend2); after.InType8 != before.InType8 {
		t.Errorf("%d requests of known sessions went to the new backend h3: sessions did not survive the restart",
			after.InType8-before.InType8)
	}
	// New sessions do use the new backend.
	for _, r := range pingSessions(topo, topology.SeedClient, 16, 6000, 1, "0.02") {
		if r.sent != 1 || r.received != 1 {
			t.Fatalf("new session: %s", r)
		}
	}
	if after := icmpOf(t, topo, topology.SeedBackend2); after.InType8 == before.InType8 {
		t.Error("no new session reached the added backend h3")
	}
}

func TestPinnedMapsOfOtherSizeRefused(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	fs := bpffs(t)
	a := startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--bpffs", fs)
	if _, err := stopAgent(a); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := lbRun(t, topo, []string{agenttest.Binary(t)}, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1,
		"--bpffs", fs, "--conntrack-size", "1024")
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if last := lines[len(lines)-1]; code == 0 || !strings.Contains(last, "do not fit this agent") ||
		!strings.Contains(last, "rm -r "+filepath.Join(fs, "icmplb", "eth0")) {
		t.Errorf("exit %d, stderr %q: want a refusal naming the mismatch", code, stderr)
	}
	_, stderr, code = lbRun(t, topo, []string{agenttest.Binary(t)}, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1,
		"--bpffs", os.TempDir())
	if code == 0 || !strings.Contains(stderr, "is not a mounted bpffs") {
		t.Errorf("exit %d, stderr %q: want a refusal of a directory that is not bpffs", code, stderr)
	}
}
