// Package feedback turns what the loop stored into what goes back: plan-against-actual
// digests published to Kafka, the report's queries, and consent messages applied to the
// stored data with their audit.
package feedback

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// DigestSchema is the version of the digest message format; it changes only when a
// field changes meaning or goes away (new fields may appear in any version). 2: flagged
// also means a persistent bias (tracking).
const DigestSchema = 2

// Date is a calendar day, written in JSON as "2006-01-02".
type Date struct{ time.Time }

// MarshalJSON writes the date as YYYY-MM-DD.
func (d Date) MarshalJSON() ([]byte, error) { return json.Marshal(d.Format(time.DateOnly)) }

// UnmarshalJSON reads YYYY-MM-DD.
func (d *Date) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return err
	}
	d.Time = t
	return nil
}

// Digest is plan against actual for one product and period, as published to the feedback
// topic. README.md ("Digests") documents the message field by field.
type Digest struct {
	Schema      int            `json:"schema"`
	Loop        string         `json:"loop"`
	Product     string         `json:"product"`
	Period      Date           `json:"period"`
	Granularity pipeline.Grain `json:"granularity"`
	// Complete is true once the period has ended (in UTC).
	Complete bool `json:"complete"`
	// PlannedLatest sums the customers' latest plans for the period; nil when no
	// customer planned it. PlannedAtStart sums the plans made before the period began, of
	// the customers who had one; nil when none had.
	PlannedLatest  *float64 `json:"plannedLatest"`
	PlannedAtStart *float64 `json:"plannedAtStart"`
	// Actual is the usage of the customers who planned the period; UnplannedActual the
	// usage of those who did not. Their sum is the product's usage in the period.
	Actual          float64 `json:"actual"`
	UnplannedActual float64 `json:"unplannedActual"`
	// Gap = Actual - PlannedLatest and GapRatio = Gap / PlannedLatest; nil without plans
	// (and the ratio when the plans sum to 0).
	Gap                *float64 `json:"gap"`
	GapRatio           *float64 `json:"gapRatio"`
	CustomersWithPlans uint64   `json:"customersWithPlans"`
	// Projected is, for the period under way only, Actual at its rate so far to the
	// period's end (Actual x period length / time elapsed: the sum of the customers'
	// feedback_gaps.projected); ProjectedGapRatio is (Projected - PlannedLatest) /
	// PlannedLatest. Both nil in other periods and without plans.
	Projected         *float64 `json:"projected"`
	ProjectedGapRatio *float64 `json:"projectedGapRatio"`
	// Flagged: see flagged: |GapRatio| exceeds the threshold and the period is complete;
	// or the period is under way and usage already exceeds the plans by more than the
	// threshold, or, from a quarter of the period on, |ProjectedGapRatio| exceeds it; or
	// the period is complete and a customer's tracking signal is outside the band
	// (Tracking.Outside > 0: a persistent bias).
	Flagged   bool     `json:"flagged"`
	Threshold *float64 `json:"threshold"`
	// TopGaps are the customers with the largest |gap|, largest first.
	TopGaps  []CustomerGap    `json:"topGaps"`
	Accuracy *ProductAccuracy `json:"accuracy"`
	// Tracking is, for a complete period only, the customers outside the tracking
	// signal's band as of its end; nil in other periods.
	Tracking *ProductTracking `json:"tracking"`
	// Version increases strictly with every publication of this loop, product and period.
	Version     int64     `json:"version"`
	PublishedAt time.Time `json:"publishedAt"`

	// gapFlagged: Flagged by the gap rule (gapFlagged), for a GapThresholdExceeded Flag.
	gapFlagged bool
}

// CustomerGap is one customer's plan against actual in a digest.
type CustomerGap struct {
	Customer      string   `json:"customer"`
	PlannedLatest float64  `json:"plannedLatest"`
	Actual        float64  `json:"actual"`
	Gap           float64  `json:"gap"`
	GapRatio      *float64 `json:"gapRatio"`
}

// ProductAccuracy is how well a product's plans matched what happened, over completed
// periods: WAPE and bias over every horizon's points together, and per horizon as in
// feedback_accuracy.
type ProductAccuracy struct {
	WAPE      *float64          `json:"wape"`
	Bias      *float64          `json:"bias"`
	Points    uint64            `json:"points"`
	ByHorizon []HorizonAccuracy `json:"byHorizon"`
}

// HorizonAccuracy is one row of feedback_accuracy for a product.
type HorizonAccuracy struct {
	Horizon int64    `json:"horizon"`
	N       uint64   `json:"n"`
	Planned float64  `json:"planned"`
	Actual  float64  `json:"actual"`
	Bias    *float64 `json:"bias"`
	WAPE    *float64 `json:"wape"`
}

