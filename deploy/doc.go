// SPDX-License-Identifier: MIT

// Package deploy holds no code: it is the home of icmplb's container image
// (Dockerfile), its Docker Compose stack with Prometheus, Grafana and Tempo
// (compose.yaml and the prometheus/, grafana/ and tempo/ configuration), and
// its Kubernetes manifests (kubernetes/), documented in docs/containers-and-kubernetes.md.
//
// The tests of this package check those files against the code they deploy,
// without root and without Docker or a cluster, each file read with its
// ecosystem's own parser: every ICMPLB_* variable and flag is one the config
// package defines, and the values pass its parser and check; the Dockerfile builds with the
// Makefile's flags; the capabilities, ports, probes and mounts agree across
// the files; the Prometheus Operator rule is the same as
// dashboards/icmplb-rules.yml; and the configuration's cross-references
// (rule files, Grafana provisioning, OTLP endpoint) resolve; the
// kustomizations build with kustomize's own API. When promtool is installed,
// it checks the Prometheus configuration.
//
// kubernetes/monitoring/prometheusrule.yaml is generated from
// dashboards/icmplb-rules.yml:
//
//	go test ./deploy -run TestPrometheusRule -update
package deploy
