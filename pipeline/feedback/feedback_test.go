package feedback

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

func TestPlanFeedbackGolden(t *testing.T) {
	testPlanFeedbackGolden(t, "", pipeline.ServerFeatures{}, "feedback.golden.sql")
	if _, err := ddl.PlanFeedback(pipeline.FeedbackConfig{Database: "a`b", UsageTable: "u", PlanTable: "p", Grain: pipeline.GrainMonth}); err == nil {
		t.Error("an invalid database name was accepted")
	}
	if _, err := ddl.PlanFeedback(pipeline.FeedbackConfig{Database: "a", UsageTable: "u", PlanTable: "p", Grain: pipeline.GrainMonth, Cluster: "c`; DROP"}); err == nil {
		t.Error("an invalid cluster name was accepted")
	}
}

// TestPlanFeedbackClusterGolden: on a cluster the same views (same fingerprints) are
// created ON CLUSTER over the Distributed table names.
func TestPlanFeedbackClusterGolden(t *testing.T) {
	testPlanFeedbackGolden(t, "analytics", pipeline.ServerFeatures{}, "feedback.cluster.golden.sql")
	_, fc := stacktest.FeedbackConfig("acme")
	single, _ := ddl.PlanFeedback(fc)
	fc.Cluster = "analytics"
	clustered, _ := ddl.PlanFeedback(fc)
	for i, s := range clustered {
		if s.Fingerprint != single[i].Fingerprint {
			t.Errorf("%s: fingerprint %s on a cluster, %s on a single server", s.View, s.Fingerprint, single[i].Fingerprint)
		}
	}
}

// TestPlanFeedbackModernGolden: a server that requires aliases on joined subqueries
// (every modern ClickHouse) gets them; test/modern runs these views on 26.x.
func TestPlanFeedbackModernGolden(t *testing.T) {
	testPlanFeedbackGolden(t, "", pipeline.ServerFeatures{SubqueryAliases: true}, "feedback.modern.golden.sql")
}

func testPlanFeedbackGolden(t *testing.T, cluster string, f pipeline.ServerFeatures, file string) {
	t.Helper()
	_, fc := stacktest.FeedbackConfig("acme")
	fc.Cluster, fc.Features = cluster, f
	var b strings.Builder
	for _, g := range []pipeline.Grain{pipeline.GrainMonth, pipeline.GrainWeek} {
		fc.Grain = g
		stmts, err := ddl.PlanFeedback(fc)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stmts {
			b.WriteString("-- " + string(g) + " " + s.Object + "\n" + s.SQL + ";\n\n")
		}
	}
	path := filepath.Join("testdata", file)
	if *stacktest.Update {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Errorf("feedback SQL differs from %s:\n%s", path, b.String())
	}
}

type gapKey struct {
	customer, product string
	period            time.Time
}

type planVersion struct {
	id, customer, product string
	period, submitted     time.Time
	qty                   float64
}

func monthIndex(t time.Time) int { return t.Year()*12 + int(t.Month()) - 1 }

