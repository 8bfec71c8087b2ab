package feedback

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// The figures of feedback_value_added and feedback_tracking, computed from plain slices,
// without ClickHouse: what the views must return.

// wapeOf is sum |forecast - actual| / sum actual over paired slices; nil when the actuals
// sum to 0.
func wapeOf(forecast, actual []float64) *float64 {
	var absErr, sum float64
	for i := range actual {
		absErr += math.Abs(forecast[i] - actual[i])
		sum += actual[i]
	}
	if sum <= 0 {
		return nil
	}
	w := absErr / sum
	return &w
}

// valueAdded returns the plans' WAPE, the naive forecast's, FVA = naive WAPE - WAPE
// (nil when either is) and whether the plans beat naive (FVA > 0).
func valueAdded(plans, naive, actual []float64) (wape, naiveWAPE, fva *float64, beats bool) {
	wape, naiveWAPE = wapeOf(plans, actual), wapeOf(naive, actual)
	if wape != nil && naiveWAPE != nil {
		f := *naiveWAPE - *wape
		fva, beats = &f, f > 0
	}
	return wape, naiveWAPE, fva, beats
}

// trackingOf returns, for a customer's errors (actual - plan made before the period),
// their number, sum, mean absolute value (MAD) and the tracking signal sum / MAD (nil
// when MAD is 0).
func trackingOf(errors []float64) (n int, cumulative, mad float64, ts *float64) {
	var abs float64
	for _, e := range errors {
		cumulative += e
		abs += math.Abs(e)
	}
	n = len(errors)
	if n == 0 {
		return 0, 0, 0, nil
	}
	mad = abs / float64(n)
	if mad > 0 {
		s := cumulative / mad
		ts = &s
	}
	return n, cumulative, mad, ts
}

// figData is usage and plans around the current period of a grain, with the customers
// the figures' edge cases need (see generateFigData).
type figData struct {
	grain  pipeline.Grain
	now    time.Time
	plans  []planVersion
	usage  []usageEvent
	actual map[gapKey]float64
	offset int64
}

// period returns the start of the period i periods from the current one.
func (d *figData) period(i int) time.Time {
	cur := PeriodStart(d.grain, d.now)
	if d.grain == pipeline.GrainWeek {
		return cur.AddDate(0, 0, 7*i)
	}
	return cur.AddDate(0, i, 0)
}

// index returns the number of periods from the current one to the one holding t.
func (d *figData) index(t time.Time) int {
	p, cur := PeriodStart(d.grain, t), PeriodStart(d.grain, d.now)
	if d.grain == pipeline.GrainWeek {
		return int(math.Round(p.Sub(cur).Hours() / (24 * 7)))
	}
	return monthIndex(p) - monthIndex(cur)
}