// contentHash fingerprints what a digest says about its period. Version, PublishedAt and
// the context attached at publication (Accuracy, which moves with every completed period
// of the product, Threshold, and the run rate) are left out, so that only a change of the period's own
// figures republishes it. Figures are rounded to 12 significant digits first: ClickHouse
// sums floats in an order that may vary from one query to the next.
func (d Digest) contentHash() string {
	c := d
	c.Version, c.PublishedAt, c.Accuracy, c.Threshold = 0, time.Time{}, nil, nil
	if d.Tracking != nil {
		// Who is outside is content; the band in force, like the threshold, is context.
		tr := *d.Tracking
		tr.Limit = 0
		c.Tracking = &tr
	}
	// The projection moves as time passes, without new usage: it is context too (a flag
	// it raises or lowers is content).
	c.Projected, c.ProjectedGapRatio = nil, nil
	c.PlannedLatest, c.PlannedAtStart = roundPtr(c.PlannedLatest), roundPtr(c.PlannedAtStart)
	c.Actual, c.UnplannedActual = round12(c.Actual), round12(c.UnplannedActual)
	c.Gap, c.GapRatio = roundPtr(c.Gap), roundPtr(c.GapRatio)
	c.TopGaps = append([]CustomerGap(nil), d.TopGaps...)
	for i := range c.TopGaps {
		g := &c.TopGaps[i]
		g.PlannedLatest, g.Actual, g.Gap, g.GapRatio = round12(g.PlannedLatest), round12(g.Actual), round12(g.Gap), roundPtr(g.GapRatio)
	}
	b, _ := json.Marshal(c) // plain data: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

func round12(x float64) float64 {
	r, _ := strconv.ParseFloat(strconv.FormatFloat(x, 'g', 12, 64), 64)
	return r
}

func roundPtr(p *float64) *float64 {
	if p == nil {
		return nil
	}
	r := round12(*p)
	return &r
}

// PeriodStart returns the start of the period of the grain that holds t, in UTC.
func PeriodStart(g pipeline.Grain, t time.Time) time.Time {
	t = t.UTC()
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	if g == pipeline.GrainWeek {
		return day.AddDate(0, 0, -((int(day.Weekday()) + 6) % 7))
	}
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// PeriodEnd returns the start of the period after the one starting at start.
func PeriodEnd(g pipeline.Grain, start time.Time) time.Time {
	if g == pipeline.GrainWeek {
		return start.AddDate(0, 0, 7)
	}
	return start.AddDate(0, 1, 0)
}

// ProductPeriod is plan against actual for a product and period, summed over customers.
type ProductPeriod struct {
	Product            string
	Period             time.Time
	CustomersWithPlans uint64
	// PlannedLatest and PlannedAtStart are nil when no customer had such a plan.
	PlannedLatest, PlannedAtStart *float64
	// Actual is the usage of the customers with plans, UnplannedActual of the others.
	Actual, UnplannedActual float64
	// Begun: the period has begun (a later one has no actual yet). Projected is, for the
	// period under way only, the run rate of the customers with plans (the sum of their
	// feedback_gaps.projected); nil otherwise.
	Begun     bool
	Projected *float64
}

// QueryProductPeriods sums the loop's gap view per product and period, in that order.
func QueryProductPeriods(ctx context.Context, conn driver.Conn, db string) ([]ProductPeriod, error) {
	out, _, err := queryProductPeriods(ctx, conn, db, pipeline.QualifiedTable(db, pipeline.ViewGaps), nil, 0, "")
	return out, err
}

// queryProductPeriods sums the rows of feedback_gaps that from holds (the view, or a
// subquery of its rows, with args) per product and period, in that order, and, with
// top > 0, also returns per product and period the top rows of customers with a plan
// whose |gap| is largest (ties by customer id), keyed by product and period start: one
// pass for both. settings, when set, ends the query.
func queryProductPeriods(ctx context.Context, conn driver.Conn, db, from string, args []any, top int, settings string) ([]ProductPeriod, map[string]map[time.Time][]GapRow, error) {
	topColumn := ""
	if top > 0 {
		// Each group's customers with plans as their gap rows, largest |gap| first.
		topColumn = `,
    arraySlice(arraySort(x -> (-abs(tupleElement(x, 7)), tupleElement(x, 1)),
        groupArrayIf((customer_id, assumeNotNull(planned_latest), planned_at_start, versions, actual, events, assumeNotNull(gap),
            gap_ratio, consumed_share, projected, projected_gap), versions > 0)), 1, ` + strconv.Itoa(top) + `) AS top`
	}
	q := `SELECT product, period,
    countIf(versions > 0) AS planners,
    sum(ifNull(planned_latest, 0)) AS sum_planned,
    countIf(planned_at_start IS NOT NULL) AS starters,
    sum(ifNull(planned_at_start, 0)) AS sum_at_start,
    sumIf(actual, versions > 0) AS actual_planned,
    sumIf(actual, versions = 0) AS actual_unplanned,
    period <= today() AS begun,
    countIf(projected IS NOT NULL AND versions > 0) AS projecting,
    sumIf(ifNull(projected, 0), versions > 0) AS projected_planned` + topColumn + `
FROM ` + from + `
GROUP BY product, period
ORDER BY product, period` + settings
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewGaps, err)
	}
	defer rows.Close()
	var out []ProductPeriod
	tops := map[string]map[time.Time][]GapRow{}
	for rows.Next() {
		var (
			r                 ProductPeriod
			starters          uint64
			planned, atStart  float64
			actual, unplanned float64
			begun             uint8
			projecting        uint64
			projected         float64
			topRows           [][]any
		)
		dest := []any{&r.Product, &r.Period, &r.CustomersWithPlans, &planned, &starters, &atStart, &actual, &unplanned,
			&begun, &projecting, &projected}
		if top > 0 {
			dest = append(dest, &topRows)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewGaps, err)
		}
		r.Period = r.Period.UTC()
		if r.CustomersWithPlans > 0 {
			r.PlannedLatest = &planned
		}
		if starters > 0 {
			r.PlannedAtStart = &atStart
		}
		r.Actual, r.UnplannedActual, r.Begun = actual, unplanned, begun == 1
		if projecting > 0 {
			r.Projected = &projected
		}
		out = append(out, r)
		for _, t := range topRows {
			pl, gap := t[1].(float64), t[6].(float64)
			g := GapRow{Customer: t[0].(string), Product: r.Product, Period: r.Period, PlannedLatest: &pl, PlannedAtStart: nullable(t[2]),
				Versions: t[3].(uint64), Actual: t[4].(float64), Events: t[5].(uint64), Gap: &gap, GapRatio: nullable(t[7]),
				ConsumedShare: nullable(t[8]), Projected: nullable(t[9]), ProjectedGap: nullable(t[10])}
			if tops[r.Product] == nil {
				tops[r.Product] = map[time.Time][]GapRow{}
			}
			tops[r.Product][r.Period] = append(tops[r.Product][r.Period], g)
		}
	}
	return out, tops, rows.Err()
}

