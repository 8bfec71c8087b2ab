package pipeline

import (
	"errors"
	"fmt"
	"math"
)

// Grain is the length of the periods plans are made for and compared in.
type Grain string

const (
	// GrainWeek periods start on Monday, 00:00 UTC.
	GrainWeek Grain = "Week"
	// GrainMonth periods start on the first of the month, 00:00 UTC.
	GrainMonth Grain = "Month"
)

// FeedbackConfig names what the plan-against-actual views read.
type FeedbackConfig struct {
	Database string `json:"database"`
	// UsageTable and PlanTable are the raw tables of the loop's usage and plan streams.
	UsageTable string `json:"usageTable"`
	PlanTable  string `json:"planTable"`
	Grain      Grain  `json:"grain"`
	// Cluster, when set, is the ClickHouse cluster the loop's tables live on
	// (ClickHouseConfig.Cluster): the views are created on every node, over the
	// Distributed tables, which the table names above then are.
	Cluster string `json:"cluster,omitempty"`
	// Features is what the server supports beyond 18.16 (ReadServerFeatures); the
	// controller reads it before planning the views.
	Features ServerFeatures `json:"-"`
	// TrackingSignalLimit is the alert band of feedback_tracking's tracking signal: a
	// customer and product whose |tracking_signal| exceeds it is outside the band (a
	// persistent bias). 0 means DefaultTrackingSignalLimit. It does not enter the views.
	TrackingSignalLimit float64 `json:"trackingSignalLimit,omitempty"`
}

// DefaultTrackingSignalLimit is the tracking signal's alert band when none is configured:
// outside ±4, a customer's plans are persistently biased.
const DefaultTrackingSignalLimit = 4.0

// TrackingLimit returns the tracking signal's alert band in force.
func (c FeedbackConfig) TrackingLimit() float64 {
	if c.TrackingSignalLimit == 0 {
		return DefaultTrackingSignalLimit
	}
	return c.TrackingSignalLimit
}

// The views the feedback loop hands to product teams, in the loop's database. Every
// figure is computed when the view is queried, from the raw tables, so late usage
// events and new plan versions show at once. Periods are in UTC.
//
// feedback_actuals — actual usage, one row per (customer_id, product, period):
//   - period: first day of the week (Monday) or month of the event's ts
//   - actual: sum(quantity) of the period's usage events
//   - events: number of usage events
//   - last_event_at: the latest ts among them
//
// feedback_plan_versions — every plan submission, one row per plan_id:
//   - customer_id, product, quantity, confidence, submitted_at: as submitted
//   - period: the target period (the submitted period's date, aligned to the grain)
//   - horizon: periods between the period containing submitted_at and the target:
//     0 = submitted during the period itself, 1 = in the period before, and so on;
//     negative when submitted after the period ended
//   - a plan_id sent more than once (a producer's late retry) counts once: its last
//     ingested version (highest offset)
//
// feedback_gaps — plan against actual, one row per (customer_id, product, period) that
// has a plan or usage or both:
//   - planned_latest: quantity of the latest submission for the period (ties in
//     submitted_at broken by the greater plan_id); NULL without any plan
//   - planned_at_start: the latest submission made before the period began (horizon
//     >= 1); NULL if none
//   - versions: number of submissions for the period
//   - actual, events: from feedback_actuals (0 without usage)
//   - gap: actual - planned_latest (NULL without a plan)
//   - gap_ratio: gap / planned_latest; NULL without a plan or when it is 0
//   - consumed_share: actual / planned_latest, the share of the plan used so far; NULL
//     likewise
//
// feedback_accuracy — how good plans are, one row per (product, horizon), over
// completed periods only (the period before the current one and older):
//   - for every (customer_id, product, period, horizon) with a submission at that
//     horizon >= 0, the latest such submission is the plan at that horizon and the
//     period's actual (0 without usage) is what happened
//   - n: number of such (customer, product, period) points
//   - planned, actual: their sums
//   - bias: sum(plan - actual) / sum(actual); above 0 means customers over-plan
//   - wape: sum(|plan - actual|) / sum(actual), the weighted absolute percentage error
//   - both NULL when sum(actual) is 0
//
// feedback_value_added — forecast value added (FVA), one row per (product, horizon), over
// the very points of feedback_accuracy (the latest plan per customer, product, period
// and horizon >= 0, completed periods only):
//   - naive: the naive forecast of a point, the customer's actual of the same product in
//     the previous period (addMonths / addWeeks(period, -1)); 0 when they had no usage
//     then
//   - n: number of points
//   - wape: sum(|plan - actual|) / sum(actual), as in feedback_accuracy
//   - naive_wape: sum(|naive - actual|) / sum(actual)
//   - fva: naive_wape - wape; above 0 means the plans beat the naive forecast
//   - wape, naive_wape and fva NULL when sum(actual) is 0
//   - beats_naive: 1 when fva > 0, else 0 (also when fva is NULL)
//
// feedback_tracking — the tracking signal of each customer's plans for a product, one
// row per (customer_id, product) with at least one point: over completed periods, every
// period with a plan made before it began (feedback_gaps.planned_at_start; periods
// without one are left out):
//   - e: actual - planned_at_start of a period
//   - n: number of such periods
//   - cumulative_error: sum(e)
//   - mad: mean absolute deviation, sum(|e|) / n
//   - tracking_signal: cumulative_error / mad; NULL when mad is 0. Above 0 means usage
//     keeps exceeding the plans; |tracking_signal| <= n always
const (
	ViewActuals      = "feedback_actuals"
	ViewPlanVersions = "feedback_plan_versions"
	ViewGaps         = "feedback_gaps"
	ViewAccuracy     = "feedback_accuracy"
	ViewValueAdded   = "feedback_value_added"
	ViewTracking     = "feedback_tracking"
)