// generateFigData makes plans for periods -6..1 and usage for -7..0 of five ordinary
// customers and two products, with 0 to 3 plan versions at horizons -1 to 3, and:
//   - "zero" plans product "ghost" and never uses it (every actual 0: no WAPE), at a
//     tracking signal of exactly -4;
//   - "single" has one period with a plan made before it;
//   - "exact" plans exactly what it uses (MAD 0: no tracking signal);
//   - "tie" sends two versions at the same time, the greater plan id counting;
//   - "over" plans 100 and uses 60, six periods in a row (tracking signal -6);
//   - "zplan" plans 0 and uses 10.
func generateFigData(g pipeline.Grain, now time.Time, seed uint64) *figData {
	d := &figData{grain: g, now: now, actual: map[gapKey]float64{}}
	rng := rand.New(rand.NewPCG(seed, 17))
	id := 0
	plan := func(c, p string, i, h int, offset time.Duration, qty float64) {
		sub := d.period(i - h).Add(offset)
		if sub.After(now) {
			return
		}
		id++
		d.plans = append(d.plans, planVersion{fmt.Sprintf("plan-%05d", id), c, p, d.period(i), sub, qty})
	}
	use := func(c, p string, i int, qty float64) {
		span := d.period(i + 1).Sub(d.period(i))
		if i == 0 {
			span = max(now.Sub(d.period(0)), time.Second)
		}
		ts := d.period(i).Add(time.Duration(rng.Int64N(int64(span))))
		d.usage = append(d.usage, usageEvent{c, p, ts, qty})
		d.actual[gapKey{c, p, d.period(i)}] += qty
	}
	day := func() time.Duration { return time.Duration(rng.IntN(6*24*3600)) * time.Second }
	for c := range 5 {
		for p := range 2 {
			cust, prod := fmt.Sprintf("c%d", c), fmt.Sprintf("p%d", p)
			for i := -7; i <= 0; i++ {
				if rng.IntN(7) == 0 {
					continue // no usage in this period
				}
				for range 1 + rng.IntN(4) {
					use(cust, prod, i, float64(rng.IntN(200))/4)
				}
			}
			for i := -6; i <= 1; i++ {
				for range rng.IntN(4) {
					plan(cust, prod, i, rng.IntN(5)-1, day(), float64(rng.IntN(150)))
				}
			}
		}
	}
	for i := -4; i <= -1; i++ {
		plan("zero", "ghost", i, 1, day(), 30)
	}
	plan("single", "p1", -2, 1, day(), 40)
	use("single", "p1", -2, 55)
	use("single", "p1", -3, 20)
	for i := -5; i <= -3; i++ {
		q := float64(10 * (i + 9))
		plan("exact", "p1", i, 2, day(), q)
		use("exact", "p1", i, q)
	}
	for i := -3; i <= -1; i++ {
		at := d.period(i - 1).Add(time.Hour)
		id++
		d.plans = append(d.plans, planVersion{fmt.Sprintf("tie-%d-b", -i), "tie", "p0", d.period(i), at, 90},
			planVersion{fmt.Sprintf("tie-%d-a", -i), "tie", "p0", d.period(i), at, 10})
		use("tie", "p0", i, 50)
	}
	for i := -6; i <= -1; i++ {
		plan("over", "p0", i, 1, day(), 100)
		use("over", "p0", i, 60)
	}
	plan("zplan", "p1", -2, 0, day(), 0)
	plan("zplan", "p1", -1, 1, day(), 0)
	use("zplan", "p1", -2, 10)
	use("zplan", "p1", -1, 10)
	return d
}

func (d *figData) insert(t *testing.T, ctx context.Context, ch driver.Conn, cfg pipeline.Config) {
	t.Helper()
	d.insertRows(t, ctx, ch, cfg, d.usage, d.plans)
}

// insertRows inserts events and plan versions, each at an offset of its own.
func (d *figData) insertRows(t *testing.T, ctx context.Context, ch driver.Conn, cfg pipeline.Config, events []usageEvent, versions []planVersion) {
	t.Helper()
	var usage, plans [][]any
	for _, e := range events {
		d.offset++
		usage = append(usage, []any{fmt.Sprintf("e%d", d.offset), e.customer, e.product, e.ts, e.qty, "u", int32(0), d.offset, d.now, d.now.UnixMilli()})
	}
	for _, v := range versions {
		d.offset++
		conf := 0.5
		plans = append(plans, []any{v.id, v.customer, v.product, v.period, v.qty, v.submitted, &conf, "p", int32(0), d.offset, d.now, d.now.UnixMilli()})
	}
	if err := ddl.InsertRows(ctx, ch, cfg.ClickHouse.Database, cfg.Streams[0], usage); err != nil {
		t.Fatal(err)
	}
	if err := ddl.InsertRows(ctx, ch, cfg.ClickHouse.Database, cfg.Streams[1], plans); err != nil {
		t.Fatal(err)
	}
}

// latestOf returns the version submitted last, ties broken by the greater plan id.
func latestOf(vs []planVersion) planVersion {
	best := vs[0]
	for _, v := range vs[1:] {
		if v.submitted.After(best.submitted) || v.submitted.Equal(best.submitted) && v.id > best.id {
			best = v
		}
	}
	return best
}

type fvaKey struct {
	product string
	horizon int
}

type fvaRow struct {
	n                     uint64
	wape, naiveWAPE, fva  *float64
	beats                 bool
	plans, naive, actuals []float64
}

