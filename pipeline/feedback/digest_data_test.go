package feedback

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// digestData is a loop's plans and usage generated relative to the current month, with
// every figure a digest carries computed here, independently of the views.
type digestData struct {
	now      time.Time
	versions []planVersion
	actual   map[gapKey]float64
}

func (d *digestData) month(m int) time.Time { return startOfMonth(d.now).AddDate(0, m, 0) }

// generateDigestData makes plans for months -4..+1 around the current one and usage for
// months -4..0 (the current month up to now). Usage follows the plans within about 10%,
// except product p2 in month -2, where customers used about 60% more than planned; c5
// uses products without ever planning. The current month's usage so far keeps pace
// with the plans.
func generateDigestData(now time.Time, seed uint64) *digestData {
	d := &digestData{now: now, actual: map[gapKey]float64{}}
	rng := rand.New(rand.NewPCG(seed, 3))
	id := 0
	for c := range 5 {
		for p := range 3 {
			for m := -4; m <= 1; m++ {
				for range 1 + rng.IntN(3) {
					h := rng.IntN(3)
					sub := d.month(m).AddDate(0, -h, 0).Add(time.Duration(rng.IntN(20*24*3600)) * time.Second)
					if sub.After(now) {
						continue
					}
					id++
					d.versions = append(d.versions, planVersion{fmt.Sprintf("plan-%04d", id), fmt.Sprintf("c%d", c), fmt.Sprintf("p%d", p),
						d.month(m), sub, float64(40 + rng.IntN(120))})
				}
			}
		}
	}
	return d
}

// usageEvents returns events that follow the generated plans; each is customer,
// product, ts, quantity.
func (d *digestData) usageEvents(rng *rand.Rand) []usageEvent {
	latest := d.latestPlans()
	var out []usageEvent
	for c := range 6 {
		for p := range 3 {
			for m := -4; m <= 0; m++ {
				k := gapKey{fmt.Sprintf("c%d", c), fmt.Sprintf("p%d", p), d.month(m)}
				target := 30.0
				if v, ok := latest[k]; ok {
					target = v.qty * (0.9 + 0.2*rng.Float64())
					if p == 2 && m == -2 {
						target = v.qty * 1.6
					}
				}
				if m == 0 {
					// The current month is under way: usage so far keeps pace with the
					// plans, so that its run rate flags nothing on any day of the month.
					target *= d.now.Sub(d.month(0)).Seconds() / d.month(1).Sub(d.month(0)).Seconds()
				}
				span := 27 * 24 * time.Hour
				if m == 0 {
					span = max(d.now.Sub(d.month(0)), time.Second)
				}
				n := 2 + rng.IntN(4)
				for range n {
					qty := math.Round(target/float64(n)*4) / 4
					out = append(out, usageEvent{k.customer, k.product, d.month(m).Add(time.Duration(rng.Int64N(int64(span)))), qty})
				}
			}
		}
	}
	return out
}

type usageEvent struct {
	customer, product string
	ts                time.Time
	qty               float64
}

func (d *digestData) latestPlans() map[gapKey]planVersion {
	out := map[gapKey]planVersion{}
	for _, v := range d.versions {
		k := gapKey{v.customer, v.product, v.period}
		if o, ok := out[k]; !ok || v.submitted.After(o.submitted) || (v.submitted.Equal(o.submitted) && v.id > o.id) {
			out[k] = v
		}
	}
	return out
}

func (d *digestData) insertUsage(t *testing.T, ctx context.Context, conn driver.Conn, db string, s pipeline.StreamConfig, events []usageEvent, offset *int64) {
	t.Helper()
	var rows [][]any
	for _, e := range events {
		*offset++
		rows = append(rows, []any{fmt.Sprintf("e%d", *offset), e.customer, e.product, e.ts, e.qty, s.Topic, int32(0), *offset, d.now, d.now.UnixMilli()})
		d.actual[gapKey{e.customer, e.product, startOfMonth(e.ts)}] += e.qty
	}
	if err := ddl.InsertRows(ctx, conn, db, s, rows); err != nil {
		t.Fatal(err)
	}
}

func (d *digestData) insertPlans(t *testing.T, ctx context.Context, conn driver.Conn, db string, s pipeline.StreamConfig, offset *int64) {
	t.Helper()
	var rows [][]any
	for _, v := range d.versions {
		*offset++
		conf := 0.7
		rows = append(rows, []any{v.id, v.customer, v.product, v.period, v.qty, v.submitted, &conf, s.Topic, int32(0), *offset, d.now, d.now.UnixMilli()})
	}
	if err := ddl.InsertRows(ctx, conn, db, s, rows); err != nil {
		t.Fatal(err)
	}
}

