// SPDX-License-Identifier: MIT

package dashboards

// A static checker of PromQL: it parses an expression with Prometheus's own
// parser, walks the AST and checks that every metric it selects is one the
// exporter exports (or a recording rule, up, ALERTS), that every label named
// in a matcher, by/without, on/ignoring or group_left/right is on the series
// at that point of the expression, and that label values of the exporter's
// fixed label sets (verdict, reason, map, stage, status, state) exist.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/icmplb/icmplb/balancer"
	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/exporter"
	"github.com/icmplb/icmplb/exporter/telemetry"
)

// targetLabels are added by Prometheus to every scraped series.
var targetLabels = []string{"job", "instance"}

// closedLabels are the exporter's labels with a fixed set of values; a
// matcher on one of them must be able to match one of those values.
var closedLabels = []string{"verdict", "reason", "map", "stage", "status", "state"}

// metricInfo is what a query may ask of one metric name.
type metricInfo struct {
	labels map[string]bool
	// open: any label may be present (ALERTS carries the alerts' labels).
	open bool
	// values of the closed labels, by label name.
	values map[string]map[string]bool
}

// fakeSource is a data plane with one backend, every verdict reason and
// known conntrack counts, so that every series the exporter can export is
// gathered.
type fakeSource struct{ snap *telemetry.Snapshot }

func (f fakeSource) Snapshot() (*telemetry.Snapshot, error) { return f.snap, nil }

// exportedMetrics gathers the exporter's real registry (the collector with a
// tracer, the Go and process collectors, the reloader and the HTTP handler's
// own metric) and returns every series name a Prometheus scrape of it
// stores: histograms and summaries as their _bucket/_sum/_count series.
func exportedMetrics(t testing.TB) map[string]*metricInfo {
	t.Helper()
	snap := &telemetry.Snapshot{
		Services: []telemetry.Service{{VIP: netip.MustParseAddr("10.0.0.100"), SNAT: netip.MustParseAddr("10.0.0.100")}},
		Backends: []telemetry.Backend{{
			VIP: netip.MustParseAddr("10.0.0.100"), Addr: netip.MustParseAddr("10.0.0.2"), Up: true, Weight: 1, Sessions: 1,
			Requests: 3, RequestBytes: 294, Replies: 2, ReplyBytes: 196, Lost: 1,
			RTT:   telemetry.Histogram{Schema: bpf.RTTSchema, Offset: bpf.RTTBucketOffset, Buckets: make([]uint64, bpf.RTTBuckets)},
			State: telemetry.StateUp,
			// Every reason, so that the checker knows each value of the
			// ejections' reason label.
			Ejections:     map[string]uint64{telemetry.EjectLoss: 1, telemetry.EjectLatency: 0, telemetry.EjectProbe: 0},
			SessionsMoved: 1,
			Probe: &telemetry.Probe{Requests: 2, Replies: 1, Lost: 1,
				RTT: telemetry.Histogram{Schema: bpf.RTTSchema, Offset: bpf.RTTBucketOffset, Buckets: make([]uint64, bpf.RTTBuckets)}},
		}},
		Verdicts:  slices.Clone(balancer.Verdicts),
		Conntrack: telemetry.Conntrack{Known: true, Sessions: 1, Capacity: 65536, InFlight: 1, InFlightCapacity: 262144},
	}
	snap.Backends[0].RTT.Buckets[100] = 2
	snap.Backends[0].RTT.Sum = 2 * time.Millisecond
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	reg, err := exporter.NewRegistry(exporter.NewCollector(fakeSource{snap}, exporter.NewTracer(tp, time.Second), "test"))
	if err != nil {
		t.Fatal(err)
	}
	// The agent registers the reloads' metrics itself (cmd/icmplb), beside
	// the collector's.
	if err := reg.Register(exporter.NewReloader(func() error { return nil }, slog.New(slog.DiscardHandler))); err != nil {
		t.Fatal(err)
	}
	// The handler registers promhttp_metric_handler_errors_total.
	exporter.Handler(reg, new(atomic.Bool), "test", nil)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]*metricInfo{}
	add := func(name string, m *dto.Metric, extra ...string) {
		mi := known[name]
		if mi == nil {
			mi = &metricInfo{labels: map[string]bool{}, values: map[string]map[string]bool{}}
			for _, l := range targetLabels {
				mi.labels[l] = true
			}
			known[name] = mi
		}
		for _, lp := range m.GetLabel() {
			mi.labels[lp.GetName()] = true
			if slices.Contains(closedLabels, lp.GetName()) {
				if mi.values[lp.GetName()] == nil {
					mi.values[lp.GetName()] = map[string]bool{}
				}
				mi.values[lp.GetName()][lp.GetValue()] = true
			}
		}
		for _, l := range extra {
			mi.labels[l] = true
		}
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetType() {
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				add(mf.GetName()+"_bucket", m, "le")
				add(mf.GetName()+"_sum", m)
				add(mf.GetName()+"_count", m)
			case dto.MetricType_SUMMARY:
				add(mf.GetName(), m, "quantile")
				add(mf.GetName()+"_sum", m)
				add(mf.GetName()+"_count", m)
			default:
				add(mf.GetName(), m)
			}
		}
	}
	return known
}

