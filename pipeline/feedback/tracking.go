package feedback

import (
	"context"
	"fmt"
	"math"
	"sort"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ProductTracking is, in the digest of a completed period, the product's customers whose
// tracking signal was outside the alert band as of the end of that period: over their
// completed periods up to it with a plan made before the period began, as
// feedback_tracking computes it over all completed periods.
type ProductTracking struct {
	// Limit is the alert band in force: outside means |tracking signal| > Limit.
	Limit float64 `json:"limit"`
	// Outside counts the customers outside; Customers are their ids, sorted, at most
	// as many as the digest's top customers.
	Outside   uint64   `json:"outside"`
	Customers []string `json:"customers"`
}

// trackingPath is one customer's tracking signal for one product, period after period:
// ts[i] is the signal over periods[0..i] (nil while the errors' mean absolute value is 0).
type trackingPath struct {
	product, customer string
	periods           []time.Time
	ts                []*float64
}

// newTrackingPath computes the signal after each of a customer's periods, in period
// order, from their errors (actual - planned_at_start): sum(e) / (sum(|e|) / n).
func newTrackingPath(product, customer string, periods []time.Time, errors []float64) trackingPath {
	p := trackingPath{product: product, customer: customer, periods: periods, ts: make([]*float64, len(errors))}
	var sum, abs float64
	for i, e := range errors {
		sum += e
		abs += math.Abs(e)
		if mad := abs / float64(i+1); mad > 0 {
			s := sum / mad
			p.ts[i] = &s
		}
	}
	return p
}

func outsideBand(ts *float64, limit float64) bool { return sideOf(ts, limit) != 0 }

// sideOf is the side of the band a signal is on: 1 above it (usage exceeding the plans),
// -1 below, 0 inside (also without a signal).
func sideOf(ts *float64, limit float64) int8 {
	switch {
	case ts == nil || math.Abs(*ts) <= limit:
		return 0
	case *ts > 0:
		return 1
	default:
		return -1
	}
}

// at returns the index of the customer's last period up to period, or -1 before the first.
func (p trackingPath) at(period time.Time) int {
	return sort.Search(len(p.periods), func(i int) bool { return p.periods[i].After(period) }) - 1
}

// since returns, when the customer is outside the band after its last period, the first
// period of that stretch outside on that side (the crossing), and the side.
func (p trackingPath) since(limit float64) (time.Time, int8) {
	i := len(p.ts) - 1
	if i < 0 {
		return time.Time{}, 0
	}
	side := sideOf(p.ts[i], limit)
	if side == 0 {
		return time.Time{}, 0
	}
	for i > 0 && sideOf(p.ts[i-1], limit) == side {
		i--
	}
	return p.periods[i], side
}

// queryTrackingPaths reads, per product and customer, the errors of feedback_gaps'
// periods before current with a plan made before they began, in period order.
func queryTrackingPaths(ctx context.Context, conn driver.Conn, db string, current time.Time) ([]trackingPath, error) {
	q := `SELECT product, customer_id, arrayMap(c -> c.1, cells) AS periods, arrayMap(c -> c.2, cells) AS errors
FROM
(
    SELECT product, customer_id, arraySort(groupArray((period, e))) AS cells
    FROM
    (
        SELECT customer_id, product, period, actual - ifNull(planned_at_start, 0) AS e
        FROM ` + pipeline.QualifiedTable(db, pipeline.ViewGaps) + `
        WHERE period < toDate(?) AND planned_at_start IS NOT NULL
    )
    GROUP BY product, customer_id
)
ORDER BY product, customer_id`
	rows, err := conn.Query(ctx, q, current.Format(time.DateOnly))
	if err != nil {
		return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewGaps, err)
	}
	defer rows.Close()
	var out []trackingPath
	for rows.Next() {
		var (
			product, customer string
			periods           []time.Time
			errors            []float64
		)
		if err := rows.Scan(&product, &customer, &periods, &errors); err != nil {
			return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewGaps, err)
		}
		for i := range periods {
			periods[i] = periods[i].UTC()
		}
		out = append(out, newTrackingPath(product, customer, periods, errors))
	}
	return out, rows.Err()
}

// trackingAsOf returns, per product, the customers outside the band as of the end of
// period: each by its signal after its last period up to it.
func trackingAsOf(paths []trackingPath, product string, period time.Time, limit float64, top int) *ProductTracking {
	t := &ProductTracking{Limit: limit, Customers: []string{}}
	for _, p := range paths {
		if p.product != product {
			continue
		}
		if i := p.at(period); i >= 0 && outsideBand(p.ts[i], limit) {
			t.Outside++
			t.Customers = append(t.Customers, p.customer)
		}
	}
	sort.Strings(t.Customers)
	t.Customers = t.Customers[:min(len(t.Customers), top)]
	return t
}

