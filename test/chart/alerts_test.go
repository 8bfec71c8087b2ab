package chart

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// The alerts the chart's PrometheusRule must have: what an operator of loops needs to
// hear about (docs/operations.md lists them with what to do).
var requiredAlerts = []string{
	"CustomerLoopNotReady", "CustomerLoopStalled", "CustomerLoopConsumerLagGrowing",
	"CustomerLoopDeadLetters", "CustomerLoopFreshnessHigh", "CustomerLoopDigestsFailing",
}

// TestAlertsUseExportedMetrics proves the chart's alerts can fire: every metric their
// expressions select is a series the code exports (the workers' pipeline.NewMetrics and
// the manager's controllers.MetricCollectors, histograms as _bucket, _count and _sum),
// every label they match, group or join on is one of those series' labels, and every
// $labels.X an annotation prints survives the expression's aggregations.
func TestAlertsUseExportedMetrics(t *testing.T) {
	series := exportedSeries(t)
	rules := alertRules(t, helmTemplate(t, []string{chartDir + "/ci/production-values.yaml"}))

	var names []string
	for _, r := range rules {
		names = append(names, r.name)
		t.Run(r.name, func(t *testing.T) {
			for _, err := range checkAlert(series, r) {
				t.Error(err)
			}
		})
	}
	for _, want := range requiredAlerts {
		if !slices.Contains(names, want) {
			t.Errorf("the PrometheusRule has no alert %s; it has %v", want, names)
		}
	}

	if objs := decode(t, helmTemplate(t, nil)); slices.ContainsFunc(objs, func(o *unstructured.Unstructured) bool {
		return o.GetKind() == "PrometheusRule"
	}) {
		t.Error("the default values render a PrometheusRule; it needs the Prometheus Operator's CRDs and must be opt-in")
	}
}

// TestAlertCheckRefuses proves the check above can fail, against the same exported
// series: an unknown metric, a histogram's base name, a label the metric lacks, a
// grouping label no selected metric has, and an annotation label aggregated away.
func TestAlertCheckRefuses(t *testing.T) {
	series := exportedSeries(t)
	for _, tc := range []struct {
		expr, annotation, want string
	}{
		{expr: `rate(customerloop_nonexistent_total[5m]) > 0`, want: "customerloop_nonexistent_total is not exported"},
		{expr: `customerloop_freshness_seconds{clock="event"} > 1`, want: "customerloop_freshness_seconds is not exported"},
		{expr: `customerloop_consumer_lag_messages{stream="usage"} > 0`, want: `label "stream"`},
		{expr: `customerloop_loop_condition{type="Ready",loop="x"} == 1`, want: `label "loop"`},
		{expr: `sum by (namespace) (rate(customerloop_errors_total[5m])) > 0`, want: `label "namespace"`},
		{expr: `sum by (loop) (rate(customerloop_errors_total[5m])) > 0`, annotation: "{{ $labels.stage }}", want: "$labels.stage"},
		{expr: `customerloop_loop_condition{type="Ready"`, want: "unterminated"},
	} {
		r := alertRule{name: "Test", expr: tc.expr, annotations: map[string]string{"summary": tc.annotation}}
		errs := checkAlert(series, r)
		if !slices.ContainsFunc(errs, func(err error) bool { return strings.Contains(err.Error(), tc.want) }) {
			t.Errorf("%s: got %v, want an error mentioning %q", tc.expr, errs, tc.want)
		}
	}
	// And passes a correct one.
	ok := alertRule{name: "Test", expr: `sum by (loop, stage) (rate(customerloop_errors_total{stage!="fetch"}[5m])) > 0`,
		annotations: map[string]string{"summary": "{{ $labels.loop }} {{ $labels.stage }}"}}
	if errs := checkAlert(series, ok); len(errs) > 0 {
		t.Errorf("a correct alert is refused: %v", errs)
	}
}