// newChecker returns a checker knowing the exporter's metrics and the series
// Prometheus makes itself: up and the alerts' ALERTS and ALERTS_FOR_STATE.
func newChecker(t testing.TB) *checker {
	known := exportedMetrics(t)
	known["up"] = &metricInfo{labels: map[string]bool{"job": true, "instance": true}}
	known["ALERTS"] = &metricInfo{open: true}
	known["ALERTS_FOR_STATE"] = &metricInfo{open: true}
	return &checker{metrics: known, parser: parser.NewParser(parser.Options{})}
}

type checker struct {
	metrics map[string]*metricInfo
	parser  parser.Parser
	// needRegex are placeholders of multi-value variables: a matcher whose
	// value holds one must be a regex matcher (=~ or !~).
	needRegex []string
}

// clone returns a checker with its own copy of the known metrics.
func (c *checker) clone() *checker {
	d := *c
	d.metrics = maps.Clone(c.metrics)
	d.needRegex = slices.Clone(c.needRegex)
	return &d
}

// labelSet is the set of labels on the series an expression returns.
type labelSet struct {
	names map[string]bool
	open  bool
}

func (s labelSet) has(l string) bool { return s.open || s.names[l] }

func (s labelSet) sorted() []string { return slices.Sorted(maps.Keys(s.names)) }

func setOf(names ...string) labelSet {
	s := labelSet{names: map[string]bool{}}
	for _, n := range names {
		s.names[n] = true
	}
	return s
}

// Check parses expr and checks it; it returns the labels of its result.
func (c *checker) Check(expr string) (labelSet, error) {
	e, err := c.parser.ParseExpr(expr)
	if err != nil {
		return labelSet{}, fmt.Errorf("parse %q: %w", expr, err)
	}
	var errs []error
	ls := c.walk(e, &errs)
	if err := errors.Join(errs...); err != nil {
		return ls, fmt.Errorf("%q: %w", expr, err)
	}
	return ls, nil
}

// Define adds a recording rule's series: the labels of its expression plus
// the rule's own labels.
func (c *checker) Define(record string, ls labelSet, ruleLabels map[string]string) {
	mi := &metricInfo{labels: maps.Clone(ls.names), open: ls.open, values: map[string]map[string]bool{}}
	if mi.labels == nil {
		mi.labels = map[string]bool{}
	}
	for l := range ruleLabels {
		mi.labels[l] = true
	}
	c.metrics[record] = mi
}

