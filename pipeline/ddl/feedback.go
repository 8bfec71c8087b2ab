package ddl

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// FeedbackStatement is a view's CREATE statement and the fingerprint that tells whether
// an existing view was made from the same definition.
type FeedbackStatement struct {
	pipeline.Statement
	View        string
	Fingerprint string
	// on is the ON CLUSTER clause of the view's DDL, or "".
	on string
}

// PlanFeedback returns the statements that create the feedback views. Each view carries
// its definition's fingerprint in an always-true predicate, so that the applier can see
// in system.tables whether an existing view is current (18.16 has no CREATE OR REPLACE
// VIEW and no comments on views).
func PlanFeedback(cfg pipeline.FeedbackConfig) ([]FeedbackStatement, error) {
	for _, n := range []string{cfg.Database, cfg.UsageTable, cfg.PlanTable} {
		if err := pipeline.ValidIdent(n); err != nil {
			return nil, err
		}
	}
	if cfg.Cluster != "" {
		if err := pipeline.ValidIdent(cfg.Cluster); err != nil {
			return nil, fmt.Errorf("feedback cluster: %w", err)
		}
	}
	if cfg.Grain != pipeline.GrainWeek && cfg.Grain != pipeline.GrainMonth {
		return nil, fmt.Errorf("feedback grain %q: want %s or %s", cfg.Grain, pipeline.GrainWeek, pipeline.GrainMonth)
	}
	db := cfg.Database
	view := func(name string) string { return pipeline.QualifiedTable(db, name) }
	// The joined subqueries are named where the server requires it; on 18.16 the views
	// stay as they were, so that their fingerprints do not change.
	planSide, actualSide := "", ""
	if cfg.Features.SubqueryAliases {
		planSide, actualSide = " AS plans", " AS actuals"
	}

	bodies := map[string]string{
		// The actuals are the feedback_actuals rollup's (PlanRollups declares it for a
		// loop with feedback): ClickHouse keeps them per period as rows arrive, so that no
		// figure reads the raw usage.
		pipeline.ViewActuals: `SELECT customer_id, product, period, actual, events, last_event_at
FROM ` + view(RollupView(pipeline.FeedbackActualsRollup)),

		pipeline.ViewPlanVersions: planVersionsSQL(cfg),

		// The plans are the feedback_plans rollup's, kept per period like the actuals.
		pipeline.ViewGaps: gapsSQL(cfg, view(RollupView(pipeline.FeedbackPlansRollup)), view(pipeline.ViewActuals)),

		pipeline.ViewAccuracy: `SELECT product, horizon, count() AS n, sum(p) AS planned, sum(a) AS actual,
    if(sum(a) > 0, sum(p - a) / sum(a), NULL) AS bias,
    if(sum(a) > 0, sum(abs(p - a)) / sum(a), NULL) AS wape
FROM
(
    ` + accuracyPointsSQL(cfg, "    ", "") + `
)` + planSide + `
ALL LEFT JOIN
(
    SELECT customer_id, product, period, actual AS a FROM ` + view(pipeline.ViewActuals) + `
)` + actualSide + ` USING (customer_id, product, period)
GROUP BY product, horizon
ORDER BY product, horizon`,

		pipeline.ViewValueAdded: valueAddedSQL(cfg, view(pipeline.ViewActuals)),

		pipeline.ViewTracking: trackingSQL(cfg, view(pipeline.ViewGaps)),
	}
	var out []FeedbackStatement
	for _, name := range pipeline.FeedbackViews {
		body := bodies[name]
		sum := sha256.Sum256([]byte(body))
		fp := "customerloop:" + hex.EncodeToString(sum[:6])
		on := pipeline.ClickHouseConfig{Cluster: cfg.Cluster}.OnCluster()
		sql := "CREATE VIEW IF NOT EXISTS " + view(name) + on + " AS\n" + withFingerprint(body, fp)
		out = append(out, FeedbackStatement{Statement: pipeline.Statement{Object: db + "." + name, SQL: sql}, View: name, Fingerprint: fp, on: on})
	}
	return out, nil
}