// FeedbackActualsRollup names the rollup that keeps a loop's actuals per customer,
// product and feedback period (its read view is rollup_feedback_actuals); the
// feedback_actuals view reads it instead of the raw usage.
const FeedbackActualsRollup = "feedback_actuals"

// FeedbackPlansRollup names the rollup that keeps a loop's plans per customer, product
// and feedback period (its read view is rollup_feedback_plans): the latest plan, the
// latest made before the period began, and the number of plan ids. feedback_gaps reads
// it instead of the raw plans.
const FeedbackPlansRollup = "feedback_plans"

// FeedbackViews are the views PlanFeedback manages, in creation order.
var FeedbackViews = []string{ViewActuals, ViewPlanVersions, ViewGaps, ViewAccuracy, ViewValueAdded, ViewTracking}

// PeriodSQL returns the expressions that align a DateTime (in UTC) or a Date to its
// period, and number periods so that consecutive periods differ by one.
func (g Grain) PeriodSQL(expr string, isDate bool) (start, index string) {
	tz := ", 'UTC'"
	if isDate {
		tz = ""
	}
	if g == GrainWeek {
		return "toMonday(" + expr + tz + ")", "toRelativeWeekNum(" + expr + tz + ")"
	}
	return "toStartOfMonth(" + expr + tz + ")", "toRelativeMonthNum(" + expr + tz + ")"
}

// DefaultTopCustomers is how many customers a digest lists when DigestConfig says 0.
const DefaultTopCustomers = 5

// DigestConfig is what a digest publisher needs. Like Config it is plain data, built from
// the loop's spec by the controller.
type DigestConfig struct {
	// Loop names the loop as "namespace/name"; it is in every message.
	Loop string `json:"loop"`
	// Kafka is the connection (brokers, TLS, SASL) the loop's workers use; Group is unused.
	Kafka KafkaConfig `json:"kafka"`
	// Topic is the feedback topic the digests go to.
	Topic string `json:"topic"`
	// Feedback names the loop's database and grain; the feedback views must exist.
	Feedback FeedbackConfig `json:"feedback"`
	// Threshold flags a digest whose |gap ratio| exceeds it (see Digest.Flagged); nil
	// flags nothing.
	Threshold *float64 `json:"threshold,omitempty"`
	// TopCustomers is how many customers with the largest |gap| a digest lists; 0 means 5.
	TopCustomers int `json:"topCustomers,omitempty"`
	// Publisher identifies this replica in the digest table (a pod name, say).
	Publisher string `json:"publisher,omitempty"`
	// Cluster is the loop's ClickHouse cluster (ClickHouseConfig.Cluster), or "".
	Cluster string `json:"cluster,omitempty"`
	// Interval is how often a round is published (see Run).
	Interval Duration `json:"interval,omitempty"`
}

// Validate checks the config before anything reaches SQL or Kafka.
func (c DigestConfig) Validate() error {
	var errs []error
	if c.Loop == "" {
		errs = append(errs, errors.New("loop is required"))
	}
	if len(c.Kafka.Brokers) == 0 {
		errs = append(errs, errors.New("kafka.brokers: at least one broker is required"))
	}
	if c.Topic == "" {
		errs = append(errs, errors.New("topic is required"))
	}
	if err := ValidIdent(c.Feedback.Database); err != nil {
		errs = append(errs, fmt.Errorf("feedback.database: %w", err))
	}
	// The figures' accuracy points are read from the plan table.
	if err := ValidIdent(c.Feedback.PlanTable); err != nil {
		errs = append(errs, fmt.Errorf("feedback.planTable: %w", err))
	}
	if c.Cluster != "" {
		if err := ValidIdent(c.Cluster); err != nil {
			errs = append(errs, fmt.Errorf("cluster: %w", err))
		}
	}
	if c.Feedback.Grain != GrainWeek && c.Feedback.Grain != GrainMonth {
		errs = append(errs, fmt.Errorf("feedback.grain %q: want %s or %s", c.Feedback.Grain, GrainWeek, GrainMonth))
	}
	if t := c.Threshold; t != nil && (*t < 0 || math.IsNaN(*t) || math.IsInf(*t, 0)) {
		errs = append(errs, fmt.Errorf("threshold %v: want a finite number >= 0", *t))
	}
	if l := c.Feedback.TrackingSignalLimit; l < 0 || math.IsNaN(l) || math.IsInf(l, 0) {
		errs = append(errs, fmt.Errorf("feedback.trackingSignalLimit %v: want a finite number > 0 (or 0, the default %v)", l, DefaultTrackingSignalLimit))
	}
	if c.TopCustomers < 0 || c.TopCustomers > 1000 {
		errs = append(errs, fmt.Errorf("topCustomers %d: want 0 (the default, 5) to 1000", c.TopCustomers))
	}
	return errors.Join(errs...)
}
