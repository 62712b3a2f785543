// SPDX-License-Identifier: MIT

package exporter

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/icmplb/icmplb/exporter/telemetry"
)

// StatusPath serves the agent's state as JSON for `icmplb status`: the same
// counters /metrics has, cumulative, so that the client measures rates and
// quantiles over a window of its own, as PromQL's rate() would.
const StatusPath = "/api/v1/status"

// Status is the document StatusPath serves.
type Status struct {
	Time     time.Time       `json:"time"`
	Services []StatusService `json:"services"`
}

// StatusService is one service and its backends.
type StatusService struct {
	VIP      netip.Addr      `json:"vip"`
	SNAT     netip.Addr      `json:"snat"`
	Backends []StatusBackend `json:"backends"`
}

// StatusBackend is one backend of a service, cumulative since it joined.
type StatusBackend struct {
	Address  netip.Addr `json:"address"`
	Weight   int        `json:"weight"`
	State    string     `json:"state"`
	Reason   string     `json:"reason,omitempty"`
	Sessions uint64     `json:"sessions"`
	Requests uint64     `json:"requests"`
	Replies  uint64     `json:"replies"`
	Lost     uint64     `json:"lost"`
	// Errors counts requests answered by an ICMP error, by type
	// (telemetry.ErrorTypes).
	Errors map[string]uint64 `json:"errors"`
	// RTT is the RTT histogram: Buckets[k] counts replies of native bucket
	// k - Offset of schema Schema (see telemetry.Histogram).
	RTT StatusHistogram `json:"rtt"`
}

// StatusHistogram is telemetry.Histogram with the empty tail cut.
type StatusHistogram struct {
	Schema  int32    `json:"schema"`
	Offset  int      `json:"offset"`
	Buckets []uint64 `json:"buckets"`
}

// Backend states, as `icmplb status` shows them (telemetry.States).
const (
	StateUp          = telemetry.StateUp
	StateDraining    = telemetry.StateDraining
	StateUnresolved  = telemetry.StateUnresolved
	StateEjected     = telemetry.StateEjected
	StateProbeFailed = telemetry.StateProbeFailed
)

// backendState is the balancer's state of b, or, for a snapshot without
// one, what its weight and next hop say.
func backendState(b *telemetry.Backend) string {
	if b.State != "" {
		return b.State
	}
	switch {
	case b.Weight == 0 || b.Removed:
		return StateDraining
	case !b.Up:
		return StateUnresolved
	}
	return StateUp
}

// NewStatus builds the document from a snapshot.
func NewStatus(snap *telemetry.Snapshot, now time.Time) *Status {
	st := &Status{Time: now, Services: []StatusService{}}
	pos := map[netip.Addr]int{}
	for _, s := range snap.Services {
		pos[s.VIP] = len(st.Services)
		st.Services = append(st.Services, StatusService{VIP: s.VIP, SNAT: s.SNAT, Backends: []StatusBackend{}})
	}
	for i := range snap.Backends {
		b := &snap.Backends[i]
		j, ok := pos[b.VIP]
		if !ok {
			// A removed service's backends drain on: show them under it.
			j = len(st.Services)
			pos[b.VIP] = j
			st.Services = append(st.Services, StatusService{VIP: b.VIP, Backends: []StatusBackend{}})
		}
		last := 0
		for k, n := range b.RTT.Buckets {
			if n > 0 {
				last = k + 1
			}
		}
		st.Services[j].Backends = append(st.Services[j].Backends, StatusBackend{
			Address: b.Addr, Weight: b.Weight, State: backendState(b), Reason: b.StateReason, Sessions: b.Sessions,
			Requests: b.Requests, Replies: b.Replies, Lost: b.Lost, Errors: b.Errors,
			RTT: StatusHistogram{Schema: b.RTT.Schema, Offset: b.RTT.Offset, Buckets: b.RTT.Buckets[:last]},
		})
	}
	return st
}

// statusHandler serves NewStatus of src's snapshots.
func statusHandler(src Source) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		snap, err := src.Snapshot()
		if err != nil {
			http.Error(w, "read the data plane: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if snap == nil {
			http.Error(w, "not ready: the XDP program is not attached", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(NewStatus(snap, time.Now()))
	})
}