// planVersionsSQL is the body of feedback_plan_versions: each plan's latest version
// (highest submitted_at, then offset) with its period and horizon. A plan is a customer's
// plan id for one product and period, as in the feedback_plans rollup.
func planVersionsSQL(cfg pipeline.FeedbackConfig) string {
	planPeriod, _ := cfg.Grain.PeriodSQL("period", true)
	_, periodIndex := cfg.Grain.PeriodSQL("p_period", true)
	_, submittedIndex := cfg.Grain.PeriodSQL("p_submitted_at", false)
	return `SELECT plan_id, customer_id, product, p_period AS period, p_quantity AS quantity,
    p_submitted_at AS submitted_at, p_confidence AS confidence, ` + periodIndex + ` - ` + submittedIndex + ` AS horizon
FROM
(
    SELECT plan_id, customer_id, product, ` + planPeriod + ` AS p_period,
        argMax(quantity, (submitted_at, _offset)) AS p_quantity, max(submitted_at) AS p_submitted_at,
        argMax(confidence, (submitted_at, _offset)) AS p_confidence
    FROM ` + pipeline.QualifiedTable(cfg.Database, cfg.PlanTable) + `
    GROUP BY customer_id, product, p_period, plan_id
)`
}

// accuracyPointsSQL is the query of feedback_accuracy's points, which
// feedback_value_added shares: per customer, product, completed period and horizon >= 0,
// the latest plan version submitted at that horizon (highest submitted_at, ties by plan
// id, then a re-sent id's later offset), as p. Each version counts at its own horizon,
// so a plan revised under the same id is still seen as it stood further ahead. indent
// starts every line after the first. where, when set, is a condition on the plan
// table's own columns that only the plans read must meet.
func accuracyPointsSQL(cfg pipeline.FeedbackConfig, indent, where string) string {
	current, _ := cfg.Grain.PeriodSQL("now()", false)
	planPeriod, planIndex := cfg.Grain.PeriodSQL("period", true)
	_, submittedIndex := cfg.Grain.PeriodSQL("submitted_at", false)
	if where != "" {
		where = "\n    WHERE " + where
	}
	return strings.ReplaceAll(`SELECT customer_id, product, p_period AS period, horizon, argMax(quantity, (submitted_at, plan_id, _offset)) AS p
FROM
(
    SELECT customer_id, product, `+planPeriod+` AS p_period, `+planIndex+` - `+submittedIndex+` AS horizon,
        quantity, submitted_at, plan_id, _offset
    FROM `+pipeline.QualifiedTable(cfg.Database, cfg.PlanTable)+where+`
)
WHERE horizon >= 0 AND p_period < `+current+`
GROUP BY customer_id, product, p_period, horizon`, "\n", "\n"+indent)
}

// AccuracyPointsSQL returns a query of feedback_accuracy's points (customer_id, product,
// period, horizon, p) of the plans that meet where, a condition on the plan table's own
// columns with ? for its values (a range of its period, say, which then reads only the
// partitions that hold it).
func AccuracyPointsSQL(cfg pipeline.FeedbackConfig, where string) (string, error) {
	for _, n := range []string{cfg.Database, cfg.PlanTable} {
		if err := pipeline.ValidIdent(n); err != nil {
			return "", err
		}
	}
	return accuracyPointsSQL(cfg, "", where), nil
}

// gapsSQL is the body of feedback_gaps over the given plans and actuals per customer,
// product and period (the read views of the feedback rollups, or the same filtered).
func gapsSQL(cfg pipeline.FeedbackConfig, plans, actuals string) string {
	// The joined subqueries are named where the server requires it; on 18.16 the views
	// stay as they were, so that their fingerprints do not change.
	planSide, actualSide := "", ""
	if cfg.Features.SubqueryAliases {
		planSide, actualSide = " AS plans", " AS actuals"
	}
	// The period under way also has its actual projected to the whole period at the rate
	// so far (run rate), and the gap that projection makes.
	current, _ := cfg.Grain.PeriodSQL("now()", false)
	end := "addMonths(period, 1)"
	if cfg.Grain == pipeline.GrainWeek {
		end = "addWeeks(period, 1)"
	}
	start := "toUInt32(toDateTime(period, 'UTC'))"
	projected := "actual * (toUInt32(toDateTime(" + end + ", 'UTC')) - " + start + ") / greatest(toUInt32(now()) - " + start + ", 1)"
	return `SELECT customer_id, product, period,
    if(versions > 0, planned, NULL) AS planned_latest,
    if(versions_before > 0, planned_before, NULL) AS planned_at_start,
    versions, actual, events,
    if(versions > 0, actual - planned, NULL) AS gap,
    if(versions > 0 AND planned != 0, (actual - planned) / planned, NULL) AS gap_ratio,
    if(versions > 0 AND planned != 0, actual / planned, NULL) AS consumed_share,
    if(period = ` + current + `, ` + projected + `, NULL) AS projected,
    if(period = ` + current + ` AND versions > 0, ` + projected + ` - planned, NULL) AS projected_gap
FROM
(
    SELECT customer_id, product, period, planned, planned_before, versions, versions_before
    FROM ` + plans + `
)` + planSide + `
ALL FULL OUTER JOIN
(
    SELECT customer_id, product, period, actual, events FROM ` + actuals + `
)` + actualSide + ` USING (customer_id, product, period)`
}

