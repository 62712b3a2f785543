// SPDX-License-Identifier: MIT

package e2ebench

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCounters(t *testing.T) {
	scrape := `# HELP icmplb_packets_total Packets seen by the XDP program, by verdict (tx, pass, drop) and reason.
# TYPE icmplb_packets_total counter
icmplb_packets_total{reason="request_forwarded",verdict="tx"} 2e+06
icmplb_packets_total{reason="not_vip",verdict="pass"} 3
icmplb_packets_total{reason="inflight_full",verdict="drop"} 7
icmplb_backend_requests_total{backend="10.0.0.2",vip="10.0.0.100"} 10
icmplb_backend_requests_total{backend="10.0.0.3",vip="10.0.0.100"} 5
icmplb_backend_replies_total{backend="10.0.0.2",vip="10.0.0.100"} 4
icmplb_backend_request_bytes_total{backend="10.0.0.2",vip="10.0.0.100"} 980
`
	got, err := Counters(strings.NewReader(scrape))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"request_forwarded": 2e6, "not_vip": 3, "inflight_full": 7, "backend_requests": 15, "backend_replies": 4}
	if !maps.Equal(got, want) {
		t.Errorf("Counters = %v, want %v", got, want)
	}
	if _, err := Counters(strings.NewReader("icmplb_backend_requests_total{backend=\"x\"} 1\n")); err == nil {
		t.Error("a scrape without icmplb_packets_total: no error")
	}
	if _, err := Counters(strings.NewReader(`icmplb_packets_total{verdict="tx"} 1` + "\n")); err == nil {
		t.Error("a series without a reason: no error")
	}
	if d := Delta(map[string]float64{"a": 1, "b": 2}, map[string]float64{"a": 1, "b": 5, "c": 1}); !maps.Equal(d, map[string]float64{"b": 3, "c": 1}) {
		t.Errorf("Delta = %v", d)
	}
}

func TestResultsOutput(t *testing.T) {
	rows := []Row{
		{Setup: "reflector", Case: "known-1", Sent: 10, Counted: 10, Seconds: 1, PPS: 10, AgentCPU: -1, Check: "ok"},
		{Setup: "icmplb-native", Case: "known-1", Sent: 10, Counted: 5, Seconds: 1, PPS: 5, AgentCPU: 0.25, Check: "ok"},
	}
	SetRatios(rows, "reflector", "known-1")
	if rows[0].Ratio != 1 || rows[1].Ratio != 0.5 {
		t.Errorf("ratios %v and %v, want 1 and 0.5", rows[0].Ratio, rows[1].Ratio)
	}
	var table bytes.Buffer
	if err := WriteTable(&table, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[2], "icmplb-native") || !strings.Contains(lines[2], "0.25") || !strings.Contains(lines[2], "25.0") || !strings.Contains(lines[1], " - ") {
		t.Errorf("table:\n%s", table.String())
	}
	path := filepath.Join(t.TempDir(), "sub", "e2e.json")
	if err := WriteJSON(path, Results{Kernel: "6.18", Rows: rows}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Rows) != 2 || back.Rows[1].Ratio != 0.5 || back.Rows[1].AgentCPU != 0.25 {
		t.Errorf("JSON round trip: %+v", back)
	}
}