// expectedValueAdded builds, per product and horizon, the slices of plans, naive
// forecasts and actuals of feedback_accuracy's points, and their figures.
func (d *figData) expectedValueAdded() map[fvaKey]*fvaRow { return d.expectedValueAddedOf("") }

// expectedValueAddedOf is expectedValueAdded over one customer's points only ("": every
// customer's), as a statement computes them.
func (d *figData) expectedValueAddedOf(customer string) map[fvaKey]*fvaRow {
	type point struct {
		k gapKey
		h int
	}
	versions := map[point][]planVersion{}
	for _, v := range d.plans {
		i := d.index(v.period)
		h := i - d.index(v.submitted)
		if h < 0 || i >= 0 || customer != "" && v.customer != customer {
			continue
		}
		pt := point{gapKey{v.customer, v.product, v.period}, h}
		versions[pt] = append(versions[pt], v)
	}
	out := map[fvaKey]*fvaRow{}
	for pt, vs := range versions {
		k := fvaKey{pt.k.product, pt.h}
		r := out[k]
		if r == nil {
			r = &fvaRow{}
			out[k] = r
		}
		prev := gapKey{pt.k.customer, pt.k.product, d.period(d.index(pt.k.period) - 1)}
		r.n++
		r.plans = append(r.plans, latestOf(vs).qty)
		r.actuals = append(r.actuals, d.actual[pt.k])
		r.naive = append(r.naive, d.actual[prev])
	}
	for _, r := range out {
		r.wape, r.naiveWAPE, r.fva, r.beats = valueAdded(r.plans, r.naive, r.actuals)
	}
	return out
}

type trackKey struct{ customer, product string }

type trackRow struct {
	n               int
	cumulative, mad float64
	ts              *float64
	periods         []time.Time // in order, with errors
	errors          []float64
}

// expectedTracking builds, per customer and product, the errors actual - planned at
// start of the completed periods with a plan made before they began, and their figures.
func (d *figData) expectedTracking() map[trackKey]*trackRow {
	before := map[gapKey][]planVersion{}
	for _, v := range d.plans {
		i := d.index(v.period)
		if i < 0 && i-d.index(v.submitted) >= 1 {
			k := gapKey{v.customer, v.product, v.period}
			before[k] = append(before[k], v)
		}
	}
	out := map[trackKey]*trackRow{}
	for i := -8; i < 0; i++ { // in period order
		for k, vs := range before {
			if !k.period.Equal(d.period(i)) {
				continue
			}
			tk := trackKey{k.customer, k.product}
			if out[tk] == nil {
				out[tk] = &trackRow{}
			}
			out[tk].periods = append(out[tk].periods, k.period)
			out[tk].errors = append(out[tk].errors, d.actual[k]-latestOf(vs).qty)
		}
	}
	for _, r := range out {
		r.n, r.cumulative, r.mad, r.ts = trackingOf(r.errors)
	}
	return out
}

// TestValueAddedAndTrackingViews loads generated data whose figures are computed here
// from plain slices into the real ClickHouse, weekly and monthly, and compares every row
// of feedback_value_added and feedback_tracking with them.
func TestValueAddedAndTrackingViews(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	for _, g := range []pipeline.Grain{pipeline.GrainMonth, pipeline.GrainWeek} {
		t.Run(string(g), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_figures"))
			cfg.ClickHouse.Addr, fc.Grain = chAddr, g
			ch := ddltest.ApplyFeedback(t, cfg, fc)
			data := generateFigData(g, time.Now().UTC().Truncate(time.Second), 23)
			data.insert(t, ctx, ch, cfg)
			checkValueAdded(t, ctx, ch, fc.Database, data.expectedValueAdded())
			checkTracking(t, ctx, ch, fc.Database, data.expectedTracking())
		})
	}
}

func checkValueAdded(t *testing.T, ctx context.Context, ch driver.Conn, db string, want map[fvaKey]*fvaRow) {
	t.Helper()
	rows, err := QueryValueAdded(ctx, ch, db, "")
	if err != nil {
		t.Fatal(err)
	}
	checkValueAddedRows(t, rows, want)
}

