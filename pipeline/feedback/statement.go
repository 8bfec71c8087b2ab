package feedback

import (
	"context"
	"fmt"
	"sort"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"golang.org/x/sync/errgroup"
)

// StatementSchema is the version of the statement format; it changes only when a field
// changes meaning or goes away (new fields may appear in any version).
const StatementSchema = 1

// The kinds of message on a customer's statement topic.
const (
	KindStatement = "statement"
	KindReceipt   = "receipt"
)

// Statement is everything one customer sees of their own account in a loop: per product,
// their plans against their usage period by period, and how accurate their plans were
// against the naive forecast. It holds no row of any other customer. docs/customers.md
// ("Statements") documents it field by field, and docs/schemas/statement.schema.json
// describes its JSON.
type Statement struct {
	// Schema is StatementSchema.
	Schema int `json:"schema"`
	// Kind is "statement": a customer's statement topic carries their consent receipts
	// too (ChannelReceipt).
	Kind string `json:"kind"`
	// Loop names the loop as "namespace/name".
	Loop string `json:"loop"`
	// Customer is the customer's id, as stored; the customer API shows the id their
	// token names (in clear also when the loop stores it hashed).
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
	// DeadLetters are the customer's dead-lettered messages per period, oldest first,
	// each period's by reason with their first source positions; empty (never null)
	// without any.
	DeadLetters []StatementDeadLetters `json:"deadLetters"`
	// Reason says why this is the last statement the customer gets (their consent was
	// withdrawn); empty otherwise.
	Reason string `json:"reason,omitempty"`
	// hash is the content hash, once worked out (see contentHash).
	hash string
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
// the customer's own groups of the two feedback rollups, their own plans (for the
// accuracy points) and their own dead letters, each by the customer_id that leads its
// sort key, at once; its cost follows the customer's products, periods and dead
// letters, not the loop's history. The rollups' groups are joined here as feedback_gaps
// joins them (18.16 would read one side of the view's join after the other). A customer
// the loop holds nothing of gets a statement without products, not an error. Which periods are complete (for accuracy)
// follows the server's clock; Period, the run rate and which periods have begun follow
// now. ctx must not carry clickhouse-go query options under a deadline: clickhouse-go
// then writes into the options' settings, which the concurrent reads share.
func ReadStatement(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, loop, customer string, now time.Time) (*Statement, error) {
	if customer == "" {
		return nil, fmt.Errorf("a statement needs a customer id")
	}
	if cfg.Grain != pipeline.GrainWeek && cfg.Grain != pipeline.GrainMonth {
		return nil, fmt.Errorf("feedback grain %q: want %s or %s", cfg.Grain, pipeline.GrainWeek, pipeline.GrainMonth)
	}
	// Four point reads at once: the customer's groups of each rollup (joined here, where
	// 18.16 would read one side after the other), their plans' accuracy points and their
	// dead letters.
	var (
		plans   map[string][]GapRow
		actuals map[string]map[cellKey]GapRow
		points  map[time.Time][]point
		one     = []any{customer}
		dead    []DeadLetterSummary
	)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		plans, err = planCells(gctx, conn, cfg.Database, "customer_id = ?", one, true)
		return err
	})
	g.Go(func() (err error) {
		actuals, err = actualCells(gctx, conn, cfg.Database, "customer_id = ?", one, true)
		return err
	})
	g.Go(func() (err error) {
		points, err = queryPoints(gctx, conn, cfg, "customer_id = ?", one)
		return err
	})
	g.Go(func() (err error) { dead, err = ReadDeadLetters(gctx, conn, cfg, customer); return err })
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("reading the statement of customer %q: %w", customer, err)
	}
	for c := range plans {
		if c != customer {
			return nil, fmt.Errorf("the statement of customer %q read a row of another customer", customer)
		}
	}
	for c := range actuals {
		if c != customer {
			return nil, fmt.Errorf("the statement of customer %q read a row of another customer", customer)
		}
	}
	rows := joinGaps(cfg.Grain, plans[customer], actuals[customer], now)
	st, err := buildStatement(cfg.Grain, loop, customer, now, rows, points)
	if err != nil {
		return nil, err
	}
	st.DeadLetters = StatementDeadLettersOf(dead)
	return st, nil
}

