package feedback

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// readPeriods reads the given periods' cells of feedback_gaps (with, for each complete
// one, the period before's, for the naive forecast) and the accuracy points of the
// complete ones, and computes each period's figures. With all set to false (the periods
// could not be listed), it reads every period the views hold.
func (c *Cache) readPeriods(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, stale []time.Time, listed bool, current time.Time, k int) (map[time.Time]*periodFigures, error) {
	if listed && len(stale) == 0 {
		return nil, nil
	}
	g := cfg.Grain
	want := map[time.Time]bool{}
	read := map[time.Time]bool{}
	var sums []time.Time
	for _, p := range stale {
		if !p.Before(current) {
			// The period under way and those ahead have no accuracy or tracking yet: their
			// sums and largest gaps are all they need, and ClickHouse works them out.
			sums = append(sums, p)
			continue
		}
		want[p], read[p] = true, true
		read[previous(g, p)] = true
	}
	out, err := readSums(ctx, conn, cfg, sums, k)
	if err != nil {
		return nil, err
	}
	if listed && len(read) == 0 {
		return out, nil
	}
	// Cells of the periods read, by period.
	from, args, err := gapsOf(cfg, listed, read)
	if err != nil {
		return nil, err
	}
	cells, err := queryGapRows(ctx, conn, cfg.Database, gapRowsSelect+from+" "+ddl.PushDownSettings, args...)
	if err != nil {
		return nil, err
	}
	byPeriod := map[time.Time][]GapRow{}
	for _, r := range cells {
		byPeriod[r.Period] = append(byPeriod[r.Period], r)
		if !listed {
			want[r.Period] = true
		}
	}
	// The accuracy points of the complete periods among them.
	var ranges []string
	var rangeArgs []any
	for p := range want {
		if p.Before(current) {
			ranges = append(ranges, "(period >= toDate(?) AND period < toDate(?))")
			rangeArgs = append(rangeArgs, p.Format(time.DateOnly), PeriodEnd(g, p).Format(time.DateOnly))
		}
	}
	points := map[time.Time][]point{}
	if len(ranges) > 0 || !listed {
		cond := strings.Join(ranges, " OR ")
		if !listed {
			cond = ""
		}
		if points, err = queryPoints(ctx, conn, cfg, cond, rangeArgs); err != nil {
			return nil, err
		}
	}
	for p := range want {
		f := &periodFigures{k: k}
		f.fromCells(byPeriod[p], k)
		if p.Before(current) {
			f.fromPoints(points[p], byPeriod[p], byPeriod[previous(g, p)])
			for _, r := range byPeriod[p] {
				if r.PlannedAtStart != nil {
					f.errors = append(f.errors, pairError{pair: c.intern(pair{r.Product, r.Customer}), e: r.Actual - *r.PlannedAtStart})
				}
			}
		}
		out[p] = f
	}
	return out, nil
}

// gapsOf is a subquery of feedback_gaps' rows of the periods given (all, unless listed),
// with its arguments: only their groups of the rollups are read.
func gapsOf(cfg pipeline.FeedbackConfig, listed bool, periods map[time.Time]bool) (string, []any, error) {
	where := "1 = 1"
	var args []any
	if listed {
		marks := make([]string, 0, len(periods))
		for p := range periods {
			marks = append(marks, "toDate(?)")
			args = append(args, p.Format(time.DateOnly))
		}
		where = "period IN (" + strings.Join(marks, ", ") + ")"
	}
	body, err := ddl.FilteredGapsSQL(cfg, where)
	if err != nil {
		return "", nil, err
	}
	return "(\n" + body + "\n)", append(args, args...), nil
}

// readSums reads the sums per product of the given periods, with each product's k
// largest gaps, and makes the periods' figures of them: the period's k largest gaps are
// among its products' (both orders agree within a product).
func readSums(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, periods []time.Time, k int) (map[time.Time]*periodFigures, error) {
	out := map[time.Time]*periodFigures{}
	if len(periods) == 0 {
		return out, nil
	}
	set := map[time.Time]bool{}
	for _, p := range periods {
		set[p] = true
		out[p] = &periodFigures{k: k, tops: map[string][]CustomerGap{}}
	}
	from, args, err := gapsOf(cfg, true, set)
	if err != nil {
		return nil, err
	}
	pps, tops, err := queryProductPeriods(ctx, conn, cfg.Database, from, args, max(k, 1), "\n"+ddl.PushDownSettings)
	if err != nil {
		return nil, err
	}
	for _, pp := range pps {
		f := out[pp.Period]
		if f == nil {
			continue
		}
		f.products = append(f.products, pp)
		for _, r := range tops[pp.Product][pp.Period] {
			f.tops[pp.Product] = append(f.tops[pp.Product], CustomerGap{Customer: r.Customer, PlannedLatest: *r.PlannedLatest, Actual: r.Actual, Gap: *r.Gap, GapRatio: r.GapRatio})
			f.largest = append(f.largest, r)
		}
	}
	for _, f := range out {
		sortLargest(f.largest)
		f.largest = f.largest[:min(k, len(f.largest))]
		for name, t := range f.tops {
			f.tops[name] = t[:min(k, len(t))]
		}
	}
	return out, nil
}

func (c *Cache) intern(p pair) int32 {
	if i, ok := c.pairs[p]; ok {
		return i
	}
	i := int32(len(c.names))
	c.pairs[p] = i
	c.names = append(c.names, p)
	return i
}

// point is one of feedback_accuracy's points: a customer's plan for a product and a
// complete period, as it stood horizon periods ahead.
type point struct {
	customer, product string
	horizon           int64
	p                 float64
}

