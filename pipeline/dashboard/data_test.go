package dashboard

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

type cell struct {
	customer, product string
	period            time.Time
}

type plan struct {
	id, customer, product string
	period, submitted     time.Time
	qty                   float64
}

// dataset is a loop's plans and usage over four months of 2025 (all completed), with
// the figures the dashboard shows computed here from the generated rows.
type dataset struct {
	plans  []plan
	actual map[cell]float64
}

func month(m int) time.Time { return time.Date(2025, time.Month(1+m), 1, 0, 0, 0, 0, time.UTC) }

func monthIndex(t time.Time) int { return t.Year()*12 + int(t.Month()) - 1 }

func generate(seed uint64) *dataset {
	rng := rand.New(rand.NewPCG(seed, 17))
	d := &dataset{actual: map[cell]float64{}}
	products := []string{"compute", "storage"}
	id := 0
	for c := range 4 {
		for _, p := range products {
			for m := range 4 {
				for range rng.IntN(3) {
					id++
					h := rng.IntN(3)
					sub := month(m).AddDate(0, -h, 0).Add(time.Duration(rng.IntN(20*24*3600)) * time.Second)
					d.plans = append(d.plans, plan{fmt.Sprintf("plan-%03d", id), fmt.Sprintf("c%d", c), p, month(m), sub, float64(20 + rng.IntN(180))})
				}
			}
		}
	}
	for c := range 5 { // c4 never plans
		for _, p := range products {
			for m := range 4 {
				for range rng.IntN(6) {
					d.actual[cell{fmt.Sprintf("c%d", c), p, month(m)}] += float64(rng.IntN(200)) / 4
				}
			}
		}
	}
	return d
}

func later(a, b plan) bool {
	return a.submitted.After(b.submitted) || (a.submitted.Equal(b.submitted) && a.id > b.id)
}

func (d *dataset) latest(keep func(plan) bool) map[cell]plan {
	out := map[cell]plan{}
	for _, v := range d.plans {
		if !keep(v) {
			continue
		}
		k := cell{v.customer, v.product, v.period}
		if o, ok := out[k]; !ok || later(v, o) {
			out[k] = v
		}
	}
	return out
}

// load creates the loop's tables and views in a new database and inserts the dataset,
// one event per generated usage amount, on the period's second day (its first, for the
// period under way, so that no event lies ahead of now).
func (d *dataset) load(t *testing.T, addr, db string) driver.Conn {
	t.Helper()
	cfg, fc := stacktest.FeedbackConfig(db)
	cfg.ClickHouse.Addr = addr
	conn := ddltest.ApplyFeedback(t, cfg, fc)
	now := time.Now().UTC().Truncate(time.Second)
	var offset int64
	var usage [][]any
	for k, a := range d.actual {
		offset++
		ts := k.period.Add(36 * time.Hour)
		if ts.After(now) {
			ts = k.period
		}
		usage = append(usage, []any{fmt.Sprintf("e%d", offset), k.customer, k.product, ts, a, "u", int32(0), offset, now, now.UnixMilli()})
	}
	ddltest.Insert(t, conn, db, cfg.Streams[0], usage...)
	var plans [][]any
	for _, v := range d.plans {
		offset++
		conf := 0.5
		plans = append(plans, []any{v.id, v.customer, v.product, v.period, v.qty, v.submitted, &conf, "p", int32(0), offset, now, now.UnixMilli()})
	}
	ddltest.Insert(t, conn, db, cfg.Streams[1], plans...)
	return conn
}

type wantPoint struct {
	period            time.Time
	planned, atStart  *float64
	actual, unplanned float64
	customers         int
	gap, ratio        *float64
}

func add(p *float64, x float64) *float64 {
	v := x
	if p != nil {
		v += *p
	}
	return &v
}

