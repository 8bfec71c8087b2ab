package feedback

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// statementSchemaPath is the statement's JSON Schema, from this package's directory.
var statementSchemaPath = filepath.Join("..", "..", "docs", "schemas", "statement.schema.json")

// loadStatementSchema reads the statement's JSON Schema, numbers kept as json.Number.
func loadStatementSchema(t *testing.T) map[string]any { return loadSchema(t, statementSchemaPath) }

// loadSchema reads a JSON Schema of docs/schemas.
func loadSchema(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := decodeJSON(t, b).(map[string]any)
	if !ok || s["$schema"] != "https://json-schema.org/draft/2020-12/schema" || s["type"] != "object" {
		t.Fatalf("%s: want a draft 2020-12 schema of an object", path)
	}
	return s
}

func decodeJSON(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// validateSchema checks v (decoded with json.Number) against a node of the schema whose
// root is root, and returns what fails, each at its JSON pointer. It knows the keywords
// the statement's schema uses, and reports any other keyword as a failure rather than
// ignore it.
func validateSchema(root, node map[string]any, v any, at string) []string {
	var errs []string
	fail := func(f string, a ...any) { errs = append(errs, at+": "+fmt.Sprintf(f, a...)) }
	obj, isObj := v.(map[string]any)
	for k, kw := range node {
		switch k {
		case "$schema", "title", "description", "$defs":
		case "$ref":
			name, ok := strings.CutPrefix(kw.(string), "#/$defs/")
			defs, _ := root["$defs"].(map[string]any)
			def, _ := defs[name].(map[string]any)
			if !ok || def == nil {
				fail("unresolved $ref %v", kw)
				continue
			}
			errs = append(errs, validateSchema(root, def, v, at)...)
		case "type":
			types, ok := kw.([]any)
			if !ok {
				types = []any{kw}
			}
			if !slices.ContainsFunc(types, func(ty any) bool { return hasJSONType(v, ty.(string)) }) {
				fail("%v is not of type %v", v, kw)
			}
		case "const":
			if !reflect.DeepEqual(v, kw) {
				fail("%v is not %v", v, kw)
			}
		case "enum":
			if !slices.ContainsFunc(kw.([]any), func(e any) bool { return reflect.DeepEqual(v, e) }) {
				fail("%v is none of %v", v, kw)
			}
		case "required":
			for _, r := range kw.([]any) {
				if _, ok := obj[r.(string)]; isObj && !ok {
					fail("%s is missing", r)
				}
			}
		case "properties":
			for name, sub := range kw.(map[string]any) {
				if x, ok := obj[name]; isObj && ok {
					errs = append(errs, validateSchema(root, sub.(map[string]any), x, at+"/"+name)...)
				}
			}
		case "additionalProperties":
			if kw != false {
				fail("additionalProperties %v is not supported by this check", kw)
				continue
			}
			props, _ := node["properties"].(map[string]any)
			for name := range obj {
				if _, ok := props[name]; !ok {
					fail("property %q is not in the schema", name)
				}
			}
		case "items":
			arr, _ := v.([]any)
			for i, x := range arr {
				errs = append(errs, validateSchema(root, kw.(map[string]any), x, fmt.Sprintf("%s/%d", at, i))...)
			}
		case "minimum":
			if n, ok := v.(json.Number); ok {
				f, _ := n.Float64()
				if m, _ := kw.(json.Number).Float64(); f < m {
					fail("%v is below %v", v, kw)
				}
			}
		case "minLength":
			if s, ok := v.(string); ok {
				if m, _ := kw.(json.Number).Int64(); int64(utf8.RuneCountInString(s)) < m {
					fail("%q is shorter than %v", s, kw)
				}
			}
		case "pattern":
			if s, ok := v.(string); ok && !regexp.MustCompile(kw.(string)).MatchString(s) {
				fail("%q does not match %v", s, kw)
			}
		case "format":
			s, ok := v.(string)
			if !ok {
				continue
			}
			layout := map[string]string{"date": time.DateOnly, "date-time": time.RFC3339Nano}[kw.(string)]
			if layout == "" {
				fail("format %v is not supported by this check", kw)
			} else if _, err := time.Parse(layout, s); err != nil {
				fail("%q is no %v: %v", s, kw, err)
			}
		default:
			fail("schema keyword %q is not supported by this check", k)
		}
	}
	sort.Strings(errs)
	return errs
}

func hasJSONType(v any, ty string) bool {
	switch ty {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "null":
		return v == nil
	case "number":
		_, ok := v.(json.Number)
		return ok
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			return false
		}
		_, err := n.Int64()
		return err == nil
	}
	return false
}

