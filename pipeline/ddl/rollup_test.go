package ddl

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// rollupConfig is stacktest.SampleConfig with rollups using every function, a nullable dimension,
// a nullable field and both stream kinds.
func rollupConfig() pipeline.Config {
	cfg := stacktest.SampleConfig()
	cfg.Streams[0].Dimensions[0].Nullable = true // region
	cfg.Rollups = []pipeline.RollupConfig{
		{Name: "daily_usage", Stream: "usage", Dimensions: []string{"customer_id", "product", "region"}, Granularity: pipeline.RollupDay,
			Measures: []pipeline.MeasureConfig{
				{Name: "events", Function: pipeline.FuncCount},
				{Name: "used", Function: pipeline.FuncSum, Field: "quantity"},
				{Name: "smallest", Function: pipeline.FuncMin, Field: "quantity"},
				{Name: "largest", Function: pipeline.FuncMax, Field: "quantity"},
				{Name: "customers", Function: pipeline.FuncUniq, Field: "customer_id"},
				{Name: "seats", Function: pipeline.FuncQuantiles, Field: "seats", Quantiles: []string{"0.5", "0.99"}},
			}},
		{Name: "hourly", Stream: "usage", Granularity: pipeline.RollupHour, Measures: []pipeline.MeasureConfig{{Name: "events", Function: pipeline.FuncCount}}},
		{Name: "weekly_trials", Stream: "usage", Dimensions: []string{"trial"}, Granularity: pipeline.RollupWeek,
			Measures: []pipeline.MeasureConfig{{Name: "bytes", Function: pipeline.FuncSum, Field: "bytes"}}},
		{Name: "monthly_plans", Stream: "plans", Dimensions: []string{"customer_id"}, Granularity: pipeline.RollupMonth,
			Measures: []pipeline.MeasureConfig{
				{Name: "planned", Function: pipeline.FuncSum, Field: "quantity"},
				{Name: "confidence", Function: pipeline.FuncMax, Field: "confidence"},
			}},
	}
	return cfg
}

func TestPlanRollupsGolden(t *testing.T) {
	testPlanRollupsGolden(t, rollupConfig(), "rollup.golden.sql")
}

// TestPlanRollupsModernGolden: on a server whose -State of a Nullable column keeps the
// Nullable in its type (every modern ClickHouse), the state columns of nullable fields
// say so, or the materialized view cannot write them (code 70); test/modern runs these
// statements on 26.x. Rollups without a nullable field are the same on every server.
func TestPlanRollupsModernGolden(t *testing.T) {
	cfg := rollupConfig()
	cfg.ClickHouse.Features = pipeline.ServerFeatures{NullableStates: true}
	testPlanRollupsGolden(t, cfg, "rollup.modern.golden.sql")
	old, _ := PlanRollups(rollupConfig())
	modern, _ := PlanRollups(cfg)
	for i, p := range modern {
		nullableField := p.Name == "daily_usage" || p.Name == "monthly_plans"
		if same := p.Version == old[i].Version; same == nullableField {
			t.Errorf("rollup %s: version %s on a modern server, %s on 18.16", p.Name, p.Version, old[i].Version)
		}
	}
}

// TestPlanRollupsClusterGolden: on a cluster every version is a Replicated local table
// behind a Distributed table, created and dropped ON CLUSTER; the materialized views read
// the raw local tables and write the local version tables; backfills and read views go
// through the Distributed names. The versions are those of the single server.
func TestPlanRollupsClusterGolden(t *testing.T) {
	cfg := rollupConfig()
	cfg.ClickHouse.Cluster = "analytics"
	testPlanRollupsGolden(t, cfg, "rollup.cluster.golden.sql")
	single, _ := PlanRollups(rollupConfig())
	clustered, _ := PlanRollups(cfg)
	for i, p := range clustered {
		if p.Version != single[i].Version || p.Table != single[i].Table {
			t.Errorf("rollup %s: version %s on a cluster, %s on a single server", p.Name, p.Version, single[i].Version)
		}
		if p.StateTable() != p.Table+"_local" || single[i].StateTable() != single[i].Table {
			t.Errorf("rollup %s: state tables %s (cluster), %s (single server)", p.Name, p.StateTable(), single[i].StateTable())
		}
	}
}