// expected computes the digests (without version, time and threshold) from the
// generated data.
func (d *digestData) expected(loop string, top int, threshold *float64) map[gapKey]Digest {
	latest := d.latestPlans()
	atStart := map[gapKey]planVersion{}
	for _, v := range d.versions {
		if monthIndex(v.period)-monthIndex(v.submitted) < 1 {
			continue
		}
		k := gapKey{v.customer, v.product, v.period}
		if o, ok := atStart[k]; !ok || v.submitted.After(o.submitted) || (v.submitted.Equal(o.submitted) && v.id > o.id) {
			atStart[k] = v
		}
	}
	keys := map[gapKey]bool{}
	for k := range latest {
		keys[k] = true
	}
	for k := range d.actual {
		keys[k] = true
	}
	acc := d.accuracy()
	out := map[gapKey]Digest{}
	gaps := map[gapKey][]CustomerGap{}
	for k := range keys {
		pk := gapKey{product: k.product, period: k.period}
		dg, ok := out[pk]
		if !ok {
			dg = Digest{Schema: DigestSchema, Loop: loop, Product: k.product, Period: Date{k.period}, Granularity: pipeline.GrainMonth,
				Complete: !k.period.AddDate(0, 1, 0).After(d.now), Accuracy: acc[k.product]}
		}
		a := d.actual[k]
		if v, ok := latest[k]; ok {
			dg.CustomersWithPlans++
			dg.PlannedLatest = addPtr(dg.PlannedLatest, v.qty)
			dg.Actual += a
			g := CustomerGap{Customer: k.customer, PlannedLatest: v.qty, Actual: a, Gap: a - v.qty}
			r := g.Gap / v.qty
			g.GapRatio = &r
			gaps[pk] = append(gaps[pk], g)
		} else {
			dg.UnplannedActual += a
		}
		if v, ok := atStart[k]; ok {
			dg.PlannedAtStart = addPtr(dg.PlannedAtStart, v.qty)
		}
		out[pk] = dg
	}
	for pk, dg := range out {
		// The month under way: its actual so far at its rate to the month's end.
		underWay := !dg.Complete && !pk.period.After(d.now)
		share := d.now.Sub(pk.period).Seconds() / pk.period.AddDate(0, 1, 0).Sub(pk.period).Seconds()
		if underWay && share > 0 && dg.CustomersWithPlans > 0 {
			proj := dg.Actual / share
			dg.Projected = &proj
			if dg.PlannedLatest != nil {
				pr := (proj - *dg.PlannedLatest) / *dg.PlannedLatest
				dg.ProjectedGapRatio = &pr
			}
		}
		if dg.PlannedLatest != nil {
			g := dg.Actual - *dg.PlannedLatest
			r := g / *dg.PlannedLatest
			dg.Gap, dg.GapRatio = &g, &r
			if threshold != nil {
				runRate := underWay && share >= 0.25 && math.Abs(*dg.ProjectedGapRatio) > *threshold
				dg.Flagged = (dg.Complete && math.Abs(r) > *threshold) || (underWay && r > *threshold) || runRate
			}
		}
		gs := gaps[pk]
		sort.Slice(gs, func(i, j int) bool {
			if a, b := math.Abs(gs[i].Gap), math.Abs(gs[j].Gap); a != b {
				return a > b
			}
			return gs[i].Customer < gs[j].Customer
		})
		dg.TopGaps = gs[:min(top, len(gs))]
		if dg.TopGaps == nil {
			dg.TopGaps = []CustomerGap{}
		}
		out[pk] = dg
	}
	return out
}

// accuracy computes each product's WAPE and bias over completed periods: every
// (customer, period, horizon >= 0) point is the latest plan made at that horizon.
func (d *digestData) accuracy() map[string]*ProductAccuracy {
	type point struct {
		k gapKey
		h int
	}
	latest := map[point]planVersion{}
	for _, v := range d.versions {
		h := monthIndex(v.period) - monthIndex(v.submitted)
		if h < 0 || monthIndex(v.period) >= monthIndex(d.now) {
			continue
		}
		p := point{gapKey{v.customer, v.product, v.period}, h}
		if o, ok := latest[p]; !ok || v.submitted.After(o.submitted) || (v.submitted.Equal(o.submitted) && v.id > o.id) {
			latest[p] = v
		}
	}
	type sums struct{ absErr, signed, actual float64 }
	s := map[string]*sums{}
	out := map[string]*ProductAccuracy{}
	for p, v := range latest {
		if s[p.k.product] == nil {
			s[p.k.product], out[p.k.product] = &sums{}, &ProductAccuracy{}
		}
		a := d.actual[p.k]
		s[p.k.product].absErr += math.Abs(v.qty - a)
		s[p.k.product].signed += v.qty - a
		s[p.k.product].actual += a
		out[p.k.product].Points++
	}
	for prod, pa := range out {
		if x := s[prod]; x.actual > 0 {
			w, b := x.absErr/x.actual, x.signed/x.actual
			pa.WAPE, pa.Bias = &w, &b
		}
	}
	return out
}

func addPtr(p *float64, x float64) *float64 {
	v := x
	if p != nil {
		v += *p
	}
	return &v
}
