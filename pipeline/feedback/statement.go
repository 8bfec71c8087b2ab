package feedback

import (
	"context"
	"fmt"
	"math"
	"sort"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"golang.org/x/sync/errgroup"
)

// StatementSchema is the version of the statement format; it changes only when a field
// changes meaning or goes away (new fields may appear in any version).
const StatementSchema = 1

// Statement is everything one customer sees of their own account in a loop: per product,
// their plans against their usage period by period, and how accurate their plans were
// against the naive forecast. It holds no row of any other customer. docs/customers.md
// ("Statements") documents it field by field, and docs/schemas/statement.schema.json
// describes its JSON.
type Statement struct {
	// Schema is StatementSchema.
	Schema int `json:"schema"`
	// Loop names the loop as "namespace/name".
	Loop string `json:"loop"`
	// Customer is the customer's id, as stored.
	Customer string `json:"customer"`
	// Period is the first day of the period under way when the statement was made (UTC).
	Period Date `json:"period"`
	// Granularity is the loop's feedback grain: Week (from Monday) or Month.
	Granularity pipeline.Grain `json:"granularity"`
	// GeneratedAt is the moment the statement was made as of.
	GeneratedAt time.Time `json:"generatedAt"`
	// Products are the products the customer planned or used, by name; empty (never
	// null) for a customer the loop holds nothing of.
	Products []StatementProduct `json:"products"`
	// Version is left 0 by ReadStatement; a publisher of statements numbers them.
	Version int64 `json:"version"`
	// Consent is the customer's consent state, which the caller fills in from the loop's
	// consent records; ReadStatement leaves it empty.
	Consent StatementConsent `json:"consent"`
}

// StatementConsent is a customer's consent state in a statement, filled in by the
// caller (ReadStatement reads no consent record).
type StatementConsent struct {
	// State is the customer's latest consent action ("grant" or "withdraw"), or empty
	// when the caller did not say.
	State string `json:"state"`
}

// StatementProduct is one product of a customer's statement.
type StatementProduct struct {
	// Product is the product's name.
	Product string `json:"product"`
	// Periods are the periods the customer planned or used the product in, oldest first
	// (a period with neither is not listed).
	Periods []StatementPeriod `json:"periods"`
	// Accuracy is, by horizon (ascending), how well the customer's plans for the product
	// matched their usage over the completed periods; empty before a completed period
	// has a plan made at horizon 0 or more.
	Accuracy []StatementAccuracy `json:"accuracy"`
}

// StatementPeriod is the customer's row of feedback_gaps for a product and period.
type StatementPeriod struct {
	// Period is the period's first day (UTC).
	Period Date `json:"period"`
	// PlannedLatest is the customer's latest plan for the period; nil without a plan.
	PlannedLatest *float64 `json:"plannedLatest"`
	// PlannedAtStart is the latest plan made before the period began; nil without one.
	PlannedAtStart *float64 `json:"plannedAtStart"`
	// Actual is the customer's usage in the period (0 without usage); nil for a period
	// not begun, which has no usage to compare yet.
	Actual *float64 `json:"actual"`
	// Gap is Actual - PlannedLatest; nil without a plan or before the period began.
	Gap *float64 `json:"gap"`
	// GapRatio is Gap / PlannedLatest; nil when Gap is, or the plan is 0.
	GapRatio *float64 `json:"gapRatio"`
	// Projected is, for the period under way only, Actual at its rate so far to the
	// period's end (Actual x period length / time elapsed); nil in other periods.
	Projected *float64 `json:"projected"`
	// ProjectedGap is Projected - PlannedLatest; nil when Projected is or without a plan.
	ProjectedGap *float64 `json:"projectedGap"`
	// Versions is the number of plan ids the customer sent for the product and period.
	Versions uint64 `json:"versions"`
}

// StatementAccuracy is feedback_accuracy's and feedback_value_added's row of one
// product and horizon, over the customer's own points only: per completed period, the
// latest plan made horizon periods ahead (p), the customer's actual of the period (a, 0
// without usage) and the naive forecast, their actual of the period before (0 without
// usage then).
type StatementAccuracy struct {
	// Horizon is how many periods ahead the plans were made (0: in the period itself).
	Horizon int64 `json:"horizon"`
	// N is the number of points (completed periods with a plan at this horizon).
	N uint64 `json:"n"`
	// Planned is sum(p) and Actual sum(a) over the points.
	Planned float64 `json:"planned"`
	Actual  float64 `json:"actual"`
	// Bias is sum(p - a) / sum(a); nil when sum(a) is 0.
	Bias *float64 `json:"bias"`
	// WAPE is sum(|p - a|) / sum(a); nil when sum(a) is 0.
	WAPE *float64 `json:"wape"`
	// NaiveWAPE is sum(|naive - a|) / sum(a); nil when sum(a) is 0.
	NaiveWAPE *float64 `json:"naiveWape"`
	// FVA is NaiveWAPE - WAPE: above 0, the plans beat the naive forecast; nil when
	// sum(a) is 0.
	FVA *float64 `json:"fva"`
	// BeatsNaive is FVA > 0 (false when FVA is nil).
	BeatsNaive bool `json:"beatsNaive"`
}