// handStatement is a statement of customer acme, monthly, on 2026-05-10, whose figures
// are worked out by hand in TestStatementBuild.
func handStatement(t *testing.T) *Statement {
	t.Helper()
	day := func(m int) time.Time { return time.Date(2026, time.Month(m), 1, 0, 0, 0, 0, time.UTC) }
	f := func(x float64) *float64 { return &x }
	rows := []GapRow{
		{Customer: "acme", Product: "b", Period: day(4), PlannedLatest: f(55), PlannedAtStart: f(50), Versions: 2, Actual: 60, Gap: f(5), GapRatio: f(5.0 / 55)},
		{Customer: "acme", Product: "b", Period: day(3), PlannedLatest: f(100), PlannedAtStart: f(100), Versions: 1, Actual: 80, Gap: f(-20), GapRatio: f(-0.2)},
		{Customer: "acme", Product: "b", Period: day(5), PlannedLatest: f(40), Versions: 1, Actual: 10, Gap: f(-30), GapRatio: f(-0.75), Projected: f(10 * 31 / 9.5), ProjectedGap: f(10*31/9.5 - 40)},
		{Customer: "acme", Product: "b", Period: day(6), PlannedLatest: f(70), PlannedAtStart: f(70), Versions: 1, Actual: 0, Gap: f(-70), GapRatio: f(-1)},
		{Customer: "acme", Product: "a", Period: day(4), Actual: 5},
	}
	points := map[time.Time][]point{
		day(3): {{customer: "acme", product: "b", horizon: 1, p: 100}},
		day(4): {{customer: "acme", product: "b", horizon: 1, p: 50}, {customer: "acme", product: "b", horizon: 0, p: 55}},
	}
	s, err := buildStatement(pipeline.GrainMonth, "default/acme", "acme", time.Date(2026, 5, 10, 12, 0, 0, 0, time.UTC), rows, points)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStatementBuild puts a statement together from rows and points whose figures are
// worked out by hand: products by name, periods oldest first, a period not begun without
// actual or gap, accuracy and FVA per horizon with the naive forecast of the period
// before (0 before the first usage); and a row of another customer is refused.
func TestStatementBuild(t *testing.T) {
	s := handStatement(t)
	if s.Schema != StatementSchema || s.Customer != "acme" || s.Loop != "default/acme" || s.Granularity != pipeline.GrainMonth ||
		s.Period.Format(time.DateOnly) != "2026-05-01" || s.Version != 0 || s.Consent.State != "" {
		t.Errorf("header %+v", s)
	}
	if len(s.Products) != 2 || s.Products[0].Product != "a" || s.Products[1].Product != "b" {
		t.Fatalf("products %+v", s.Products)
	}
	if a := s.Products[0]; len(a.Periods) != 1 || a.Accuracy == nil || len(a.Accuracy) != 0 || *a.Periods[0].Actual != 5 || a.Periods[0].Gap != nil {
		t.Errorf("product a %+v", a)
	}
	b := s.Products[1]
	var order []string
	for _, p := range b.Periods {
		order = append(order, p.Period.Format("01"))
	}
	if strings.Join(order, ",") != "03,04,05,06" {
		t.Errorf("b's periods in order %v", order)
	}
	if p := b.Periods[3]; p.Actual != nil || p.Gap != nil || p.GapRatio != nil || !eqPtr(p.PlannedLatest, ptrTo(70)) {
		t.Errorf("a period not begun: actual %v gap %v ratio %v planned %v", nullable64(p.Actual), nullable64(p.Gap), nullable64(p.GapRatio), nullable64(p.PlannedLatest))
	}
	if p := b.Periods[2]; !eqPtr(p.Actual, ptrTo(10)) || !eqPtr(p.Projected, ptrTo(10*31/9.5)) || !eqPtr(p.ProjectedGap, ptrTo(10*31/9.5-40)) {
		t.Errorf("the period under way %+v", p)
	}
	// Horizon 0: April, plan 55, actual 60, naive 80 (March). Horizon 1: March plan 100,
	// actual 80, naive 0 (no usage in February); April plan 50, actual 60, naive 80.
	want := []StatementAccuracy{
		{Horizon: 0, N: 1, Planned: 55, Actual: 60, Bias: ptrTo(-5.0 / 60), WAPE: ptrTo(5.0 / 60), NaiveWAPE: ptrTo(20.0 / 60), FVA: ptrTo(15.0 / 60), BeatsNaive: true},
		{Horizon: 1, N: 2, Planned: 150, Actual: 140, Bias: ptrTo(10.0 / 140), WAPE: ptrTo(30.0 / 140), NaiveWAPE: ptrTo(100.0 / 140), FVA: ptrTo(70.0 / 140), BeatsNaive: true},
	}
	if len(b.Accuracy) != len(want) {
		t.Fatalf("b's accuracy %+v", b.Accuracy)
	}
	for i, w := range want {
		checkStatementAccuracyRow(t, "b", b.Accuracy[i], w)
	}
	other := []GapRow{{Customer: "acme", Product: "a", Period: s.Period.Time}, {Customer: "acmf", Product: "a", Period: s.Period.Time}}
	if _, err := buildStatement(pipeline.GrainMonth, "l", "acme", time.Now(), other, nil); err == nil {
		t.Error("a row of another customer was put in a statement")
	}
	if _, err := buildStatement(pipeline.GrainMonth, "l", "acme", time.Now(), nil, map[time.Time][]point{s.Period.Time: {{customer: "acmf"}}}); err == nil {
		t.Error("a plan of another customer was put in a statement")
	}
	if _, err := ReadStatement(context.Background(), nil, pipeline.FeedbackConfig{Grain: pipeline.GrainMonth}, "l", "", time.Now()); err == nil {
		t.Error("a statement without a customer id was read")
	}
}

func checkStatementAccuracyRow(t *testing.T, product string, got, want StatementAccuracy) {
	t.Helper()
	if got.Horizon != want.Horizon || got.N != want.N || !near(got.Planned, want.Planned) || !near(got.Actual, want.Actual) ||
		!eqPtr(got.Bias, want.Bias) || !eqPtr(got.WAPE, want.WAPE) || !eqPtr(got.NaiveWAPE, want.NaiveWAPE) || !eqPtr(got.FVA, want.FVA) ||
		got.BeatsNaive != want.BeatsNaive {
		t.Errorf("%s horizon %d: n %d planned %v actual %v bias %v wape %v naive %v fva %v beats %t; want n %d planned %v actual %v bias %v wape %v naive %v fva %v beats %t",
			product, got.Horizon, got.N, got.Planned, got.Actual, nullable64(got.Bias), nullable64(got.WAPE), nullable64(got.NaiveWAPE), nullable64(got.FVA), got.BeatsNaive,
			want.N, want.Planned, want.Actual, nullable64(want.Bias), nullable64(want.WAPE), nullable64(want.NaiveWAPE), nullable64(want.FVA), want.BeatsNaive)
	}
}

// TestStatementSchema validates a statement with every kind of value (nulls, a period
// not begun, the period under way, an empty accuracy) against
// docs/schemas/statement.schema.json, and checks the schema refuses what a statement
// never is, so that the check can fail.
func TestStatementSchema(t *testing.T) {
	schema := loadStatementSchema(t)
	s := handStatement(t)
	s.Consent.State = "grant"
	s.DeadLetters = StatementDeadLettersOf([]DeadLetterSummary{
		{Period: Date{time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)}, Reason: "missing_field", Count: 1, First: []DeadLetterSource{{"u", 0, 20}}},
		{Period: Date{time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)}, Reason: "wrong_type", Count: 7, First: []DeadLetterSource{{"u", 1, 0}, {"u", 0, 3}}},
	})
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if errs := validateSchema(schema, schema, decodeJSON(t, b), ""); len(errs) > 0 {
		t.Errorf("a statement does not meet its schema:\n%s\n%s", strings.Join(errs, "\n"), b)
	}
	empty, _ := json.Marshal(&Statement{Schema: StatementSchema, Kind: KindStatement, Customer: "x", Granularity: pipeline.GrainWeek, Products: []StatementProduct{},
		DeadLetters: []StatementDeadLetters{}})
	if errs := validateSchema(schema, schema, decodeJSON(t, empty), ""); len(errs) > 0 {
		t.Errorf("an empty statement does not meet its schema:\n%s\n%s", strings.Join(errs, "\n"), empty)
	}
	for _, c := range []struct{ name, from, to string }{
		{"no customer", `"customer":"acme",`, ``},
		{"another schema", `"schema":1`, `"schema":2`},
		{"a field not described", `"versions":2`, `"versions":2,"customer":"other"`},
		{"a text actual", `"actual":60`, `"actual":"60"`},
		{"a day grain", `"granularity":"Month"`, `"granularity":"Day"`},
		{"a negative horizon", `"horizon":0`, `"horizon":-1`},
		{"a fractional count", `"n":2`, `"n":2.5`},
		{"a time as period", `"period":"2026-04-01"`, `"period":"2026-04-01T00:00:00Z"`},
		{"null products", `"products":[`, `"products":null,"x":[`},
		{"null dead letters", `"deadLetters":[`, `"deadLetters":null,"x":[`},
		{"a dead letter without a reason", `"reason":"missing_field",`, ``},
		{"a negative offset", `"offset":20`, `"offset":-20`},
		{"a text partition", `"partition":1`, `"partition":"1"`},
		{"an empty reason", `"reason":"wrong_type"`, `"reason":""`},
	} {
		broken := strings.Replace(string(b), c.from, c.to, 1)
		if broken == string(b) {
			t.Errorf("%s: %s is not in the statement", c.name, c.from)
			continue
		}
		if errs := validateSchema(schema, schema, decodeJSON(t, []byte(broken)), ""); len(errs) == 0 {
			t.Errorf("the schema accepts %s", c.name)
		}
	}
}