// buildStatement puts a customer's gap rows and accuracy points together. A row or point
// of another customer is an error: a statement never shows one.
func buildStatement(g pipeline.Grain, loop, customer string, now time.Time, rows []GapRow, points map[time.Time][]point) (*Statement, error) {
	now = now.UTC()
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	s := &Statement{Schema: StatementSchema, Kind: KindStatement, Loop: loop, Customer: customer, Period: Date{PeriodStart(g, now)},
		Granularity: g, GeneratedAt: now, Products: []StatementProduct{}, DeadLetters: []StatementDeadLetters{}}
	byProduct := map[string]*StatementProduct{}
	product := func(name string) *StatementProduct {
		p := byProduct[name]
		if p == nil {
			p = &StatementProduct{Product: name, Periods: []StatementPeriod{}, Accuracy: []StatementAccuracy{}}
			byProduct[name] = p
		}
		return p
	}
	actual := map[cellKey]float64{}
	for _, r := range rows {
		if r.Customer != customer {
			return nil, fmt.Errorf("the statement of customer %q read a row of another customer", customer)
		}
		actual[cellKey{r.Product, r.Period}] = r.Actual
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
			sumsAt(sums, horizonKey{pt.product, pt.horizon}).add(pt.p, actual[cellKey{pt.product, period}], actual[cellKey{pt.product, previous(g, period)}])
		}
	}
	for key, t := range sums {
		acc := StatementAccuracy{Horizon: key.horizon, N: t.n, Planned: t.p, Actual: t.a}
		acc.Bias, acc.WAPE, acc.NaiveWAPE, acc.FVA, acc.BeatsNaive = t.ratios()
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

// cellKey is a product and period of one customer.
type cellKey struct {
	product string
	period  time.Time
}

// planCells reads the groups of the feedback_plans rollup that meet cond, per customer:
// their plans per product and period, as gap rows without actuals. point reads one
// customer's groups, on one thread.
func planCells(ctx context.Context, conn driver.Conn, db, cond string, args []any, point bool) (map[string][]GapRow, error) {
	view := ddl.RollupView(pipeline.FeedbackPlansRollup)
	rows, err := conn.Query(ctx, "SELECT customer_id, product, period, planned, planned_before, versions, versions_before FROM "+
		pipeline.QualifiedTable(db, view)+" WHERE "+cond+" "+cellSettings(point), args...)
	if err != nil {
		return nil, fmt.Errorf("reading %s.%s: %w", db, view, err)
	}
	defer rows.Close()
	out := map[string][]GapRow{}
	for rows.Next() {
		var (
			r                       GapRow
			planned, before         float64
			versions, versionsStart uint64
		)
		if err := rows.Scan(&r.Customer, &r.Product, &r.Period, &planned, &before, &versions, &versionsStart); err != nil {
			return nil, fmt.Errorf("reading %s.%s: %w", db, view, err)
		}
		r.Period, r.Versions = r.Period.UTC(), versions
		if versions > 0 {
			r.PlannedLatest = &planned
		}
		if versionsStart > 0 {
			r.PlannedAtStart = &before
		}
		out[r.Customer] = append(out[r.Customer], r)
	}
	return out, rows.Err()
}

// actualCells reads the groups of the feedback_actuals rollup that meet cond, per
// customer.
func actualCells(ctx context.Context, conn driver.Conn, db, cond string, args []any, point bool) (map[string]map[cellKey]GapRow, error) {
	view := ddl.RollupView(pipeline.FeedbackActualsRollup)
	rows, err := conn.Query(ctx, "SELECT customer_id, product, period, actual, events FROM "+
		pipeline.QualifiedTable(db, view)+" WHERE "+cond+" "+cellSettings(point), args...)
	if err != nil {
		return nil, fmt.Errorf("reading %s.%s: %w", db, view, err)
	}
	defer rows.Close()
	out := map[string]map[cellKey]GapRow{}
	for rows.Next() {
		var r GapRow
		if err := rows.Scan(&r.Customer, &r.Product, &r.Period, &r.Actual, &r.Events); err != nil {
			return nil, fmt.Errorf("reading %s.%s: %w", db, view, err)
		}
		r.Period = r.Period.UTC()
		m := out[r.Customer]
		if m == nil {
			m = map[cellKey]GapRow{}
			out[r.Customer] = m
		}
		m[cellKey{r.Product, r.Period}] = r
	}
	return out, rows.Err()
}

// cellSettings are a cell read's settings: the condition reaches into the rollup's read
// view, and a point read of one customer's few granules runs on one thread.
func cellSettings(point bool) string {
	if point {
		return ddl.PushDownSettings + ", max_threads = 1"
	}
	return ddl.PushDownSettings
}

// joinGaps joins a customer's plans and actuals as feedback_gaps does (a full join on
// product and period), with its gap, gap ratio, consumed share and, for the period
// under way, the run rate and the gap it makes.
func joinGaps(g pipeline.Grain, plans []GapRow, actuals map[cellKey]GapRow, now time.Time) []GapRow {
	current := PeriodStart(g, now)
	out := make([]GapRow, 0, len(plans)+len(actuals))
	seen := map[cellKey]bool{}
	add := func(r GapRow) {
		if r.PlannedLatest != nil {
			gap := r.Actual - *r.PlannedLatest
			r.Gap = &gap
			if *r.PlannedLatest != 0 {
				ratio, share := gap / *r.PlannedLatest, r.Actual / *r.PlannedLatest
				r.GapRatio, r.ConsumedShare = &ratio, &share
			}
		}
		if r.Period.Equal(current) {
			// actual x period length / time elapsed, in whole seconds as the view has it.
			start, end := r.Period.Unix(), PeriodEnd(g, r.Period).Unix()
			elapsed := max(now.Unix()-start, 1)
			p := r.Actual * float64(end-start) / float64(elapsed)
			r.Projected = &p
			if r.PlannedLatest != nil {
				pg := p - *r.PlannedLatest
				r.ProjectedGap = &pg
			}
		}
		out = append(out, r)
	}
	for _, p := range plans {
		k := cellKey{p.Product, p.Period}
		seen[k] = true
		if a, ok := actuals[k]; ok {
			p.Actual, p.Events = a.Actual, a.Events
		}
		add(p)
	}
	for k, a := range actuals {
		if !seen[k] {
			add(a)
		}
	}
	return out
}
