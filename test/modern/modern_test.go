// Package modern runs the SQL of CustomerLoop's single-server planners on ClickHouse 26.x
// (chdb's in-process engine) and on the 18.16 server, with the same generated usage and
// plans, and requires the same figures from both.
package modern

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
)

// loopConfig is a loop with every feature a single server has: usage and plan streams
// with dimensions (nullable ones too), rollups of every function and granularity (of
// nullable fields too), feedback, retention, digests and consent.
func loopConfig(db string, old bool) pipeline.Config {
	usageDims := []pipeline.Dimension{
		{Name: "region", Field: "region", Type: "String", Nullable: true},
		{Name: "seats", Field: "seats", Type: "Int32", Nullable: true},
		{Name: "bytes", Field: "bytes", Type: "UInt64"},
		{Name: "trial", Field: "trial", Type: "Bool"},
	}
	if old {
		// An earlier spec: the migration adds seats (in the middle) and trial.
		usageDims = []pipeline.Dimension{usageDims[0], usageDims[2]}
	}
	return pipeline.Config{
		Loop:  "test/modern",
		Kafka: pipeline.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}, Group: "customerloop.test.modern"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: os.Getenv("CLICKHOUSE_ADDR"), Database: db,
			Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")},
		Streams: []pipeline.StreamConfig{
			{Name: "usage", Kind: pipeline.KindUsage, Topic: "acme.usage", DeadLetterTopic: "acme.usage.dlq",
				Mapping:    pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts", Quantity: "qty"},
				Dimensions: usageDims},
			{Name: "plans", Kind: pipeline.KindPlan, Topic: "acme.plans", DeadLetterTopic: "acme.plans.dlq",
				Mapping: pipeline.Mapping{PlanID: "plan_id", CustomerID: "customer", Product: "product", Period: "period",
					Quantity: "quantity", SubmittedAt: "submitted_at", Confidence: "confidence"}},
		},
		Rollups: []pipeline.RollupConfig{
			{Name: "daily_usage", Stream: "usage", Dimensions: []string{"customer_id", "product", "region"}, Granularity: pipeline.RollupDay,
				Measures: []pipeline.MeasureConfig{
					{Name: "events", Function: pipeline.FuncCount},
					{Name: "used", Function: pipeline.FuncSum, Field: "quantity"},
					{Name: "smallest", Function: pipeline.FuncMin, Field: "quantity"},
					{Name: "largest", Function: pipeline.FuncMax, Field: "quantity"},
					{Name: "customers", Function: pipeline.FuncUniq, Field: "customer_id"},
					{Name: "seats", Function: pipeline.FuncQuantiles, Field: "seats", Quantiles: []string{"0.5", "0.9"}},
				}},
			{Name: "hourly", Stream: "usage", Granularity: pipeline.RollupHour,
				Measures: []pipeline.MeasureConfig{{Name: "events", Function: pipeline.FuncCount}, {Name: "peak_seats", Function: pipeline.FuncMax, Field: "seats"}}},
			{Name: "weekly_trials", Stream: "usage", Dimensions: []string{"trial"}, Granularity: pipeline.RollupWeek,
				Measures: []pipeline.MeasureConfig{{Name: "bytes", Function: pipeline.FuncSum, Field: "bytes"}, {Name: "regions", Function: pipeline.FuncUniq, Field: "region"}}},
			{Name: "monthly_plans", Stream: "plans", Dimensions: []string{"customer_id"}, Granularity: pipeline.RollupMonth,
				Measures: []pipeline.MeasureConfig{
					{Name: "planned", Function: pipeline.FuncSum, Field: "quantity"},
					{Name: "confidence", Function: pipeline.FuncMax, Field: "confidence"},
				}},
			{Name: "daily_plans", Stream: "plans", Dimensions: []string{"product"}, Granularity: pipeline.RollupDay,
				Measures: []pipeline.MeasureConfig{{Name: "low", Function: pipeline.FuncMin, Field: "confidence"}}},
		},
		Consent: &pipeline.ConsentConfig{Topic: "acme.consent"},
	}
}