// TestStatementAgainstViews loads generated data into the real ClickHouse, weekly and
// monthly, and compares the statement of every customer, and of one the loop never
// heard of, row by row with feedback_gaps filtered by customer and with the customer's
// accuracy and FVA computed here from the generated plans and usage; the edge
// customers' figures are also worked out by hand. Every statement meets the JSON Schema
// and names no other customer.
func TestStatementAgainstViews(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	schema := loadStatementSchema(t)
	for _, g := range []pipeline.Grain{pipeline.GrainMonth, pipeline.GrainWeek} {
		t.Run(string(g), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_statement"))
			cfg.ClickHouse.Addr, fc.Grain = chAddr, g
			cfg.ClickHouse.Username, cfg.ClickHouse.Password = os.Getenv("CLICKHOUSE_USER"), os.Getenv("CLICKHOUSE_PASSWORD")
			ch := ddltest.ApplyFeedback(t, cfg, fc)
			data := generateFigData(g, time.Now().UTC().Truncate(time.Second), 31)
			data.insert(t, ctx, ch, cfg)
			seen := map[string]bool{}
			for _, v := range data.plans {
				seen[v.customer] = true
			}
			for _, e := range data.usage {
				seen[e.customer] = true
			}
			var customers []string
			for c := range seen {
				customers = append(customers, c)
			}
			sort.Strings(customers)
			statements := map[string]*Statement{}
			var took []time.Duration
			for _, c := range append(customers, "nobody") {
				now := time.Now().UTC()
				start := time.Now()
				s, err := ReadStatement(ctx, ch, fc, "test/statement", c, now)
				took = append(took, time.Since(start))
				if err != nil {
					t.Fatalf("%s: %v", c, err)
				}
				statements[c] = s
				if s.Schema != StatementSchema || s.Customer != c || s.Granularity != g || !s.Period.Equal(data.period(0)) || s.Loop != "test/statement" {
					t.Errorf("%s: header schema %d customer %q grain %s period %v loop %q", c, s.Schema, s.Customer, s.Granularity, s.Period, s.Loop)
				}
				checkStatementGaps(t, ctx, ch, fc.Database, data, s, now)
				checkStatementAccuracy(t, s, data.expectedValueAddedOf(c))
				checkStatementJSON(t, schema, s, customers)
			}
			if s := statements["nobody"]; len(s.Products) != 0 {
				t.Errorf("an unknown customer's statement has products: %+v", s.Products)
			}
			checkStatementEdges(t, statements)
			sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
			t.Logf("%d statements read: median %v, slowest %v", len(took), took[len(took)/2], took[len(took)-1])
		})
	}
}

