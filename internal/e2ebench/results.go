// SPDX-License-Identifier: MIT

// Package e2ebench is icmplb's end-to-end throughput benchmark
// (BenchmarkE2E, run by `make bench`): a live-frames load generator
// (package loadgen) drives a veth pair between two fresh network namespaces,
// and the same measurement is taken of a reflector, the seed's stateless
// DNAT, the icmplb agent in native and generic XDP mode, and nftables NAT.
// This file holds the results: their table, their JSON file, and the
// parsing of the agent's verdict counters. docs/testing.md explains the rows.
package e2ebench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Row is one measured case.
type Row struct {
	Setup string `json:"setup"`
	Case  string `json:"case"`
	// Class is the sink class counted: the frames that prove the path
	// (e.g. request_backend: echo requests rewritten to a backend).
	Class string `json:"class"`
	// Sent is what the generator wrote; Counted what the sink counted of
	// Class.
	Sent    uint64  `json:"frames_sent"`
	Counted uint64  `json:"frames_counted"`
	Seconds float64 `json:"seconds"`
	// PPS is Counted / Seconds: frames through the path per second, of
	// the run of median rate; RunsPPS are every run's, in order.
	PPS     float64   `json:"pps"`
	RunsPPS []float64 `json:"pps_runs"`
	// Ratio is PPS over the reflector's known-1 PPS of the same run.
	Ratio float64 `json:"ratio_to_reflector"`
	// AgentCPU is the agent's user+system CPU seconds during the case
	// (its userspace: the XDP program runs in softirq on the generator's
	// CPU), or -1 without an agent.
	AgentCPU float64 `json:"agent_cpu_seconds"`
	// Counters are the agent's icmplb_packets_total deltas by reason (or
	// the setup's own proof, e.g. conntrack entries), zero ones left out.
	Counters map[string]float64 `json:"counters,omitempty"`
	// Check is "ok", or what the proof of the path found wrong.
	Check string `json:"check"`
	Note  string `json:"note,omitempty"`
}

// Results is the JSON file's content.
type Results struct {
	Kernel        string  `json:"kernel"`
	CPUs          int     `json:"cpus"`
	GeneratorCPU  int     `json:"generator_cpu"`
	FramesPerCase uint64  `json:"frames_per_case"`
	MaxSeconds    float64 `json:"max_seconds_per_case"`
	Runs          int     `json:"runs_per_case"`
	FrameSize     int     `json:"frame_size"`
	Rows          []Row   `json:"rows"`
}

// SetRatios fills every row's Ratio from the row of setup and case base.
func SetRatios(rows []Row, setup, kase string) {
	i := slices.IndexFunc(rows, func(r Row) bool { return r.Setup == setup && r.Case == kase })
	if i < 0 || rows[i].PPS == 0 {
		return
	}
	for j := range rows {
		rows[j].Ratio = rows[j].PPS / rows[i].PPS
	}
}

// WriteTable prints rows as an aligned table.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "setup\tcase\tsent\tcounted\tseconds\tMpps\tx reflector\tagent CPU s\tagent core%\tcheck\t")
	for _, r := range rows {
		cpu, pct := "-", "-"
		if r.AgentCPU >= 0 {
			cpu = fmt.Sprintf("%.2f", r.AgentCPU)
			if r.Seconds > 0 {
				pct = fmt.Sprintf("%.1f", 100*r.AgentCPU/r.Seconds)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.3f\t%.3f\t%.3f\t%s\t%s\t%s\t\n",
			r.Setup, r.Case, r.Sent, r.Counted, r.Seconds, r.PPS/1e6, r.Ratio, cpu, pct, r.Check)
	}
	return tw.Flush()
}

// WriteJSON writes res to path, creating its directory.
func WriteJSON(path string, res Results) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Counters reads the agent's proof of the path from a Prometheus text
// scrape: icmplb_packets_total summed by its reason label, and the sums over
// backends of icmplb_backend_requests_total and icmplb_backend_replies_total
// (keys "backend_requests" and "backend_replies": a request the data plane
// takes for a copy of one in flight is forwarded but not counted there).
func Counters(r io.Reader) (map[string]float64, error) {
	const packets = "icmplb_packets_total{"
	sums := map[string]string{
		"icmplb_backend_requests_total{": "backend_requests",
		"icmplb_backend_replies_total{":  "backend_replies",
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<16), 1<<20)
	seen := false
	for sc.Scan() {
		line := sc.Text()
		key := ""
		rest, ok := strings.CutPrefix(line, packets)
		if ok {
			seen = true
		} else {
			for prefix, k := range sums {
				if rest, ok = strings.CutPrefix(line, prefix); ok {
					key = k
					break
				}
			}
			if !ok {
				continue
			}
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			return nil, fmt.Errorf("metrics line %q: no value", line)
		}
		if key == "" {
			for l := range strings.SplitSeq(labels, ",") {
				if v, ok := strings.CutPrefix(l, `reason="`); ok {
					key = strings.TrimSuffix(v, `"`)
				}
			}
			if key == "" {
				return nil, fmt.Errorf("metrics line %q: no reason label", line)
			}
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[key] += v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !seen {
		return nil, errors.New("no icmplb_packets_total series in the scrape")
	}
	return out, nil
}

// Delta returns after - before by key, without the keys that did not move.
func Delta(before, after map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}
