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

// Cache keeps, per period, what a Snapshot is made of, and reads again only the periods
// whose data changed. A period's figures depend on its own rows of the two feedback
// rollups and of the plan table (and, once complete, on the actuals of the period
// before, the naive forecast's); every insert, merge, mutation (a consent withdrawal)
// or dropped partition changes the set of data parts that hold them, which is cheap to
// read (signatures: system.parts, no data). So a period is read again when that set
// changed, when it turned from under way to complete, or when it is the period under
// way (whose run rate moves with the clock). At steady state a read costs the period
// under way, not the history. A nil *Cache keeps nothing: every read computes every
// period. Safe for concurrent use; reads are serialised.
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

// sumsAt returns m's sums of key, made when missing.
func sumsAt(m map[horizonKey]*pointSums, key horizonKey) *pointSums {
	s := m[key]
	if s == nil {
		s = &pointSums{}
		m[key] = s
	}
	return s
}

// add counts one point: plan p against actual a, with naive the naive forecast.
func (s *pointSums) add(p, a, naive float64) {
	s.n++
	s.p += p
	s.a += a
	s.signed += p - a
	s.abs += math.Abs(p - a)
	s.nabs += math.Abs(naive - a)
}

// merge adds o's points.
func (s *pointSums) merge(o *pointSums) {
	s.n += o.n
	s.p, s.a, s.signed, s.abs, s.nabs = s.p+o.p, s.a+o.a, s.signed+o.signed, s.abs+o.abs, s.nabs+o.nabs
}

// ratios are feedback_accuracy's bias and WAPE and feedback_value_added's naive WAPE
// and FVA of the points (all nil without actuals), and whether the plans beat naive.
func (s *pointSums) ratios() (bias, wape, naive, fva *float64, beats bool) {
	if s.a <= 0 {
		return nil, nil, nil, nil, false
	}
	b, w, n := s.signed/s.a, s.abs/s.a, s.nabs/s.a
	f := n - w
	return &b, &w, &n, &f, f > 0
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
	for _, n := range []string{cfg.Database, cfg.PlanTable} {
		if err := pipeline.ValidIdent(n); err != nil {
			return nil, fmt.Errorf("the loop's feedback tables: %w", err)
		}
	}
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
				sumsAt(sums, key).merge(ps)
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
		row.Bias, row.WAPE, va.NaiveWAPE, va.FVA, va.BeatsNaive = t.ratios()
		va.WAPE = row.WAPE
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