// checkStatementGaps compares a statement's periods with the customer's rows of
// feedback_gaps, read from the view itself, and its actuals with the generated usage.
func checkStatementGaps(t *testing.T, ctx context.Context, ch driver.Conn, db string, data *figData, s *Statement, now time.Time) {
	t.Helper()
	want, err := queryGapRows(ctx, ch, db, gapRowsSelect+pipeline.QualifiedTable(db, pipeline.ViewGaps)+" WHERE customer_id = ? ORDER BY product, period", s.Customer)
	if err != nil {
		t.Fatal(err)
	}
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	// The run rate moves with the server's clock between the two reads: by up to a few
	// seconds' worth of the time elapsed in the period.
	elapsed := math.Max(now.Sub(data.period(0)).Seconds(), 1)
	projectedNear := func(a, b *float64) bool {
		if a == nil || b == nil {
			return a == nil && b == nil
		}
		return math.Abs(*a-*b) <= 1e-9+math.Abs(*b)*5/elapsed
	}
	i := 0
	for _, p := range s.Products {
		for _, sp := range p.Periods {
			if i >= len(want) {
				t.Errorf("%s %s %s: not in feedback_gaps", s.Customer, p.Product, sp.Period.Format(time.DateOnly))
				continue
			}
			w := want[i]
			i++
			at := fmt.Sprintf("%s %s %s", s.Customer, p.Product, sp.Period.Format(time.DateOnly))
			if w.Product != p.Product || !w.Period.Equal(sp.Period.Time) {
				t.Errorf("%s: feedback_gaps has %s %s there", at, w.Product, w.Period.Format(time.DateOnly))
				continue
			}
			begun := !w.Period.After(today)
			wantActual, wantGap, wantRatio := &w.Actual, w.Gap, w.GapRatio
			if !begun {
				wantActual, wantGap, wantRatio = nil, nil, nil
			}
			if !eqPtr(sp.PlannedLatest, w.PlannedLatest) || !eqPtr(sp.PlannedAtStart, w.PlannedAtStart) || sp.Versions != w.Versions ||
				!eqPtr(sp.Actual, wantActual) || !eqPtr(sp.Gap, wantGap) || !eqPtr(sp.GapRatio, wantRatio) ||
				!projectedNear(sp.Projected, w.Projected) || !projectedNear(sp.ProjectedGap, w.ProjectedGap) {
				t.Errorf("%s: planned %v at start %v versions %d actual %v gap %v ratio %v projected %v gap %v;\nfeedback_gaps: %v %v %d %v %v %v %v %v (begun %t)", at,
					nullable64(sp.PlannedLatest), nullable64(sp.PlannedAtStart), sp.Versions, nullable64(sp.Actual), nullable64(sp.Gap), nullable64(sp.GapRatio),
					nullable64(sp.Projected), nullable64(sp.ProjectedGap), nullable64(w.PlannedLatest), nullable64(w.PlannedAtStart), w.Versions,
					w.Actual, nullable64(w.Gap), nullable64(w.GapRatio), nullable64(w.Projected), nullable64(w.ProjectedGap), begun)
			}
			if begun && !near(*sp.Actual, data.actual[gapKey{s.Customer, p.Product, sp.Period.Time}]) {
				t.Errorf("%s: actual %v, the generated usage sums to %v", at, *sp.Actual, data.actual[gapKey{s.Customer, p.Product, sp.Period.Time}])
			}
		}
	}
	if i != len(want) {
		t.Errorf("%s: the statement has %d periods, feedback_gaps %d rows", s.Customer, i, len(want))
	}
}