// nullable is a Nullable(Float64) element of a tuple.
func nullable(v any) *float64 {
	p, _ := v.(*float64)
	return p
}

// QueryLargestGaps returns the n rows of the gap view with the largest |gap| (of periods
// begun: a period not begun has no actual to compare yet), over all
// products and periods (ties by period, newest first, then product and customer).
func QueryLargestGaps(ctx context.Context, conn driver.Conn, db string, n int) ([]GapRow, error) {
	return queryGapRows(ctx, conn, db, gapRowsSelect+pipeline.QualifiedTable(db, pipeline.ViewGaps)+
		" WHERE versions > 0 AND period <= today() ORDER BY abs(gap) DESC, period DESC, product, customer_id LIMIT "+strconv.Itoa(max(n, 0)))
}

// AccuracyByProduct folds feedback_accuracy rows into one ProductAccuracy per product.
// A horizon whose actual is 0 contributes its plans as absolute error (every point's
// actual was 0 there, quantities being non-negative).
func AccuracyByProduct(rows []AccuracyRow) map[string]*ProductAccuracy {
	type sums struct{ absErr, signed, actual float64 }
	out, acc := map[string]*ProductAccuracy{}, map[string]*sums{}
	for _, r := range rows {
		pa := out[r.Product]
		if pa == nil {
			pa, acc[r.Product] = &ProductAccuracy{}, &sums{}
			out[r.Product] = pa
		}
		s := acc[r.Product]
		pa.Points += r.N
		pa.ByHorizon = append(pa.ByHorizon, HorizonAccuracy{Horizon: r.Horizon, N: r.N, Planned: r.Planned, Actual: r.Actual, Bias: r.Bias, WAPE: r.WAPE})
		absErr := r.Planned
		if r.WAPE != nil {
			absErr = *r.WAPE * r.Actual
		}
		s.absErr += absErr
		s.signed += r.Planned - r.Actual
		s.actual += r.Actual
	}
	for p, pa := range out {
		sort.Slice(pa.ByHorizon, func(i, j int) bool { return pa.ByHorizon[i].Horizon < pa.ByHorizon[j].Horizon })
		if s := acc[p]; s.actual > 0 {
			w, b := s.absErr/s.actual, s.signed/s.actual
			pa.WAPE, pa.Bias = &w, &b
		}
	}
	return out
}