func testPlanRollupsGolden(t *testing.T, cfg pipeline.Config, file string) {
	t.Helper()
	plans, err := PlanRollups(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, p := range plans {
		fmt.Fprintf(&b, "-- rollup %s version %s, read view columns: %s\n", p.Name, p.Version, strings.Join(p.Columns, ", "))
		parts := []uint32(nil)
		if p.Name == "daily_usage" {
			parts = []uint32{202610, 202611} // one backfill per partition of the raw table
		}
		for _, s := range p.Rebuild(parts) {
			b.WriteString(s.SQL + ";\n\n")
		}
	}
	stacktest.Golden(t, filepath.Join("testdata", file), b.String())
}

// TestRollupVersion: the version follows the definition and its source, not the
// rollup's position in the spec.
func TestRollupVersion(t *testing.T) {
	version := func(mutate func(*pipeline.Config)) string {
		cfg := rollupConfig()
		mutate(&cfg)
		plans, err := PlanRollups(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range plans {
			if p.Name == "daily_usage" {
				return p.Version
			}
		}
		t.Fatal("no daily_usage")
		return ""
	}
	base := version(func(*pipeline.Config) {})
	if v := version(func(c *pipeline.Config) { slices.Reverse(c.Rollups) }); v != base {
		t.Errorf("reordering rollups changed the version: %s, want %s", v, base)
	}
	if v := version(func(c *pipeline.Config) {
		c.Streams[0].Dimensions = append(c.Streams[0].Dimensions, pipeline.Dimension{Name: "zone", Field: "zone", Type: "String"})
	}); v != base {
		t.Errorf("a new dimension the rollup does not use changed the version")
	}
	for name, mutate := range map[string]func(*pipeline.Config){
		"granularity": func(c *pipeline.Config) { c.Rollups[0].Granularity = pipeline.RollupMonth },
		"measure added": func(c *pipeline.Config) {
			c.Rollups[0].Measures = append(c.Rollups[0].Measures, pipeline.MeasureConfig{Name: "n", Function: pipeline.FuncCount})
		},
		"dimension gone":         func(c *pipeline.Config) { c.Rollups[0].Dimensions = c.Rollups[0].Dimensions[:2] },
		"quantile added":         func(c *pipeline.Config) { c.Rollups[0].Measures[5].Quantiles = []string{"0.5", "0.9", "0.99"} },
		"dimension not nullable": func(c *pipeline.Config) { c.Streams[0].Dimensions[0].Nullable = false },
		"source renamed": func(c *pipeline.Config) {
			c.Streams[0].Name, c.Rollups[0].Stream, c.Rollups[1].Stream, c.Rollups[2].Stream = "use", "use", "use", "use"
		},
	} {
		if v := version(mutate); v == base {
			t.Errorf("%s: the version did not change", name)
		}
	}
}

func TestPlanRollupsRefusesInvalid(t *testing.T) {
	cases := map[string]struct {
		mutate func(*pipeline.RollupConfig)
		want   string
	}{
		"unknown stream":           {func(r *pipeline.RollupConfig) { r.Stream = "forecasts" }, `stream "forecasts"`},
		"unknown dimension":        {func(r *pipeline.RollupConfig) { r.Dimensions = []string{"country"} }, `dimension "country"`},
		"source column":            {func(r *pipeline.RollupConfig) { r.Dimensions = []string{"_offset"} }, `dimension "_offset"`},
		"time as dimension":        {func(r *pipeline.RollupConfig) { r.Dimensions = []string{"ts"} }, `dimension "ts"`},
		"sum of a string":          {func(r *pipeline.RollupConfig) { r.Measures[1].Field = "region" }, `measure "used": Sum needs a numeric field, and "region" is not a numeric column of stream usage`},
		"max of a date":            {func(r *pipeline.RollupConfig) { r.Measures[3].Field = "signup" }, `"signup" is not a numeric column`},
		"sum of a time":            {func(r *pipeline.RollupConfig) { r.Measures[1].Field = "ts" }, `"ts" is not a numeric column`},
		"unknown field":            {func(r *pipeline.RollupConfig) { r.Measures[4].Field = "nope" }, `measure "customers": field "nope" is not a column of stream usage`},
		"source field":             {func(r *pipeline.RollupConfig) { r.Measures[4].Field = "_topic" }, `field "_topic" is not a column`},
		"count with a field":       {func(r *pipeline.RollupConfig) { r.Measures[0].Field = "quantity" }, "Count counts rows"},
		"sum without a field":      {func(r *pipeline.RollupConfig) { r.Measures[1].Field = "" }, "Sum needs a field"},
		"quantile out of range":    {func(r *pipeline.RollupConfig) { r.Measures[5].Quantiles = []string{"1.5"} }, `quantile "1.5"`},
		"quantile injection":       {func(r *pipeline.RollupConfig) { r.Measures[5].Quantiles = []string{"0.5) FROM x --"} }, "quantile"},
		"quantiles on a sum":       {func(r *pipeline.RollupConfig) { r.Measures[1].Quantiles = []string{"0.5"} }, "only for function Quantiles"},
		"measure like a dimension": {func(r *pipeline.RollupConfig) { r.Measures[0].Name = "region" }, `column "region" is named like a dimension`},
		"measure named period":     {func(r *pipeline.RollupConfig) { r.Measures[0].Name = "period" }, `named like the period`},
		"quantile column clash":    {func(r *pipeline.RollupConfig) { r.Measures[0].Name = "seats_p50" }, `column "seats_p50" is named like measure seats_p50`},
		"duplicate measure":        {func(r *pipeline.RollupConfig) { r.Measures[1].Name = "events" }, `column "events" is named like measure events`},
		"unknown function":         {func(r *pipeline.RollupConfig) { r.Measures[1].Function = "Avg" }, `unknown function "Avg"`},
		"unknown granularity":      {func(r *pipeline.RollupConfig) { r.Granularity = "Year" }, `granularity "Year"`},
		"name injection":           {func(r *pipeline.RollupConfig) { r.Name = "x`; DROP TABLE y" }, "not a plain identifier"},
		"hour of plans": {func(r *pipeline.RollupConfig) {
			r.Stream, r.Granularity, r.Dimensions, r.Measures = "plans", pipeline.RollupHour, nil, r.Measures[:1]
		}, "granularity Hour needs a Usage stream"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := rollupConfig()
			tc.mutate(&cfg.Rollups[0])
			_, err := PlanRollups(cfg)
			var re *RollupError
			if !errors.As(err, &re) {
				t.Fatalf("PlanRollups: err = %v, want a *RollupError", err)
			}
			if !strings.Contains(err.Error(), "rollup "+cfg.Rollups[0].Name+":") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\ndoes not name the rollup and say %q", err, tc.want)
			}
		})
	}
}