// checkStatementAccuracy compares a statement's accuracy with the customer's points
// computed from the generated data.
func checkStatementAccuracy(t *testing.T, s *Statement, want map[fvaKey]*fvaRow) {
	t.Helper()
	rows := 0
	for _, p := range s.Products {
		for i, a := range p.Accuracy {
			rows++
			if i > 0 && a.Horizon <= p.Accuracy[i-1].Horizon {
				t.Errorf("%s %s: horizons out of order", s.Customer, p.Product)
			}
			w := want[fvaKey{p.Product, int(a.Horizon)}]
			if w == nil {
				t.Errorf("%s %s: unexpected horizon %d", s.Customer, p.Product, a.Horizon)
				continue
			}
			e := StatementAccuracy{Horizon: a.Horizon, N: w.n, WAPE: w.wape, NaiveWAPE: w.naiveWAPE, FVA: w.fva, BeatsNaive: w.beats}
			for j := range w.plans {
				e.Planned += w.plans[j]
				e.Actual += w.actuals[j]
			}
			if e.Actual > 0 {
				e.Bias = ptrTo((e.Planned - e.Actual) / e.Actual)
			}
			checkStatementAccuracyRow(t, s.Customer+" "+p.Product, a, e)
		}
	}
	if rows != len(want) {
		t.Errorf("%s: %d accuracy rows, the generated data makes %d", s.Customer, rows, len(want))
	}
}

