// SPDX-License-Identifier: MIT

package main

import (
	"testing"
	"time"

	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// BenchmarkIdleAgent is the CPU an agent with every default (probes and
// outlier ejection on, two backends) takes while no client pings, over
// 60 s, from /proc: what it costs to leave it running.
func BenchmarkIdleAgent(b *testing.B) {
	testenv.Privileged(b)
	topo := topology.NewT(b, topology.Seed())
	a := agenttest.StartAgent(b, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2)
	b.Cleanup(func() { stopAgent(a) })
	const settle, span = 5 * time.Second, 60 * time.Second
	for b.Loop() {
		time.Sleep(settle) // past the start's neighbour resolution
		before, err := agenttest.CPUTime(a.Cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(span)
		after, err := agenttest.CPUTime(a.Cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(after-before)/float64(span)*100, "%core")
		b.ReportMetric((after - before).Seconds(), "cpu-s/60s")
	}
}
