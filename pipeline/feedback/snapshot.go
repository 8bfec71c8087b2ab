package feedback

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Snapshot is every figure the digests and the dashboard are made of, read at one
// moment: feedback_gaps summed per product and period with each period's largest gaps,
// feedback_accuracy, feedback_value_added and the customers' tracking signals. Each is
// computed from the views' own definitions, one period at a time (see Cache).
type Snapshot struct {
	// Periods are the sums per product and period, ordered by product, then period.
	Periods []ProductPeriod
	// Accuracy and ValueAdded are feedback_accuracy's and feedback_value_added's rows,
	// by product and horizon.
	Accuracy   []AccuracyRow
	ValueAdded []ValueAddedRow

	tops    map[string]map[time.Time][]CustomerGap
	largest []GapRow
	paths   []trackingPath
	rows    []TrackingRow
	// asOf lists, per product and complete period, the customers outside the band of
	// limit as of its end (trackingAsOf), in customer order; pathsKey is what the paths
	// were made from.
	asOf     map[string]map[time.Time][]string
	outside  []TrackingRow
	limit    float64
	pathsKey string
}

// trackingAsOf is trackingAsOf over the snapshot's paths, from what was worked out with
// them when the band is the same.
func (s *Snapshot) trackingAsOf(product string, period time.Time, limit float64, top int) *ProductTracking {
	if limit != s.limit || s.asOf == nil {
		return trackingAsOf(s.paths, product, period, limit, top)
	}
	out := s.asOf[product][period]
	return &ProductTracking{Limit: limit, Outside: uint64(len(out)), Customers: append([]string{}, out[:min(len(out), top)]...)}
}

// LargestGaps returns up to n rows of feedback_gaps with the largest |gap| among the
// customers with plans, of periods begun, as QueryLargestGaps orders them. n is at most
// the k the snapshot was read with.
func (s *Snapshot) LargestGaps(n int) []GapRow {
	return append([]GapRow(nil), s.largest[:min(n, len(s.largest))]...)
}

// Outside returns feedback_tracking's rows whose |tracking signal| exceeds limit,
// largest first, then by customer and product.
func (s *Snapshot) Outside(limit float64) []TrackingRow {
	if limit == s.limit && s.outside != nil {
		return append([]TrackingRow{}, s.outside...)
	}
	return outsideRows(s.rows, limit)
}

