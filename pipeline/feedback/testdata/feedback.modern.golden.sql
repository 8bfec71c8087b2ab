-- Month acme.feedback_actuals
CREATE VIEW IF NOT EXISTS `acme`.`feedback_actuals` AS
SELECT customer_id, product, period, actual, events, last_event_at
FROM `acme`.`rollup_feedback_actuals`
WHERE 'customerloop:4c1d14c9a65a' != '';

-- Month acme.feedback_plan_versions
CREATE VIEW IF NOT EXISTS `acme`.`feedback_plan_versions` AS
SELECT plan_id, customer_id, product, p_period AS period, p_quantity AS quantity,
    p_submitted_at AS submitted_at, p_confidence AS confidence, toRelativeMonthNum(p_period) - toRelativeMonthNum(p_submitted_at, 'UTC') AS horizon
FROM
(
    SELECT plan_id, customer_id, product, toStartOfMonth(period) AS p_period,
        argMax(quantity, (submitted_at, _offset)) AS p_quantity, max(submitted_at) AS p_submitted_at,
        argMax(confidence, (submitted_at, _offset)) AS p_confidence
    FROM `acme`.`plans_raw`
    GROUP BY customer_id, product, p_period, plan_id
)
WHERE 'customerloop:6fd35d8d5921' != '';

-- Month acme.feedback_gaps
CREATE VIEW IF NOT EXISTS `acme`.`feedback_gaps` AS
SELECT customer_id, product, period,
    if(versions > 0, planned, NULL) AS planned_latest,
    if(versions_before > 0, planned_before, NULL) AS planned_at_start,
    versions, actual, events,
    if(versions > 0, actual - planned, NULL) AS gap,
    if(versions > 0 AND planned != 0, (actual - planned) / planned, NULL) AS gap_ratio,
    if(versions > 0 AND planned != 0, actual / planned, NULL) AS consumed_share,
    if(period = toStartOfMonth(now(), 'UTC'), actual * (toUInt32(toDateTime(addMonths(period, 1), 'UTC')) - toUInt32(toDateTime(period, 'UTC'))) / greatest(toUInt32(now()) - toUInt32(toDateTime(period, 'UTC')), 1), NULL) AS projected,
    if(period = toStartOfMonth(now(), 'UTC') AND versions > 0, actual * (toUInt32(toDateTime(addMonths(period, 1), 'UTC')) - toUInt32(toDateTime(period, 'UTC'))) / greatest(toUInt32(now()) - toUInt32(toDateTime(period, 'UTC')), 1) - planned, NULL) AS projected_gap
FROM
(
    SELECT customer_id, product, period, planned, planned_before, versions, versions_before
    FROM `acme`.`rollup_feedback_plans`
) AS plans
ALL FULL OUTER JOIN
(
    SELECT customer_id, product, period, actual, events FROM `acme`.`feedback_actuals`
) AS actuals USING (customer_id, product, period)
WHERE 'customerloop:a23770cef76e' != '';

-- Month acme.feedback_accuracy
CREATE VIEW IF NOT EXISTS `acme`.`feedback_accuracy` AS
SELECT product, horizon, count() AS n, sum(p) AS planned, sum(a) AS actual,
    if(sum(a) > 0, sum(p - a) / sum(a), NULL) AS bias,
    if(sum(a) > 0, sum(abs(p - a)) / sum(a), NULL) AS wape
FROM
(
    SELECT customer_id, product, p_period AS period, horizon, argMax(quantity, (submitted_at, plan_id, _offset)) AS p
    FROM
    (
        SELECT customer_id, product, toStartOfMonth(period) AS p_period, toRelativeMonthNum(period) - toRelativeMonthNum(submitted_at, 'UTC') AS horizon,
            quantity, submitted_at, plan_id, _offset
        FROM `acme`.`plans_raw`
    )
    WHERE horizon >= 0 AND p_period < toStartOfMonth(now(), 'UTC')
    GROUP BY customer_id, product, p_period, horizon
) AS plans
ALL LEFT JOIN
(
    SELECT customer_id, product, period, actual AS a FROM `acme`.`feedback_actuals`
) AS actuals USING (customer_id, product, period)
WHERE 'customerloop:ef224b035dd2' != ''
GROUP BY product, horizon
ORDER BY product, horizon;

