package docs

import (
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline/ingest"
)

var (
	fqNameRe       = regexp.MustCompile(`fqName: "([^"]+)"`)
	gaugeNameRe    = regexp.MustCompile(`Name:\s+"(customerloop_[a-z_]+)"`)
	docMetricRe    = regexp.MustCompile("`(customerloop_[a-z_]+)`")
	docConditionRe = regexp.MustCompile("(?m)^\\| (?:SchemaReady|WorkersReady|Stalled|Ready|Reconciling) \\| (?:True|False) \\| ([^|]+) \\|")
	backtickedRe   = regexp.MustCompile("`([A-Za-z]+)`")
	promQLMetricRe = regexp.MustCompile(`\b(customerloop_[a-z_]+)\{`)
)

// codeMetrics are the metric names the workers (pipeline.NewMetrics) and the manager
// (controllers/metrics.go) export.
func codeMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	m := ingest.NewMetrics(nil)
	ch := make(chan *prometheus.Desc, 64)
	for _, c := range m.Collectors() {
		c.Describe(ch)
	}
	close(ch)
	for d := range ch {
		if sm := fqNameRe.FindStringSubmatch(d.String()); sm != nil {
			names[sm[1]] = true
		}
	}
	// The manager's gauges are unexported; their names are in the source.
	for _, sm := range gaugeNameRe.FindAllStringSubmatch(readFile(t, filepath.Join(repoRoot(t), "controllers", "metrics.go")), -1) {
		names[sm[1]] = true
	}
	if len(names) < 12 {
		t.Fatalf("found %d metrics in the code; the way they are declared changed", len(names))
	}
	return names
}

// docs/operations.md's Metrics section names every metric the code exports, and no other.
func TestOperationsMetrics(t *testing.T) {
	doc := readFile(t, filepath.Join(repoRoot(t), "docs", "operations.md"))
	_, doc, _ = strings.Cut(doc, "\n## Metrics\n")
	doc, _, _ = strings.Cut(doc, "\n## ")
	if doc == "" {
		t.Fatal("docs/operations.md has no section ## Metrics")
	}
	code := codeMetrics(t)
	documented := map[string]bool{}
	for _, sm := range docMetricRe.FindAllStringSubmatch(doc, -1) {
		documented[sm[1]] = true
	}
	// PromQL examples name metrics without backticks.
	for _, sm := range promQLMetricRe.FindAllStringSubmatch(doc, -1) {
		documented[sm[1]] = true
	}
	for n := range code {
		if !documented[n] {
			t.Errorf("docs/operations.md does not document the metric %s", n)
		}
	}
	for n := range documented {
		if !code[n] {
			t.Errorf("docs/operations.md documents %s, which the code does not export", n)
		}
	}
}

// The conditions table of docs/operations.md uses exactly the reasons the controller sets.
func TestOperationsConditionReasons(t *testing.T) {
	doc := readFile(t, filepath.Join(repoRoot(t), "docs", "operations.md"))
	code := map[string]bool{}
	for _, r := range controllers.ConditionReasons {
		code[r] = true
	}
	documented := map[string]bool{}
	for _, sm := range docConditionRe.FindAllStringSubmatch(doc, -1) {
		for _, b := range backtickedRe.FindAllStringSubmatch(sm[1], -1) {
			documented[b[1]] = true
		}
	}
	var missing, unknown []string
	for r := range code {
		if !documented[r] {
			missing = append(missing, r)
		}
	}
	for r := range documented {
		if !code[r] {
			unknown = append(unknown, r)
		}
	}
	sort.Strings(missing)
	sort.Strings(unknown)
	if len(missing) > 0 || len(unknown) > 0 {
		t.Errorf("docs/operations.md's conditions table: reasons not documented: %s; documented but never set: %s",
			strings.Join(missing, ", "), strings.Join(unknown, ", "))
	}
}
