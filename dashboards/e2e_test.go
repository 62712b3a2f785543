// SPDX-License-Identifier: MIT

package dashboards

// The end-to-end check of the dashboards and the rules: the real icmplb
// binary and Debian's real Prometheus in the lb namespace of the seed
// topology, real pings from the clients, one healthy and one slow, lossy
// backend. Every panel's query must get data and the loss alert must fire
// for the lossy backend only. It needs root and skips without it.

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
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/responder"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

const (
	// e2eWait bounds the wait for every panel to have data and the alert
	// to fire (typically about 15 s).
	e2eWait = 90 * time.Second
	// e2eRateInterval replaces Grafana's $__rate_interval: 15 scrapes.
	e2eRateInterval = "15s"
	// sessionsPerClient ping sessions (echo identifiers) run on h1 and on
	// h4 each, so that Maglev gives both backends traffic.
	sessionsPerClient = 8
	// Test time scales of the rules, see shortRules.
	e2eFor   = "5s"
	e2eRange = "[" + e2eRateInterval + "]"
	// The lossy backend h3: the responder's delay and loss.
	lossyDelay = 20 * time.Millisecond
	lossyLoss  = 0.4
)

var (
	vip         = topology.SeedVIP.String()
	goodBackend = topology.SeedH2.String()
	lossy       = topology.SeedH3.String()
)

// forLineRE and rangeRE find what shortRules shortens.
var (
	forLineRE = regexp.MustCompile(`(?m)^(\s*for:\s*)\S+[ \t]*$`)
	rangeRE   = regexp.MustCompile(`\[\w+\](\s+offset\b)?`)
)

// shortRules returns a test copy of the rules whose alerts can fire within
// seconds, by a fixed transformation that keeps every expression's meaning
// and every threshold:
//   - every alert's `for:` becomes 5s;
//   - every range selector without an offset (the rate windows, [5m])
//     becomes [15s]: 15 samples at the test's 1s scrape interval. A range
//     with an offset (the RTT baseline of a day ago) is kept: a fresh
//     Prometheus has no day-old data either way.
//
// The recording rules keep their names (…:rate5m) although their window is
// shorter here.
func shortRules(t *testing.T, src []byte) []byte {
	t.Helper()
	nFor, nRange := 0, 0
	out := forLineRE.ReplaceAllFunc(src, func(m []byte) []byte {
		nFor++
		return forLineRE.ReplaceAll(m, []byte("${1}"+e2eFor))
	})
	out = rangeRE.ReplaceAllFunc(out, func(m []byte) []byte {
		if bytes.Contains(m, []byte("offset")) {
			return m
		}
		nRange++
		return []byte(e2eRange)
	})
	// The transformation must have found what it expects, and the result
	// must still be valid rules with the same rules in it.
	orig := loadRules(t, rulesFile)
	if want := len(alerts(orig)); nFor != want {
		t.Fatalf("shortRules: %d for: lines, want one per alert (%d)", nFor, want)
	}
	if nRange == 0 {
		t.Fatal("shortRules: no range selector shortened")
	}
	f := filepath.Join(t.TempDir(), "check.yml")
	if err := os.WriteFile(f, out, 0o644); err != nil {
		t.Fatal(err)
	}
	short := loadRules(t, f)
	for _, a := range alerts(short) {
		if a.For.String() != e2eFor {
			t.Fatalf("shortRules: %s has for %s", a.Alert, a.For)
		}
	}
	return out
}

func TestMain(m *testing.M) { agenttest.Main(m) }

