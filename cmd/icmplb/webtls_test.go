// SPDX-License-Identifier: MIT

package main

// Endpoint security (issue 7): the agent with --web.config.file, scraped by
// Debian's real Prometheus over TLS with basic auth.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
	"github.com/icmplb/icmplb/internal/webtest"
)

const (
	promUser     = "prometheus"
	promPassword = "correct horse battery staple"
)

// freeAddr is a loopback address with a free port in host's namespace (a
// fresh one, where nothing else takes it meanwhile).
func freeAddr(t *testing.T, topo *topology.Topology, host string) string {
	t.Helper()
	var addr string
	if err := topo.InNS(host, func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		addr = l.Addr().String()
		return l.Close()
	}); err != nil {
		t.Fatal(err)
	}
	return addr
}

// nsDial dials from inside host's namespace.
func nsDial(topo *topology.Topology, host string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := topo.InNS(host, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// promTarget is a scrape target as Prometheus's /api/v1/targets shows it.
type promTarget struct {
	ScrapePool string `json:"scrapePool"`
	Health     string `json:"health"`
	LastError  string `json:"lastError"`
}

// TestWebConfigTLSBasicAuth runs the agent with a web config (TLS with a
// self-signed certificate, one basic auth user with a bcrypt hash) and a real
// Prometheus with three jobs: the right credentials over HTTPS must scrape
// (up == 1, icmplb metrics stored); a wrong password and plain HTTP must not,
// for Prometheus (401, 400) as for a Go client.
func TestWebConfigTLSBasicAuth(t *testing.T) {
	testenv.Privileged(t)
	promBin := testenv.Tool(t, "prometheus", "prometheus")
	topo := topology.NewT(t, topology.Seed())
	dir := t.TempDir()
	// Prometheus and the agent may run as other users than the test's.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cert := webtest.SelfSigned(t, dir, "127.0.0.1")
	webConfig := webtest.WriteConfig(t, dir, &cert, map[string]string{promUser: promPassword}, "")

	agentAddr := freeAddr(t, topo, lb)
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1,
		"--web.listen-address", agentAddr, "--web.config.file", webConfig)

	// A Go client: right and wrong credentials, and plain HTTP.
	client := webtest.Client(cert, nsDial(topo, lb))
	get := func(user, pass string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "https://"+agentAddr+"/metrics", nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET /metrics as %q: %v", user, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get(promUser, promPassword); code != 200 || !strings.Contains(body, "icmplb_build_info") {
		t.Errorf("right password: %d %.100q, want 200 with metrics", code, body)
	}
	for _, pass := range []string{"wrong", ""} {
		if code, body := get(promUser, pass); code != 401 || strings.Contains(body, "icmplb_") {
			t.Errorf("password %q: %d %.100q, want 401 without metrics", pass, code, body)
		}
	}
	if code, _ := get("", ""); code != 401 {
		t.Errorf("no credentials: %d, want 401", code)
	}
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nsDial(topo, lb)}}
	if resp, err := plain.Get("http://" + agentAddr + "/metrics"); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || bytes.Contains(body, []byte("icmplb_")) {
			t.Errorf("plain HTTP: %d %.100q, want 400 without metrics", resp.StatusCode, body)
		}
	}

	// Prometheus: the right job, a wrong password, plain HTTP.
	pwFile := filepath.Join(dir, "password")
	wrongFile := filepath.Join(dir, "wrong-password")
	for f, pw := range map[string]string{pwFile: promPassword, wrongFile: "wrong"} {
		if err := os.WriteFile(f, []byte(pw), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	promConfig := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promConfig, fmt.Appendf(nil, `global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: icmplb
    scheme: https
    tls_config:
      ca_file: %[1]s
    basic_auth:
      username: %[2]s
      password_file: %[3]s
    static_configs:
      - targets: ['%[5]s']
  - job_name: wrong-password
    scheme: https
    tls_config:
      ca_file: %[1]s
    basic_auth:
      username: %[2]s
      password_file: %[4]s
    static_configs:
      - targets: ['%[5]s']
  - job_name: plain-http
    static_configs:
      - targets: ['%[5]s']
`, cert.CertFile, promUser, pwFile, wrongFile, agentAddr), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(filepath.Join(filepath.Dir(promBin), "promtool"), "check", "config", promConfig).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	promAddr := freeAddr(t, topo, lb)
	agenttest.Start(t, "prometheus", topo.Command(lb, promBin, "--config.file="+promConfig,
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr), agenttest.Env())
	api := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nsDial(topo, lb)}}
	promGet := func(path string, params url.Values, out any) error {
		resp, err := api.Get("http://" + promAddr + path + "?" + params.Encode())
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var r struct {
			Status string          `json:"status"`
			Data   json.RawMessage `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
			return fmt.Errorf("%s: HTTP %s, status %q: %v", path, resp.Status, r.Status, err)
		}
		return json.Unmarshal(r.Data, out)
	}

	// Every job scraped at least once, and the icmplb metrics stored.
	var targets map[string]promTarget
	var stored int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		var d struct {
			ActiveTargets []promTarget `json:"activeTargets"`
		}
		err := promGet("/api/v1/targets", nil, &d)
		targets = map[string]promTarget{}
		for _, tg := range d.ActiveTargets {
			targets[tg.ScrapePool] = tg
		}
		var q struct {
			Result []json.RawMessage `json:"result"`
		}
		if err == nil {
			err = promGet("/api/v1/query", url.Values{"query": {`up{job="icmplb"} == 1 and on() count(icmplb_build_info{job="icmplb"}) == 1`}}, &q)
		}
		stored = len(q.Result)
		scraped := len(targets) == 3
		for _, tg := range targets {
			scraped = scraped && tg.Health != "unknown"
		}
		if err == nil && scraped && stored == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("within 30s: targets %+v, up==1 with icmplb metrics: %d series, last error %v", targets, stored, err)
		}
	}
	t.Logf("Prometheus targets: %+v", targets)
	if tg := targets["icmplb"]; tg.Health != "up" {
		t.Errorf("job icmplb: %+v, want up", tg)
	}
	if tg := targets["wrong-password"]; tg.Health != "down" || !strings.Contains(tg.LastError, "401") {
		t.Errorf("job wrong-password: %+v, want down with HTTP 401", tg)
	}
	if tg := targets["plain-http"]; tg.Health != "down" || !strings.Contains(tg.LastError, "400") {
		t.Errorf("job plain-http: %+v, want down with HTTP 400", tg)
	}
}

// TestBadWebConfigStopsStartup: a web config file that cannot be used stops
// the agent before it touches the network, with one line naming the file and
// the problem. It needs no privileges: the check comes first.
func TestBadWebConfigStopsStartup(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "web-config.yml")
	if err := os.WriteFile(bad, []byte("basic_auth_users:\n  prometheus: plaintext\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{
		{filepath.Join(dir, "missing.yml"), "no such file or directory"},
		{bad, "hashedSecret too short"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		cmd := exec.CommandContext(ctx, agenttest.Binary(t), "run", "--iface", "eth0", "--vip", vip, "--backend", backend1,
			"--web.listen-address", "127.0.0.1:0", "--web.config.file", tc.file)
		cmd.Env = agenttest.Env()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		cancel()
		msg := strings.TrimSpace(stderr.String())
		if err == nil || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "--web.config.file "+tc.file) || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: exit %v, stderr %q; want a failure in one line naming the file and %q", tc.file, err, msg, tc.want)
		}
	}
}