-- Month acme.feedback_value_added
CREATE VIEW IF NOT EXISTS `acme`.`feedback_value_added` AS
SELECT product, horizon, count() AS n,
    if(sum(a) > 0, sum(abs(p - a)) / sum(a), NULL) AS wape,
    if(sum(a) > 0, sum(abs(naive - a)) / sum(a), NULL) AS naive_wape,
    naive_wape - wape AS fva,
    toUInt8(ifNull(fva > 0, 0)) AS beats_naive
FROM
(
    SELECT customer_id, product, period, horizon, p, a, addMonths(period, -1) AS previous
    FROM
    (
        SELECT customer_id, product, p_period AS period, horizon, argMax(quantity, (submitted_at, plan_id, _offset)) AS p
        FROM
        (
            SELECT customer_id, product, toStartOfMonth(period) AS p_period, toRelativeMonthNum(period) - toRelativeMonthNum(submitted_at, 'UTC') AS horizon,
                quantity, submitted_at, plan_id, _offset
            FROM `acme`.`plans_raw`
        )
        WHERE horizon >= 0 AND p_period < toStartOfMonth(now(), 'UTC')
        GROUP BY customer_id, product, p_period, horizon
    ) AS plans
    ALL LEFT JOIN
    (
        SELECT customer_id, product, period, actual AS a FROM `acme`.`feedback_actuals`
    ) AS actuals USING (customer_id, product, period)
) AS points
ALL LEFT JOIN
(
    SELECT customer_id, product, period AS previous, actual AS naive FROM `acme`.`feedback_actuals`
) AS naive_actuals USING (customer_id, product, previous)
WHERE 'customerloop:f89b32296bdd' != ''
GROUP BY product, horizon
ORDER BY product, horizon;

-- Month acme.feedback_tracking
CREATE VIEW IF NOT EXISTS `acme`.`feedback_tracking` AS
SELECT customer_id, product, count() AS n, sum(e) AS cumulative_error, avg(abs(e)) AS mad,
    if(mad > 0, cumulative_error / mad, NULL) AS tracking_signal
FROM
(
    SELECT customer_id, product, actual - ifNull(planned_at_start, 0) AS e
    FROM `acme`.`feedback_gaps`
    WHERE period < toStartOfMonth(now(), 'UTC') AND planned_at_start IS NOT NULL
)
WHERE 'customerloop:daf259d9f1be' != ''
GROUP BY customer_id, product
ORDER BY customer_id, product;

-- Week acme.feedback_actuals
CREATE VIEW IF NOT EXISTS `acme`.`feedback_actuals` AS
SELECT customer_id, product, period, actual, events, last_event_at
FROM `acme`.`rollup_feedback_actuals`
WHERE 'customerloop:4c1d14c9a65a' != '';

-- Week acme.feedback_plan_versions
CREATE VIEW IF NOT EXISTS `acme`.`feedback_plan_versions` AS
SELECT plan_id, customer_id, product, p_period AS period, p_quantity AS quantity,
    p_submitted_at AS submitted_at, p_confidence AS confidence, toRelativeWeekNum(p_period) - toRelativeWeekNum(p_submitted_at, 'UTC') AS horizon
FROM
(
    SELECT plan_id, customer_id, product, toMonday(period) AS p_period,
        argMax(quantity, (submitted_at, _offset)) AS p_quantity, max(submitted_at) AS p_submitted_at,
        argMax(confidence, (submitted_at, _offset)) AS p_confidence
    FROM `acme`.`plans_raw`
    GROUP BY customer_id, product, p_period, plan_id
)
WHERE 'customerloop:cba5e2a0aad4' != '';

-- Week acme.feedback_gaps
CREATE VIEW IF NOT EXISTS `acme`.`feedback_gaps` AS
SELECT customer_id, product, period,
    if(versions > 0, planned, NULL) AS planned_latest,
    if(versions_before > 0, planned_before, NULL) AS planned_at_start,
    versions, actual, events,
    if(versions > 0, actual - planned, NULL) AS gap,
    if(versions > 0 AND planned != 0, (actual - planned) / planned, NULL) AS gap_ratio,
    if(versions > 0 AND planned != 0, actual / planned, NULL) AS consumed_share,
    if(period = toMonday(now(), 'UTC'), actual * (toUInt32(toDateTime(addWeeks(period, 1), 'UTC')) - toUInt32(toDateTime(period, 'UTC'))) / greatest(toUInt32(now()) - toUInt32(toDateTime(period, 'UTC')), 1), NULL) AS projected,
    if(period = toMonday(now(), 'UTC') AND versions > 0, actual * (toUInt32(toDateTime(addWeeks(period, 1), 'UTC')) - toUInt32(toDateTime(period, 'UTC'))) / greatest(toUInt32(now()) - toUInt32(toDateTime(period, 'UTC')), 1) - planned, NULL) AS projected_gap
