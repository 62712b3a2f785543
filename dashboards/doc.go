// SPDX-License-Identifier: MIT

// Package dashboards holds icmplb's Grafana dashboards and Prometheus rules,
// kept by hand, and the tests that keep them true to the exporter.
//
// The files, documented in docs/dashboards-and-alerts.md and docs/runbooks.md:
//
//   - icmplb-overview.json, icmplb-backend.json: Grafana dashboards (schema
//     39) with a Prometheus data source variable and the vip and backend
//     variables;
//   - icmplb-rules.yml: recording rules and the alerts, each alert linking
//     its runbook;
//   - icmplb-rules.test.yml: promtool unit tests of the rules.
//
// The tests run promtool on the rules, parse every PromQL expression of the
// dashboards and the rules and check each metric and label it names against
// what the exporter really exports (gathered from exporter.Collector), check
// the dashboards' structure, keep the thresholds table of docs/dashboards-and-alerts.md in step
// with the rules, and, as root, run the real agent and a real Prometheus in
// network namespaces to see every panel get data and the loss alert fire.
//
// The package has no Go API; it exists for its files and tests.
package dashboards