// outsideRows picks and orders the rows outside the band of limit (Outside).
func outsideRows(rows []TrackingRow, limit float64) []TrackingRow {
	var idx []int
	for i, r := range rows {
		if r.TrackingSignal != nil && math.Abs(*r.TrackingSignal) > limit {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(i, j int) bool {
		x, y := &rows[idx[i]], &rows[idx[j]]
		a, b := math.Abs(*x.TrackingSignal), math.Abs(*y.TrackingSignal)
		if a != b {
			return a > b
		}
		if x.Customer != y.Customer {
			return x.Customer < y.Customer
		}
		return x.Product < y.Product
	})
	out := make([]TrackingRow, len(idx))
	for i, j := range idx {
		out[i] = rows[j]
	}
	return out
}

// Cache keeps, per period, what a Snapshot is made of, and reads again only the periods
// whose data changed. A period's figures depend on its own rows of the two feedback
// rollups and of the plan table (and, once complete, on the actuals of the period
// before, the naive forecast's); every insert, merge, mutation (a consent withdrawal)
// or dropped partition changes the set of data parts that hold them, which is cheap to
// read (the _part of each row, no figure). So a period is read again when that set
// changed, when it turned from under way to complete, or when it is the period under
// way (whose run rate moves with the clock). At steady state a read costs the period
// under way, not the history. The zero Cache and a nil *Cache keep nothing: every read
// computes every period. Safe for concurrent use; reads are serialised.
type Cache struct {
	mu       sync.Mutex
	cfg      pipeline.FeedbackConfig
	features *pipeline.ServerFeatures
	periods  map[time.Time]*periodFigures
	pairs    map[pair]int32
	names    []pair
	// pathsKey is what the cached tracking paths were made from.
	pathsKey string
	paths    []trackingPath
	rows     []TrackingRow
	asOf     map[string]map[time.Time][]string
	outside  []TrackingRow
	// read is how many periods the last Read read again (all of them: -1).
	read int
}

// NewCache returns an empty cache.
func NewCache() *Cache { return &Cache{} }

// pair is a customer's product.
type pair struct{ product, customer string }

// periodFigures is what one period contributes to a snapshot.
type periodFigures struct {
	key      string
	k        int
	products []ProductPeriod
	tops     map[string][]CustomerGap
	largest  []GapRow
	points   map[horizonKey]*pointSums
	errors   []pairError
}

type horizonKey struct {
	product string
	horizon int64
}

// pointSums are a product's accuracy points at one horizon: p the plan, a the actual,
// naive the actual of the period before.
type pointSums struct {
	n                       uint64
	p, a, signed, abs, nabs float64
}

// pairError is a customer's error (actual - planned_at_start) for a product in one
// completed period with a plan made before it.
type pairError struct {
	pair int32
	e    float64
}

// ReadSnapshot reads a loop's figures without keeping anything (a nil Cache).
func ReadSnapshot(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, k int, now time.Time) (*Snapshot, error) {
	var c *Cache
	return c.Read(ctx, conn, cfg, k, now)
}

// Read returns the loop's figures as of now; k is how many customers each product and
// period's top gaps list (and how many largest gaps the snapshot keeps). It keeps the
// periods it read in c, when the loop's data parts can be told apart per period (a
// single server: on a cluster each shard holds its own parts, and every period is read).
func (c *Cache) Read(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, k int, now time.Time) (*Snapshot, error) {
	keep := c != nil
	if c == nil {
		c = &Cache{}
	} else {
		c.mu.Lock()
		defer c.mu.Unlock()
	}
	// Modern servers need the joined subqueries named, as the views have them.
	if c.features == nil {
		f, err := pipeline.ReadServerFeatures(ctx, conn)
		if err != nil {
			return nil, err
		}
		c.features = &f
	}
	cfg.Features = *c.features
	if c.periods == nil || c.cfg != cfg {
		c.cfg, c.periods, c.pairs, c.names, c.pathsKey = cfg, map[time.Time]*periodFigures{}, map[pair]int32{}, nil, ""
	}
	g := cfg.Grain
	current := PeriodStart(g, now)
	var (
		sigs = map[time.Time]string{}
		ok   bool
		err  error
	)
	if cfg.Cluster == "" {
		if sigs, ok, err = signatures(ctx, conn, cfg); err != nil {
			return nil, err
		}
	}
	keep = keep && ok
	if !keep {
		c.periods = map[time.Time]*periodFigures{}
	}
	all := make([]time.Time, 0, len(sigs))
	for p := range sigs {
		all = append(all, p)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Before(all[j]) })
	keys := map[time.Time]string{}
	var stale []time.Time
	for _, p := range all {
		class := "future"
		switch {
		case p.Before(current):
			class = "past:" + sigs[previous(g, p)]
		case p.Equal(current):
			class = "current"
		}
		keys[p] = class + "|" + sigs[p]
		f := c.periods[p]
		if !keep || p.Equal(current) || f == nil || f.key != keys[p] || f.k < k {
			stale = append(stale, p)
		}
	}
	c.read = len(stale)
	if !ok {
		c.read = -1
	}
	fresh, err := c.readPeriods(ctx, conn, cfg, stale, ok, current, k)
	if err != nil {
		return nil, err
	}
	for p, f := range fresh {
		f.key = keys[p]
		c.periods[p] = f
	}
	// Periods that no longer hold data (retention, a withdrawal) go.
	for p := range c.periods {
		if _, held := keys[p]; !held && ok {
			delete(c.periods, p)
		}
	}
	return c.assemble(current, now, k), nil
}