func startOfMonth(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// TestFeedbackViews generates customers' usage and plans (several revisions at several
// horizons, a plan re-sent under the same id, a plan for a period without usage, one made
// after its period, late usage events), computes every figure of the feedback views
// independently here, and checks the views against it on the real ClickHouse.
func TestFeedbackViews(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_feedback"))
	cfg.ClickHouse.Addr = chAddr
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	usage, plans := cfg.Streams[0], cfg.Streams[1]
	rng := rand.New(rand.NewPCG(7, 11))
	now := time.Now().UTC().Truncate(time.Second)
	month := func(m int) time.Time { return time.Date(2025, time.Month(1+m), 1, 0, 0, 0, 0, time.UTC) }

	var offset int64
	insertUsage := func(events [][3]any) { // customer, product, ts+qty
		var rows [][]any
		for _, e := range events {
			offset++
			ts, qty := e[2].([2]any)[0].(time.Time), e[2].([2]any)[1].(float64)
			rows = append(rows, []any{fmt.Sprintf("e%d", offset), e[0], e[1], ts, qty, usage.Topic, int32(0), offset, now, now.UnixMilli()})
		}
		if err := ddl.InsertRows(ctx, ch, fc.Database, usage, rows); err != nil {
			t.Fatal(err)
		}
	}
	actual := map[gapKey]float64{}
	events := map[gapKey]uint64{}
	gen := func(n int, months int) [][3]any {
		var out [][3]any
		for range n {
			c, p := fmt.Sprintf("c%d", rng.IntN(6)), fmt.Sprintf("p%d", rng.IntN(3))
			ts := month(rng.IntN(months)).Add(time.Duration(rng.IntN(27*24*3600)) * time.Second)
			qty := float64(rng.IntN(40)) / 4
			out = append(out, [3]any{c, p, [2]any{ts, qty}})
			k := gapKey{c, p, startOfMonth(ts)}
			actual[k] += qty
			events[k]++
		}
		return out
	}
	insertUsage(gen(1500, 5))

	// Plans for months 0..5 (month 5 has no usage), 0-3 revisions at horizons 0-3, and
	// one made after its period ended.
	var versions []planVersion
	var planRows [][]any
	addPlan := func(v planVersion) {
		offset++
		conf := 0.8
		planRows = append(planRows, []any{v.id, v.customer, v.product, v.period, v.qty, v.submitted, &conf, plans.Topic, int32(0), offset, now, now.UnixMilli()})
	}
	id := 0
	for c := range 6 {
		for p := range 3 {
			for m := range 6 {
				for range rng.IntN(4) {
					id++
					h := rng.IntN(4)
					sub := month(m).AddDate(0, -h, 0).Add(time.Duration(rng.IntN(27*24*3600)) * time.Second)
					v := planVersion{fmt.Sprintf("plan-%04d", id), fmt.Sprintf("c%d", c), fmt.Sprintf("p%d", p), month(m), sub, float64(10 + rng.IntN(200))}
					versions = append(versions, v)
					addPlan(v)
				}
			}
		}
	}
	late := planVersion{"plan-late", "c0", "p0", month(1), month(3).Add(time.Hour), 999}
	versions = append(versions, late)
	addPlan(late)
	addPlan(versions[0]) // a producer's late retry of the first plan: counted once
	if err := ddl.InsertRows(ctx, ch, fc.Database, plans, planRows); err != nil {
		t.Fatal(err)
	}

	check := func(stage string) {
		t.Helper()
		// Expected gaps, from the generated data.
		type gapRow struct {
			plannedLatest, plannedAtStart *float64
			versions                      uint64
			actual                        float64
			events                        uint64
		}
		want := map[gapKey]*gapRow{}
		row := func(k gapKey) *gapRow {
			if want[k] == nil {
				want[k] = &gapRow{}
			}
			return want[k]
		}
		latest := func(vs []planVersion) planVersion {
			sort.Slice(vs, func(i, j int) bool {
				if !vs[i].submitted.Equal(vs[j].submitted) {
					return vs[i].submitted.Before(vs[j].submitted)
				}
				return vs[i].id < vs[j].id
			})
			return vs[len(vs)-1]
		}
		byKey := map[gapKey][]planVersion{}
		for _, v := range versions {
			k := gapKey{v.customer, v.product, v.period}
			byKey[k] = append(byKey[k], v)
		}
		for k, vs := range byKey {
			r := row(k)
			r.versions = uint64(len(vs))
			q := latest(append([]planVersion(nil), vs...)).qty
			r.plannedLatest = &q
			var before []planVersion
			for _, v := range vs {
				if monthIndex(v.period)-monthIndex(v.submitted) >= 1 {
					before = append(before, v)
				}
			}
			if len(before) > 0 {
				q := latest(before).qty
				r.plannedAtStart = &q
			}
		}
		for k, a := range actual {
			row(k).actual, row(k).events = a, events[k]
		}

		rows, err := ch.Query(ctx, "SELECT customer_id, product, period, planned_latest, planned_at_start, versions, actual, events, gap, gap_ratio, consumed_share FROM "+
			pipeline.QualifiedTable(fc.Database, pipeline.ViewGaps))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for rows.Next() {
			var k gapKey
			var pl, ps, gap, ratio, share *float64
			var vers, evs uint64
			var act float64
			if err := rows.Scan(&k.customer, &k.product, &k.period, &pl, &ps, &vers, &act, &evs, &gap, &ratio, &share); err != nil {
				t.Fatal(err)
			}
			got++
			k.period = k.period.UTC()
			w := want[k]
			if w == nil {
				t.Errorf("%s: unexpected gap row %v", stage, k)
				continue
			}
			if !eqPtr(pl, w.plannedLatest) || !eqPtr(ps, w.plannedAtStart) || vers != w.versions || !near(act, w.actual) || evs != w.events {
				t.Errorf("%s: %v: planned_latest %v at_start %v versions %d actual %v events %d; want %v %v %d %v %d", stage, k,
					nullable64(pl), nullable64(ps), vers, act, evs, nullable64(w.plannedLatest), nullable64(w.plannedAtStart), w.versions, w.actual, w.events)
			}
			var wantGap, wantRatio, wantShare *float64
			if w.plannedLatest != nil {
				g := w.actual - *w.plannedLatest
				wantGap = &g
				if *w.plannedLatest != 0 {
					r, s := g / *w.plannedLatest, w.actual / *w.plannedLatest
					wantRatio, wantShare = &r, &s
				}
			}
			if !eqPtr(gap, wantGap) || !eqPtr(ratio, wantRatio) || !eqPtr(share, wantShare) {
				t.Errorf("%s: %v: gap %v ratio %v share %v; want %v %v %v", stage, k, nullable64(gap), nullable64(ratio), nullable64(share), nullable64(wantGap), nullable64(wantRatio), nullable64(wantShare))
			}
		}
		rows.Close()
		if got != len(want) {
			t.Errorf("%s: %d gap rows, want %d", stage, got, len(want))
		}

		// Expected accuracy per (product, horizon): the latest version at each horizon.
		type accKey struct {
			product string
			horizon int64
		}
		type acc struct {
			n                         uint64
			planned, actual, absError float64
		}
		wantAcc := map[accKey]*acc{}
		atHorizon := map[struct {
			k gapKey
			h int64
		}][]planVersion{}
		for _, v := range versions {
			h := int64(monthIndex(v.period) - monthIndex(v.submitted))
			if h < 0 || monthIndex(v.period) >= monthIndex(now) {
				continue
			}
			key := struct {
				k gapKey
				h int64
			}{gapKey{v.customer, v.product, v.period}, h}
			atHorizon[key] = append(atHorizon[key], v)
		}
		for key, vs := range atHorizon {
			p := latest(vs).qty
			a := actual[key.k]
			ak := accKey{key.k.product, key.h}
			if wantAcc[ak] == nil {
				wantAcc[ak] = &acc{}
			}
			wantAcc[ak].n++
			wantAcc[ak].planned += p
			wantAcc[ak].actual += a
			wantAcc[ak].absError += math.Abs(p - a)
		}
		rows, err = ch.Query(ctx, "SELECT product, horizon, n, planned, actual, bias, wape FROM "+pipeline.QualifiedTable(fc.Database, pipeline.ViewAccuracy))
		if err != nil {
			t.Fatal(err)
		}
		got = 0
		for rows.Next() {
			var k accKey
			var n uint64
			var planned, act float64
			var bias, wape *float64
			if err := rows.Scan(&k.product, &k.horizon, &n, &planned, &act, &bias, &wape); err != nil {
				t.Fatal(err)
			}
			got++
			w := wantAcc[k]
			if w == nil {
				t.Errorf("%s: unexpected accuracy row %v", stage, k)
				continue
			}
			wb, ww := (w.planned-w.actual)/w.actual, w.absError/w.actual
			if n != w.n || !near(planned, w.planned) || !near(act, w.actual) || !eqPtr(bias, &wb) || !eqPtr(wape, &ww) {
				t.Errorf("%s: accuracy %v: n %d planned %v actual %v bias %v wape %v; want %d %v %v %v %v", stage, k,
					n, planned, act, nullable64(bias), nullable64(wape), w.n, w.planned, w.actual, wb, ww)
			}
		}
		rows.Close()
		if got != len(wantAcc) {
			t.Errorf("%s: %d accuracy rows, want %d", stage, got, len(wantAcc))
		}
	}
	check("initial data")

	// Late usage events for earlier periods move the figures.
	insertUsage(gen(300, 3))
	check("after late events")

	// One customer's rows, read alone, are the view's rows of that customer: also after
	// a plan id is re-sent under another customer (another plan: the first stays), for
	// customers with no plan or no usage, and for one the loop never saw. The same for
	// one product's rows, and for one customer's rows of one product.
	moved := versions[1]
	moved.customer = "c5"
	planRows = nil
	addPlan(moved)
	if err := ddl.InsertRows(ctx, ch, fc.Database, plans, planRows); err != nil {
		t.Fatal(err)
	}
	fb := fc
	var filters []GapFilter
	for _, c := range []string{"c0", "c1", "c2", "c3", "c4", "c5", versions[1].customer, "nobody"} {
		filters = append(filters, GapFilter{Customer: c})
	}
	for _, p := range []string{"p0", "p1", "p2", "nothing"} {
		filters = append(filters, GapFilter{Product: p}, GapFilter{Customer: "c1", Product: p})
	}
	for _, f := range filters {
		whole, err := QueryGaps(ctx, ch, fc.Database, f)
		if err != nil {
			t.Fatal(err)
		}
		f.Feedback = &fb
		alone, err := QueryGaps(ctx, ch, fc.Database, f)
		if err != nil {
			t.Fatal(err)
		}
		if f.Customer != "nobody" && f.Product != "nothing" && len(whole) == 0 {
			t.Errorf("%+v: no rows in feedback_gaps: the comparison says nothing", f)
		}
		if !reflect.DeepEqual(whole, alone) {
			t.Errorf("customer %q, product %q: read alone %d rows, the view has %d:\n alone %+v\n view  %+v", f.Customer, f.Product, len(alone), len(whole), alone, whole)
		}
	}

	// Run rate: the period under way projects its actual so far to the whole period, and
	// its gap from that; no other period has a projection. The server's clock is read
	// between before and after, so the projection lies between the two computed here.
	cur := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	length := float64(cur.AddDate(0, 1, 0).Unix() - cur.Unix())
	var runUsage [][3]any
	for i := range 40 {
		ts := cur.Add(time.Duration(rng.Int64N(max(int64(now.Sub(cur)), 1))))
		runUsage = append(runUsage, [3]any{fmt.Sprintf("c%d", i%3), "p0", [2]any{ts, float64(1 + i%5)}})
	}
	insertUsage(runUsage)
	planRows = nil
	addPlan(planVersion{"plan-now-c0", "c0", "p0", cur, cur.AddDate(0, -1, 0), 120})
	addPlan(planVersion{"plan-now-c1", "c1", "p0", cur, cur.AddDate(0, -1, 0), 0})
	if err := ddl.InsertRows(ctx, ch, fc.Database, plans, planRows); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Unix()
	rows, err := ch.Query(ctx, "SELECT customer_id, period, actual, planned_latest, projected, projected_gap FROM "+
		pipeline.QualifiedTable(fc.Database, pipeline.ViewGaps)+" ORDER BY customer_id, product, period")
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now().Unix()
	projections := 0
	for rows.Next() {
		var (
			customer                    string
			period                      time.Time
			act                         float64
			planned, projected, projGap *float64
		)
		if err := rows.Scan(&customer, &period, &act, &planned, &projected, &projGap); err != nil {
			t.Fatal(err)
		}
		if !period.Equal(cur) {
			if projected != nil || projGap != nil {
				t.Errorf("%s %s: a projection (%v, %v) outside the period under way", customer, period.Format(time.DateOnly), nullable64(projected), nullable64(projGap))
			}
			continue
		}
		projections++
		lo := act * length / float64(max(after-cur.Unix(), 1))
		hi := act * length / float64(max(before-cur.Unix(), 1))
		if projected == nil || *projected < lo*(1-1e-9) || *projected > hi*(1+1e-9) {
			t.Errorf("%s: projected %v with %v so far, want between %v and %v", customer, nullable64(projected), act, lo, hi)
			continue
		}
		switch {
		case planned == nil && projGap != nil:
			t.Errorf("%s: a projected gap %v without a plan", customer, *projGap)
		case planned != nil && (projGap == nil || !near(*projGap, *projected-*planned)):
			t.Errorf("%s: projected gap %v, want %v - %v", customer, nullable64(projGap), *projected, *planned)
		}
	}
	rows.Close()
	if projections < 3 {
		t.Errorf("%d rows in the period under way, want those of c0, c1 and c2", projections)
	}

	// Per product and period (the dashboard's and the digests' sums): the period under
	// way projects the customers with plans (c0 and c1, not c2), and a period that has
	// not begun is marked so.
	planRows = nil
	addPlan(planVersion{"plan-next-c0", "c0", "p0", cur.AddDate(0, 1, 0), cur, 80})
	if err := ddl.InsertRows(ctx, ch, fc.Database, plans, planRows); err != nil {
		t.Fatal(err)
	}
	var sumProjected float64
	if err := ch.QueryRow(ctx, "SELECT sum(projected) FROM "+pipeline.QualifiedTable(fc.Database, pipeline.ViewGaps)+
		" WHERE product = 'p0' AND versions > 0 AND projected IS NOT NULL").Scan(&sumProjected); err != nil {
		t.Fatal(err)
	}
	pps, err := QueryProductPeriods(ctx, ch, fc.Database)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, pp := range pps {
		if pp.Product != "p0" {
			continue
		}
		switch {
		case pp.Period.Equal(cur):
			seen++
			// The two reads take now() a moment apart (in whole seconds): the projection,
			// actual x period / elapsed, may move by a few seconds' share between them.
			tol := math.Abs(sumProjected) * 3 / math.Max(time.Since(cur).Seconds(), 1)
			if !pp.Begun || pp.Projected == nil || math.Abs(*pp.Projected-sumProjected) > tol || sumProjected == 0 {
				t.Errorf("p0 in the period under way: begun %v, projected %v; want begun and %v", pp.Begun, nullable64(pp.Projected), sumProjected)
			}
		case pp.Period.After(cur):
			seen++
			if pp.Begun || pp.Projected != nil {
				t.Errorf("p0 %s has not begun: begun %v, projected %v", pp.Period.Format(time.DateOnly), pp.Begun, nullable64(pp.Projected))
			}
		default:
			if !pp.Begun || pp.Projected != nil {
				t.Errorf("p0 %s is over: begun %v, projected %v", pp.Period.Format(time.DateOnly), pp.Begun, nullable64(pp.Projected))
			}
		}
	}
	if seen != 2 {
		t.Errorf("p0 has %d periods under way or to come, want 2", seen)
	}
}

func near(a, b float64) bool {
	return a == b || math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b))
}

func eqPtr(a, b *float64) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return near(*a, *b)
}

func nullable64(p *float64) any {
	if p == nil {
		return "NULL"
	}
	return *p
}
