// SPDX-License-Identifier: MIT

package exporter

import (
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Exemplars keeps, per backend, the most recent traced exchange, so that a
// latency panel can jump from a histogram bucket to a trace.
type Exemplars struct {
	mu   sync.Mutex
	last map[netip.Addr]prometheus.Exemplar
}

// NewExemplars returns an empty exemplar store.
func NewExemplars() *Exemplars {
	return &Exemplars{last: map[netip.Addr]prometheus.Exemplar{}}
}

// Observe records a traced exchange of backend with its RTT.
func (e *Exemplars) Observe(backend netip.Addr, traceID, spanID string, rtt time.Duration, at time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.last[backend] = prometheus.Exemplar{
		Value:     rtt.Seconds(),
		Timestamp: at,
		Labels:    prometheus.Labels{"trace_id": traceID, "span_id": spanID},
	}
}

func (e *Exemplars) get(backend netip.Addr) (prometheus.Exemplar, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ex, ok := e.last[backend]
	return ex, ok
}