// TestFeedbackRollups: a loop with feedback has two rollups of its own, behind
// feedback_actuals and feedback_gaps' plan side, grouped by customer and product per
// feedback period, whose versions follow the grain; their names are taken, and each needs
// the stream feedback reads.
func TestFeedbackRollups(t *testing.T) {
	cfg := rollupConfig()
	if plans, err := PlanRollups(cfg); err != nil || slices.ContainsFunc(plans, func(p RollupPlan) bool {
		return p.Name == pipeline.FeedbackActualsRollup || p.Name == pipeline.FeedbackPlansRollup
	}) {
		t.Fatalf("without feedback: %v, %v", plans, err)
	}
	month := pipeline.FeedbackConfig{Database: cfg.ClickHouse.Database, UsageTable: "usage_raw", PlanTable: "plans_raw", Grain: pipeline.GrainMonth}
	cfg.Feedback = &month
	monthly, err := PlanRollups(cfg)
	if err != nil {
		t.Fatal(err)
	}
	byName := func(plans []RollupPlan, name string) RollupPlan {
		t.Helper()
		i := slices.IndexFunc(plans, func(p RollupPlan) bool { return p.Name == name })
		if i < 0 {
			t.Fatalf("no rollup %s among %d", name, len(plans))
		}
		return plans[i]
	}
	want := map[string]struct {
		source  string
		columns []string
	}{
		pipeline.FeedbackActualsRollup: {"usage_raw", []string{"period", "customer_id", "product", "actual", "events", "last_event_at"}},
		pipeline.FeedbackPlansRollup:   {"plans_raw", []string{"period", "customer_id", "product", "planned", "planned_before", "versions", "versions_before"}},
	}
	week := month
	week.Grain = pipeline.GrainWeek
	weekCfg := cfg
	weekCfg.Feedback = &week
	weekly, err := PlanRollups(weekCfg)
	if err != nil {
		t.Fatal(err)
	}
	for name, w := range want {
		p := byName(monthly, name)
		if p.View != "rollup_"+name || p.Source != w.source || !slices.Equal(p.Columns, w.columns) {
			t.Errorf("feedback rollup %s (view %s, source %s) has columns %v", p.Name, p.View, p.Source, p.Columns)
		}
		if v := byName(weekly, name).Version; v == p.Version {
			t.Errorf("%s: a change of grain keeps version %s: the rollup would not be rebuilt", name, v)
		}
		taken := cfg
		taken.Rollups = append(slices.Clone(cfg.Rollups), pipeline.RollupConfig{Name: name, Stream: "usage",
			Granularity: pipeline.RollupDay, Measures: []pipeline.MeasureConfig{{Name: "n", Function: pipeline.FuncCount}}})
		if _, err := PlanRollups(taken); err == nil || !strings.Contains(err.Error(), "rollup "+name+":") {
			t.Errorf("a rollup named %s beside feedback: %v", name, err)
		}
	}

	wrong := month
	wrong.UsageTable = "plans_raw"
	cfg.Feedback = &wrong
	if _, err := PlanRollups(cfg); err == nil || !strings.Contains(err.Error(), "not the raw table of a usage stream") {
		t.Errorf("feedback over the plans as usage: %v", err)
	}
	wrong = month
	wrong.PlanTable = "usage_raw"
	if _, err := PlanRollups(cfg); err == nil || !strings.Contains(err.Error(), "not the raw table of a plan stream") {
		t.Errorf("feedback over the usage as plans: %v", err)
	}
}