// data is the generated usage and plans, in each stream's insert order.
type data struct {
	usage, plans [][]any
}

// monthsUsed are the months, relative to the current one, that hold usage and plan
// periods. The month four back stays empty: retention cuts off in its middle, so that
// 18.16 (which drops whole months) and 26.x (whose TTL drops rows) remove the same rows.
var monthsUsed = []int{-6, -5, -3, -2, -1}

const (
	cutoffMonth       = -4
	withdrawnCustomer = "c03"
)

func monthStart(now time.Time, offset int) time.Time {
	return time.Date(now.Year(), now.Month()+time.Month(offset), 1, 0, 0, 0, 0, time.UTC)
}

// generate makes deterministic usage and plans around now: six customers, three
// products, fractional quantities, NULLs in every nullable column, and plan_ids sent twice
// (a producer's late retry, which feedback_plan_versions counts once).
func generate(now time.Time) data {
	r := rand.New(rand.NewPCG(7, 11))
	customers := []string{"c01", "c02", "c03", "c04", "c05", "c06"}
	products := []string{"api", "storage", "seats"}
	ingested := now.Truncate(time.Second)
	var d data
	for i := range 3000 {
		m := monthStart(now, monthsUsed[r.IntN(len(monthsUsed))])
		ts := m.Add(time.Duration(r.Int64N(int64(m.AddDate(0, 1, 0).Sub(m)/time.Second))) * time.Second)
		var region *string
		if r.IntN(5) > 0 {
			region = ptr([]string{"eu", "us", "ap"}[r.IntN(3)])
		}
		var seats *int32
		if r.IntN(3) > 0 {
			seats = ptr(int32(1 + r.IntN(500)))
		}
		d.usage = append(d.usage, []any{
			fmt.Sprintf("e%05d", i), customers[r.IntN(len(customers))], products[r.IntN(len(products))], ts,
			float64(r.IntN(100000)) / 37, region, seats, uint64(r.Int64N(1 << 40)), uint8(r.IntN(2)),
			"acme.usage", int32(i % 3), int64(i), ingested, ingested.UnixMilli(),
		})
	}
	offset := int64(0)
	for _, c := range customers {
		for _, p := range products {
			for _, target := range append(slices.Clone(monthsUsed), 0, 1, 2) {
				period := monthStart(now, target).AddDate(0, 0, r.IntN(28))
				for v := range 1 + r.IntN(4) {
					// Submitted from three months ahead of the period to one month after it.
					submitted := monthStart(now, target-3+r.IntN(5)).Add(time.Duration(r.IntN(27*86400)) * time.Second)
					var confidence *float64
					if r.IntN(4) > 0 {
						confidence = ptr(float64(r.IntN(100)) / 100)
					}
					id := fmt.Sprintf("%s-%s-%d-%d", c, p, target, v)
					row := []any{id, c, p, period, float64(r.IntN(200000)) / 7, submitted, confidence,
						"acme.plans", int32(offset % 2), offset, ingested, ingested.UnixMilli()}
					d.plans = append(d.plans, row)
					offset++
					if r.IntN(20) == 0 {
						retry := slices.Clone(row)
						retry[4], retry[9] = float64(r.IntN(200000))/7, offset
						d.plans = append(d.plans, retry)
						offset++
					}
				}
			}
		}
	}
	return d
}

func ptr[T any](v T) *T { return &v }