FROM
(
    SELECT customer_id, product, period, planned, planned_before, versions, versions_before
    FROM `acme`.`rollup_feedback_plans`
) AS plans
ALL FULL OUTER JOIN
(
    SELECT customer_id, product, period, actual, events FROM `acme`.`feedback_actuals`
) AS actuals USING (customer_id, product, period)
WHERE 'customerloop:50c6686ef0a8' != '';

-- Week acme.feedback_accuracy
CREATE VIEW IF NOT EXISTS `acme`.`feedback_accuracy` AS
SELECT product, horizon, count() AS n, sum(p) AS planned, sum(a) AS actual,
    if(sum(a) > 0, sum(p - a) / sum(a), NULL) AS bias,
    if(sum(a) > 0, sum(abs(p - a)) / sum(a), NULL) AS wape
FROM
(
    SELECT customer_id, product, p_period AS period, horizon, argMax(quantity, (submitted_at, plan_id, _offset)) AS p
    FROM
    (
        SELECT customer_id, product, toMonday(period) AS p_period, toRelativeWeekNum(period) - toRelativeWeekNum(submitted_at, 'UTC') AS horizon,
            quantity, submitted_at, plan_id, _offset
        FROM `acme`.`plans_raw`
    )
    WHERE horizon >= 0 AND p_period < toMonday(now(), 'UTC')
    GROUP BY customer_id, product, p_period, horizon
) AS plans
ALL LEFT JOIN
(
    SELECT customer_id, product, period, actual AS a FROM `acme`.`feedback_actuals`
) AS actuals USING (customer_id, product, period)
WHERE 'customerloop:b3b5f794825e' != ''
GROUP BY product, horizon
ORDER BY product, horizon;

-- Week acme.feedback_value_added
CREATE VIEW IF NOT EXISTS `acme`.`feedback_value_added` AS
SELECT product, horizon, count() AS n,
    if(sum(a) > 0, sum(abs(p - a)) / sum(a), NULL) AS wape,
    if(sum(a) > 0, sum(abs(naive - a)) / sum(a), NULL) AS naive_wape,
    naive_wape - wape AS fva,
    toUInt8(ifNull(fva > 0, 0)) AS beats_naive
FROM
(
    SELECT customer_id, product, period, horizon, p, a, addWeeks(period, -1) AS previous
    FROM
    (
        SELECT customer_id, product, p_period AS period, horizon, argMax(quantity, (submitted_at, plan_id, _offset)) AS p
        FROM
        (
            SELECT customer_id, product, toMonday(period) AS p_period, toRelativeWeekNum(period) - toRelativeWeekNum(submitted_at, 'UTC') AS horizon,
                quantity, submitted_at, plan_id, _offset
            FROM `acme`.`plans_raw`
        )
        WHERE horizon >= 0 AND p_period < toMonday(now(), 'UTC')
        GROUP BY customer_id, product, p_period, horizon
    ) AS plans
    ALL LEFT JOIN
    (
        SELECT customer_id, product, period, actual AS a FROM `acme`.`feedback_actuals`
    ) AS actuals USING (customer_id, product, period)
) AS points
ALL LEFT JOIN
(
    SELECT customer_id, product, period AS previous, actual AS naive FROM `acme`.`feedback_actuals`
) AS naive_actuals USING (customer_id, product, previous)
WHERE 'customerloop:372110b8baae' != ''
GROUP BY product, horizon
ORDER BY product, horizon;

-- Week acme.feedback_tracking
CREATE VIEW IF NOT EXISTS `acme`.`feedback_tracking` AS
SELECT customer_id, product, count() AS n, sum(e) AS cumulative_error, avg(abs(e)) AS mad,
    if(mad > 0, cumulative_error / mad, NULL) AS tracking_signal
FROM
(
    SELECT customer_id, product, actual - ifNull(planned_at_start, 0) AS e
    FROM `acme`.`feedback_gaps`
    WHERE period < toMonday(now(), 'UTC') AND planned_at_start IS NOT NULL
)
WHERE 'customerloop:a0d987c201e1' != ''
GROUP BY customer_id, product
ORDER BY customer_id, product;