type rollupKey struct {
	day               string
	customer, product string
	region            string // "\x00" for NULL
}

type rollupTotals struct {
	events    uint64
	used      float64
	min, max  float64
	customers uint64
}

// usageRows generates raw usage rows over a few days, a NULL region in some, and adds
// them to want.
func usageRows(rng *rand.Rand, offset *int64, n int, want map[rollupKey]*rollupTotals) [][]any {
	now := time.Now().UTC().Truncate(time.Second)
	day0 := time.Date(2026, 10, 30, 0, 0, 0, 0, time.UTC) // two months: two partitions
	var rows [][]any
	for range n {
		*offset++
		c, p := fmt.Sprintf("c%d", rng.IntN(5)), fmt.Sprintf("p%d", rng.IntN(3))
		ts := day0.Add(time.Duration(rng.IntN(4*24*3600)) * time.Second)
		qty := float64(rng.IntN(400)) / 8
		var region *string
		k := rollupKey{ts.Format("2006-01-02"), c, p, "\x00"}
		if rng.IntN(4) > 0 {
			r := []string{"eu", "us"}[rng.IntN(2)]
			region, k.region = &r, r
		}
		seats := int32(rng.IntN(100))
		var signup, seen *time.Time
		var ratio *float32
		rows = append(rows, []any{fmt.Sprintf("e%d", *offset), c, p, ts, qty, region, &seats, uint64(rng.IntN(1000)), ratio,
			uint8(rng.IntN(2)), signup, seen, "acme.usage", int32(0), *offset, now, now.UnixMilli()})
		tot := want[k]
		if tot == nil {
			tot = &rollupTotals{min: qty, max: qty, customers: 1}
			want[k] = tot
		}
		tot.events++
		tot.used += qty
		tot.min, tot.max = min(tot.min, qty), max(tot.max, qty)
	}
	return rows
}