// BuildDigests reads the loop's feedback views and returns a digest per product and
// period, without Version and PublishedAt. now decides which periods are complete.
func BuildDigests(ctx context.Context, conn driver.Conn, cfg pipeline.DigestConfig, now time.Time) ([]Digest, error) {
	digests, _, err := buildDigests(ctx, conn, cfg, now, nil)
	return digests, err
}

// buildDigests is BuildDigests, also returning the snapshot it was made from (with the
// customers' tracking signals period after period). It reads the
// figures through cache (which may be nil).
func buildDigests(ctx context.Context, conn driver.Conn, cfg pipeline.DigestConfig, now time.Time, cache *Cache) ([]Digest, *Snapshot, error) {
	g := cfg.Feedback.Grain
	top := cfg.TopCustomers
	if top == 0 {
		top = pipeline.DefaultTopCustomers
	}
	snap, err := cache.Read(ctx, conn, cfg.Feedback, top, now)
	if err != nil {
		return nil, nil, err
	}
	periods, tops, accRows := snap.Periods, snap.tops, snap.Accuracy
	acc := AccuracyByProduct(accRows)
	out := make([]Digest, 0, len(periods))
	for _, pp := range periods {
		d := Digest{
			Schema: DigestSchema, Loop: cfg.Loop, Product: pp.Product, Period: Date{pp.Period}, Granularity: g,
			Complete:      !PeriodEnd(g, pp.Period).After(now),
			PlannedLatest: pp.PlannedLatest, PlannedAtStart: pp.PlannedAtStart,
			Actual: pp.Actual, UnplannedActual: pp.UnplannedActual,
			CustomersWithPlans: pp.CustomersWithPlans,
			Threshold:          cfg.Threshold,
			TopGaps:            tops[pp.Product][pp.Period],
			Accuracy:           acc[pp.Product],
		}
		if d.TopGaps == nil {
			d.TopGaps = []CustomerGap{}
		}
		if p := pp.PlannedLatest; p != nil {
			gap := pp.Actual - *p
			d.Gap = &gap
			if *p != 0 {
				r := gap / *p
				d.GapRatio = &r
			}
		}
		// The run rate is feedback_gaps' own (projected), summed over the customers with
		// plans; elapsed, the share of the period gone, decides whether it may flag.
		underWay := !pp.Period.After(now) && !d.Complete
		elapsed := 0.0
		if underWay {
			start, end := pp.Period, PeriodEnd(g, pp.Period)
			elapsed = float64(now.Sub(start)) / float64(end.Sub(start))
			d.Projected = pp.Projected
			if p, proj := pp.PlannedLatest, pp.Projected; p != nil && *p != 0 && proj != nil {
				r := (*proj - *p) / *p
				d.ProjectedGapRatio = &r
			}
		}
		var outside uint64
		if d.Complete {
			d.Tracking = snap.trackingAsOf(pp.Product, pp.Period, cfg.Feedback.TrackingLimit(), top)
			outside = d.Tracking.Outside
		}
		d.Flagged = flagged(cfg.Threshold, d.Complete, underWay, elapsed, d.GapRatio, d.ProjectedGapRatio, outside)
		d.gapFlagged = cfg.Threshold != nil && gapFlagged(*cfg.Threshold, d.Complete, underWay, elapsed, d.GapRatio, d.ProjectedGapRatio)
		out = append(out, d)
	}
	return out, snap, nil
}

// flagged is the digests' flag rule: a complete period with customers outside the
// tracking signal's band (outside > 0: a persistent bias), or, with a threshold t, a gap
// beyond it (gapFlagged).
func flagged(t *float64, complete, underWay bool, elapsed float64, ratio, projected *float64, outside uint64) bool {
	if complete && outside > 0 {
		return true
	}
	return t != nil && gapFlagged(*t, complete, underWay, elapsed, ratio, projected)
}

// gapFlagged is the gap rule for a threshold t. A complete period is flagged when
// |gap ratio| > t. The period under way is flagged when usage already exceeds the plans
// by more than t, or, once elapsed (the share of the period gone) is at least a quarter,
// when its run rate misses the plans by more than t either way: before that the
// projection rests on too little usage to act on.
func gapFlagged(t float64, complete, underWay bool, elapsed float64, ratio, projected *float64) bool {
	switch {
	case complete:
		return ratio != nil && math.Abs(*ratio) > t
	case !underWay:
		return false
	case ratio != nil && *ratio > t:
		return true
	default:
		return elapsed >= 0.25 && projected != nil && math.Abs(*projected) > t
	}
}