// freeAddrs returns n loopback addresses with distinct free ports in host's
// namespace (a fresh namespace, where nothing else takes them meanwhile).
func freeAddrs(t *testing.T, topo *topology.Topology, host string, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		l := listenIn(t, topo, host)
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

// listenIn listens on a free loopback port in host's namespace.
func listenIn(t *testing.T, topo *topology.Topology, host string) net.Listener {
	t.Helper()
	var l net.Listener
	if err := topo.InNS(host, func() (err error) {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return l
}

// promAPI queries Prometheus's HTTP API in the lb namespace: its client
// dials from inside that namespace.
type promAPI struct {
	base   string
	client *http.Client
}

func newPromAPI(topo *topology.Topology, host, addr string) *promAPI {
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := topo.InNS(host, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
	return &promAPI{
		base:   "http://" + addr,
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial}},
	}
}

// get calls an API endpoint and decodes its data into out.
func (a *promAPI) get(path string, params url.Values, out any) error {
	resp, err := a.client.Get(a.base + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var r struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("%s: HTTP %s: %q", path, resp.Status, body)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s %v: %s", path, params, r.Error)
	}
	return json.Unmarshal(r.Data, out)
}

type series struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant query and returns its series.
func (a *promAPI) query(expr string) ([]series, error) {
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := a.get("/api/v1/query", url.Values{"query": {expr}}, &d); err != nil {
		return nil, err
	}
	if d.ResultType != "vector" {
		return nil, fmt.Errorf("query %q: result type %s, want vector", expr, d.ResultType)
	}
	var ss []series
	return ss, json.Unmarshal(d.Result, &ss)
}

// labelValues runs a Grafana label_values(selector, label) variable query.
func (a *promAPI) labelValues(selector, label string) ([]string, error) {
	var vs []string
	err := a.get("/api/v1/label/"+label+"/values", url.Values{"match[]": {selector}}, &vs)
	slices.Sort(vs)
	return vs, err
}

// exemplars counts the exemplars of expr's series in the last minute.
func (a *promAPI) exemplars(expr string) (int, error) {
	now := time.Now()
	var d []struct {
		Exemplars []json.RawMessage `json:"exemplars"`
	}
	err := a.get("/api/v1/query_exemplars", url.Values{
		"query": {expr},
		"start": {fmt.Sprint(now.Add(-time.Minute).Unix())},
		"end":   {fmt.Sprint(now.Unix())},
	}, &d)
	n := 0
	for _, s := range d {
		n += len(s.Exemplars)
	}
	return n, err
}

type alert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (a *promAPI) alerts() ([]alert, error) {
	var d struct {
		Alerts []alert `json:"alerts"`
	}
	return d.Alerts, a.get("/api/v1/alerts", nil, &d)
}

// grafanaRegex formats values as Grafana does for a multi-value variable in
// a Prometheus query: regex-escaped, escaped again for the PromQL string,
// alternatives in parentheses.
func grafanaRegex(values []string) string {
	var esc []string
	for _, v := range values {
		esc = append(esc, strings.ReplaceAll(regexp.QuoteMeta(v), `\`, `\\`))
	}
	if len(esc) == 1 {
		return esc[0]
	}
	return "(" + strings.Join(esc, "|") + ")"
}

// e2eQuery is one panel target with its variables filled in.
type e2eQuery struct {
	where, expr string
	exemplar    bool
	conntrack   bool
}

// e2eQueries fills in the dashboards' variables as Grafana would with the
// values their variable queries returned: every VIP and backend on the
// overview; on the backend view every VIP and, in turn, each backend.
func e2eQueries(ds []*dashboard, vips, backends []string) []e2eQuery {
	var qs []e2eQuery
	for _, d := range ds {
		var backendValues []map[string]string
		if v := d.variable("backend"); v != nil && !v.Multi && !v.IncludeAll {
			for _, b := range backends {
				backendValues = append(backendValues, map[string]string{"backend": b})
			}
		} else {
			backendValues = []map[string]string{{"backend": grafanaRegex(backends)}}
		}
		for _, bv := range backendValues {
			vals := map[string]string{"vip": grafanaRegex(vips), "backend": bv["backend"], "__rate_interval": e2eRateInterval}
			for _, q := range d.queries() {
				if q.tgt == nil {
					continue // annotations: they show alerts, checked apart
				}
				qs = append(qs, e2eQuery{
					where:     fmt.Sprintf("%s (backend %s)", q.where, bv["backend"]),
					expr:      substitute(q.expr, vals),
					exemplar:  q.tgt.Exemplar,
					conntrack: strings.Contains(q.expr, "icmplb_conntrack_entries"),
				})
			}
		}
	}
	return qs
}

// stopFirst sends p SIGTERM and waits up to a minute for it to exit: run as
// a cleanup registered after agenttest.Start's, it goes first, and that one
// (which kills after 5s, too short on a loaded machine: the agent's detach
// waits for RCU grace periods) then finds p gone. A process still running
// after the minute is left to it, which kills and reports it.
func stopFirst(p *agenttest.Proc) {
	if p.Cmd.Process.Signal(syscall.SIGTERM) != nil {
		return
	}
	select {
	case <-p.Done():
	case <-time.After(time.Minute):
	}
}

// lab is the seed topology with the agent (backends h2, healthy, and h3,
// late and lossy), Prometheus scraping it with the rules (time scales
// shortened by shortRules), and pings to the VIP from both clients.
type lab struct {
	api *promAPI
	// conntrackKnown: the kernel counts map elements (6.6+).
	conntrackKnown                   bool
	begin, promStart, ready, traffic time.Time
}

// labHealth are the agent's health flags in the lab unless agentArgs set
// them: probes on (their panels must get data) but never failing h3, whose
// responder loses 40% of every ping, probes included (0.4^100 never
// happens); no outlier ejection, which would take h3 out within seconds
// and stop the traffic whose loss IcmplbBackendLoss must see.
var labHealth = []string{"--probe.fall", "100", "--outlier.max-ejection-percent", "0"}

// startLab starts the lab, the agent with agentArgs added to its flags.
func startLab(t *testing.T, agentArgs ...string) *lab {
	testenv.Privileged(t)
	promBin := testenv.Tool(t, "prometheus", "prometheus")
	testenv.Tool(t, "ping", "iputils-ping")
	bin := agenttest.Binary(t)
	begin := time.Now()
	lb := topology.SeedBalancer
	topo := topology.NewT(t, topology.Seed())

	// h2 answers with its kernel; h3 with the responder, late and lossy.
	if err := responder.DisableKernelEcho(topo, topology.SeedBackend2); err != nil {
		t.Fatal(err)
	}
	var r *responder.Responder
	if err := topo.InNS(topology.SeedBackend2, func() (err error) {
		r, err = responder.Listen(responder.Config{Delay: lossyDelay, Loss: lossyLoss, Seed: 1})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- r.Serve() }()
	t.Cleanup(func() {
		r.Close()
		if err := <-served; err != nil {
			t.Errorf("responder: %v", err)
		}
	})

	// An OTLP/HTTP sink in lb, so that the agent traces (one exchange in
	// 10) and puts exemplars on the RTT histograms.
	otlp := listenIn(t, topo, lb)
	sink := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
	})}
	go sink.Serve(otlp)
	t.Cleanup(func() { sink.Close() })

	addrs := freeAddrs(t, topo, lb, 2)
	agentAddr, promAddr := addrs[0], addrs[1]
	agent := agenttest.Start(t, "icmplb", topo.Command(lb, bin, append([]string{"run", "--iface", "eth0", "--vip", vip,
		"--backend", goodBackend, "--backend", lossy,
		"--web.listen-address", agentAddr, "--trace.sample", "10"}, withDefaults(agentArgs, labHealth)...)...),
		agenttest.Env("OTEL_EXPORTER_OTLP_ENDPOINT=http://"+otlp.Addr().String(), "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"))
	t.Cleanup(func() { stopFirst(agent) })
	agent.WaitLog(t, "msg=attached", time.Minute) // a deadline for a hang, not a speed target
	conntrackKnown := !strings.Contains(agent.Log(), "conntrack occupancy will not be reported")

	dir := t.TempDir()
	src, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	rules := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(rules, shortRules(t, src), 0o644); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, fmt.Appendf(nil, `global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: icmplb
    static_configs:
      - targets: ['%s']
`, rules, agentAddr), 0o644); err != nil {
		t.Fatal(err)
	}
	promStart := time.Now()
	prom := agenttest.Start(t, "prometheus", topo.Command(lb, promBin,
		"--config.file="+config, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--enable-feature=exemplar-storage"), agenttest.Env())
	t.Cleanup(func() { stopFirst(prom) })
	api := newPromAPI(topo, lb, promAddr)
	for deadline := time.Now().Add(time.Minute); ; {
		resp, err := api.client.Get(api.base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within a minute: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ready := time.Now()

	// Traffic: sessionsPerClient pings on each client, 20 requests/s each,
	// until the test ends (at most e2eWait and a margin).
	var pings []*exec.Cmd
	t.Cleanup(func() {
		for _, p := range pings {
			p.Process.Kill()
			p.Wait()
		}
	})
	for c, client := range []string{topology.SeedClient, topology.SeedClient2} {
		for i := range sessionsPerClient {
			p := topo.Command(client, "ping", "-q", "-e", fmt.Sprint(1000*(c+1)+i), "-i", "0.05", "-W", "1",
				"-w", fmt.Sprint(int((e2eWait + 30*time.Second).Seconds())), vip)
			if err := p.Start(); err != nil {
				t.Fatalf("start %s: %v", p, err)
			}
			pings = append(pings, p)
		}
	}
	return &lab{api: api, conntrackKnown: conntrackKnown, begin: begin, promStart: promStart, ready: ready, traffic: time.Now()}
}

// withDefaults returns args with each flag of defaults (flag, value pairs)
// that args does not set.
func withDefaults(args, defaults []string) []string {
	out := slices.Clone(args)
	for i := 0; i+1 < len(defaults); i += 2 {
		if !slices.Contains(args, defaults[i]) {
			out = append(out, defaults[i], defaults[i+1])
		}
	}
	return out
}

// TestEndToEnd checks, in the lab, what a Grafana user would see: the
// variables' values, data in every panel, exemplars on the latency panels,
// and IcmplbBackendLoss firing for the lossy backend h3 and never for h2.
func TestEndToEnd(t *testing.T) {
	l := startLab(t)
	api, conntrackKnown, traffic := l.api, l.conntrackKnown, l.traffic

	ds := loadDashboards(t)
	varQuery := func(d *dashboard, name string, vals map[string]string) (string, string) {
		sel, label, err := parseLabelValues(d.variable(name).queryString())
		if err != nil {
			t.Fatal(err)
		}
		return substitute(sel, vals), label
	}
	wantBackends := []string{goodBackend, lossy}
	var (
		unmet       []string
		dataAt      time.Time
		firingAt    time.Time
		nQueries    int
		nExemplared int
	)
	for deadline := time.Now().Add(e2eWait); ; time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: still\n  %s", e2eWait, strings.Join(unmet, "\n  "))
		}
		unmet = nil
		fail := func(format string, args ...any) { unmet = append(unmet, fmt.Sprintf(format, args...)) }

		// The variables, as Grafana would query them.
		var vips, backends []string
		for _, d := range ds {
			sel, label := varQuery(d, "vip", nil)
			vs, err := api.labelValues(sel, label)
			if err != nil || !slices.Equal(vs, []string{vip}) {
				fail("%s variable vip: %v (%v), want [%s]", d.file, vs, err, vip)
			}
			sel, label = varQuery(d, "backend", map[string]string{"vip": grafanaRegex(vs)})
			bs, err := api.labelValues(sel, label)
			if err != nil || !slices.Equal(bs, wantBackends) {
				fail("%s variable backend: %v (%v), want %v", d.file, bs, err, wantBackends)
			}
			vips, backends = vs, bs
		}
		if len(unmet) > 0 {
			continue
		}

		// Every panel target has data; latency targets have exemplars.
		qs := e2eQueries(ds, vips, backends)
		nQueries, nExemplared = len(qs), 0
		for _, q := range qs {
			ss, err := api.query(q.expr)
			switch {
			case err != nil:
				fail("%s: %v", q.where, err)
			case len(ss) == 0 && q.conntrack && !conntrackKnown:
				// The kernel cannot count map elements (before 6.6).
			case len(ss) == 0:
				fail("%s: no data for %s", q.where, q.expr)
			}
			if q.exemplar {
				nExemplared++
				if n, err := api.exemplars(q.expr); err != nil || n == 0 {
					fail("%s: no exemplars (%v) for %s", q.where, err, q.expr)
				}
			}
		}
		// The annotations' queries run.
		for _, d := range ds {
			for _, q := range d.queries() {
				if q.tgt != nil {
					continue
				}
				if _, err := api.query(substitute(q.expr, map[string]string{"vip": grafanaRegex(vips), "backend": grafanaRegex(backends)})); err != nil {
					fail("%s: %v", q.where, err)
				}
			}
		}
		if len(unmet) == 0 && dataAt.IsZero() {
			dataAt = time.Now()
		}

		// The loss alert: firing for h3, never even pending for h2.
		as, err := api.alerts()
		if err != nil {
			fail("alerts: %v", err)
		}
		lossFiring := false
		for _, a := range as {
			if a.Labels["alertname"] != "IcmplbBackendLoss" {
				continue
			}
			switch a.Labels["backend"] {
			case goodBackend:
				t.Fatalf("IcmplbBackendLoss is %s for the healthy backend %s: %v", a.State, goodBackend, a.Labels)
			case lossy:
				lossFiring = lossFiring || a.State == "firing"
			}
		}
		if !lossFiring {
			fail("IcmplbBackendLoss not firing for %s (alerts: %v)", lossy, as)
		} else if firingAt.IsZero() {
			firingAt = time.Now()
		}
		if len(unmet) > 0 {
			continue
		}
		// Nothing else fires in this healthy lab.
		for _, a := range as {
			if a.State == "firing" && (a.Labels["alertname"] != "IcmplbBackendLoss" || a.Labels["backend"] != lossy) {
				t.Errorf("unexpected firing alert %v", a.Labels)
			}
		}
		break
	}
	t.Logf("setup (topology, agent, prometheus ready in %v) took %v; from the first ping, all %d panel queries (%d with exemplars) had data after %v and IcmplbBackendLoss fired for %s after %v",
		l.ready.Sub(l.promStart).Round(time.Millisecond), traffic.Sub(l.begin).Round(time.Millisecond),
		nQueries, nExemplared, dataAt.Sub(traffic).Round(time.Millisecond), lossy, firingAt.Sub(traffic).Round(time.Millisecond))

	// What was measured, for the log.
	for _, expr := range []string{
		`icmplb:backend_loss_ratio:rate5m`,
		`icmplb:backend_requests:rate5m`,
		`histogram_quantile(0.5, sum by (backend, le) (rate(icmplb_backend_rtt_seconds_bucket[15s])))`,
		`icmplb_conntrack_entries`,
	} {
		ss, err := api.query(expr)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, s := range ss {
			t.Logf("%s%v = %v", expr, s.Metric, s.Value[1])
		}
	}
}

// TestEndToEndBalancerLoss runs the lab with an in-flight map too small for
// its traffic: the smallest the agent takes (1024 entries) and the longest
// loss timeout (30 s), so that each of h3's unanswered requests (20 to 30 a
// second) stays tracked for a minute and the map fills within a minute.
// The balancer then drops the requests it cannot track (inflight_full), on
// their way to either backend. IcmplbBalancerOverloaded must fire for
// that reason, and what it dropped must never count as the healthy h2's
// loss: IcmplbBackendLoss never even pending for h2, h2's lost counter zero.
func TestEndToEndBalancerLoss(t *testing.T) {
	l := startLab(t, "--inflight-size", "1024", "--loss-timeout", "30s")
	allowed := map[string]bool{
		"IcmplbBalancerOverloaded": true,
		"IcmplbBackendLoss":        true, // for h3; for h2 it fails the test
		"IcmplbConntrackNearFull":  true, // the in-flight map is full
	}
	var firingAt time.Time
	for deadline := time.Now().Add(e2eWait); firingAt.IsZero(); time.Sleep(time.Second) {
		as, err := l.api.alerts()
		if err != nil {
			t.Fatalf("alerts: %v", err)
		}
		for _, a := range as {
			name := a.Labels["alertname"]
			switch {
			case name == "IcmplbBackendLoss" && a.Labels["backend"] == goodBackend:
				t.Fatalf("IcmplbBackendLoss is %s for the healthy backend %s, whose requests only the balancer dropped: %v", a.State, goodBackend, a.Labels)
			case name == "IcmplbBalancerOverloaded" && a.Labels["reason"] == "inflight_full" && a.State == "firing":
				firingAt = time.Now()
			}
		}
		if firingAt.IsZero() && time.Now().After(deadline) {
			t.Fatalf("after %v: IcmplbBalancerOverloaded not firing for inflight_full (alerts: %v)", e2eWait, as)
		}
	}
	// Only now: IcmplbExporterDown fires before Prometheus's first scrape.
	as, err := l.api.alerts()
	if err != nil {
		t.Fatalf("alerts: %v", err)
	}
	for _, a := range as {
		if a.State == "firing" && !allowed[a.Labels["alertname"]] {
			t.Errorf("unexpected firing alert %v", a.Labels)
		}
	}

	value := func(expr string) float64 {
		t.Helper()
		ss, err := l.api.query(expr)
		if err != nil || len(ss) != 1 {
			t.Fatalf("%s: %v (%v), want one series", expr, ss, err)
		}
		v, err := strconv.ParseFloat(fmt.Sprint(ss[0].Value[1]), 64)
		if err != nil {
			t.Fatalf("%s: value %v: %v", expr, ss[0].Value[1], err)
		}
		return v
	}
	dropped := value(`sum(icmplb_balancer_lost_requests_total{reason="inflight_full"})`)
	h2Requests := value(fmt.Sprintf(`icmplb_backend_requests_total{backend=%q}`, goodBackend))
	h2Lost := value(fmt.Sprintf(`icmplb_backend_lost_total{backend=%q}`, goodBackend))
	inflight := value(`sum(icmplb_conntrack_entries{map="inflight"}) or vector(-1)`)
	t.Logf("IcmplbBalancerOverloaded fired after %v of traffic; by then the balancer had dropped %.0f requests as inflight_full with %.0f requests in flight (-1: not counted by this kernel), h2 got %.0f and lost %.0f",
		firingAt.Sub(l.traffic).Round(time.Millisecond), dropped, inflight, h2Requests, h2Lost)
	if dropped == 0 || h2Requests == 0 {
		t.Errorf("want requests both dropped by the balancer (%v) and forwarded to h2 (%v)", dropped, h2Requests)
	}
	if h2Lost != 0 {
		t.Errorf("h2 lost %v requests: the balancer's drops counted as the backend's loss", h2Lost)
	}

	// The overview's panel shows the loss under its reason.
	var expr string
	for _, p := range loadDashboard(t, "icmplb-overview.json").Panels {
		if p.Title == "Balancer-caused loss" {
			expr = substitute(p.Targets[0].Expr, map[string]string{"vip": grafanaRegex([]string{vip}), "__rate_interval": e2eRateInterval})
		}
	}
	if expr == "" {
		t.Fatal("icmplb-overview.json has no panel \"Balancer-caused loss\"")
	}
	ss, err := l.api.query(expr)
	if err != nil {
		t.Fatal(err)
	}
	shown := false
	for _, s := range ss {
		v, _ := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
		shown = shown || s.Metric["reason"] == "inflight_full" && v > 0
	}
	if !shown {
		t.Errorf("panel Balancer-caused loss (%s) shows no inflight_full loss: %v", expr, ss)
	}
}
