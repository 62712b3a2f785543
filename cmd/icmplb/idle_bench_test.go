// SPDX-License-Identifier: MIT

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// cpuTime is a process's user + system time from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command, which may hold spaces, in parentheses.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %v %v", pid, err1, err2)
	}
	const clkTck = 100 // USER_HZ, fixed by the kernel's ABI
	return time.Duration(utime+stime) * time.Second / clkTck, nil
}

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
		before, err := cpuTime(a.Cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(span)
		after, err := cpuTime(a.Cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(after-before)/float64(span)*100, "%core")
		b.ReportMetric((after - before).Seconds(), "cpu-s/60s")
	}
}