// queryPoints reads the accuracy points of the plans that meet cond, by period.
func queryPoints(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, cond string, args []any) (map[time.Time][]point, error) {
	q, err := ddl.AccuracyPointsSQL(cfg, cond)
	if err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("reading the accuracy points of %s.%s: %w", cfg.Database, cfg.PlanTable, err)
	}
	defer rows.Close()
	out := map[time.Time][]point{}
	for rows.Next() {
		var (
			pt     point
			period time.Time
		)
		if err := rows.Scan(&pt.customer, &pt.product, &period, &pt.horizon, &pt.p); err != nil {
			return nil, fmt.Errorf("reading the accuracy points of %s.%s: %w", cfg.Database, cfg.PlanTable, err)
		}
		period = period.UTC()
		out[period] = append(out[period], pt)
	}
	return out, rows.Err()
}

// fromCells sums a period's cells per product as QueryProductPeriods does, and keeps
// each product's k largest gaps and the period's.
func (f *periodFigures) fromCells(cells []GapRow, k int) {
	byProduct := map[string]*ProductPeriod{}
	var planned, atStart, projected map[string]float64
	planned, atStart, projected = map[string]float64{}, map[string]float64{}, map[string]float64{}
	starters, projecting := map[string]uint64{}, map[string]uint64{}
	withPlans, ofProduct := []int{}, map[string][]int{}
	for i, r := range cells {
		pp := byProduct[r.Product]
		if pp == nil {
			pp = &ProductPeriod{Product: r.Product, Period: r.Period}
			byProduct[r.Product] = pp
		}
		if r.Versions == 0 {
			pp.UnplannedActual += r.Actual
			continue
		}
		pp.CustomersWithPlans++
		planned[r.Product] += *r.PlannedLatest
		pp.Actual += r.Actual
		if r.PlannedAtStart != nil {
			starters[r.Product]++
			atStart[r.Product] += *r.PlannedAtStart
		}
		if r.Projected != nil {
			projecting[r.Product]++
			projected[r.Product] += *r.Projected
		}
		withPlans = append(withPlans, i)
		ofProduct[r.Product] = append(ofProduct[r.Product], i)
	}
	f.tops = map[string][]CustomerGap{}
	for name, pp := range byProduct {
		if pp.CustomersWithPlans > 0 {
			v := planned[name]
			pp.PlannedLatest = &v
		}
		if starters[name] > 0 {
			v := atStart[name]
			pp.PlannedAtStart = &v
		}
		if projecting[name] > 0 {
			v := projected[name]
			pp.Projected = &v
		}
		f.products = append(f.products, *pp)
		// The largest |gap| first, ties by customer.
		idx := ofProduct[name]
		for _, i := range topK(len(idx), k, func(a, b int) bool {
			x, y := &cells[idx[a]], &cells[idx[b]]
			if ga, gb := math.Abs(*x.Gap), math.Abs(*y.Gap); ga != gb {
				return ga > gb
			}
			return x.Customer < y.Customer
		}) {
			r := &cells[idx[i]]
			f.tops[name] = append(f.tops[name], CustomerGap{Customer: r.Customer, PlannedLatest: *r.PlannedLatest, Actual: r.Actual, Gap: *r.Gap, GapRatio: r.GapRatio})
		}
	}
	sort.Slice(f.products, func(i, j int) bool { return f.products[i].Product < f.products[j].Product })
	for _, i := range topK(len(withPlans), k, func(a, b int) bool { return largerGap(&cells[withPlans[a]], &cells[withPlans[b]]) }) {
		f.largest = append(f.largest, cells[withPlans[i]])
	}
}

// topK returns the indices of the first k of n items in the order less gives, in that
// order, without sorting the rest.
func topK(n, k int, less func(a, b int) bool) []int {
	out := make([]int, 0, k+1)
	for i := range n {
		if k == 0 || len(out) == k && !less(i, out[k-1]) {
			continue
		}
		at := sort.Search(len(out), func(j int) bool { return less(i, out[j]) })
		out = append(out, 0)
		copy(out[at+1:], out[at:])
		out[at] = i
		if len(out) > k {
			out = out[:k]
		}
	}
	return out
}

// sortLargest orders gap rows as QueryLargestGaps does (largerGap).
func sortLargest(rows []GapRow) {
	sort.Slice(rows, func(i, j int) bool { return largerGap(&rows[i], &rows[j]) })
}

// largerGap is QueryLargestGaps' order: largest |gap| first, then newest period, product
// and customer.
func largerGap(x, y *GapRow) bool {
	a, b := math.Abs(*x.Gap), math.Abs(*y.Gap)
	switch {
	case a != b:
		return a > b
	case !x.Period.Equal(y.Period):
		return x.Period.After(y.Period)
	case x.Product != y.Product:
		return x.Product < y.Product
	default:
		return x.Customer < y.Customer
	}
}

// fromPoints sums a complete period's accuracy points per product and horizon, each
// against the customer's actual of the period (0 without usage) and the naive forecast,
// the actual of the period before (0 without usage then), as feedback_accuracy and
// feedback_value_added do.
func (f *periodFigures) fromPoints(points []point, cells, before []GapRow) {
	actual := func(rows []GapRow) map[pair]float64 {
		m := make(map[pair]float64, len(rows))
		for _, r := range rows {
			m[pair{r.Product, r.Customer}] = r.Actual
		}
		return m
	}
	now, naive := actual(cells), actual(before)
	f.points = map[horizonKey]*pointSums{}
	for _, pt := range points {
		who := pair{pt.product, pt.customer}
		sumsAt(f.points, horizonKey{pt.product, pt.horizon}).add(pt.p, now[who], naive[who])
	}
}