// readDaily reads the daily_usage read view.
func readDaily(t *testing.T, ch driver.Conn, db string) map[rollupKey]*rollupTotals {
	t.Helper()
	rows, err := ch.Query(context.Background(), "SELECT toString(period), customer_id, product, ifNull(region, '\\0'), events, used, smallest, largest, customers, seats_p50, seats_p99 FROM "+
		pipeline.QualifiedTable(db, "rollup_daily_usage"))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[rollupKey]*rollupTotals{}
	for rows.Next() {
		var k rollupKey
		var v rollupTotals
		var p50, p99 float64
		if err := rows.Scan(&k.day, &k.customer, &k.product, &k.region, &v.events, &v.used, &v.min, &v.max, &v.customers, &p50, &p99); err != nil {
			t.Fatal(err)
		}
		if p50 < 0 || p99 < p50 || p99 >= 100 {
			t.Errorf("%v: seats p50 %v, p99 %v: not quantiles of 0..99", k, p50, p99)
		}
		if _, dup := got[k]; dup {
			t.Errorf("%v: two rows in the read view", k)
		}
		got[k] = &v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

func checkTotals(t *testing.T, what string, got, want map[rollupKey]*rollupTotals) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d groups, want %d", what, len(got), len(want))
	}
	var events uint64
	for k, w := range want {
		events += w.events
		g := got[k]
		if g == nil {
			t.Errorf("%s: no row for %v", what, k)
			continue
		}
		// Sums of multiples of 1/8 are exact in float64.
		if *g != *w {
			t.Errorf("%s: %v = %+v, want %+v", what, k, *g, *w)
		}
	}
	t.Logf("%s: %d groups, %d events", what, len(want), events)
}