// previous is the start of the period before the one starting at p.
func previous(g pipeline.Grain, p time.Time) time.Time {
	if g == pipeline.GrainWeek {
		return p.AddDate(0, 0, -7)
	}
	return p.AddDate(0, -1, 0)
}

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
		key := horizonKey{pt.product, pt.horizon}
		s := f.points[key]
		if s == nil {
			s = &pointSums{}
			f.points[key] = s
		}
		a, n := now[pair{pt.product, pt.customer}], naive[pair{pt.product, pt.customer}]
		s.n++
		s.p += pt.p
		s.a += a
		s.signed += pt.p - a
		s.abs += math.Abs(pt.p - a)
		s.nabs += math.Abs(n - a)
	}
}

// assemble puts the periods' figures together.
func (c *Cache) assemble(current, now time.Time, k int) *Snapshot {
	s := &Snapshot{tops: map[string]map[time.Time][]CustomerGap{}, Accuracy: []AccuracyRow{}, ValueAdded: []ValueAddedRow{}}
	periods := make([]time.Time, 0, len(c.periods))
	for p := range c.periods {
		periods = append(periods, p)
	}
	sort.Slice(periods, func(i, j int) bool { return periods[i].Before(periods[j]) })
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	sums := map[horizonKey]*pointSums{}
	var pastKeys []string
	for _, p := range periods {
		f := c.periods[p]
		begun := !p.After(today)
		for _, pp := range f.products {
			pp.Begun = begun
			s.Periods = append(s.Periods, pp)
		}
		for product, t := range f.tops {
			if s.tops[product] == nil {
				s.tops[product] = map[time.Time][]CustomerGap{}
			}
			if len(t) > 0 {
				s.tops[product][p] = t[:min(k, len(t))]
			}
		}
		if begun {
			s.largest = append(s.largest, f.largest...)
		}
		if p.Before(current) {
			pastKeys = append(pastKeys, p.Format(time.DateOnly)+"="+f.key)
			for key, ps := range f.points {
				t := sums[key]
				if t == nil {
					t = &pointSums{}
					sums[key] = t
				}
				t.n += ps.n
				t.p, t.a, t.signed, t.abs, t.nabs = t.p+ps.p, t.a+ps.a, t.signed+ps.signed, t.abs+ps.abs, t.nabs+ps.nabs
			}
		}
	}
	sort.SliceStable(s.Periods, func(i, j int) bool { return s.Periods[i].Product < s.Periods[j].Product })
	sortLargest(s.largest)
	s.largest = s.largest[:min(k, len(s.largest))]
	keys := make([]horizonKey, 0, len(sums))
	for key := range sums {
		keys = append(keys, key)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].product != keys[j].product {
			return keys[i].product < keys[j].product
		}
		return keys[i].horizon < keys[j].horizon
	})
	for _, key := range keys {
		t := sums[key]
		row := AccuracyRow{Product: key.product, Horizon: key.horizon, N: t.n, Planned: t.p, Actual: t.a}
		va := ValueAddedRow{Product: key.product, Horizon: key.horizon, N: t.n}
		if t.a > 0 {
			bias, wape, naive := t.signed/t.a, t.abs/t.a, t.nabs/t.a
			fva := naive - wape
			row.Bias, row.WAPE = &bias, &wape
			va.WAPE, va.NaiveWAPE, va.FVA, va.BeatsNaive = &wape, &naive, &fva, fva > 0
		}
		s.Accuracy = append(s.Accuracy, row)
		s.ValueAdded = append(s.ValueAdded, va)
	}
	// The tracking paths change only with a complete period's figures.
	if key := strings.Join(pastKeys, ";"); key != c.pathsKey || c.pathsKey == "" {
		c.paths, c.rows = c.trackingPaths(periods, current)
		c.asOf = outsideAsOf(c.paths, periods, current, c.cfg.TrackingLimit())
		c.outside = outsideRows(c.rows, c.cfg.TrackingLimit())
		c.pathsKey = key
	}
	s.paths, s.rows, s.asOf, s.outside, s.limit, s.pathsKey = c.paths, c.rows, c.asOf, c.outside, c.cfg.TrackingLimit(), c.pathsKey
	return s
}