// series returns, per product, the points of the chart, oldest first.
func (d *dataset) series() map[string][]wantPoint {
	latest := d.latest(func(plan) bool { return true })
	atStart := d.latest(func(v plan) bool { return monthIndex(v.period)-monthIndex(v.submitted) >= 1 })
	cells := map[cell]bool{}
	for k := range latest {
		cells[k] = true
	}
	for k := range d.actual {
		cells[k] = true
	}
	points := map[string]map[time.Time]*wantPoint{}
	for k := range cells {
		if points[k.product] == nil {
			points[k.product] = map[time.Time]*wantPoint{}
		}
		p := points[k.product][k.period]
		if p == nil {
			p = &wantPoint{period: k.period}
			points[k.product][k.period] = p
		}
		if v, ok := latest[k]; ok {
			p.planned = add(p.planned, v.qty)
			p.actual += d.actual[k]
			p.customers++
		} else {
			p.unplanned += d.actual[k]
		}
		if v, ok := atStart[k]; ok {
			p.atStart = add(p.atStart, v.qty)
		}
	}
	out := map[string][]wantPoint{}
	for prod, byPeriod := range points {
		for _, p := range byPeriod {
			if p.planned != nil {
				g := p.actual - *p.planned
				p.gap = &g
				if *p.planned != 0 {
					r := g / *p.planned
					p.ratio = &r
				}
			}
			out[prod] = append(out[prod], *p)
		}
		sort.Slice(out[prod], func(i, j int) bool { return out[prod][i].period.Before(out[prod][j].period) })
	}
	return out
}

type wantGap struct {
	cell
	planned, actual, gap float64
	atStart              *float64
	versions             int
}

// largestGaps returns the n cells with a plan whose |gap| is largest, as the dashboard
// orders them (ties: newest period, then product, then customer).
func (d *dataset) largestGaps(n int) []wantGap {
	latest := d.latest(func(plan) bool { return true })
	atStart := d.latest(func(v plan) bool { return monthIndex(v.period)-monthIndex(v.submitted) >= 1 })
	versions := map[cell]int{}
	for _, v := range d.plans {
		versions[cell{v.customer, v.product, v.period}]++
	}
	var out []wantGap
	for k, v := range latest {
		g := wantGap{cell: k, planned: v.qty, actual: d.actual[k], gap: d.actual[k] - v.qty, versions: versions[k]}
		if s, ok := atStart[k]; ok {
			q := s.qty
			g.atStart = &q
		}
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if x, y := math.Abs(a.gap), math.Abs(b.gap); x != y {
			return x > y
		}
		if !a.period.Equal(b.period) {
			return a.period.After(b.period)
		}
		if a.product != b.product {
			return a.product < b.product
		}
		return a.customer < b.customer
	})
	return out[:min(n, len(out))]
}

type wantAccuracy struct {
	product                string
	horizon                int
	n                      int
	planned, actual, abErr float64
}

// accuracy returns feedback_accuracy's rows: per product and horizon, the latest plan
// made at that horizon for each (customer, period), against the period's actual.
func (d *dataset) accuracy() []wantAccuracy {
	type point struct {
		k cell
		h int
	}
	latest := map[point]plan{}
	for _, v := range d.plans {
		h := monthIndex(v.period) - monthIndex(v.submitted)
		if h < 0 {
			continue
		}
		p := point{cell{v.customer, v.product, v.period}, h}
		if o, ok := latest[p]; !ok || later(v, o) {
			latest[p] = v
		}
	}
	rows := map[[2]any]*wantAccuracy{}
	for p, v := range latest {
		key := [2]any{p.k.product, p.h}
		if rows[key] == nil {
			rows[key] = &wantAccuracy{product: p.k.product, horizon: p.h}
		}
		r, a := rows[key], d.actual[p.k]
		r.n++
		r.planned += v.qty
		r.actual += a
		r.abErr += math.Abs(v.qty - a)
	}
	var out []wantAccuracy
	for _, r := range rows {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].product != out[j].product {
			return out[i].product < out[j].product
		}
		return out[i].horizon < out[j].horizon
	})
	return out
}

// feedbackOf is the feedback of the loop dataset.load creates in db, with the tracking
// band limit (0: the default).
func feedbackOf(db string, limit float64) pipeline.FeedbackConfig {
	_, fc := stacktest.FeedbackConfig(db)
	fc.TrackingSignalLimit = limit
	return fc
}