func (c *checker) walk(n parser.Expr, errs *[]error) labelSet {
	fail := func(format string, args ...any) { *errs = append(*errs, fmt.Errorf(format, args...)) }
	switch e := n.(type) {
	case *parser.VectorSelector:
		return c.selector(e, errs)
	case *parser.MatrixSelector:
		return c.walk(e.VectorSelector, errs)
	case *parser.SubqueryExpr:
		return c.walk(e.Expr, errs)
	case *parser.ParenExpr:
		return c.walk(e.Expr, errs)
	case *parser.UnaryExpr:
		return c.walk(e.Expr, errs)
	case *parser.StepInvariantExpr:
		return c.walk(e.Expr, errs)
	case *parser.NumberLiteral, *parser.StringLiteral, *parser.DurationExpr:
		return setOf()
	case *parser.Call:
		args := make([]labelSet, len(e.Args))
		for i, a := range e.Args {
			args[i] = c.walk(a, errs)
		}
		str := func(i int) string {
			if i < len(e.Args) {
				if s, ok := e.Args[i].(*parser.StringLiteral); ok {
					return s.Val
				}
			}
			return ""
		}
		switch e.Func.Name {
		case "histogram_quantile":
			in := args[1]
			if !in.has("le") {
				fail("histogram_quantile over series without le (labels %v)", in.sorted())
			}
			out := labelSet{names: maps.Clone(in.names), open: in.open}
			delete(out.names, "le")
			return out
		case "label_replace":
			if src := str(3); src != "" && !args[0].has(src) {
				fail("label_replace: source label %q not on %v", src, args[0].sorted())
			}
			out := labelSet{names: maps.Clone(args[0].names), open: args[0].open}
			out.names[str(1)] = true
			return out
		case "label_join":
			for i := 3; i < len(e.Args); i++ {
				if !args[0].has(str(i)) {
					fail("label_join: source label %q not on %v", str(i), args[0].sorted())
				}
			}
			out := labelSet{names: maps.Clone(args[0].names), open: args[0].open}
			out.names[str(1)] = true
			return out
		case "absent", "absent_over_time":
			// Only equality matchers become labels; none of them matter here.
			return setOf()
		}
		if e.Type() != parser.ValueTypeVector {
			return setOf()
		}
		for i, a := range e.Args {
			if t := a.Type(); t == parser.ValueTypeVector || t == parser.ValueTypeMatrix {
				return args[i]
			}
		}
		return setOf()
	case *parser.AggregateExpr:
		in := c.walk(e.Expr, errs)
		if e.Param != nil {
			c.walk(e.Param, errs)
		}
		for _, g := range e.Grouping {
			if !in.has(g) {
				fail("%s by/without label %q: not on its input (labels %v)", e.Op, g, in.sorted())
			}
		}
		switch e.Op {
		case parser.TOPK, parser.BOTTOMK, parser.LIMITK, parser.LIMIT_RATIO:
			return in
		}
		var out labelSet
		if e.Without {
			out = labelSet{names: maps.Clone(in.names), open: in.open}
			for _, g := range e.Grouping {
				delete(out.names, g)
			}
		} else {
			out = setOf(e.Grouping...)
		}
		if e.Op == parser.COUNT_VALUES {
			if s, ok := e.Param.(*parser.StringLiteral); ok {
				out.names[s.Val] = true
			}
		}
		return out
	case *parser.BinaryExpr:
		l, r := c.walk(e.LHS, errs), c.walk(e.RHS, errs)
		lt, rt := e.LHS.Type(), e.RHS.Type()
		switch {
		case lt == parser.ValueTypeScalar && rt == parser.ValueTypeScalar:
			return setOf()
		case lt == parser.ValueTypeScalar:
			return r
		case rt == parser.ValueTypeScalar:
			return l
		}
		vm := e.VectorMatching
		if vm == nil {
			vm = &parser.VectorMatching{Card: parser.CardOneToOne}
		}
		for _, m := range vm.MatchingLabels {
			if vm.On && !(l.has(m) && r.has(m)) {
				fail("%s on(%s): label not on both sides (%v, %v)", e.Op, m, l.sorted(), r.sorted())
			}
			if !vm.On && !l.has(m) && !r.has(m) {
				fail("%s ignoring(%s): label on neither side", e.Op, m)
			}
		}
		switch vm.Card {
		case parser.CardManyToOne:
			for _, inc := range vm.Include {
				if !r.has(inc) {
					fail("group_left(%s): label not on the right-hand side (%v)", inc, r.sorted())
				}
			}
		case parser.CardOneToMany:
			for _, inc := range vm.Include {
				if !l.has(inc) {
					fail("group_right(%s): label not on the left-hand side (%v)", inc, l.sorted())
				}
			}
		}
		switch e.Op {
		case parser.LAND, parser.LUNLESS:
			return l
		case parser.LOR:
			out := labelSet{names: maps.Clone(l.names), open: l.open || r.open}
			maps.Copy(out.names, r.names)
			return out
		}
		switch vm.Card {
		case parser.CardManyToOne:
			out := labelSet{names: maps.Clone(l.names), open: l.open}
			for _, inc := range vm.Include {
				out.names[inc] = true
			}
			return out
		case parser.CardOneToMany:
			out := labelSet{names: maps.Clone(r.names), open: r.open}
			for _, inc := range vm.Include {
				out.names[inc] = true
			}
			return out
		}
		// One to one.
		if vm.On {
			out := setOf()
			for _, m := range vm.MatchingLabels {
				if l.has(m) {
					out.names[m] = true
				}
			}
			return out
		}
		lk, rk := maps.Clone(l.names), maps.Clone(r.names)
		for _, m := range vm.MatchingLabels {
			delete(lk, m)
			delete(rk, m)
		}
		if !l.open && !r.open && !maps.Equal(lk, rk) {
			fail("%s matches one to one on all labels, but the sides differ: %v vs %v (use on/ignoring)",
				e.Op, slices.Sorted(maps.Keys(lk)), slices.Sorted(maps.Keys(rk)))
		}
		return labelSet{names: lk, open: l.open}
	}
	fail("unsupported expression %T: %s", n, n)
	return labelSet{open: true}
}

