// SPDX-License-Identifier: MIT

package exporter

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reloader runs the reloads of the services file that SIGHUP and
// POST /-/reload ask for, one at a time, and exports their outcome under
// the names Prometheus and Alertmanager use for their own.
type Reloader struct {
	reload func() error
	log    *slog.Logger

	mu          sync.Mutex // one reload at a time
	successful  prometheus.Gauge
	successTime prometheus.Gauge
	total       *prometheus.CounterVec
}

// NewReloader returns a Reloader running reload. The configuration the
// agent started with counts as the first successful load.
func NewReloader(reload func() error, log *slog.Logger) *Reloader {
	r := &Reloader{
		reload: reload,
		log:    log,
		successful: prometheus.NewGauge(prometheus.GaugeOpts{Name: "icmplb_config_last_reload_successful",
			Help: "1 if the last reload of the services file was applied, 0 if it was refused (the running configuration stayed)."}),
		successTime: prometheus.NewGauge(prometheus.GaugeOpts{Name: "icmplb_config_last_reload_success_timestamp_seconds",
			Help: "When the running configuration was loaded: startup or the last successful reload, in seconds since the epoch."}),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "icmplb_config_reloads_total",
			Help: "Reloads of the services file asked for, by result (success, failure)."}, []string{"result"}),
	}
	r.successful.Set(1)
	r.successTime.SetToCurrentTime()
	r.total.WithLabelValues("success")
	r.total.WithLabelValues("failure")
	return r
}

// Reload reloads once; trigger says who asked (signal, http) in the log.
func (r *Reloader) Reload(trigger string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	if err := r.reload(); err != nil {
		r.successful.Set(0)
		r.total.WithLabelValues("failure").Inc()
		r.log.Error("reload refused; the running configuration stays", "trigger", trigger, "err", err)
		return err
	}
	r.successful.Set(1)
	r.successTime.SetToCurrentTime()
	r.total.WithLabelValues("success").Inc()
	r.log.Info("reloaded", "trigger", trigger, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// ServeHTTP answers POST /-/reload: 200 once the new configuration is
// applied, 500 with the reason when it is refused.
func (r *Reloader) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	if err := r.Reload("http"); err != nil {
		http.Error(w, fmt.Sprintf("reload refused, the running configuration stays: %v", err), http.StatusInternalServerError)
		return
	}
	fmt.Fprintln(w, "reloaded")
}

// Describe implements prometheus.Collector.
func (r *Reloader) Describe(ch chan<- *prometheus.Desc) {
	r.successful.Describe(ch)
	r.successTime.Describe(ch)
	r.total.Describe(ch)
}

// Collect implements prometheus.Collector.
func (r *Reloader) Collect(ch chan<- prometheus.Metric) {
	r.successful.Collect(ch)
	r.successTime.Collect(ch)
	r.total.Collect(ch)
}
