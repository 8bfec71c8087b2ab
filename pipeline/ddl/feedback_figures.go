package ddl

import (
	"customerloop.dev/customerloop/pipeline"
)

// valueAddedSQL is the body of feedback_value_added over the given actuals (a view):
// feedback_accuracy's points (accuracyPointsSQL), each with the naive forecast beside its
// plan, the customer's actual of the period before (0 without usage then). Without
// window functions (18.16), the period before is a second join with the actuals, on the
// period each point's previous one.
func valueAddedSQL(cfg pipeline.FeedbackConfig, actuals string) string {
	previous := "addMonths(period, -1)"
	if cfg.Grain == pipeline.GrainWeek {
		previous = "addWeeks(period, -1)"
	}
	// The joined subqueries are named where the server requires it.
	planSide, actualSide, pointSide, naiveSide := "", "", "", ""
	if cfg.Features.SubqueryAliases {
		planSide, actualSide, pointSide, naiveSide = " AS plans", " AS actuals", " AS points", " AS naive_actuals"
	}
	return `SELECT product, horizon, count() AS n,
    if(sum(a) > 0, sum(abs(p - a)) / sum(a), NULL) AS wape,
    if(sum(a) > 0, sum(abs(naive - a)) / sum(a), NULL) AS naive_wape,
    naive_wape - wape AS fva,
    toUInt8(ifNull(fva > 0, 0)) AS beats_naive
FROM
(
    SELECT customer_id, product, period, horizon, p, a, ` + previous + ` AS previous
    FROM
    (
        ` + accuracyPointsSQL(cfg, "        ", "") + `
    )` + planSide + `
    ALL LEFT JOIN
    (
        SELECT customer_id, product, period, actual AS a FROM ` + actuals + `
    )` + actualSide + ` USING (customer_id, product, period)
)` + pointSide + `
ALL LEFT JOIN
(
    SELECT customer_id, product, period AS previous, actual AS naive FROM ` + actuals + `
)` + naiveSide + ` USING (customer_id, product, previous)
GROUP BY product, horizon
ORDER BY product, horizon`
}

// trackingSQL is the body of feedback_tracking over the given gaps (a view): per
// customer and product, the errors actual - planned_at_start of the completed periods
// that have a plan made before they began, their sum, their mean absolute value and the
// tracking signal, sum / mean absolute value.
func trackingSQL(cfg pipeline.FeedbackConfig, gaps string) string {
	current, _ := cfg.Grain.PeriodSQL("now()", false)
	return `SELECT customer_id, product, count() AS n, sum(e) AS cumulative_error, avg(abs(e)) AS mad,
    if(mad > 0, cumulative_error / mad, NULL) AS tracking_signal
FROM
(
    SELECT customer_id, product, actual - ifNull(planned_at_start, 0) AS e
    FROM ` + gaps + `
    WHERE period < ` + current + ` AND planned_at_start IS NOT NULL
)
GROUP BY customer_id, product
ORDER BY customer_id, product`
}