// ReadStatement reads the statement of one customer of a loop as of now. It reads only
// the customer's own groups of the two feedback rollups (ddl.FilteredGapsSQL) and their
// own plans (ddl.AccuracyPointsSQL), both by the customer_id that leads their sort keys,
// concurrently on at most two connections; its cost follows the customer's products and
// periods, not the loop's history. A customer the loop holds nothing of gets a statement
// without products, not an error. cfg.Features, when zero, is read from the server first
// (a zero value cannot tell 18.16 from features not read yet); a caller that read them
// passes them to save that query. Which periods are complete (for accuracy) and which
// one projects its run rate follow the server's clock; Period and which periods have
// begun follow now.
func ReadStatement(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, loop, customer string, now time.Time) (*Statement, error) {
	if customer == "" {
		return nil, fmt.Errorf("a statement needs a customer id")
	}
	if cfg.Grain != pipeline.GrainWeek && cfg.Grain != pipeline.GrainMonth {
		return nil, fmt.Errorf("feedback grain %q: want %s or %s", cfg.Grain, pipeline.GrainWeek, pipeline.GrainMonth)
	}
	// Modern servers need the joined subqueries named, as the views have them.
	if cfg.Features == (pipeline.ServerFeatures{}) {
		f, err := pipeline.ReadServerFeatures(ctx, conn)
		if err != nil {
			return nil, err
		}
		cfg.Features = f
	}
	var (
		rows   []GapRow
		points map[time.Time][]point
	)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		var err error
		rows, err = QueryGaps(gctx, conn, cfg.Database, GapFilter{Customer: customer, Feedback: &cfg})
		return err
	})
	g.Go(func() error {
		var err error
		points, err = queryPoints(gctx, conn, cfg, "customer_id = ?", []any{customer})
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("reading the statement of customer %q: %w", customer, err)
	}
	return buildStatement(cfg.Grain, loop, customer, now, rows, points)
}

// buildStatement puts a customer's gap rows and accuracy points together. A row or point
// of another customer is an error: a statement never shows one.
func buildStatement(g pipeline.Grain, loop, customer string, now time.Time, rows []GapRow, points map[time.Time][]point) (*Statement, error) {
	now = now.UTC()
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	s := &Statement{Schema: StatementSchema, Loop: loop, Customer: customer, Period: Date{PeriodStart(g, now)},
		Granularity: g, GeneratedAt: now, Products: []StatementProduct{}}
	byProduct := map[string]*StatementProduct{}
	product := func(name string) *StatementProduct {
		p := byProduct[name]
		if p == nil {
			p = &StatementProduct{Product: name, Periods: []StatementPeriod{}, Accuracy: []StatementAccuracy{}}
			byProduct[name] = p
		}
		return p
	}
	type cell struct {
		product string
		period  time.Time
	}
	actual := map[cell]float64{}
	for _, r := range rows {
		if r.Customer != customer {
			return nil, fmt.Errorf("the statement of customer %q read a row of another customer", customer)
		}
		actual[cell{r.Product, r.Period}] = r.Actual
		sp := StatementPeriod{Period: Date{r.Period}, PlannedLatest: r.PlannedLatest, PlannedAtStart: r.PlannedAtStart,
			Projected: r.Projected, ProjectedGap: r.ProjectedGap, Versions: r.Versions}
		// A period not begun has no usage to compare with its plan yet.
		if !r.Period.After(today) {
			a := r.Actual
			sp.Actual, sp.Gap, sp.GapRatio = &a, r.Gap, r.GapRatio
		}
		p := product(r.Product)
		p.Periods = append(p.Periods, sp)
	}
	// The points, per product and horizon, against the customer's actuals: as
	// periodFigures.fromPoints sums a loop's, restricted to the customer.
	sums := map[horizonKey]*pointSums{}
	for period, pts := range points {
		for _, pt := range pts {
			if pt.customer != customer {
				return nil, fmt.Errorf("the statement of customer %q read a plan of another customer", customer)
			}
			key := horizonKey{pt.product, pt.horizon}
			t := sums[key]
			if t == nil {
				t = &pointSums{}
				sums[key] = t
			}
			a, naive := actual[cell{pt.product, period}], actual[cell{pt.product, previous(g, period)}]
			t.n++
			t.p += pt.p
			t.a += a
			t.signed += pt.p - a
			t.abs += math.Abs(pt.p - a)
			t.nabs += math.Abs(naive - a)
		}
	}
	for key, t := range sums {
		acc := StatementAccuracy{Horizon: key.horizon, N: t.n, Planned: t.p, Actual: t.a}
		if t.a > 0 {
			bias, wape, naive := t.signed/t.a, t.abs/t.a, t.nabs/t.a
			fva := naive - wape
			acc.Bias, acc.WAPE, acc.NaiveWAPE, acc.FVA, acc.BeatsNaive = &bias, &wape, &naive, &fva, fva > 0
		}
		p := product(key.product)
		p.Accuracy = append(p.Accuracy, acc)
	}
	for _, p := range byProduct {
		sort.Slice(p.Periods, func(i, j int) bool { return p.Periods[i].Period.Before(p.Periods[j].Period.Time) })
		sort.Slice(p.Accuracy, func(i, j int) bool { return p.Accuracy[i].Horizon < p.Accuracy[j].Horizon })
		s.Products = append(s.Products, *p)
	}
	sort.Slice(s.Products, func(i, j int) bool { return s.Products[i].Product < s.Products[j].Product })
	return s, nil
}
