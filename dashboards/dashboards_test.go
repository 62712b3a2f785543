// SPDX-License-Identifier: MIT

package dashboards

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/icmplb/icmplb/balancer"
	"github.com/icmplb/icmplb/exporter/telemetry"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

const (
	rulesFile     = "icmplb-rules.yml"
	rulesTestFile = "icmplb-rules.test.yml"
	// The pages users read the thresholds, verdict reasons and runbooks in.
	thresholdsFile = "../docs/dashboards-and-alerts.md"
	verdictsFile   = "../docs/metrics.md"
	runbooksFile   = "../docs/runbooks.md"
	// runbookBase is where the alerts' runbook links point.
	runbookBase = "https://github.com/icmplb/icmplb/blob/main/docs/runbooks.md#"
	// dsVar is how every panel, target and variable names its data source.
	dsVar = "${datasource}"
)

var dashboardFiles = []string{"icmplb-overview.json", "icmplb-backend.json"}

// ---- Loading -----------------------------------------------------------------

type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type variable struct {
	Type       string          `json:"type"`
	Name       string          `json:"name"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition"`
	Datasource *dsRef          `json:"datasource"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
}

// queryString is the variable's query, stored as a string or, by current
// Grafana, as an object with a query field.
func (v variable) queryString() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	json.Unmarshal(v.Query, &o)
	return o.Query
}

type target struct {
	RefID      string `json:"refId"`
	Datasource *dsRef `json:"datasource"`
	Expr       string `json:"expr"`
	Format     string `json:"format"`
	Exemplar   bool   `json:"exemplar"`
}

type gridPos struct {
	H, W, X, Y int
}

type panel struct {
	ID         int      `json:"id"`
	Type       string   `json:"type"`
	Title      string   `json:"title"`
	Datasource *dsRef   `json:"datasource"`
	GridPos    *gridPos `json:"gridPos"`
	Targets    []target `json:"targets"`
	Panels     []panel  `json:"panels"`
}

type annotation struct {
	BuiltIn    int    `json:"builtIn"`
	Name       string `json:"name"`
	Datasource *dsRef `json:"datasource"`
	Expr       string `json:"expr"`
}

type dashboard struct {
	file          string
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []annotation `json:"list"`
	} `json:"annotations"`
	Panels []panel `json:"panels"`
}

func loadDashboard(t testing.TB, file string) *dashboard {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	d := &dashboard{file: file}
	if err := json.Unmarshal(b, d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return d
}

func loadDashboards(t testing.TB) []*dashboard {
	var ds []*dashboard
	for _, f := range dashboardFiles {
		ds = append(ds, loadDashboard(t, f))
	}
	return ds
}

func (d *dashboard) variable(name string) *variable {
	for i := range d.Templating.List {
		if d.Templating.List[i].Name == name {
			return &d.Templating.List[i]
		}
	}
	return nil
}

// query is one PromQL expression of a dashboard and where it is.
type query struct {
	where string
	expr  string
	panel *panel
	tgt   *target
}

// queries returns the panels' targets and the annotations' expressions.
func (d *dashboard) queries() []query {
	var qs []query
	for i := range d.Panels {
		p := &d.Panels[i]
		for j := range p.Targets {
			qs = append(qs, query{
				where: fmt.Sprintf("%s panel %d %q target %s", d.file, p.ID, p.Title, p.Targets[j].RefID),
				expr:  p.Targets[j].Expr, panel: p, tgt: &p.Targets[j],
			})
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			qs = append(qs, query{where: fmt.Sprintf("%s annotation %q", d.file, a.Name), expr: a.Expr})
		}
	}
	return qs
}

// labelValuesRE is Grafana's label_values(selector, label) variable query.
var labelValuesRE = regexp.MustCompile(`^label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)$`)

func parseLabelValues(q string) (selector, label string, err error) {
	m := labelValuesRE.FindStringSubmatch(strings.TrimSpace(q))
	if m == nil {
		return "", "", fmt.Errorf("variable query %q is not label_values(selector, label)", q)
	}
	return m[1], m[2], nil
}

func loadRules(t testing.TB, file string) *rulefmt.RuleGroups {
	t.Helper()
	rgs, errs := rulefmt.ParseFile(file, false, model.LegacyValidation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return rgs
}

func alerts(rgs *rulefmt.RuleGroups) []rulefmt.Rule {
	var as []rulefmt.Rule
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				as = append(as, r)
			}
		}
	}
	return as
}

func ruleName(r rulefmt.Rule) string { return r.Record + r.Alert }

func findRule(rgs *rulefmt.RuleGroups, name string) (rulefmt.Rule, bool) {
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			if ruleName(r) == name {
				return r, true
			}
		}
	}
	return rulefmt.Rule{}, false
}

func mustParse(t testing.TB, expr string) parser.Expr {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Fatalf("parse %q: %v", expr, err)
	}
	return e
}

// ---- Checking expressions ----------------------------------------------------

// templateLabelRE finds the labels an alert's templates use.
var templateLabelRE = regexp.MustCompile(`\$labels\.(\w+)`)

// checkRules checks every rule's expression in order, defining each
// recording rule before the rules after it may use it, and the labels the
// alerts' templates refer to.
func checkRules(c *checker, rgs *rulefmt.RuleGroups) error {
	var errs []error
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			ls, err := c.Check(r.Expr)
			if err != nil {
				errs = append(errs, fmt.Errorf("rule %s: %w", ruleName(r), err))
				continue
			}
			if r.Record != "" {
				c.Define(r.Record, ls, r.Labels)
				continue
			}
			for _, text := range slices.Concat(slices.Collect(maps.Values(r.Annotations)), slices.Collect(maps.Values(r.Labels))) {
				for _, m := range templateLabelRE.FindAllStringSubmatch(text, -1) {
					if !ls.has(m[1]) && m[1] != "alertname" && r.Labels[m[1]] == "" {
						errs = append(errs, fmt.Errorf("alert %s: template uses $labels.%s, which its expression does not return (labels %v)", r.Alert, m[1], ls.sorted()))
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

// checkDashboard checks every query of d, with its variables replaced by
// placeholders, and its variables' label_values queries.
func checkDashboard(c *checker, d *dashboard) error {
	c = c.clone()
	var names []string
	for _, v := range d.Templating.List {
		names = append(names, v.Name)
		if v.Multi || v.IncludeAll {
			c.needRegex = append(c.needRegex, placeholderMark+v.Name)
		}
	}
	vals := staticValues(names)
	var errs []error
	for _, q := range d.queries() {
		if _, err := c.Check(substitute(q.expr, vals)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", q.where, err))
		}
		if e, err := c.parser.ParseExpr(substitute(q.expr, vals)); err == nil {
			// Thresholds live in the rules file only (docs/dashboards-and-alerts.md,
			// "Thresholds"): a dashboard query holds no number but
			// histogram_quantile's φ.
			parser.Inspect(e, func(n parser.Node, path []parser.Node) error {
				num, ok := n.(*parser.NumberLiteral)
				if !ok {
					return nil
				}
				if len(path) > 0 {
					if call, ok := path[len(path)-1].(*parser.Call); ok && call.Func.Name == "histogram_quantile" && call.Args[0] == parser.Expr(num) {
						return nil
					}
				}
				errs = append(errs, fmt.Errorf("%s: number %v in a dashboard query: keep thresholds in %s", q.where, num.Val, rulesFile))
				return nil
			})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		sel, label, err := parseLabelValues(v.queryString())
		if err != nil {
			errs = append(errs, fmt.Errorf("%s variable %s: %w", d.file, v.Name, err))
			continue
		}
		ls, err := c.Check(substitute(sel, vals))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s variable %s: %w", d.file, v.Name, err))
			continue
		}
		if !ls.has(label) {
			errs = append(errs, fmt.Errorf("%s variable %s: label %q is not on %s", d.file, v.Name, label, sel))
		}
	}
	return errors.Join(errs...)
}

// TestQueriesUseExportedMetrics parses every PromQL expression of the rules
// and the dashboards and checks each metric, label and fixed label value
// against what the exporter exports.
func TestQueriesUseExportedMetrics(t *testing.T) {
	c := newChecker(t)
	if err := checkRules(c, loadRules(t, rulesFile)); err != nil {
		t.Error(err)
	}
	n := 0
	for _, d := range loadDashboards(t) {
		if err := checkDashboard(c, d); err != nil {
			t.Error(err)
		}
		n += len(d.queries())
	}
	if n < 20 {
		t.Errorf("only %d dashboard queries found", n)
	}
}

// TestCheckerCatchesMistakes makes sure the checker is not vacuous: a copy of
// a real expression with one deliberate mistake must fail it.
func TestCheckerCatchesMistakes(t *testing.T) {
	c := newChecker(t)
	rgs := loadRules(t, rulesFile)
	if err := checkRules(c, rgs); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, d := range loadDashboards(t) {
		for _, q := range d.queries() {
			exprs = append(exprs, q.expr)
		}
	}
	for _, a := range alerts(rgs) {
		exprs = append(exprs, a.Expr)
	}
	dc := c.clone()
	vals := staticValues([]string{"datasource", "vip", "backend"})
	dc.needRegex = []string{placeholderMark + "vip", placeholderMark + "backend"}

	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"metric name", "icmplb_backend_lost_total", "icmplb_backend_loss_total", `unknown metric "icmplb_backend_loss_total"`},
		{"histogram series", "icmplb_backend_rtt_seconds_bucket", "icmplb_backend_rtt_bucket", "unknown metric"},
		{"recording rule", "icmplb:backend_loss_ratio:rate5m", "icmplb:backend_loss_ratio:rate1m", "unknown metric"},
		{"matcher label", `backend=~"$backend"`, `backends=~"$backend"`, `label "backends" is not on`},
		{"by label", "sum by (vip, backend)", "sum by (vip, host)", `label "host": not on its input`},
		{"on label", "and on (job, instance)", "and on (job, node)", "on(node): label not on both sides"},
		{"quantile without le", "sum by (vip, backend, le)", "sum by (vip, backend)", "histogram_quantile over series without le"},
		{"fixed label value", "rate(icmplb_trace_events_dropped_total[", `rate(icmplb_trace_events_dropped_total{stage="ringbuf"}[`, `matches none of the values [kernel pipeline]`},
		{"one value of a list", "|session_mac_mismatch", "|session_mac_mismach", `lists "session_mac_mismach"`},
		{"one state of a list", "|probe_failed|", "|probe_fail|", `lists "probe_fail"`},
		{"multi-value variable", `vip=~"$vip"`, `vip="$vip"`, "use =~ or !~"},
		{"one to one", "icmplb_conntrack_entries / icmplb_conntrack_capacity", "icmplb_conntrack_entries / icmplb_backend_up", "sides differ"},
		{"threshold in a dashboard", "sum(rate(icmplb_backend_lost_total", "0.05 < sum(rate(icmplb_backend_lost_total", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i := slices.IndexFunc(exprs, func(e string) bool { return strings.Contains(e, tc.old) })
			if i < 0 {
				t.Fatalf("no expression contains %q to break", tc.old)
			}
			orig := substitute(exprs[i], vals)
			if _, err := dc.Check(orig); err != nil {
				t.Fatalf("the unbroken expression fails: %v", err)
			}
			broken := strings.Replace(exprs[i], tc.old, tc.new, 1)
			if tc.want == "" {
				// Through the whole dashboard check, in a copy of a dashboard.
				d := loadDashboard(t, dashboardFiles[0])
				d.Panels = []panel{{ID: 1, Title: "broken", Targets: []target{{RefID: "A", Expr: broken}}}}
				err := checkDashboard(c, d)
				if err == nil || !strings.Contains(err.Error(), "number 0.05 in a dashboard query") {
					t.Fatalf("checkDashboard(%q) = %v, want the number found", broken, err)
				}
				return
			}
			_, err := dc.Check(substitute(broken, vals))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check(%q) = %v, want an error containing %q", broken, err, tc.want)
			}
		})
	}

	// A variable's label_values query is checked too.
	d := loadDashboard(t, dashboardFiles[0])
	d.variable("backend").Query = json.RawMessage(`"label_values(icmplb_backend_requests_total{vip=~\"$vip\"}, backnd)"`)
	if err := checkDashboard(c, d); err == nil || !strings.Contains(err.Error(), `label "backnd" is not on`) {
		t.Errorf("a label_values query of a missing label: got %v", err)
	}
}

// ---- Dashboard structure -----------------------------------------------------

func TestDashboardStructure(t *testing.T) {
	uids := map[string]string{}
	for _, d := range loadDashboards(t) {
		t.Run(d.file, func(t *testing.T) {
			if d.UID == "" || d.Title == "" {
				t.Errorf("uid %q, title %q: both needed", d.UID, d.Title)
			}
			if f, dup := uids[d.UID]; dup {
				t.Errorf("uid %q also used by %s", d.UID, f)
			}
			uids[d.UID] = d.file
			if d.SchemaVersion < 39 {
				t.Errorf("schemaVersion %d, want 39 or newer", d.SchemaVersion)
			}
			checkVariables(t, d)

			ids := map[int]string{}
			for i, p := range d.Panels {
				name := fmt.Sprintf("panel %d %q", p.ID, p.Title)
				if p.ID <= 0 {
					t.Errorf("%s: no id", name)
				}
				if other, dup := ids[p.ID]; dup {
					t.Errorf("%s: id also used by %q", name, other)
				}
				ids[p.ID] = p.Title
				if !slices.Contains([]string{"timeseries", "heatmap", "stat", "state-timeline"}, p.Type) {
					t.Errorf("%s: type %q, want timeseries, heatmap, stat or state-timeline", name, p.Type)
				}
				if len(p.Panels) > 0 {
					t.Errorf("%s: nested panels are not checked; keep the layout flat", name)
				}
				if p.Datasource == nil || p.Datasource.UID != dsVar || p.Datasource.Type != "prometheus" {
					t.Errorf("%s: datasource %+v, want prometheus %s", name, p.Datasource, dsVar)
				}
				g := p.GridPos
				if g == nil || g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
					t.Errorf("%s: gridPos %+v: want w, h > 0 within 24 columns", name, g)
				} else {
					for _, q := range d.Panels[:i] {
						if o := q.GridPos; o != nil && g.X < o.X+o.W && o.X < g.X+g.W && g.Y < o.Y+o.H && o.Y < g.Y+g.H {
							t.Errorf("%s overlaps panel %d %q", name, q.ID, q.Title)
						}
					}
				}
				if len(p.Targets) == 0 {
					t.Errorf("%s: no target", name)
				}
				refs := map[string]bool{}
				for _, tg := range p.Targets {
					if tg.RefID == "" || refs[tg.RefID] {
						t.Errorf("%s: refId %q missing or repeated", name, tg.RefID)
					}
					refs[tg.RefID] = true
					if tg.Datasource == nil || tg.Datasource.UID != dsVar {
						t.Errorf("%s target %s: datasource %+v, want %s", name, tg.RefID, tg.Datasource, dsVar)
					}
					if strings.TrimSpace(tg.Expr) == "" {
						t.Errorf("%s target %s: no expr", name, tg.RefID)
					}
					latency := strings.Contains(tg.Expr, "icmplb_backend_rtt_seconds_bucket")
					if latency && p.Type != "stat" && !tg.Exemplar {
						t.Errorf("%s target %s: a latency target without \"exemplar\": true", name, tg.RefID)
					}
					if p.Type == "heatmap" && (tg.Format != "heatmap" || !latency) {
						t.Errorf("%s target %s: a heatmap wants format heatmap over the _bucket series", name, tg.RefID)
					}
				}
			}
			for _, a := range d.Annotations.List {
				if a.BuiltIn == 0 && (a.Datasource == nil || a.Datasource.UID != dsVar) {
					t.Errorf("annotation %q: datasource %+v, want %s", a.Name, a.Datasource, dsVar)
				}
			}
		})
	}
}

// checkVariables checks the three template variables: the data source, and
// vip and backend from label_values over the data source. In the backend
// detail dashboard, backend selects one backend.
func checkVariables(t *testing.T, d *dashboard) {
	t.Helper()
	ds := d.variable("datasource")
	if ds == nil || ds.Type != "datasource" || ds.queryString() != "prometheus" {
		t.Errorf("want a variable datasource of type datasource, query prometheus; got %+v", ds)
	}
	want := map[string]string{
		"vip":     "label_values(icmplb_backend_requests_total, vip)",
		"backend": `label_values(icmplb_backend_requests_total{vip=~"$vip"}, backend)`,
	}
	for _, name := range []string{"vip", "backend"} {
		v := d.variable(name)
		if v == nil {
			t.Errorf("no variable %s", name)
			continue
		}
		if v.Type != "query" || v.queryString() != want[name] {
			t.Errorf("variable %s: type %q query %q, want a query variable %q", name, v.Type, v.queryString(), want[name])
		}
		if v.Definition != "" && v.Definition != v.queryString() {
			t.Errorf("variable %s: definition %q differs from its query", name, v.Definition)
		}
		if v.Datasource == nil || v.Datasource.UID != dsVar {
			t.Errorf("variable %s: datasource %+v, want %s", name, v.Datasource, dsVar)
		}
		single := d.UID == "icmplb-backend" && name == "backend"
		if single && (v.Multi || v.IncludeAll) {
			t.Errorf("variable %s: the backend detail view selects one backend", name)
		}
		if !single && !(v.Multi && v.IncludeAll) {
			t.Errorf("variable %s: want multi and include all", name)
		}
	}
}

// ---- Thresholds and runbooks -------------------------------------------------

// thresholdRow is one row of the table "Thresholds" in docs/dashboards-and-alerts.md.
type thresholdRow struct {
	name, value string
	rules       []string
	field       string // expr, for, range or offset
}

var backticks = strings.NewReplacer("`", "")

func readThresholds(t *testing.T) []thresholdRow {
	t.Helper()
	f, err := os.Open(thresholdsFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows []thresholdRow
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(backticks.Replace(cells[i]))
		}
		switch {
		case !in && strings.HasPrefix(line, "|") && len(cells) >= 4 && cells[0] == "Threshold" && cells[1] == "Default" && cells[2] == "Rule" && cells[3] == "Field":
			in = true
		case in && !strings.HasPrefix(line, "|"):
			return rows
		case in && strings.HasPrefix(cells[0], "---"):
		case in:
			if len(cells) < 4 {
				t.Fatalf("%s: thresholds row %q has fewer than 4 cells", thresholdsFile, line)
			}
			row := thresholdRow{name: cells[0], value: cells[1], field: cells[3]}
			for r := range strings.SplitSeq(cells[2], ",") {
				row.rules = append(row.rules, strings.TrimSpace(r))
			}
			rows = append(rows, row)
		}
	}
	if len(rows) == 0 {
		t.Fatalf("%s: no table with the header | Threshold | Default | Rule | Field | ...", thresholdsFile)
	}
	return rows
}

// ruleFacts are the numbers of one rule that the table must document.
type ruleFacts struct {
	numbers []float64 // alerts only; 0 is a state (up == 0), not a threshold
	ranges  []time.Duration
	offsets []time.Duration
	forDur  time.Duration
}

func factsOf(t *testing.T, r rulefmt.Rule) ruleFacts {
	f := ruleFacts{forDur: time.Duration(r.For)}
	parser.Inspect(mustParse(t, r.Expr), func(n parser.Node, _ []parser.Node) error {
		switch e := n.(type) {
		case *parser.NumberLiteral:
			if r.Alert != "" && e.Val != 0 {
				f.numbers = append(f.numbers, e.Val)
			}
		case *parser.MatrixSelector:
			f.ranges = append(f.ranges, e.Range)
		case *parser.SubqueryExpr:
			f.ranges = append(f.ranges, e.Range)
		case *parser.VectorSelector:
			if e.OriginalOffset != 0 {
				f.offsets = append(f.offsets, e.OriginalOffset)
			}
		}
		return nil
	})
	return f
}

// TestThresholdTable keeps the one table of thresholds in docs/dashboards-and-alerts.md and the
// rules file in step: every row is found in the rule and field it names, and
// every threshold of the rules (alert numbers, for durations, windows,
// offsets) has a row.
func TestThresholdTable(t *testing.T) {
	rgs := loadRules(t, rulesFile)
	rows := readThresholds(t)
	type key struct {
		rule, field, value string
	}
	documented := map[key]bool{}
	for _, row := range rows {
		for _, name := range row.rules {
			r, ok := findRule(rgs, name)
			if !ok {
				t.Errorf("row %q: no rule %s in %s", row.name, name, rulesFile)
				continue
			}
			f := factsOf(t, r)
			var found bool
			switch row.field {
			case "expr":
				v, err := strconv.ParseFloat(row.value, 64)
				if err != nil {
					t.Errorf("row %q: %q is not a number", row.name, row.value)
					continue
				}
				found = slices.Contains(f.numbers, v)
				row.value = strconv.FormatFloat(v, 'g', -1, 64)
			case "for", "range", "offset":
				d, err := model.ParseDuration(row.value)
				if err != nil {
					t.Errorf("row %q: %q is not a duration", row.name, row.value)
					continue
				}
				switch row.field {
				case "for":
					found = f.forDur == time.Duration(d)
				case "range":
					found = slices.Contains(f.ranges, time.Duration(d))
				case "offset":
					found = slices.Contains(f.offsets, time.Duration(d))
				}
				row.value = d.String()
			default:
				t.Errorf("row %q: field %q, want expr, for, range or offset", row.name, row.field)
				continue
			}
			if !found {
				t.Errorf("row %q: %s %s is not in rule %s of %s: update the table or the rule", row.name, row.field, row.value, name, rulesFile)
			}
			k := key{name, row.field, row.value}
			if documented[k] {
				t.Errorf("row %q: %s %s of %s is documented twice", row.name, row.field, row.value, name)
			}
			documented[k] = true
		}
	}
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			f := factsOf(t, r)
			need := func(field, value string) {
				if !documented[key{ruleName(r), field, value}] {
					t.Errorf("rule %s: %s %s is not in the thresholds table of %s", ruleName(r), field, value, thresholdsFile)
				}
			}
			for _, v := range f.numbers {
				need("expr", strconv.FormatFloat(v, 'g', -1, 64))
			}
			for _, d := range f.ranges {
				need("range", model.Duration(d).String())
			}
			for _, d := range f.offsets {
				need("offset", model.Duration(d).String())
			}
			if f.forDur != 0 {
				need("for", model.Duration(f.forDur).String())
			}
		}
	}
}