func TestModernClickHouse(t *testing.T) {
	modern := startChdb(t)
	if os.Getenv("CLICKHOUSE_ADDR") == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CLICKHOUSE_ADDR is not set; run the tests with make test")
		}
		t.Skip("CLICKHOUSE_ADDR is not set; make test provisions the 18.16 server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	db := fmt.Sprintf("modern_%d", time.Now().UnixNano())
	cfg := loopConfig(db, false)
	_, feedback := feedbackConfig(db)
	cfg.Feedback = &feedback // the feedback actuals are a rollup of their own
	conn, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db))
		_ = conn.Close()
	})
	old := nativeServer{conn}

	// Each server gets the SQL planned for its features: both paths run.
	oldFeatures, err := pipeline.ReadServerFeatures(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	modernFeatures, err := pipeline.ReadServerFeatures(ctx, modern)
	if err != nil {
		t.Fatal(err)
	}
	if oldFeatures != (pipeline.ServerFeatures{}) {
		t.Errorf("18.16 reports features %+v, want none", oldFeatures)
	}
	if want := (pipeline.ServerFeatures{DedupToken: true, NullableStates: true, SubqueryAliases: true}); modernFeatures != want {
		t.Errorf("26.x reports features %+v, want %+v", modernFeatures, want)
	}
	servers := []struct {
		server
		features pipeline.ServerFeatures
	}{{old, oldFeatures}, {modern, modernFeatures}}
	version := func(s server) pipeline.ServerVersion {
		tb, err := s.query(ctx, "SELECT version() AS v")
		if err != nil || len(tb.rows) != 1 {
			t.Fatalf("%s: version: %v %v", s.name(), tb.rows, err)
		}
		v, err := pipeline.ParseServerVersion(tb.rows[0][0].(string))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := version(modern); v.Major < 26 {
		t.Fatalf("chdb reports ClickHouse %+v, want 26.x", v)
	}
	if v := version(old); v.Major != 18 {
		t.Fatalf("CLICKHOUSE_ADDR reports ClickHouse %+v, want 18.16", v)
	}

	now := time.Now().UTC()
	gen := generate(now)
	half := func(rows [][]any, second bool) [][]any {
		if second {
			return rows[len(rows)/2:]
		}
		return rows[:len(rows)/2]
	}
	var rollupTables []string
	for _, s := range servers {
		t.Logf("%s: schema, migration, digests, rollups, feedback", s.name())
		c := cfg
		c.ClickHouse.Features = s.features
		run := func(what string, stmts []pipeline.Statement) {
			t.Helper()
			for _, st := range stmts {
				if err := s.exec(ctx, st.SQL); err != nil {
					t.Fatalf("%s: %s %s: %v\n%s", s.name(), what, st.Object, err, st.SQL)
				}
			}
		}
		// The schema of an earlier spec, then the migration to the current one.
		first, err := ddl.PlanSchema(loopConfig(db, true))
		if err != nil {
			t.Fatal(err)
		}
		run("schema", first)
		existing := columns(t, ctx, s, db)
		alter, err := ddl.PlanMigration(c.ClickHouse, ddl.ManagedTables(c), existing)
		if err != nil {
			t.Fatal(err)
		}
		if len(alter) != 2 {
			t.Fatalf("%s: migration of %d statements, want 2 (seats, trial): %v", s.name(), len(alter), alter)
		}
		run("migration", alter)
		schema, err := ddl.PlanSchema(c)
		if err != nil {
			t.Fatal(err)
		}
		run("schema again", schema) // idempotent: nothing to create
		digest, err := ddl.DigestTableStatement(c.ClickHouse)
		if err != nil {
			t.Fatal(err)
		}
		run("digests", []pipeline.Statement{digest})

		// Half of the rows before the rollups exist (their backfill reads them), half
		// after (their materialized views see them).
		insert(t, ctx, s.server, c, half(gen.usage, false), half(gen.plans, false))
		plans, err := ddl.PlanRollups(c)
		if err != nil {
			t.Fatal(err)
		}
		rollupTables = nil
		for _, p := range plans {
			run("rollup "+p.Name, p.Rebuild(partitions(t, ctx, s, db, p.Source)))
			rollupTables = append(rollupTables, p.View)
		}
		insert(t, ctx, s.server, c, half(gen.usage, true), half(gen.plans, true))
		fc := feedback
		fc.Features = s.features
		views, err := ddl.PlanFeedback(fc)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range views {
			run("feedback", []pipeline.Statement{v.Statement})
		}
	}
	// The schemas the planners made agree, column for column.
	if o, m := columns(t, ctx, old, db), columns(t, ctx, modern, db); !sameColumns(o, m) {
		t.Errorf("the tables differ:\n18.16: %v\n26.x:  %v", o, m)
	}
	compare(t, ctx, old, modern, db, append(slices.Clone(pipeline.FeedbackViews), rollupTables...))
	checkActuals(t, ctx, servers[0].server, servers[1].server, db, gen, nil)
	checkRollupTotals(t, ctx, old, modern, db, gen, "")

	// Retention: 18.16 drops the expired months, 26.x gets a TTL.
	days := int(now.Sub(monthStart(now, cutoffMonth).AddDate(0, 0, 15)).Hours() / 24)
	for _, st := range cfg.Streams {
		dropped, err := ddl.ApplyRetention(ctx, conn, version(old), cfg.ClickHouse, st, days, now)
		if err != nil {
			t.Fatal(err)
		}
		want := []uint32{yyyymm(monthStart(now, -6)), yyyymm(monthStart(now, -5))}
		if !slices.Equal(dropped, want) {
			t.Errorf("18.16: retention of %s dropped %v, want %v", st.Name, dropped, want)
		}
		if !version(modern).HasTTL() {
			t.Fatal("26.x reports no TTL")
		}
		ttl := ddl.RetentionTTLStatement(cfg.ClickHouse, st, days)
		if err := modern.exec(ctx, ttl.SQL); err != nil {
			t.Fatalf("26.x: %s: %v", ttl.SQL, err)
		}
		// Expired rows go at the next merge; the test does not wait for one.
		if err := modern.exec(ctx, "OPTIMIZE TABLE "+pipeline.QualifiedTable(db, st.Table())+" FINAL"); err != nil {
			t.Fatal(err)
		}
	}

	// Consent: a customer's rows leave the raw tables and the rollups grouped by
	// customer; the other rollups of those tables are rebuilt.
	for _, s := range servers {
		c := cfg
		c.ClickHouse.Features = s.features
		plans, _ := ddl.PlanRollups(c)
		var deleteFrom []string
		for _, st := range c.Streams {
			deleteFrom = append(deleteFrom, st.Table())
		}
		for _, p := range plans {
			if slices.Contains(p.Columns, "customer_id") {
				deleteFrom = append(deleteFrom, p.Table)
			}
		}
		for _, tbl := range deleteFrom {
			if _, isOld := s.server.(nativeServer); isOld {
				if _, _, err := ddl.DeleteCustomer(ctx, conn, c.ClickHouse, tbl, withdrawnCustomer); err != nil {
					t.Fatal(err)
				}
				continue
			}
			del := ddl.DeleteCustomerStatement(c.ClickHouse, tbl)
			sql := strings.Replace(del.SQL, "?", "'"+withdrawnCustomer+"'", 1)
			if err := s.exec(ctx, sql+" SETTINGS mutations_sync = 2"); err != nil {
				t.Fatalf("%s: %s: %v", s.name(), sql, err)
			}
		}
		for _, p := range plans {
			if slices.Contains(p.Columns, "customer_id") {
				continue
			}
			if _, isOld := s.server.(nativeServer); isOld {
				if err := ddl.RebuildRollup(ctx, conn, p); err != nil {
					t.Fatal(err)
				}
				continue
			}
			for _, st := range p.Rebuild(partitions(t, ctx, s, db, p.Source)) {
				if err := s.exec(ctx, st.SQL); err != nil {
					t.Fatalf("%s: rebuilding %s: %v", s.name(), p.Name, err)
				}
			}
		}
	}
	compare(t, ctx, old, modern, db, append(slices.Clone(pipeline.FeedbackViews), rollupTables...))
	// The feedback actuals are a rollup grouped by customer: like the daily rollup they
	// keep what retention removed from the raw tables, and nothing of the withdrawn
	// customer.
	checkActuals(t, ctx, old, modern, db, gen, func(row []any, _ int) bool { return row[1] != withdrawnCustomer })
	// The daily rollup, grouped by customer and so not rebuilt, keeps what retention
	// removed from the raw tables, and nothing of the withdrawn customer.
	checkRollupTotals(t, ctx, old, modern, db, gen, withdrawnCustomer)

	for _, s := range servers {
		c := cfg
		c.ClickHouse.Features = s.features
		for _, st := range ddl.PlanDrop(c) {
			if err := s.exec(ctx, st.SQL); err != nil {
				t.Fatalf("%s: %s: %v", s.name(), st.SQL, err)
			}
		}
		left, err := s.query(ctx, "SELECT name FROM system.tables WHERE database = '"+db+"'")
		if err != nil {
			t.Fatal(err)
		}
		if len(left.rows) > 0 {
			t.Errorf("%s: PlanDrop left %v", s.name(), left.rows)
		}
	}
}

func feedbackConfig(db string) (pipeline.Config, pipeline.FeedbackConfig) {
	return pipeline.Config{}, pipeline.FeedbackConfig{Database: db, UsageTable: "usage_raw", PlanTable: "plans_raw", Grain: pipeline.GrainMonth}
}

func yyyymm(t time.Time) uint32 { return uint32(t.Year()*100 + int(t.Month())) }

func insert(t *testing.T, ctx context.Context, s server, cfg pipeline.Config, usage, plans [][]any) {
	t.Helper()
	for i, rows := range [][][]any{usage, plans} {
		if err := s.insert(ctx, cfg.ClickHouse.Database, cfg.Streams[i], rows); err != nil {
			t.Fatalf("%s: inserting into %s: %v", s.name(), cfg.Streams[i].Table(), err)
		}
	}
}

// columns reads what pipeline.ExistingColumns reads, through either server.
func columns(t *testing.T, ctx context.Context, s server, db string) map[string][]pipeline.Column {
	t.Helper()
	tb, err := s.query(ctx, "SELECT table, name, type FROM system.columns WHERE database = '"+db+"' AND table NOT LIKE '%feedback%' AND table NOT LIKE 'rollup%'")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]pipeline.Column{}
	for _, r := range tb.rows {
		out[r[0].(string)] = append(out[r[0].(string)], pipeline.Column{Name: r[1].(string), Type: r[2].(string)})
	}
	return out
}

