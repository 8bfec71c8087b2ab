package ddl

// The feedback's own rollups: the actuals and the plans per customer, product and
// feedback period behind feedback_gaps.

import (
	"fmt"
	"slices"

	"customerloop.dev/customerloop/pipeline"
)

// feedbackActuals is the rollup behind the feedback_actuals view of a loop with feedback:
// per customer, product and feedback period, the usage's quantity, events and latest
// event, kept up to date by ClickHouse as rows arrive. Being a rollup, it is versioned,
// built and backfilled with the workers stopped, rebuilt when the grain changes, on a
// cluster too, and a consent withdrawal deletes the customer's groups from it.
func feedbackActuals(cfg pipeline.Config) (pipeline.RollupConfig, error) {
	fc := cfg.Feedback
	stream := ""
	for _, s := range cfg.Streams {
		if s.Table() == fc.UsageTable && s.Kind == pipeline.KindUsage {
			stream = s.Name
		}
	}
	if stream == "" {
		return pipeline.RollupConfig{}, &RollupError{Rollup: pipeline.FeedbackActualsRollup,
			Msg: fmt.Sprintf("feedback reads %s, which is not the raw table of a usage stream", fc.UsageTable)}
	}
	g := pipeline.RollupMonth
	if fc.Grain == pipeline.GrainWeek {
		g = pipeline.RollupWeek
	}
	return pipeline.RollupConfig{
		Name: pipeline.FeedbackActualsRollup, Stream: stream, Granularity: g,
		Dimensions: []string{"customer_id", "product"}, PointReads: true,
		Measures: []pipeline.MeasureConfig{
			{Name: "actual", Function: pipeline.FuncSum, Field: "quantity"},
			{Name: "events", Function: pipeline.FuncCount},
			{Name: "last_event_at", Function: pipeline.FuncMax, Field: "ts"},
		},
	}, nil
}

// feedbackPlans is the rollup behind feedback_gaps' plan side: per customer, product and
// feedback period, the latest plan (highest submitted_at, ties by plan id, then by the
// later offset of a re-sent id), the latest of those submitted before the period began,
// and how many plan ids there are, kept up to date by ClickHouse as plans arrive. A plan
// is a customer's plan id for one product and period: a re-sent id corrects that plan,
// and the same id for another customer, product or period is another plan. That is what
// lets each period's figures be kept on their own, whatever arrives for other periods.
// Like feedback_actuals it is a rollup: versioned, backfilled with the workers stopped,
// rebuilt when the grain changes, on a cluster too, and a consent withdrawal deletes the
// customer's groups from it.
func feedbackPlans(cfg pipeline.Config) (RollupPlan, error) {
	fc := cfg.Feedback
	i := slices.IndexFunc(cfg.Streams, func(s pipeline.StreamConfig) bool { return s.Kind == pipeline.KindPlan && s.Table() == fc.PlanTable })
	if i < 0 {
		return RollupPlan{}, &RollupError{Rollup: pipeline.FeedbackPlansRollup,
			Msg: fmt.Sprintf("feedback reads %s, which is not the raw table of a plan stream", fc.PlanTable)}
	}
	if fc.Grain != pipeline.GrainWeek && fc.Grain != pipeline.GrainMonth {
		return RollupPlan{}, &RollupError{Rollup: pipeline.FeedbackPlansRollup, Msg: fmt.Sprintf("feedback grain %q: want %s or %s", fc.Grain, pipeline.GrainWeek, pipeline.GrainMonth)}
	}
	start, index := fc.Grain.PeriodSQL(pipeline.QuoteIdent("period"), true)
	_, submitted := fc.Grain.PeriodSQL(pipeline.QuoteIdent("submitted_at"), false)
	before := "toUInt8(" + index + " - " + submitted + " >= 1)"
	latest := "tuple(" + pipeline.QuoteIdent("submitted_at") + ", " + pipeline.QuoteIdent("plan_id") + ", " + pipeline.QuoteIdent("_offset") + ")"
	const by = "Tuple(DateTime, String, Int64)"
	keys := []rollupColumn{ // ordered for point reads, as feedback_actuals
		{"customer_id", "String", pipeline.QuoteIdent("customer_id")},
		{"product", "String", pipeline.QuoteIdent("product")},
		{"_period", "Date", start},
	}
	states := []rollupColumn{
		{"_state_planned", "AggregateFunction(argMax, Float64, " + by + ")", "argMaxState(" + pipeline.QuoteIdent("quantity") + ", " + latest + ")"},
		{"_state_planned_before", "AggregateFunction(argMaxIf, Float64, " + by + ", UInt8)", "argMaxIfState(" + pipeline.QuoteIdent("quantity") + ", " + latest + ", " + before + ")"},
		{"_state_versions", "AggregateFunction(uniqExact, String)", "uniqExactState(" + pipeline.QuoteIdent("plan_id") + ")"},
		{"_state_versions_before", "AggregateFunction(uniqExactIf, String, UInt8)", "uniqExactIfState(" + pipeline.QuoteIdent("plan_id") + ", " + before + ")"},
	}
	read := []string{"`_period` AS `period`", "`customer_id`", "`product`",
		"argMaxMerge(`_state_planned`) AS `planned`",
		"argMaxIfMerge(`_state_planned_before`) AS `planned_before`",
		"uniqExactMerge(`_state_versions`) AS `versions`",
		"uniqExactIfMerge(`_state_versions_before`) AS `versions_before`"}
	columns := []string{"period", "customer_id", "product", "planned", "planned_before", "versions", "versions_before"}
	return assembleRollup(cfg.ClickHouse, pipeline.FeedbackPlansRollup, cfg.Streams[i], keys, states, read, columns,
		[]string{"customer_id", "product"}), nil
}