// TestVerdictReasons keeps the table "Verdict reasons" of docs/metrics.md in step
// with the data plane: one row per verdict reason (balancer.Verdicts), with
// the reasons of the balancer's own loss (balancer.BalancerLimited) marked.
func TestVerdictReasons(t *testing.T) {
	f, err := os.Open(verdictsFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	documented := map[telemetry.Verdict]bool{}
	var limited []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		switch {
		case !in && len(cells) == 3 && cells[0] == "verdict" && cells[1] == "reason":
			in = true
		case in && !strings.HasPrefix(line, "|"):
			in = false
		case in && strings.HasPrefix(cells[0], "---"):
		case in:
			if len(cells) != 3 {
				t.Errorf("%s: verdict reasons row %q: want 3 cells", verdictsFile, line)
				continue
			}
			v := telemetry.Verdict{Verdict: backticks.Replace(cells[0]), Reason: backticks.Replace(cells[1])}
			if documented[v] {
				t.Errorf("%s: verdict %s reason %s documented twice", verdictsFile, v.Verdict, v.Reason)
			}
			if strings.Contains(cells[2], "*balancer loss*") {
				v.BalancerLoss = true
				limited = append(limited, v.Reason)
			}
			documented[v] = true
		}
	}
	if len(documented) == 0 {
		t.Fatalf("%s: no table with the header | verdict | reason | packets |", verdictsFile)
	}
	for _, v := range balancer.Verdicts {
		if !documented[v] {
			t.Errorf("%s: verdict %s reason %s is not in the verdict reasons table", verdictsFile, v.Verdict, v.Reason)
		}
		delete(documented, v)
	}
	for v := range documented {
		t.Errorf("%s: verdict %s reason %s is documented but not a verdict of the data plane", verdictsFile, v.Verdict, v.Reason)
	}
	if !slices.Equal(slices.Sorted(slices.Values(limited)), slices.Sorted(slices.Values(balancer.BalancerLimited))) {
		t.Errorf("%s: reasons marked *balancer loss* %v, want balancer.BalancerLimited %v", verdictsFile, limited, balancer.BalancerLimited)
	}
}