// trackingPaths builds each customer's tracking path per product, and feedback_tracking's
// rows, from the complete periods' errors.
func (c *Cache) trackingPaths(periods []time.Time, current time.Time) ([]trackingPath, []TrackingRow) {
	type series struct {
		periods []time.Time
		errors  []float64
	}
	by := map[int32]*series{}
	for _, p := range periods {
		if !p.Before(current) {
			continue
		}
		for _, e := range c.periods[p].errors {
			s := by[e.pair]
			if s == nil {
				s = &series{}
				by[e.pair] = s
			}
			s.periods = append(s.periods, p)
			s.errors = append(s.errors, e.e)
		}
	}
	ids := make([]int32, 0, len(by))
	for id := range by {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		a, b := c.names[ids[i]], c.names[ids[j]]
		if a.product != b.product {
			return a.product < b.product
		}
		return a.customer < b.customer
	})
	paths := make([]trackingPath, 0, len(ids))
	rows := make([]TrackingRow, 0, len(ids))
	for _, id := range ids {
		s, name := by[id], c.names[id]
		paths = append(paths, newTrackingPath(name.product, name.customer, s.periods, s.errors))
		r := TrackingRow{Customer: name.customer, Product: name.product, N: uint64(len(s.errors))}
		var abs float64
		for _, e := range s.errors {
			r.CumulativeError += e
			abs += math.Abs(e)
		}
		r.MAD = abs / float64(len(s.errors))
		if r.MAD > 0 {
			ts := r.CumulativeError / r.MAD
			r.TrackingSignal = &ts
		}
		rows = append(rows, r)
	}
	// feedback_tracking's order.
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Customer != rows[j].Customer {
			return rows[i].Customer < rows[j].Customer
		}
		return rows[i].Product < rows[j].Product
	})
	return paths, rows
}

// Caches keeps a Cache per loop, for a server that reads many loops' figures (the
// dashboard). The zero value is ready; a nil *Caches keeps nothing.
type Caches struct {
	mu sync.Mutex
	m  map[string]*Cache
}

// For returns the loop's cache (nil for a nil *Caches).
func (cs *Caches) For(loop string) *Cache {
	if cs == nil {
		return nil
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.m == nil {
		cs.m = map[string]*Cache{}
	}
	c := cs.m[loop]
	if c == nil {
		c = NewCache()
		cs.m[loop] = c
	}
	return c
}

// Retain forgets the caches of the loops not listed (deleted loops).
func (cs *Caches) Retain(loops []string) {
	if cs == nil {
		return
	}
	keep := map[string]bool{}
	for _, l := range loops {
		keep[l] = true
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for l := range cs.m {
		if !keep[l] {
			delete(cs.m, l)
		}
	}
}

// outsideAsOf works out trackingAsOf for every product and complete period at once: per
// product and period, the customers (in the paths' order) whose signal after their last
// period up to it is outside the band of limit.
func outsideAsOf(paths []trackingPath, periods []time.Time, current time.Time, limit float64) map[string]map[time.Time][]string {
	var past []time.Time
	for _, p := range periods {
		if p.Before(current) {
			past = append(past, p)
		}
	}
	out := map[string]map[time.Time][]string{}
	for _, path := range paths {
		i := -1
		for _, p := range past {
			for i+1 < len(path.periods) && !path.periods[i+1].After(p) {
				i++
			}
			if i >= 0 && outsideBand(path.ts[i], limit) {
				if out[path.product] == nil {
					out[path.product] = map[time.Time][]string{}
				}
				out[path.product][p] = append(out[path.product][p], path.customer)
			}
		}
	}
	return out
}