// TrackingCrossing is a customer and product whose tracking signal crossed out of the
// alert band, or from one side of it to the other (or, in trackingChanges' second list,
// came back inside).
type TrackingCrossing struct {
	Product, Customer string
	// TrackingSignal is the signal over the Periods completed periods with a plan made
	// before they began; nil when it has none (a pair whose periods are gone).
	TrackingSignal *float64
	Periods        int
	// Since is the first period of the stretch outside on this side; for a pair back
	// inside, its last period.
	Since time.Time
	Limit float64
	// Side is 1 above the band (usage keeps exceeding the plans), -1 below, 0 inside.
	Side int8
}

type pairKey struct{ product, customer string }

// trackingChanges compares on which side of the band each pair is now (after its path's
// last period) with the side last recorded for it (absent: inside). It returns the pairs
// to announce, outside now on another side than recorded, and the pairs to record as
// back inside, recorded outside but inside now (or without periods any more). Both in
// product, customer order.
func trackingChanges(paths []trackingPath, recorded map[pairKey]int8, limit float64) (crossed, back []TrackingCrossing) {
	seen := map[pairKey]bool{}
	for _, p := range paths {
		k := pairKey{p.product, p.customer}
		seen[k] = true
		n := len(p.ts)
		if n == 0 {
			continue
		}
		c := TrackingCrossing{Product: p.product, Customer: p.customer, TrackingSignal: p.ts[n-1], Periods: n, Limit: limit}
		since, side := p.since(limit)
		switch {
		case side != 0 && side != recorded[k]:
			c.Since, c.Side = since, side
			crossed = append(crossed, c)
		case side == 0 && recorded[k] != 0:
			c.Since = p.periods[n-1]
			back = append(back, c)
		}
	}
	for k, side := range recorded {
		if side != 0 && !seen[k] {
			back = append(back, TrackingCrossing{Product: k.product, Customer: k.customer, Limit: limit})
		}
	}
	sort.Slice(back, func(i, j int) bool {
		return back[i].Product < back[j].Product || back[i].Product == back[j].Product && back[i].Customer < back[j].Customer
	})
	return crossed, back
}

// trackCrossings records the pairs that crossed out of the band (or to its other side)
// since the last records, and those back inside, and returns the first: each is
// announced once (see pipeline.TrackingTable).
func (p *Publisher) trackCrossings(ctx context.Context, paths []trackingPath, now time.Time) ([]TrackingCrossing, error) {
	db, table := p.cfg.Feedback.Database, pipeline.QualifiedTable(p.cfg.Feedback.Database, pipeline.TrackingTable)
	rows, err := p.ch.Query(ctx, "SELECT product, customer_id, argMax(side, version) FROM "+table+" WHERE loop = ? GROUP BY product, customer_id", p.cfg.Loop)
	if err != nil {
		return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.TrackingTable, err)
	}
	recorded := map[pairKey]int8{}
	for rows.Next() {
		var k pairKey
		var side int8
		if err := rows.Scan(&k.product, &k.customer, &side); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.TrackingTable, err)
		}
		recorded[k] = side
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.TrackingTable, err)
	}
	crossed, back := trackingChanges(paths, recorded, p.cfg.Feedback.TrackingLimit())
	if len(crossed)+len(back) == 0 {
		return nil, nil
	}
	b, err := p.ch.PrepareBatch(ctx, "INSERT INTO "+table+" (loop, product, customer_id, side, tracking_signal, since, version, publisher, recorded_at)")
	if err != nil {
		return nil, fmt.Errorf("recording tracking crossings: %w", err)
	}
	version := now.UnixNano()
	for _, c := range append(append([]TrackingCrossing(nil), crossed...), back...) {
		if c.Since.IsZero() {
			c.Since = time.Unix(0, 0).UTC() // a pair whose periods are gone
		}
		if err := b.Append(p.cfg.Loop, c.Product, c.Customer, c.Side, c.TrackingSignal, c.Since, version, p.cfg.Publisher, now); err != nil {
			_ = b.Abort()
			return nil, fmt.Errorf("recording tracking crossings: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return nil, fmt.Errorf("recording tracking crossings: %w", err)
	}
	return crossed, nil
}
