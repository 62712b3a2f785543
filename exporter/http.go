// SPDX-License-Identifier: MIT

package exporter

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// NewRegistry returns a registry with c and the Go and process collectors.
func NewRegistry(c prometheus.Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, col := range []prometheus.Collector{
		c,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register collector: %w", err)
		}
	}
	return reg, nil
}

// Agent is what the HTTP API of a running agent serves besides metrics.
type Agent struct {
	// Source serves StatusPath.
	Source Source
	// Reloader serves POST /-/reload.
	Reloader *Reloader
}

// Handler serves /metrics (text, OpenMetrics or protobuf, as the scraper
// asks), /healthz (the process serves), /readyz (the program is attached:
// ready reports it) and a landing page; with agent, also StatusPath and
// POST /-/reload.
func Handler(reg *prometheus.Registry, ready *atomic.Bool, version string, agent *Agent) http.Handler {
	mux := http.NewServeMux()
	if agent != nil && agent.Source != nil {
		mux.Handle("GET "+StatusPath, statusHandler(agent.Source))
	}
	if agent != nil && agent.Reloader != nil {
		mux.Handle("POST /-/reload", agent.Reloader)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		Registry:          reg,
		ErrorHandling:     promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready: the XDP program is not attached", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /{$}", landingPage(version))
	return mux
}

// landingPage is the exporter-toolkit landing page every Prometheus exporter
// shows.
func landingPage(version string) http.Handler {
	h, err := web.NewLandingPage(web.LandingConfig{
		Name:        "icmplb",
		Description: "XDP ICMP echo load balancer: per-backend latency and loss of the traffic it balances",
		Version:     version,
		RoutePrefix: "/",
		Profiling:   "false",
		Links: []web.LandingLinks{
			{Address: "metrics", Text: "Metrics"},
			{Address: "healthz", Text: "Health", Description: "the process serves"},
			{Address: "readyz", Text: "Readiness", Description: "the XDP program is attached"},
			{Address: strings.TrimPrefix(StatusPath, "/"), Text: "Status", Description: "services and backends as JSON (icmplb status)"},
		},
	})
	if err != nil {
		// Only its fixed templates can fail, on fixed input: a bug.
		panic(fmt.Sprintf("landing page: %v", err))
	}
	return h
}