func sameColumns(a, b map[string][]pipeline.Column) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// partitions is what pipeline.RebuildRollup backfills by: the raw table's partitions.
func partitions(t *testing.T, ctx context.Context, s server, db, table string) []uint32 {
	t.Helper()
	tb, err := s.query(ctx, "SELECT DISTINCT partition FROM system.parts WHERE database = '"+db+"' AND table = '"+table+"' AND active")
	if err != nil {
		t.Fatal(err)
	}
	var out []uint32
	for _, r := range tb.rows {
		var p uint32
		if _, err := fmt.Sscan(r[0].(string), &p); err != nil {
			t.Fatalf("partition %v: %v", r[0], err)
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// compare requires the same rows from every view on both servers.
func compare(t *testing.T, ctx context.Context, old, modern server, db string, views []string) {
	t.Helper()
	for _, v := range views {
		q := "SELECT * FROM " + pipeline.QualifiedTable(db, v)
		o, err := old.query(ctx, q)
		if err != nil {
			t.Fatalf("18.16: %s: %v", v, err)
		}
		m, err := modern.query(ctx, q)
		if err != nil {
			t.Fatalf("26.x: %s: %v", v, err)
		}
		if len(o.rows) == 0 {
			t.Errorf("%s: no rows on 18.16; the comparison would prove nothing", v)
		}
		if !slices.Equal(o.names, m.names) {
			t.Errorf("%s: columns %v on 18.16, %v on 26.x", v, o.names, m.names)
			continue
		}
		if !slices.Equal(o.types, m.types) {
			t.Errorf("%s: types %v on 18.16, %v on 26.x", v, o.types, m.types)
		}
		sortRows(o.rows)
		sortRows(m.rows)
		if len(o.rows) != len(m.rows) {
			t.Errorf("%s: %d rows on 18.16, %d on 26.x", v, len(o.rows), len(m.rows))
			continue
		}
		bad := 0
		for i := range o.rows {
			for j := range o.rows[i] {
				if sameCell(o.rows[i][j], m.rows[i][j]) {
					continue
				}
				if bad++; bad <= 5 {
					t.Errorf("%s row %d, %s: %v on 18.16, %v on 26.x\n18.16: %v\n26.x:  %v", v, i, o.names[j], o.rows[i][j], m.rows[i][j], o.rows[i], m.rows[i])
				}
			}
		}
		if bad == 0 {
			t.Logf("%s: %d rows agree", v, len(o.rows))
		}
	}
}

// checkActuals recomputes feedback_actuals in Go from the generated usage that keep
// accepts (all of it when nil), so that a mistake both servers share still fails.
func checkActuals(t *testing.T, ctx context.Context, old, modern server, db string, gen data, keep func([]any, int) bool) {
	t.Helper()
	type key struct{ customer, product, period string }
	type fig struct {
		actual float64
		events float64
	}
	want := map[key]fig{}
	for _, r := range gen.usage {
		if keep != nil && !keep(r, 3) {
			continue
		}
		ts := r[3].(time.Time)
		k := key{r[1].(string), r[2].(string), time.Date(ts.Year(), ts.Month(), 1, 0, 0, 0, 0, time.UTC).Format(time.DateOnly)}
		f := want[k]
		f.actual += r[4].(float64)
		f.events++
		want[k] = f
	}
	for _, s := range []server{old, modern} {
		tb, err := s.query(ctx, "SELECT customer_id, product, period, actual, events FROM "+pipeline.QualifiedTable(db, pipeline.ViewActuals))
		if err != nil {
			t.Fatal(err)
		}
		if len(tb.rows) != len(want) {
			t.Errorf("%s: feedback_actuals has %d rows, the generated usage makes %d", s.name(), len(tb.rows), len(want))
		}
		for _, r := range tb.rows {
			k := key{r[0].(string), r[1].(string), r[2].(string)}
			w, ok := want[k]
			if !ok || !sameFloat(r[3].(float64), w.actual) || r[4].(float64) != w.events {
				t.Errorf("%s: feedback_actuals %v: actual %v, events %v; want %+v (present %v)", s.name(), k, r[3], r[4], w, ok)
			}
		}
	}
}

// checkRollupTotals recomputes the daily rollup's total events and quantity in Go,
// without the withdrawn customer's rows when one is given.
func checkRollupTotals(t *testing.T, ctx context.Context, old, modern server, db string, gen data, withdrawn string) {
	t.Helper()
	var events, used float64
	for _, r := range gen.usage {
		if r[1] != withdrawn {
			events++
			used += r[4].(float64)
		}
	}
	for _, s := range []server{old, modern} {
		tb, err := s.query(ctx, "SELECT sum(events) AS e, sum(used) AS u FROM "+pipeline.QualifiedTable(db, ddl.RollupView("daily_usage")))
		if err != nil {
			t.Fatal(err)
		}
		if r := tb.rows[0]; r[0].(float64) != events || !sameFloat(r[1].(float64), used) {
			t.Errorf("%s: rollup_daily_usage totals %v events, %v used; the generated usage makes %v, %v", s.name(), r[0], r[1], events, used)
		}
	}
}