// PushDownSettings end a query that filters a rollup's read view (FilteredGapsSQL, say):
// 18.16 then pushes the condition into the view's GROUP BY, so that only the matching
// groups are read.
const PushDownSettings = "SETTINGS enable_optimize_predicate_expression = 1"

// FilteredGapsSQL returns a query of the rows feedback_gaps holds that match where, a
// condition on customer_id and product only, with ? for its values: it is applied to the
// groups of both feedback rollups before they are merged and joined, so only the matching
// groups are read and aggregated. The caller passes the condition's arguments twice (for
// the plans, then for the actuals). The view itself cannot be filtered this cheaply:
// 18.16 does not push a condition into the subqueries of a join. Run it with
// PushDownSettings, so that the conditions reach into the rollups' read views.
func FilteredGapsSQL(cfg pipeline.FeedbackConfig, where string) (string, error) {
	if err := pipeline.ValidIdent(cfg.Database); err != nil {
		return "", err
	}
	plans := pipeline.QualifiedTable(cfg.Database, RollupView(pipeline.FeedbackPlansRollup)) + " WHERE " + where
	actuals := pipeline.QualifiedTable(cfg.Database, RollupView(pipeline.FeedbackActualsRollup)) + " WHERE " + where
	return gapsSQL(cfg, plans, actuals), nil
}

// withFingerprint adds an always-true predicate naming the definition to the outermost
// query: before its GROUP BY or ORDER BY, or at the end.
func withFingerprint(body, fp string) string {
	pred := "'" + fp + "' != ''"
	lines := strings.Split(body, "\n")
	depth := 0
	for i, l := range lines {
		depth += strings.Count(l, "(") - strings.Count(l, ")")
		if depth != 0 {
			continue
		}
		t := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(t, "WHERE "):
			lines[i] = l + " AND " + pred
			return strings.Join(lines, "\n")
		case strings.HasPrefix(t, "GROUP BY") || strings.HasPrefix(t, "ORDER BY"):
			lines = append(lines[:i], append([]string{"WHERE " + pred}, lines[i:]...)...)
			return strings.Join(lines, "\n")
		}
	}
	return body + "\nWHERE " + pred
}

// ApplyFeedback creates the feedback views, replacing those made from another definition
// (an upgrade of CustomerLoop, another grain). A view is replaced by dropping and
// creating it: a query running at that moment fails and can be retried; no data is
// involved. It compares the views of the server conn reaches; on a cluster use
// ApplyFeedbackChanges with every node.
func ApplyFeedback(ctx context.Context, conn driver.Conn, db string, stmts []FeedbackStatement) error {
	_, err := ApplyFeedbackChanges(ctx, conn, nil, db, stmts)
	return err
}

// ApplyFeedbackChanges is ApplyFeedback, reporting what it changed of each view. With
// nodes (ClusterNodes) it reads the views of every node and runs the statements, ON
// CLUSTER, through conn: a view made from another definition on any node is dropped on
// every node and created again; a view missing on some node is created; when every node
// has the current views, no DDL reaches the cluster's queue (where a stopped node would
// hold it up). The views are Apply's objects, compared by their fingerprints.
func ApplyFeedbackChanges(ctx context.Context, conn driver.Conn, nodes []driver.Conn, db string, stmts []FeedbackStatement) ([]Change, error) {
	return Apply(ctx, conn, nodes, feedbackObjects(db, stmts))
}

// feedbackObjects declares the feedback views of db: each created by its statement and
// replaced (dropped and created) when its definition lacks the fingerprint.
func feedbackObjects(db string, stmts []FeedbackStatement) []Object {
	objs := make([]Object, 0, len(stmts))
	for _, s := range stmts {
		name := db + "." + s.View
		objs = append(objs, Object{Name: name, Create: []pipeline.Statement{s.Statement}, Fingerprint: s.Fingerprint,
			Drop: []pipeline.Statement{{Object: name, SQL: "DROP TABLE IF EXISTS " + pipeline.QualifiedTable(db, s.View) + s.on}}})
	}
	return objs
}