// checkStatementJSON requires a statement's JSON to meet the schema, to name its own
// customer wherever a customer is named, and no other customer anywhere.
func checkStatementJSON(t *testing.T, schema map[string]any, s *Statement, customers []string) {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	v := decodeJSON(t, b)
	if errs := validateSchema(schema, schema, v, ""); len(errs) > 0 {
		t.Errorf("%s: the statement does not meet its schema:\n%s", s.Customer, strings.Join(errs, "\n"))
	}
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if k == "customer" && e != s.Customer {
					t.Errorf("%s: %s/customer is %v", s.Customer, at, e)
				}
				walk(e, at+"/"+k)
			}
		case []any:
			for i, e := range x {
				walk(e, fmt.Sprintf("%s/%d", at, i))
			}
		case string:
			if x != s.Customer && slices.Contains(customers, x) {
				t.Errorf("%s: %s names customer %s", s.Customer, at, x)
			}
		}
	}
	walk(v, "")
	if len(s.Products) == 0 && !bytes.Contains(b, []byte(`"products":[]`)) {
		t.Errorf("%s: products without any is not an empty list: %s", s.Customer, b)
	}
}

// checkStatementEdges checks the edge customers' statements against figures worked out
// by hand from generateFigData.
func checkStatementEdges(t *testing.T, statements map[string]*Statement) {
	t.Helper()
	product := func(c, name string) *StatementProduct {
		for i, p := range statements[c].Products {
			if p.Product == name {
				return &statements[c].Products[i]
			}
		}
		t.Errorf("%s has no product %s", c, name)
		return &StatementProduct{}
	}
	// zero plans 30 for ghost at horizon 1 in four periods and never uses it: no WAPE.
	ghost := product("zero", "ghost")
	if len(ghost.Accuracy) != 1 {
		t.Errorf("zero ghost accuracy %+v", ghost.Accuracy)
	} else {
		checkStatementAccuracyRow(t, "zero ghost", ghost.Accuracy[0], StatementAccuracy{Horizon: 1, N: 4, Planned: 120})
	}
	// zplan plans 0 (horizon 0, then 1) and uses 10 in two periods: no gap ratio.
	zp := product("zplan", "p1")
	ratios := 0
	for _, p := range zp.Periods {
		if p.PlannedLatest != nil && *p.PlannedLatest == 0 {
			ratios++
			if p.GapRatio != nil || !eqPtr(p.Gap, ptrTo(10)) {
				t.Errorf("zplan %s: gap %v ratio %v, want 10 and null", p.Period.Format(time.DateOnly), nullable64(p.Gap), nullable64(p.GapRatio))
			}
		}
	}
	if ratios != 2 || len(zp.Accuracy) != 2 {
		t.Errorf("zplan p1: %d periods planned at 0, accuracy %+v", ratios, zp.Accuracy)
	} else {
		checkStatementAccuracyRow(t, "zplan p1", zp.Accuracy[0], StatementAccuracy{Horizon: 0, N: 1, Actual: 10, Bias: ptrTo(-1), WAPE: ptrTo(1), NaiveWAPE: ptrTo(1), FVA: ptrTo(0)})
		checkStatementAccuracyRow(t, "zplan p1", zp.Accuracy[1], StatementAccuracy{Horizon: 1, N: 1, Actual: 10, Bias: ptrTo(-1), WAPE: ptrTo(1), NaiveWAPE: ptrTo(0), FVA: ptrTo(-1)})
	}
	// single plans 40 a period ahead and uses 55, after 20 the period before.
	if a := product("single", "p1").Accuracy; len(a) != 1 {
		t.Errorf("single p1 accuracy %+v", a)
	} else {
		checkStatementAccuracyRow(t, "single p1", a[0], StatementAccuracy{Horizon: 1, N: 1, Planned: 40, Actual: 55, Bias: ptrTo(-15.0 / 55),
			WAPE: ptrTo(15.0 / 55), NaiveWAPE: ptrTo(35.0 / 55), FVA: ptrTo(20.0 / 55), BeatsNaive: true})
	}
	// tie sends 90 and 10 at the same moment for three periods: 90, the greater plan id,
	// counts; it uses 50 in each, and nothing the period before the first.
	tie := product("tie", "p0")
	for _, p := range tie.Periods {
		if !eqPtr(p.PlannedLatest, ptrTo(90)) || p.Versions != 2 {
			t.Errorf("tie %s: planned %v in %d versions, want 90 in 2", p.Period.Format(time.DateOnly), nullable64(p.PlannedLatest), p.Versions)
		}
	}
	if len(tie.Accuracy) != 1 {
		t.Errorf("tie p0 accuracy %+v", tie.Accuracy)
	} else {
		checkStatementAccuracyRow(t, "tie p0", tie.Accuracy[0], StatementAccuracy{Horizon: 1, N: 3, Planned: 270, Actual: 150, Bias: ptrTo(0.8),
			WAPE: ptrTo(0.8), NaiveWAPE: ptrTo(1.0 / 3), FVA: ptrTo(1.0/3 - 0.8)})
	}
}
