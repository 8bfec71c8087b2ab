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
	db, g := cfg.Database, cfg.Grain
	view := func(name string) string { return pipeline.QualifiedTable(db, name) }
	current, _ := g.PeriodSQL("now()", false)
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

		pipeline.ViewPlanVersions: planVersionsSQL(cfg, ""),

		pipeline.ViewGaps: gapsSQL(cfg, view(pipeline.ViewPlanVersions), view(pipeline.ViewActuals)),

		pipeline.ViewAccuracy: `SELECT product, horizon, count() AS n, sum(p) AS planned, sum(a) AS actual,
    if(sum(a) > 0, sum(p - a) / sum(a), NULL) AS bias,
    if(sum(a) > 0, sum(abs(p - a)) / sum(a), NULL) AS wape
FROM
(
    SELECT customer_id, product, period, horizon, argMax(quantity, (submitted_at, plan_id)) AS p
    FROM ` + view(pipeline.ViewPlanVersions) + `
    WHERE horizon >= 0 AND period < ` + current + `
    GROUP BY customer_id, product, period, horizon
)` + planSide + `
ALL LEFT JOIN
(
    SELECT customer_id, product, period, actual AS a FROM ` + view(pipeline.ViewActuals) + `
)` + actualSide + ` USING (customer_id, product, period)
GROUP BY product, horizon
ORDER BY product, horizon`,

		pipeline.ViewValueAdded: valueAddedSQL(cfg, view(pipeline.ViewPlanVersions), view(pipeline.ViewActuals)),

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

// planVersionsSQL is the body of feedback_plan_versions: each plan id's latest version
// (highest offset) with its period and horizon. With where, a condition on the raw plan
// rows, only the plan ids it selects are read.
func planVersionsSQL(cfg pipeline.FeedbackConfig, where string) string {
	planPeriod, planIndex := cfg.Grain.PeriodSQL("p_period", true)
	_, submittedIndex := cfg.Grain.PeriodSQL("p_submitted_at", false)
	if where != "" {
		where = "\n    WHERE " + where
	}
	return `SELECT plan_id, p_customer_id AS customer_id, p_product AS product,
    ` + planPeriod + ` AS period, p_quantity AS quantity, p_submitted_at AS submitted_at,
    p_confidence AS confidence, ` + planIndex + ` - ` + submittedIndex + ` AS horizon
FROM
(
    SELECT plan_id,
        argMax(customer_id, _offset) AS p_customer_id, argMax(product, _offset) AS p_product,
        argMax(period, _offset) AS p_period, argMax(quantity, _offset) AS p_quantity,
        argMax(submitted_at, _offset) AS p_submitted_at, argMax(confidence, _offset) AS p_confidence
    FROM ` + pipeline.QualifiedTable(cfg.Database, cfg.PlanTable) + where + `
    GROUP BY plan_id
)`
}

// gapsSQL is the body of feedback_gaps over the given plan versions and actuals (views,
// or subqueries in parentheses).
func gapsSQL(cfg pipeline.FeedbackConfig, planVersions, actuals string) string {
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
    SELECT customer_id, product, period,
        argMax(quantity, (submitted_at, plan_id)) AS planned, count() AS versions,
        argMaxIf(quantity, (submitted_at, plan_id), horizon >= 1) AS planned_before,
        countIf(horizon >= 1) AS versions_before
    FROM ` + planVersions + `
    GROUP BY customer_id, product, period
)` + planSide + `
ALL FULL OUTER JOIN
(
    SELECT customer_id, product, period, actual, events FROM ` + actuals + `
)` + actualSide + ` USING (customer_id, product, period)`
}

// ReadCustomerSettings end a query of CustomerGapsSQL.
const ReadCustomerSettings = "SETTINGS enable_optimize_predicate_expression = 1"

// CustomerGapsSQL returns a query of the rows feedback_gaps holds for one customer, which
// reads only that customer's rows: the plan ids the customer ever planned under (by the
// plans table's key), of which those whose latest version is still the customer's, and
// the customer's groups of the feedback actuals rollup. It takes the customer id three
// times as arguments (?). The view itself cannot be filtered this cheaply: 18.16 does not
// push a condition into the subqueries of a join. Run it with ReadCustomerSettings, so
// that the condition on the actuals reaches into their read view, which groups by
// customer.
func CustomerGapsSQL(cfg pipeline.FeedbackConfig) (string, error) {
	for _, n := range []string{cfg.Database, cfg.PlanTable} {
		if err := pipeline.ValidIdent(n); err != nil {
			return "", err
		}
	}
	plans := pipeline.QualifiedTable(cfg.Database, cfg.PlanTable)
	versions := "(\n" + planVersionsSQL(cfg, "plan_id IN (SELECT plan_id FROM "+plans+" WHERE customer_id = ?)") + "\nWHERE customer_id = ?\n)"
	actuals := pipeline.QualifiedTable(cfg.Database, RollupView(pipeline.FeedbackActualsRollup)) + " WHERE customer_id = ?"
	return gapsSQL(cfg, versions, actuals), nil
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
