// Package dashboard serves a read-only web view of loops' plan-against-actual figures:
// plan against actual per product over time, the largest gaps, accuracy and forecast
// value added by horizon, and the customers whose plans are persistently biased.
// Pages are rendered on the server, charts are inline SVG, and nothing is loaded from
// elsewhere, so it works air-gapped and behind a port-forward. The same figures are
// served as JSON.
//
// Routes: "/" lists the loops, "/loops/{namespace}/{name}" shows one, and
// "/api/loops/{namespace}/{name}" returns its figures as JSON.
package dashboard

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// LoopRef names a loop.
type LoopRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (r LoopRef) String() string { return r.Namespace + "/" + r.Name }

// Loop is where a loop's feedback views are read.
type Loop struct {
	Conn driver.Conn
	// Feedback is the loop's feedback (its database, tables, grain and tracking band).
	Feedback pipeline.FeedbackConfig
	// Cache, when set, keeps the loop's figures from one request to the next, so that a
	// page reads only what changed (feedback.Cache); nil reads every period.
	Cache *feedback.Cache
	// Release, when set, is called once the request is done with Conn.
	Release func()
}

// Source tells which loops exist and opens them. Open returns an error wrapping
// ErrNotFound for a loop that does not exist (or has no feedback views).
type Source interface {
	Loops(ctx context.Context) ([]LoopRef, error)
	Open(ctx context.Context, ref LoopRef) (Loop, error)
}

// ErrNotFound is wrapped by Source.Open for an unknown loop.
var ErrNotFound = errors.New("loop not found")

// StaticSource is a fixed set of loops, for `customerloop-dev dev` and tests.
type StaticSource map[LoopRef]Loop

// Loops returns the loops ordered by namespace and name.
func (s StaticSource) Loops(context.Context) ([]LoopRef, error) {
	out := make([]LoopRef, 0, len(s))
	for r := range s {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// Open returns the loop.
func (s StaticSource) Open(_ context.Context, ref LoopRef) (Loop, error) {
	l, ok := s[ref]
	if !ok {
		return Loop{}, fmt.Errorf("%s: %w", ref, ErrNotFound)
	}
	return l, nil
}

// Figures is everything the loop page shows; the JSON endpoint returns it as is.
type Figures struct {
	Loop        LoopRef                `json:"loop"`
	Database    string                 `json:"database"`
	Granularity pipeline.Grain         `json:"granularity"`
	GeneratedAt time.Time              `json:"generatedAt"`
	Products    []ProductSeries        `json:"products"`
	LargestGaps []feedback.GapRow      `json:"largestGaps"`
	Accuracy    []feedback.AccuracyRow `json:"accuracy"`
	// ValueAdded is feedback_value_added: the plans' WAPE against the naive forecast's,
	// by product and horizon.
	ValueAdded []feedback.ValueAddedRow `json:"valueAdded"`
	Tracking   Tracking                 `json:"tracking"`
}

// Tracking is the customers and products whose tracking signal is beyond the loop's
// band, largest |signal| first: Count of them, the first TrackingShown in Outside
// (`customerloop report --view tracking` lists them all).
type Tracking struct {
	Limit   float64                `json:"limit"`
	Count   int                    `json:"count"`
	Outside []feedback.TrackingRow `json:"outside"`
}

// TrackingShown is how many customers and products outside the band the page lists.
const TrackingShown = 50

// ProductSeries is a product's plan against actual, one point per period, oldest first.
type ProductSeries struct {
	Product string        `json:"product"`
	Points  []SeriesPoint `json:"points"`
}

// SeriesPoint is a product's figures for a period, summed over customers as in a digest:
// PlannedLatest and Actual over the customers who planned the period (nil when none
// did), UnplannedActual the usage of the others. A period that has not begun has no
// actual and no gap (nil); the period under way has its run rate, Projected, and the gap
// that makes, ProjectedGap.
type SeriesPoint struct {
	Period          feedback.Date `json:"period"`
	PlannedLatest   *float64      `json:"plannedLatest"`
	PlannedAtStart  *float64      `json:"plannedAtStart"`
	Actual          *float64      `json:"actual"`
	UnplannedActual float64       `json:"unplannedActual"`
	Gap             *float64      `json:"gap"`
	GapRatio        *float64      `json:"gapRatio"`
	Projected       *float64      `json:"projected"`
	ProjectedGap    *float64      `json:"projectedGap"`
	Customers       uint64        `json:"customersWithPlans"`
}

// LargestGaps is how many rows the largest-gaps table shows.
const LargestGaps = 20

// Load reads a loop's figures.
func Load(ctx context.Context, ref LoopRef, l Loop) (*Figures, error) {
	limit := l.Feedback.TrackingLimit()
	snap, err := l.Cache.Read(ctx, l.Conn, l.Feedback, LargestGaps, time.Now().UTC())
	if err != nil {
		return nil, err
	}
	periods := snap.Periods
	f := &Figures{Loop: ref, Database: l.Feedback.Database, Granularity: l.Feedback.Grain, GeneratedAt: time.Now().UTC().Truncate(time.Second),
		LargestGaps: snap.LargestGaps(LargestGaps), Accuracy: snap.Accuracy, ValueAdded: snap.ValueAdded,
		Tracking: Tracking{Limit: limit}}
	outside := snap.Outside(limit)
	f.Tracking.Count, f.Tracking.Outside = len(outside), outside[:min(len(outside), TrackingShown)]
	if f.LargestGaps == nil {
		f.LargestGaps = []feedback.GapRow{}
	}
	f.Products = []ProductSeries{}
	for _, p := range periods { // ordered by product, then period
		if n := len(f.Products); n == 0 || f.Products[n-1].Product != p.Product {
			f.Products = append(f.Products, ProductSeries{Product: p.Product})
		}
		pt := SeriesPoint{Period: feedback.Date{Time: p.Period}, PlannedLatest: p.PlannedLatest, PlannedAtStart: p.PlannedAtStart,
			UnplannedActual: p.UnplannedActual, Projected: p.Projected, Customers: p.CustomersWithPlans}
		if p.Begun {
			a := p.Actual
			pt.Actual = &a
		}
		if pl := p.PlannedLatest; pl != nil && p.Begun {
			g := p.Actual - *pl
			pt.Gap = &g
			if *pl != 0 {
				r := g / *pl
				pt.GapRatio = &r
			}
			if p.Projected != nil {
				pg := *p.Projected - *pl
				pt.ProjectedGap = &pg
			}
		}
		s := &f.Products[len(f.Products)-1]
		s.Points = append(s.Points, pt)
	}
	return f, nil
}