// checkValueAddedRows compares feedback_value_added's rows (or a snapshot's) with want.
func checkValueAddedRows(t *testing.T, rows []ValueAddedRow, want map[fvaKey]*fvaRow) {
	t.Helper()
	var nullWAPE, beaten, beating bool
	for _, r := range rows {
		w := want[fvaKey{r.Product, int(r.Horizon)}]
		if w == nil {
			t.Errorf("unexpected feedback_value_added row %+v", r)
			continue
		}
		if r.N != w.n || !eqPtr(r.WAPE, w.wape) || !eqPtr(r.NaiveWAPE, w.naiveWAPE) || !eqPtr(r.FVA, w.fva) || r.BeatsNaive != w.beats {
			t.Errorf("%s horizon %d: n %d wape %v naive %v fva %v beats %t; want %d %v %v %v %t\n plans %v\n naive %v\n actual %v",
				r.Product, r.Horizon, r.N, nullable64(r.WAPE), nullable64(r.NaiveWAPE), nullable64(r.FVA), r.BeatsNaive,
				w.n, nullable64(w.wape), nullable64(w.naiveWAPE), nullable64(w.fva), w.beats, w.plans, w.naive, w.actuals)
		}
		nullWAPE = nullWAPE || w.wape == nil
		beaten, beating = beaten || (w.fva != nil && !w.beats), beating || w.beats
	}
	if len(rows) != len(want) {
		t.Errorf("%d feedback_value_added rows, want %d", len(rows), len(want))
	}
	t.Logf("feedback_value_added: %d rows compared", len(rows))
	if !nullWAPE || !beaten || !beating {
		t.Errorf("the data lacks a case: a horizon without actuals %t, plans beaten by naive %t, plans beating it %t", nullWAPE, beaten, beating)
	}
}

func checkTracking(t *testing.T, ctx context.Context, ch driver.Conn, db string, want map[trackKey]*trackRow) {
	t.Helper()
	rows, err := QueryTracking(ctx, ch, db, TrackingFilter{})
	if err != nil {
		t.Fatal(err)
	}
	checkTrackingRows(t, rows, want)
}

// checkTrackingRows compares feedback_tracking's rows (or a snapshot's) with want.
func checkTrackingRows(t *testing.T, rows []TrackingRow, want map[trackKey]*trackRow) {
	t.Helper()
	for _, r := range rows {
		w := want[trackKey{r.Customer, r.Product}]
		if w == nil {
			t.Errorf("unexpected feedback_tracking row %+v", r)
			continue
		}
		if r.N != uint64(w.n) || !near(r.CumulativeError, w.cumulative) || !near(r.MAD, w.mad) || !eqPtr(r.TrackingSignal, w.ts) {
			t.Errorf("%s %s: n %d cumulative %v mad %v ts %v; want %d %v %v %v (errors %v)", r.Customer, r.Product, r.N, r.CumulativeError,
				r.MAD, nullable64(r.TrackingSignal), w.n, w.cumulative, w.mad, nullable64(w.ts), w.errors)
		}
	}
	if len(rows) != len(want) {
		t.Errorf("%d feedback_tracking rows, want %d", len(rows), len(want))
	}
	t.Logf("feedback_tracking: %d rows compared", len(rows))
	// The edge cases are there, with the figures worked out by hand.
	for _, c := range []struct {
		customer, product string
		n                 int
		ts                *float64
	}{
		{"zero", "ghost", 4, ptrTo(-4.0)}, {"single", "p1", 1, ptrTo(1.0)}, {"exact", "p1", 3, nil},
		{"tie", "p0", 3, ptrTo(-3.0)}, {"over", "p0", 6, ptrTo(-6.0)}, {"zplan", "p1", 1, ptrTo(1.0)},
	} {
		w := want[trackKey{c.customer, c.product}]
		if w == nil || w.n != c.n || !eqPtr(w.ts, c.ts) {
			t.Errorf("%s %s: the generated data makes %+v, want n %d and tracking signal %v", c.customer, c.product, w, c.n, nullable64(c.ts))
		}
	}
}

func ptrTo(f float64) *float64 { return &f }