// TestPromQLSelectors pins the extractor down on the forms PromQL has: strings holding
// braces and commas, ranges and subqueries, offsets, aggregations before and after their
// argument, joins, keywords, and selectors by __name__; malformed input is an error.
func TestPromQLSelectors(t *testing.T) {
	for _, tc := range []struct {
		expr      string
		selectors string // name[labels] ...
		grouping  string // label lists, "|" between them
		err       string
	}{
		{expr: `up`, selectors: `up[]`},
		{expr: `rate(a_total{x="1", y=~"a,b}"}[5m]) > 0`, selectors: `a_total[x y]`},
		{expr: `sum by (l1, l2) (rate(a{b!~'c'}[1m])) / on(l1) group_left(l3) b offset 5m`,
			selectors: `a[b] b[]`, grouping: `l1 l2|l1|l3`},
		{expr: `sum(rate(a[5m])) without (z) > bool 3`, selectors: `a[]`, grouping: `z`},
		{expr: `histogram_quantile(0.99, sum by (le) (rate(h_bucket{c="r"}[10m]))) > 1e-3`, selectors: `h_bucket[c]`, grouping: `le`},
		{expr: `max_over_time(deriv(g[15m])[1h:5m]) and g unless h or i`, selectors: `g[] g[] h[] i[]`},
		{expr: `{__name__="n", a="b"} # a comment naming no_metric{x="y"}`, selectors: `n[a]`},
		{expr: "count_values(`v`, m{k=\"}\"})", selectors: `m[k]`},
		{expr: `topk(3, m) @ end()`, selectors: `m[]`},
		{expr: `m{a="b"`, err: "unterminated"},
		{expr: `m{a="b}`, err: "unterminated"},
		{expr: `m{a}`, err: "matcher"},
		{expr: `{a="b"}`, err: "no metric name"},
		{expr: `sum by (a, ) (m)`, err: "label list"},
	} {
		got, err := promSelectors(tc.expr)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want one mentioning %q", tc.expr, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		var sels []string
		for _, s := range got.selectors {
			sels = append(sels, s.name+"["+strings.Join(s.labels, " ")+"]")
		}
		var groups []string
		for _, g := range got.grouping {
			groups = append(groups, strings.Join(g.labels, " "))
		}
		if s := strings.Join(sels, " "); s != tc.selectors {
			t.Errorf("%s: selectors %q, want %q", tc.expr, s, tc.selectors)
		}
		if g := strings.Join(groups, "|"); g != tc.grouping {
			t.Errorf("%s: grouping %q, want %q", tc.expr, g, tc.grouping)
		}
	}
}