// rollupObjects lists the database's rollup tables and views.
func rollupObjects(t *testing.T, ch driver.Conn, db string) []string {
	t.Helper()
	rows, err := ch.Query(context.Background(), "SELECT name FROM system.tables WHERE database = ? AND name LIKE 'rollup%'", db)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// TestRollupsOnClickHouse applies rollups to raw rows on the real server and checks the
// read view against totals computed here: after the backfill, after further inserts
// (through the materialized view), after a changed definition (a new version, the old
// one dropped), after a crash in the middle of a rebuild, and that applying an unchanged
// definition does nothing and does not stop the writers.
func TestRollupsOnClickHouse(t *testing.T) {
	cfg := rollupConfig()
	cfg.ClickHouse.Addr = stacktest.ClickhouseAddr(t)
	cfg.ClickHouse.Username, cfg.ClickHouse.Password = os.Getenv("CLICKHOUSE_USER"), os.Getenv("CLICKHOUSE_PASSWORD")
	cfg.ClickHouse.Database = stacktest.UniqueName("test_rollups")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ch := applySchema(t, cfg)
	db, usage := cfg.ClickHouse.Database, cfg.Streams[0]
	rng := rand.New(rand.NewPCG(3, 5))
	want := map[rollupKey]*rollupTotals{}
	var offset int64
	insert := func(n int) {
		t.Helper()
		if err := InsertRows(ctx, ch, db, usage, usageRows(rng, &offset, n, want)); err != nil {
			t.Fatal(err)
		}
	}
	stops := 0
	quiesce := func([]string) (bool, error) { stops++; return true, nil }
	apply := func(cfg pipeline.Config) []string {
		t.Helper()
		plans, err := PlanRollups(cfg)
		if err != nil {
			t.Fatal(err)
		}
		rebuilt, done, err := ApplyRollups(ctx, ch, db, plans, quiesce)
		if err != nil || !done {
			t.Fatalf("ApplyRollups: done %v, %v", done, err)
		}
		return rebuilt
	}

	// A new rollup is backfilled from what the raw table holds.
	insert(3000)
	if got := apply(cfg); len(got) != 4 || stops != 1 {
		t.Fatalf("first apply rebuilt %v with %d stops, want all 4 rollups behind one stop", got, stops)
	}
	checkTotals(t, "after the backfill", readDaily(t, ch, db), want)
	plans, _ := PlanRollups(cfg)
	v1 := plans[0]

	// Later inserts flow through the materialized view, in several blocks.
	insert(500)
	insert(700)
	checkTotals(t, "after inserts", readDaily(t, ch, db), want)

	// An unchanged definition: nothing to rebuild, nothing dropped, no stop.
	before := rollupObjects(t, ch, db)
	if got := apply(cfg); len(got) != 0 || stops != 1 {
		t.Errorf("re-applying the same rollups rebuilt %v and stopped the writers %d times, want nothing", got, stops-1)
	}
	if after := rollupObjects(t, ch, db); !slices.Equal(before, after) {
		t.Errorf("re-applying changed the objects: %v, then %v", before, after)
	}

	// A changed definition: a new version, backfilled, read; the old one dropped.
	cfg.Rollups[0].Measures = append(cfg.Rollups[0].Measures, pipeline.MeasureConfig{Name: "biggest_seats", Function: pipeline.FuncMax, Field: "seats"})
	if got := apply(cfg); !slices.Equal(got, []string{"daily_usage"}) || stops != 2 {
		t.Fatalf("after a new measure, rebuilt %v with %d stops, want daily_usage alone", got, stops)
	}
	plans, _ = PlanRollups(cfg)
	v2 := plans[0]
	if v2.Version == v1.Version {
		t.Fatal("a new measure kept the version")
	}
	checkTotals(t, "after the swap", readDaily(t, ch, db), want)
	objects := rollupObjects(t, ch, db)
	for _, gone := range []string{v1.Table, v1.MV} {
		if slices.Contains(objects, gone) {
			t.Errorf("%s is left after the swap: %v", gone, objects)
		}
	}
	for _, kept := range []string{v2.Table, v2.MV, v2.View} {
		if !slices.Contains(objects, kept) {
			t.Errorf("%s is missing after the swap: %v", kept, objects)
		}
	}
	insert(600)
	checkTotals(t, "after inserts into the new version", readDaily(t, ch, db), want)
	var biggest int32
	if err := ch.QueryRow(ctx, "SELECT max(biggest_seats) FROM "+pipeline.QualifiedTable(db, v2.View)).Scan(&biggest); err != nil || biggest != 99 {
		t.Errorf("max of the new measure = %d (%v), want 99", biggest, err)
	}

	// A crash mid-rebuild of a third version: its table exists, half filled, the read
	// view still reads the second. The next apply drops it and builds it again.
	cfg.Rollups[0] = rollupConfig().Rollups[0]
	cfg.Rollups[1].Measures = append(cfg.Rollups[1].Measures, pipeline.MeasureConfig{Name: "used", Function: pipeline.FuncSum, Field: "quantity"})
	plans, _ = PlanRollups(cfg)
	v3 := plans[0] // same definition as the first version: rebuilt, not revived
	if v3.Version != v1.Version {
		t.Fatalf("the first definition again has version %s, want %s", v3.Version, v1.Version)
	}
	half := v3.Rebuild(nil)[:4] // drop, drop, create table, create MV; no backfill, no swap
	if err := ApplySchema(ctx, ch, half); err != nil {
		t.Fatal(err)
	}
	insert(400) // lands in the half-built version through its MV, and in the second
	checkTotals(t, "while a rebuild is half done", readDaily(t, ch, db), want)
	if got := apply(cfg); !slices.Equal(got, []string{"daily_usage", "hourly"}) {
		t.Fatalf("after a crash, rebuilt %v, want daily_usage and hourly", got)
	}
	checkTotals(t, "after recovering the crash", readDaily(t, ch, db), want)
	var hourlyEvents uint64
	var hourlyUsed float64
	var wantEvents uint64
	var wantUsed float64
	for _, w := range want {
		wantEvents += w.events
		wantUsed += w.used
	}
	if err := ch.QueryRow(ctx, "SELECT sum(events), sum(used) FROM "+pipeline.QualifiedTable(db, "rollup_hourly")).Scan(&hourlyEvents, &hourlyUsed); err != nil {
		t.Fatal(err)
	}
	if hourlyEvents != wantEvents || hourlyUsed != wantUsed {
		t.Errorf("rollup_hourly: %d events, %v used; want %d, %v", hourlyEvents, hourlyUsed, wantEvents, wantUsed)
	}
	if objects := rollupObjects(t, ch, db); slices.Contains(objects, v2.Table) || slices.Contains(objects, v2.MV) {
		t.Errorf("the second version is left: %v", objects)
	}

	// A rollup no longer declared is dropped whole, without stopping the writers.
	stopsBefore := stops
	cfg.Rollups = cfg.Rollups[:2]
	if got := apply(cfg); len(got) != 0 || stops != stopsBefore {
		t.Errorf("removing rollups rebuilt %v with %d stops", got, stops-stopsBefore)
	}
	for _, o := range rollupObjects(t, ch, db) {
		if strings.HasPrefix(o, "rollup_weekly_trials") || strings.HasPrefix(o, "rollup_monthly_plans") {
			t.Errorf("%s is left after its rollup was removed", o)
		}
	}

	// Writers that cannot be stopped yet: nothing changes.
	cfg.Rollups[1].Granularity = pipeline.RollupDay
	plans, _ = PlanRollups(cfg)
	before = rollupObjects(t, ch, db)
	rebuilt, done, err := ApplyRollups(ctx, ch, db, plans, func([]string) (bool, error) { return false, nil })
	if err != nil || done || len(rebuilt) != 0 {
		t.Errorf("with writers running: rebuilt %v, done %v, err %v; want nothing done", rebuilt, done, err)
	}
	if after := rollupObjects(t, ch, db); !slices.Equal(before, after) {
		t.Errorf("with writers running the objects changed: %v, then %v", before, after)
	}

	// The Delete policy drops every rollup object: the planned versions, and what is
	// found of others (here the hourly version that could not be replaced).
	if err := ApplySchema(ctx, ch, PlanDrop(cfg)); err != nil {
		t.Fatal(err)
	}
	left := rollupObjects(t, ch, db)
	if len(left) != 2 || !strings.HasPrefix(left[0], "rollup_hourly_v") {
		t.Errorf("PlanDrop left %v, want the unplanned hourly version", left)
	}
	existing, err := ReadRollups(ctx, ch, db)
	if err != nil {
		t.Fatal(err)
	}
	if _, stale := PlanRollupChanges(db, nil, existing); len(stale) != 2 {
		t.Errorf("found %d rollup objects to drop, want 2: %v", len(stale), stale)
	} else if err := ApplySchema(ctx, ch, stale); err != nil {
		t.Fatal(err)
	}
	if left := rollupObjects(t, ch, db); len(left) != 0 {
		t.Errorf("left after dropping: %v", left)
	}
}