// StatusRow is what `icmplb status` shows of one backend over a window.
type StatusRow struct {
	VIP      netip.Addr `json:"vip"`
	Backend  netip.Addr `json:"backend"`
	Weight   int        `json:"weight"`
	State    string     `json:"state"`
	Reason   string     `json:"reason,omitempty"`
	Sessions uint64     `json:"sessions"`
	// RequestsPerSecond is the rate of requests forwarded in the window.
	RequestsPerSecond float64 `json:"requests_per_second"`
	// LossRatio is lost / (replies + lost) of the window's settled
	// requests; null without any, or without a request in the window.
	LossRatio *float64 `json:"loss_ratio"`
	// ErrorsPerSecond is the rate of requests answered by an ICMP error in
	// the window, all types together.
	ErrorsPerSecond float64 `json:"errors_per_second"`
	// P50 and P99 are RTT quantiles of the window's replies, in seconds:
	// the upper bound of the bucket holding the quantile (at most 9% above
	// the true value with schema 3); null without replies.
	P50 *float64 `json:"p50_seconds"`
	P99 *float64 `json:"p99_seconds"`
}

// Window compares two documents of one agent, a window apart, into rows.
// A backend absent from prev (new, or its counters restarted) is measured
// from zero.
func Window(prev, cur *Status) []StatusRow {
	type key struct{ vip, be netip.Addr }
	old := map[key]*StatusBackend{}
	for i := range prev.Services {
		s := &prev.Services[i]
		for j := range s.Backends {
			old[key{s.VIP, s.Backends[j].Address}] = &s.Backends[j]
		}
	}
	secs := cur.Time.Sub(prev.Time).Seconds()
	var rows []StatusRow
	for _, s := range cur.Services {
		for _, b := range s.Backends {
			p := old[key{s.VIP, b.Address}]
			if p == nil || p.Requests > b.Requests {
				p = &StatusBackend{}
			}
			r := StatusRow{VIP: s.VIP, Backend: b.Address, Weight: b.Weight, State: b.State, Reason: b.Reason, Sessions: b.Sessions}
			if secs > 0 {
				r.RequestsPerSecond = float64(b.Requests-p.Requests) / secs
				var n uint64
				for typ, c := range b.Errors {
					n += c - min(p.Errors[typ], c)
				}
				r.ErrorsPerSecond = float64(n) / secs
			}
			replies, lost := b.Replies-min(p.Replies, b.Replies), b.Lost-min(p.Lost, b.Lost)
			// Losses settle a loss timeout after their requests: a backend
			// that got none in the window (ejected, drained) only shows the
			// tail of what came before, which is no ratio of this window.
			if replies+lost > 0 && b.Requests > p.Requests {
				v := float64(lost) / float64(replies+lost)
				r.LossRatio = &v
			}
			delta := make([]uint64, len(b.RTT.Buckets))
			for k := range delta {
				delta[k] = b.RTT.Buckets[k]
				if k < len(p.RTT.Buckets) {
					delta[k] -= min(p.RTT.Buckets[k], delta[k])
				}
			}
			h := telemetry.Histogram{Schema: b.RTT.Schema, Offset: b.RTT.Offset, Buckets: delta}
			r.P50, r.P99 = quantile(&h, 0.5), quantile(&h, 0.99)
			rows = append(rows, r)
		}
	}
	return rows
}

// quantile is Histogram.Quantile as JSON wants it: nil for no replies.
func quantile(h *telemetry.Histogram, q float64) *float64 {
	v, ok := h.Quantile(q)
	if !ok {
		return nil
	}
	return &v
}

// WriteTable writes rows as an aligned table, one line per backend.
func WriteTable(w io.Writer, rows []StatusRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "VIP\tBACKEND\tWEIGHT\tSTATE\tSESSIONS\tREQ/S\tLOSS\tERR/S\tP50\tP99\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%.1f\t%s\t%.1f\t%s\t%s\t\n", r.VIP, r.Backend, r.Weight, r.State, r.Sessions,
			r.RequestsPerSecond, ratio(r.LossRatio), r.ErrorsPerSecond, seconds(r.P50), seconds(r.P99))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Reasons are sentences: below the table, not in a column.
	for _, r := range rows {
		if r.Reason != "" {
			if _, err := fmt.Fprintf(w, "%s of %s is %s: %s\n", r.Backend, r.VIP, r.State, r.Reason); err != nil {
				return err
			}
		}
	}
	return nil
}

func ratio(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", *v*100)
}

func seconds(v *float64) string {
	if v == nil {
		return "-"
	}
	d := time.Duration(*v * float64(time.Second))
	switch {
	case d < time.Microsecond:
		return "<1µs" // the zero bucket
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return strings.TrimSuffix(fmt.Sprintf("%.2f", float64(d.Microseconds())/1000), ".00") + "ms"
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}
