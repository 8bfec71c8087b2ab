package feedback

import (
	"context"
	"fmt"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// TestSnapshotCache keeps a loop's figures in a Cache while the data changes under it
// (a late event in a completed period, a revised plan, a plan for the next period, a
// consent-style deletion of a customer's rows), weekly and monthly. After every change the
// cached snapshot must equal one read from nothing and the views' own rows, and, where
// the expectations are computed here, those too; and a read after no change must read
// only the period under way again. Both ways of telling the periods' parts apart are
// taken.
func TestSnapshotCache(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	for _, c := range []struct {
		g      pipeline.Grain
		system bool
	}{{pipeline.GrainMonth, true}, {pipeline.GrainWeek, true}, {pipeline.GrainMonth, false}, {pipeline.GrainWeek, false}} {
		g, way := c.g, "system.parts"
		if !c.system {
			way = "rows"
		}
		t.Run(string(g)+"/"+way, func(t *testing.T) {
			// Both ways of telling a period's parts: from system.parts (the schema's
			// monthly partitions) and from the rows' own parts (any other partitioning).
			partsFromSystem = c.system
			defer func() { partsFromSystem = true }()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_snapshot"))
			cfg.ClickHouse.Addr, fc.Grain = chAddr, g
			ch := ddltest.ApplyFeedback(t, cfg, fc)
			data := generateFigData(g, time.Now().UTC().Truncate(time.Second), 29)
			data.insert(t, ctx, ch, cfg)
			optimize(t, ctx, ch, fc.Database)

			cache := NewCache()
			const k = 20
			read := func(stage string) *Snapshot {
				t.Helper()
				now := time.Now().UTC()
				got, err := cache.Read(ctx, ch, fc, k, now)
				if err != nil {
					t.Fatalf("%s: %v", stage, err)
				}
				fresh, err := ReadSnapshot(ctx, ch, fc, k, now)
				if err != nil {
					t.Fatalf("%s: %v", stage, err)
				}
				compareSnapshots(t, stage+", cached against fresh", got, fresh)
				compareWithViews(t, ctx, ch, fc.Database, stage, got, k)
				return got
			}
			s := read("first read")
			checkValueAddedRows(t, s.ValueAdded, data.expectedValueAdded())
			checkTrackingRows(t, s.rows, data.expectedTracking())
			if cache.read < 8 {
				t.Errorf("the first read read %d periods, want every one", cache.read)
			}
			read("nothing changed")
			if cache.read != 1 {
				t.Errorf("a read after no change read %d periods again, want 1 (the period under way)", cache.read)
			}

			// A late event two periods back, a plan revised for the last period (made
			// before it began, so that its tracking moves) and a plan for the next.
			late := usageEvent{"c0", "p0", data.period(-2).Add(time.Hour), 1000}
			data.usage = append(data.usage, late)
			data.actual[gapKey{"c0", "p0", data.period(-2)}] += late.qty
			revised := planVersion{"late-revision", "c3", "p1", data.period(-1), data.period(-2).Add(2 * time.Hour), 333}
			next := planVersion{"next", "c2", "p0", data.period(1), data.now.Add(-time.Minute), 77}
			data.plans = append(data.plans, revised, next)
			data.insertRows(t, ctx, ch, cfg, []usageEvent{late}, []planVersion{revised, next})
			s = read("after a late event and revised plans")
			checkValueAddedRows(t, s.ValueAdded, data.expectedValueAdded())
			checkTrackingRows(t, s.rows, data.expectedTracking())
			if g == pipeline.GrainMonth && cache.read > 4 {
				// -2, -1 (its naive forecast is -2's actual, and its plan changed), the
				// period under way and the next.
				t.Errorf("after changes to 3 periods, %d were read again", cache.read)
			}

			// A customer's rows deleted everywhere, as a consent withdrawal does.
			for _, table := range []string{fc.UsageTable, fc.PlanTable, feedbackTable(t, ctx, ch, fc.Database, pipeline.FeedbackActualsRollup),
				feedbackTable(t, ctx, ch, fc.Database, pipeline.FeedbackPlansRollup)} {
				if err := ch.Exec(ctx, "ALTER TABLE "+pipeline.QualifiedTable(fc.Database, table)+" DELETE WHERE customer_id = 'c1'"); err != nil {
					t.Fatal(err)
				}
			}
			waitMutations(t, ctx, ch, fc.Database)
			s = read("after deleting c1")
			for _, r := range s.rows {
				if r.Customer == "c1" {
					t.Errorf("c1's tracking is still there: %+v", r)
				}
			}
		})
	}
}

// optimize merges every table of db, so that no merge changes the parts in the middle of
// a test.
func optimize(t *testing.T, ctx context.Context, ch driver.Conn, db string) {
	t.Helper()
	rows, err := ch.Query(ctx, "SELECT name FROM system.tables WHERE database = ? AND engine LIKE '%MergeTree'", db)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	rows.Close()
	for _, n := range names {
		if err := ch.Exec(ctx, "OPTIMIZE TABLE "+pipeline.QualifiedTable(db, n)+" FINAL"); err != nil {
			t.Fatal(err)
		}
	}
}

// feedbackTable is the table a feedback rollup's read view reads.
func feedbackTable(t *testing.T, ctx context.Context, ch driver.Conn, db, rollup string) string {
	t.Helper()
	var create string
	if err := ch.QueryRow(ctx, "SELECT create_table_query FROM system.tables WHERE database = ? AND name = ?", db, ddl.RollupView(rollup)).Scan(&create); err != nil {
		t.Fatal(err)
	}
	m := fromTable.FindStringSubmatch(create)
	if m == nil {
		t.Fatalf("no table in %s", create)
	}
	return m[1]
}

func waitMutations(t *testing.T, ctx context.Context, ch driver.Conn, db string) {
	t.Helper()
	for {
		var pending uint64
		if err := ch.QueryRow(ctx, "SELECT count() FROM system.mutations WHERE database = ? AND is_done = 0", db).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if pending == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d mutations still running", pending)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// compareSnapshots requires two snapshots to hold the same figures (floats within 1e-9,
// the order of summation aside).
func compareSnapshots(t *testing.T, stage string, a, b *Snapshot) {
	t.Helper()
	la, lb := digestOf(a), digestOf(b)
	for i := range max(len(la), len(lb)) {
		var x, y string
		if i < len(la) {
			x = la[i]
		}
		if i < len(lb) {
			y = lb[i]
		}
		if x != y {
			t.Errorf("%s: the snapshots differ from line %d of %d/%d:\n  %s\n  %s", stage, i, len(la), len(lb), x, y)
			return
		}
	}
}

// digestOf renders a snapshot's figures with floats rounded to 9 significant digits.
func digestOf(s *Snapshot) []string {
	f := func(p *float64) string {
		if p == nil {
			return "null"
		}
		return fmt.Sprintf("%.9g", *p)
	}
	var out []string
	for _, p := range s.Periods {
		// The projection moves with the clock between two reads: 3 digits.
		projected := "null"
		if p.Projected != nil {
			projected = fmt.Sprintf("%.3g", *p.Projected)
		}
		out = append(out, fmt.Sprintf("period %s %s %d %s %s %.9g %.9g %t %s", p.Product, p.Period.Format(time.DateOnly), p.CustomersWithPlans,
			f(p.PlannedLatest), f(p.PlannedAtStart), p.Actual, p.UnplannedActual, p.Begun, projected))
		for _, g := range s.tops[p.Product][p.Period] {
			out = append(out, fmt.Sprintf("  top %s %.9g %.9g", g.Customer, g.PlannedLatest, g.Actual))
		}
	}
	for _, r := range s.Accuracy {
		out = append(out, fmt.Sprintf("accuracy %s %d %d %.9g %.9g %s %s", r.Product, r.Horizon, r.N, r.Planned, r.Actual, f(r.Bias), f(r.WAPE)))
	}
	for _, r := range s.ValueAdded {
		out = append(out, fmt.Sprintf("fva %s %d %d %s %s %s %t", r.Product, r.Horizon, r.N, f(r.WAPE), f(r.NaiveWAPE), f(r.FVA), r.BeatsNaive))
	}
	for _, r := range s.rows {
		out = append(out, fmt.Sprintf("tracking %s %s %d %.9g %.9g %s", r.Customer, r.Product, r.N, r.CumulativeError, r.MAD, f(r.TrackingSignal)))
	}
	for _, r := range s.largest {
		out = append(out, fmt.Sprintf("largest %s %s %s %s", r.Customer, r.Product, r.Period.Format(time.DateOnly), f(r.Gap)))
	}
	return out
}

// compareWithViews requires a snapshot to hold what the views say.
func compareWithViews(t *testing.T, ctx context.Context, ch driver.Conn, db, stage string, s *Snapshot, k int) {
	t.Helper()
	pps, err := QueryProductPeriods(ctx, ch, db)
	if err != nil {
		t.Fatal(err)
	}
	acc, err := QueryAccuracy(ctx, ch, db, "")
	if err != nil {
		t.Fatal(err)
	}
	fva, err := QueryValueAdded(ctx, ch, db, "")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := QueryTracking(ctx, ch, db, TrackingFilter{})
	if err != nil {
		t.Fatal(err)
	}
	largest, err := QueryLargestGaps(ctx, ch, db, k)
	if err != nil {
		t.Fatal(err)
	}
	_, topRows, err := queryProductPeriods(ctx, ch, db, pipeline.QualifiedTable(db, pipeline.ViewGaps), nil, k, "")
	if err != nil {
		t.Fatal(err)
	}
	tops := map[string]map[time.Time][]CustomerGap{}
	for product, byPeriod := range topRows {
		tops[product] = map[time.Time][]CustomerGap{}
		for period, rows := range byPeriod {
			for _, r := range rows {
				tops[product][period] = append(tops[product][period], CustomerGap{Customer: r.Customer, PlannedLatest: *r.PlannedLatest, Actual: r.Actual, Gap: *r.Gap, GapRatio: r.GapRatio})
			}
		}
	}
	views := &Snapshot{Periods: pps, Accuracy: acc, ValueAdded: fva, rows: tr, largest: largest, tops: tops}
	if views.Accuracy == nil {
		views.Accuracy = []AccuracyRow{}
	}
	if views.ValueAdded == nil {
		views.ValueAdded = []ValueAddedRow{}
	}
	compareSnapshots(t, stage+", snapshot against the views", s, views)
	t.Logf("%s: %d product periods, %d accuracy rows, %d tracking rows, %d largest gaps agree", stage, len(pps), len(acc), len(tr), len(largest))
}