// TestOperationsListsAlerts keeps docs/operations.md and the chart's PrometheusRule, the
// source of truth for the alerts, in step: the page's table of alerts names exactly the
// chart's.
func TestOperationsListsAlerts(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Alerts\n")
	if !ok {
		t.Fatal("docs/operations.md has no section ## Alerts")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(CustomerLoop[A-Za-z]+)` \\|").FindAllStringSubmatch(section, -1) {
		documented = append(documented, m[1])
	}
	var chart []string
	for _, r := range alertRules(t, helmTemplate(t, nil, "--set", "prometheusRule.enabled=true")) {
		chart = append(chart, r.name)
	}
	sort.Strings(documented)
	sort.Strings(chart)
	if !slices.Equal(documented, chart) {
		t.Errorf("docs/operations.md's alerts table lists %v; the chart's PrometheusRule has %v", documented, chart)
	}
}

type alertRule struct {
	name, expr  string
	annotations map[string]string
}

// alertRules are the alerting rules of the one PrometheusRule in a rendering.
func alertRules(t *testing.T, rendered []byte) []alertRule {
	t.Helper()
	pr := onlyOfKind(t, decode(t, rendered), "PrometheusRule")
	groups, _, err := unstructured.NestedSlice(pr.Object, "spec", "groups")
	if err != nil || len(groups) == 0 {
		t.Fatalf("the PrometheusRule has no groups: %v", err)
	}
	var rules []alertRule
	for _, g := range groups {
		rs, _, err := unstructured.NestedSlice(g.(map[string]any), "rules")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			m := r.(map[string]any)
			name, _, _ := unstructured.NestedString(m, "alert")
			expr, _, _ := unstructured.NestedString(m, "expr")
			ann, _, _ := unstructured.NestedStringMap(m, "annotations")
			if name == "" || expr == "" {
				t.Fatalf("a rule without alert or expr: %v", m)
			}
			rules = append(rules, alertRule{name: name, expr: expr, annotations: ann})
		}
	}
	return rules
}

// exportedSeries are the series names the code exports, each with its label names: the
// workers' metrics as pipeline.NewMetrics registers them and the manager's loop metrics,
// gathered from a fresh registry after giving every vector one child.
func exportedSeries(t *testing.T) map[string]map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	collectors := ingest.NewMetrics(reg).Collectors()
	for _, c := range controllers.MetricCollectors() {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
		collectors = append(collectors, c)
	}
	for _, c := range collectors {
		instantiate(t, c)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(families) != len(collectors) {
		t.Fatalf("gathered %d metric families from %d collectors", len(families), len(collectors))
	}
	series := map[string]map[string]bool{}
	for _, f := range families {
		labels := map[string]bool{}
		for _, lp := range f.GetMetric()[0].GetLabel() {
			labels[lp.GetName()] = true
		}
		with := func(extra string) map[string]bool {
			m := map[string]bool{extra: true}
			for l := range labels {
				m[l] = true
			}
			return m
		}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			series[f.GetName()+"_bucket"] = with("le")
			series[f.GetName()+"_count"] = labels
			series[f.GetName()+"_sum"] = labels
		case dto.MetricType_SUMMARY:
			series[f.GetName()] = with("quantile")
			series[f.GetName()+"_count"] = labels
			series[f.GetName()+"_sum"] = labels
		default:
			series[f.GetName()] = labels
		}
	}
	return series
}

// instantiate gives a metric vector one child, so that Gather reports it with its label
// names. The number of labels is found by trying: the vectors do not say it.
func instantiate(t *testing.T, c prometheus.Collector) {
	t.Helper()
	try := func(values []string) error {
		switch v := c.(type) {
		case *prometheus.CounterVec:
			_, err := v.GetMetricWithLabelValues(values...)
			return err
		case *prometheus.GaugeVec:
			_, err := v.GetMetricWithLabelValues(values...)
			return err
		case *prometheus.HistogramVec:
			_, err := v.GetMetricWithLabelValues(values...)
			return err
		case *prometheus.SummaryVec:
			_, err := v.GetMetricWithLabelValues(values...)
			return err
		}
		t.Fatalf("%T is not a metric vector this test knows how to instantiate", c)
		return nil
	}
	var values []string
	for n := 0; n <= 16; n++ {
		if try(values) == nil {
			return
		}
		values = append(values, fmt.Sprintf("v%d", n))
	}
	t.Fatalf("%T takes none of 0 to 16 label values", c)
}

// checkAlert returns what is wrong with an alert's expression and annotations against
// the exported series.
func checkAlert(series map[string]map[string]bool, r alertRule) []error {
	var errs []error
	q, err := promSelectors(r.expr)
	if err != nil {
		return []error{fmt.Errorf("%s: %w", r.name, err)}
	}
	if len(q.selectors) == 0 {
		errs = append(errs, fmt.Errorf("%s: the expression selects no metric", r.name))
	}
	selected := map[string]bool{}
	for _, s := range q.selectors {
		labels, ok := series[s.name]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %s is not exported by the code", r.name, s.name))
			continue
		}
		for l := range labels {
			selected[l] = true
		}
		for _, l := range s.labels {
			if !labels[l] {
				errs = append(errs, fmt.Errorf("%s: %s has no label %q (it has %v)", r.name, s.name, l, keys(labels)))
			}
		}
	}
	for _, g := range q.grouping {
		for _, l := range g.labels {
			if !selected[l] {
				errs = append(errs, fmt.Errorf("%s: %s (%s) names label %q, which no selected metric has", r.name, g.keyword, strings.Join(g.labels, ", "), l))
			}
		}
	}
	// What an aggregation by (...) keeps is all that reaches the alert.
	for key, text := range r.annotations {
		for _, m := range annotationLabelRe.FindAllStringSubmatch(text, -1) {
			l := m[1]
			ok := selected[l]
			for _, g := range q.grouping {
				if g.keyword == "by" && !slices.Contains(g.labels, l) {
					ok = false
				}
			}
			if !ok {
				errs = append(errs, fmt.Errorf("%s: annotation %s prints $labels.%s, which the expression does not keep", r.name, key, l))
			}
		}
	}
	return errs
}

var annotationLabelRe = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// A selector is a metric name and the labels its matchers name.
type selector struct {
	name   string
	labels []string
}

// A grouping is a by, without, on, ignoring, group_left or group_right label list.
type grouping struct {
	keyword string
	labels  []string
}

type promQuery struct {
	selectors []selector
	grouping  []grouping
}

var (
	groupingKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
	// Words that are never a metric name where they stand: aggregation operators (which
	// may be followed by "by (...)" instead of their argument), binary operators and
	// modifiers, and number literals.
	promKeywords = map[string]bool{
		"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
		"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
		"limitk": true, "limit_ratio": true,
		"and": true, "or": true, "unless": true, "atan2": true, "bool": true, "offset": true,
		"inf": true, "nan": true,
	}
)

// promSelectors extracts the metric selectors and label lists of a PromQL expression
// with a small lexer: enough for alert expressions, strict about what it does not
// understand.
func promSelectors(expr string) (promQuery, error) {
	var q promQuery
	src := []rune(expr)
	i := 0
	skipSpace := func() {
		for i < len(src) {
			switch {
			case src[i] == ' ' || src[i] == '\t' || src[i] == '\n' || src[i] == '\r':
				i++
			case src[i] == '#':
				for i < len(src) && src[i] != '\n' {
					i++
				}
			default:
				return
			}
		}
	}
	isIdentStart := func(r rune) bool { return r == '_' || r == ':' || (r|0x20 >= 'a' && r|0x20 <= 'z') }
	isIdent := func(r rune) bool { return isIdentStart(r) || (r >= '0' && r <= '9') }
	ident := func() string {
		start := i
		for i < len(src) && isIdent(src[i]) {
			i++
		}
		return string(src[start:i])
	}
	str := func() (string, error) {
		quote := src[i]
		i++
		var b strings.Builder
		for i < len(src) {
			switch {
			case src[i] == quote:
				i++
				return b.String(), nil
			case src[i] == '\\' && quote != '`' && i+1 < len(src):
				b.WriteRune(src[i+1])
				i += 2
			default:
				b.WriteRune(src[i])
				i++
			}
		}
		return "", fmt.Errorf("unterminated string in %q", expr)
	}
	matchers := func() (name string, labels []string, err error) {
		i++ // {
		for {
			skipSpace()
			if i >= len(src) {
				return "", nil, fmt.Errorf("unterminated selector in %q", expr)
			}
			if src[i] == '}' {
				i++
				return name, labels, nil
			}
			if !isIdentStart(src[i]) {
				return "", nil, fmt.Errorf("a matcher must start with a label name at %q", string(src[i:]))
			}
			label := ident()
			skipSpace()
			op := ""
			for _, o := range []string{"=~", "!~", "!=", "="} {
				if strings.HasPrefix(string(src[i:]), o) {
					op = o
					break
				}
			}
			if op == "" {
				return "", nil, fmt.Errorf("label matcher %q has no operator in %q", label, expr)
			}
			i += len(op)
			skipSpace()
			if i >= len(src) || (src[i] != '"' && src[i] != '\'' && src[i] != '`') {
				return "", nil, fmt.Errorf("label matcher %q has no quoted value in %q", label, expr)
			}
			value, err := str()
			if err != nil {
				return "", nil, err
			}
			if label == "__name__" && op == "=" {
				name = value
			} else {
				labels = append(labels, label)
			}
			skipSpace()
			if i < len(src) && src[i] == ',' {
				i++
			} else if i < len(src) && src[i] != '}' {
				return "", nil, fmt.Errorf("expected , or } after a matcher at %q", string(src[i:]))
			}
		}
	}
	labelList := func(keyword string) error {
		i++ // (
		g := grouping{keyword: keyword}
		for {
			skipSpace()
			if i < len(src) && src[i] == ')' && len(g.labels) == 0 {
				i++
				break
			}
			if i >= len(src) || !isIdentStart(src[i]) {
				return fmt.Errorf("malformed label list after %s in %q", keyword, expr)
			}
			g.labels = append(g.labels, ident())
			skipSpace()
			if i < len(src) && src[i] == ')' {
				i++
				break
			}
			if i >= len(src) || src[i] != ',' {
				return fmt.Errorf("malformed label list after %s in %q", keyword, expr)
			}
			i++
		}
		q.grouping = append(q.grouping, g)
		return nil
	}

	for {
		skipSpace()
		if i >= len(src) {
			return q, nil
		}
		r := src[i]
		switch {
		case r == '"' || r == '\'' || r == '`':
			if _, err := str(); err != nil {
				return q, err
			}
		case r == '[': // a range or subquery: durations only
			end := strings.IndexRune(string(src[i:]), ']')
			if end < 0 {
				return q, fmt.Errorf("unterminated range in %q", expr)
			}
			i += len([]rune(string(src[i:])[:end])) + 1
		case r >= '0' && r <= '9' || r == '.':
			// A number or a duration (5m, 1e-3, 0x1f).
			for i < len(src) && (isIdent(src[i]) || src[i] == '.' ||
				((src[i] == '-' || src[i] == '+') && (src[i-1] == 'e' || src[i-1] == 'E'))) {
				i++
			}
		case r == '{':
			name, labels, err := matchers()
			if err != nil {
				return q, err
			}
			if name == "" {
				return q, fmt.Errorf("a selector with no metric name in %q", expr)
			}
			q.selectors = append(q.selectors, selector{name: name, labels: labels})
		case isIdentStart(r):
			word := ident()
			lower := strings.ToLower(word)
			skipSpace()
			next := rune(0)
			if i < len(src) {
				next = src[i]
			}
			switch {
			case groupingKeywords[lower] && next == '(':
				if err := labelList(lower); err != nil {
					return q, err
				}
			case groupingKeywords[lower]: // group_left without a list
			case promKeywords[lower] || next == '(': // an operator or a function
			default:
				s := selector{name: word}
				if next == '{' {
					name, labels, err := matchers()
					if err != nil {
						return q, err
					}
					if name != "" {
						return q, fmt.Errorf("%s is named twice in %q", word, expr)
					}
					s.labels = labels
				}
				q.selectors = append(q.selectors, s)
			}
		default: // operators, parentheses, commas, @
			i++
		}
	}
}