func (c *checker) selector(vs *parser.VectorSelector, errs *[]error) labelSet {
	fail := func(format string, args ...any) { *errs = append(*errs, fmt.Errorf(format, args...)) }
	var infos []*metricInfo
	var names []string
	switch {
	case vs.Name != "":
		names = []string{vs.Name}
	default:
		for _, m := range vs.LabelMatchers {
			if m.Name != model.MetricNameLabel {
				continue
			}
			for _, n := range slices.Sorted(maps.Keys(c.metrics)) {
				if m.Matches(n) {
					names = append(names, n)
				}
			}
			if len(names) == 0 {
				fail("%s: __name__ %s matches no exported metric", vs, m)
				return labelSet{open: true}
			}
		}
		if len(names) == 0 {
			fail("%s: selector without a metric name", vs)
			return labelSet{open: true}
		}
	}
	for _, n := range names {
		mi := c.metrics[n]
		if mi == nil {
			fail("unknown metric %q: not exported by icmplb, not a recording rule, up or ALERTS", n)
			return labelSet{open: true}
		}
		infos = append(infos, mi)
	}
	out := setOf()
	for _, mi := range infos {
		out.open = out.open || mi.open
		maps.Copy(out.names, mi.labels)
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == model.MetricNameLabel {
			continue
		}
		if !out.has(m.Name) {
			fail("%s: label %q is not on %v (labels %v)", vs, m.Name, names, out.sorted())
			continue
		}
		for _, ph := range c.needRegex {
			if strings.Contains(m.Value, ph) && (m.Type == labels.MatchEqual || m.Type == labels.MatchNotEqual) {
				fail("%s: %s holds a multi-value variable: use =~ or !~", vs, m)
			}
		}
		if m.Type != labels.MatchEqual && m.Type != labels.MatchRegexp {
			continue
		}
		for _, mi := range infos {
			vals := mi.values[m.Name]
			if vals == nil || strings.Contains(m.Value, placeholderMark) {
				continue
			}
			found := false
			for v := range vals {
				found = found || m.Matches(v)
			}
			if !found {
				fail("%s: %s matches none of the values %v", vs, m, slices.Sorted(maps.Keys(vals)))
				continue
			}
			// A list of literal values: each must exist, or a misspelt
			// one hides behind the others and its series never shows.
			if m.Type == labels.MatchRegexp && literalAltsRE.MatchString(m.Value) {
				for alt := range strings.SplitSeq(strings.Trim(m.Value, "()"), "|") {
					if !vals[alt] {
						fail("%s: %s lists %q, none of the values %v", vs, m, alt, slices.Sorted(maps.Keys(vals)))
					}
				}
			}
		}
	}
	return out
}

// literalAltsRE matches a regex that only lists literal label values:
// a|b|c, optionally in parentheses.
var literalAltsRE = regexp.MustCompile(`^\(?\w+(\|\w+)*\)?$`)

// Grafana variables in expressions: $name, ${name}, ${name:format}, [[name]].
var grafanaVarRE = regexp.MustCompile(`\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]`)

// placeholderMark starts every placeholder substituted for a dashboard
// variable, so that value checks can skip what Grafana fills in.
const placeholderMark = "grafanavar_"

// substitute replaces Grafana variables in expr by values[name]; a variable
// without a value is left as it is (and fails to parse).
func substitute(expr string, values map[string]string) string {
	return grafanaVarRE.ReplaceAllStringFunc(expr, func(v string) string {
		m := grafanaVarRE.FindStringSubmatch(v)
		name := m[1] + m[2] + m[3]
		if val, ok := values[name]; ok {
			return val
		}
		return v
	})
}

// staticValues are placeholders valid where Grafana puts each variable: a
// duration for the interval variables, a label value for the others.
func staticValues(vars []string) map[string]string {
	vals := map[string]string{"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
	for _, v := range vars {
		vals[v] = placeholderMark + v
	}
	return vals
}