// githubAnchor is the fragment GitHub gives a heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestRunbooks checks every alert's labels and annotations and that docs/runbooks.md
// has its runbook under the heading its runbook_url points to.
func TestRunbooks(t *testing.T) {
	readme, err := os.ReadFile(runbooksFile)
	if err != nil {
		t.Fatal(err)
	}
	headings := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## (Runbook: .+)$`).FindAllStringSubmatch(string(readme), -1) {
		headings[githubAnchor(m[1])] = true
	}
	rgs := loadRules(t, rulesFile)
	as := alerts(rgs)
	want := []string{"IcmplbBackendLoss", "IcmplbBackendDown", "IcmplbAllBackendsDown",
		"IcmplbBackendRTTRegression", "IcmplbConntrackNearFull", "IcmplbBalancerOverloaded",
		"IcmplbSpoofedTraffic", "IcmplbConfigReloadFailed", "IcmplbExporterDown",
		"IcmplbBackendFlapping", "IcmplbServiceAllBackendsUnhealthy"}
	var got []string
	for _, a := range as {
		got = append(got, a.Alert)
		if s := a.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("%s: severity %q, want warning or critical", a.Alert, s)
		}
		for _, k := range []string{"summary", "description"} {
			if !strings.Contains(a.Annotations[k], "{{") {
				t.Errorf("%s: annotation %s %q shows no $labels or $value", a.Alert, k, a.Annotations[k])
			}
		}
		anchor := "runbook-" + strings.ToLower(a.Alert)
		if u := a.Annotations["runbook_url"]; u != runbookBase+anchor {
			t.Errorf("%s: runbook_url %q, want %q", a.Alert, u, runbookBase+anchor)
		}
		if !headings[anchor] {
			t.Errorf("%s: %s has no heading \"## Runbook: %s\"", a.Alert, runbooksFile, a.Alert)
		}
		delete(headings, anchor)
	}
	if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
		t.Errorf("alerts %v, want %v", got, want)
	}
	for h := range headings {
		t.Errorf("%s: runbook #%s has no alert", runbooksFile, h)
	}
}

// ---- promtool ------------------------------------------------------------------

// TestPromtool runs promtool check rules and the unit tests of the rules.
func TestPromtool(t *testing.T) {
	promtool := testenv.Tool(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", rulesFile},
		{"test", "rules", rulesTestFile},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
