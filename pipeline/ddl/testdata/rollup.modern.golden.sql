-- rollup daily_usage version afa5faa9, read view columns: period, customer_id, product, region, events, used, smallest, largest, customers, seats_p50, seats_p99
DROP TABLE IF EXISTS `acme`.`rollup_daily_usage_vafa5faa9_mv`;

DROP TABLE IF EXISTS `acme`.`rollup_daily_usage_vafa5faa9`;

CREATE TABLE IF NOT EXISTS `acme`.`rollup_daily_usage_vafa5faa9`
(
    `_period` Date,
    `customer_id` String,
    `product` String,
    `_value_region` String,
    `_null_region` UInt8,
    `_state_events` AggregateFunction(count),
    `_state_used` AggregateFunction(sum, Float64),
    `_state_smallest` AggregateFunction(min, Float64),
    `_state_largest` AggregateFunction(max, Float64),
    `_state_customers` AggregateFunction(uniq, String),
    `_state_seats` AggregateFunction(quantiles(0.5, 0.99), Nullable(Int32))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(`_period`)
ORDER BY (`_period`, `customer_id`, `product`, `_value_region`, `_null_region`);

CREATE MATERIALIZED VIEW IF NOT EXISTS `acme`.`rollup_daily_usage_vafa5faa9_mv` TO `acme`.`rollup_daily_usage_vafa5faa9` AS
SELECT
    toDate(`ts`, 'UTC') AS `_period`,
    `customer_id`,
    `product`,
    ifNull(`region`, defaultValueOfArgumentType(assumeNotNull(`region`))) AS `_value_region`,
    isNull(`region`) AS `_null_region`,
    countState() AS `_state_events`,
    sumState(`quantity`) AS `_state_used`,
    minState(`quantity`) AS `_state_smallest`,
    maxState(`quantity`) AS `_state_largest`,
    uniqState(`customer_id`) AS `_state_customers`,
    quantilesState(0.5, 0.99)(`seats`) AS `_state_seats`
FROM `acme`.`usage_raw`
GROUP BY `_period`, `customer_id`, `product`, `_value_region`, `_null_region`;

INSERT INTO `acme`.`rollup_daily_usage_vafa5faa9` (`_period`, `customer_id`, `product`, `_value_region`, `_null_region`, `_state_events`, `_state_used`, `_state_smallest`, `_state_largest`, `_state_customers`, `_state_seats`)
SELECT
    toDate(`ts`, 'UTC') AS `_period`,
    `customer_id`,
    `product`,
    ifNull(`region`, defaultValueOfArgumentType(assumeNotNull(`region`))) AS `_value_region`,
    isNull(`region`) AS `_null_region`,
    countState() AS `_state_events`,
    sumState(`quantity`) AS `_state_used`,
    minState(`quantity`) AS `_state_smallest`,
    maxState(`quantity`) AS `_state_largest`,
    uniqState(`customer_id`) AS `_state_customers`,
    quantilesState(0.5, 0.99)(`seats`) AS `_state_seats`
FROM `acme`.`usage_raw`
WHERE toYYYYMM(`ts`) = 202610
GROUP BY `_period`, `customer_id`, `product`, `_value_region`, `_null_region`;

INSERT INTO `acme`.`rollup_daily_usage_vafa5faa9` (`_period`, `customer_id`, `product`, `_value_region`, `_null_region`, `_state_events`, `_state_used`, `_state_smallest`, `_state_largest`, `_state_customers`, `_state_seats`)
SELECT
    toDate(`ts`, 'UTC') AS `_period`,
    `customer_id`,
    `product`,
    ifNull(`region`, defaultValueOfArgumentType(assumeNotNull(`region`))) AS `_value_region`,
    isNull(`region`) AS `_null_region`,
    countState() AS `_state_events`,
    sumState(`quantity`) AS `_state_used`,
    minState(`quantity`) AS `_state_smallest`,
    maxState(`quantity`) AS `_state_largest`,
    uniqState(`customer_id`) AS `_state_customers`,
    quantilesState(0.5, 0.99)(`seats`) AS `_state_seats`
FROM `acme`.`usage_raw`
WHERE toYYYYMM(`ts`) = 202611
GROUP BY `_period`, `customer_id`, `product`, `_value_region`, `_null_region`;

DROP TABLE IF EXISTS `acme`.`rollup_daily_usage`;

CREATE VIEW IF NOT EXISTS `acme`.`rollup_daily_usage` AS
SELECT
    `_period` AS `period`,
    `customer_id`,
    `product`,
    if(`_null_region` = 1, NULL, `_value_region`) AS `region`,
    countMerge(`_state_events`) AS `events`,
    sumMerge(`_state_used`) AS `used`,
    minMerge(`_state_smallest`) AS `smallest`,
    maxMerge(`_state_largest`) AS `largest`,
    uniqMerge(`_state_customers`) AS `customers`,
    ifNull(quantilesMerge(0.5, 0.99)(`_state_seats`)[1], nan) AS `seats_p50`,
    ifNull(quantilesMerge(0.5, 0.99)(`_state_seats`)[2], nan) AS `seats_p99`
FROM `acme`.`rollup_daily_usage_vafa5faa9`
GROUP BY `_period`, `customer_id`, `product`, `_value_region`, `_null_region`;

-- rollup hourly version e6b2ca0d, read view columns: period, events
DROP TABLE IF EXISTS `acme`.`rollup_hourly_ve6b2ca0d_mv`;

DROP TABLE IF EXISTS `acme`.`rollup_hourly_ve6b2ca0d`;

CREATE TABLE IF NOT EXISTS `acme`.`rollup_hourly_ve6b2ca0d`
(
    `_period` DateTime,
    `_state_events` AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(`_period`)
ORDER BY (`_period`);

CREATE MATERIALIZED VIEW IF NOT EXISTS `acme`.`rollup_hourly_ve6b2ca0d_mv` TO `acme`.`rollup_hourly_ve6b2ca0d` AS
SELECT
    toStartOfHour(`ts`, 'UTC') AS `_period`,
    countState() AS `_state_events`
FROM `acme`.`usage_raw`
GROUP BY `_period`;

INSERT INTO `acme`.`rollup_hourly_ve6b2ca0d` (`_period`, `_state_events`)
SELECT
    toStartOfHour(`ts`, 'UTC') AS `_period`,
    countState() AS `_state_events`
FROM `acme`.`usage_raw`
GROUP BY `_period`;

DROP TABLE IF EXISTS `acme`.`rollup_hourly`;

CREATE VIEW IF NOT EXISTS `acme`.`rollup_hourly` AS
SELECT
    `_period` AS `period`,
    countMerge(`_state_events`) AS `events`
FROM `acme`.`rollup_hourly_ve6b2ca0d`
GROUP BY `_period`;

-- rollup weekly_trials version a81b3de4, read view columns: period, trial, bytes
DROP TABLE IF EXISTS `acme`.`rollup_weekly_trials_va81b3de4_mv`;

DROP TABLE IF EXISTS `acme`.`rollup_weekly_trials_va81b3de4`;

CREATE TABLE IF NOT EXISTS `acme`.`rollup_weekly_trials_va81b3de4`
(
    `_period` Date,
    `trial` UInt8,
    `_state_bytes` AggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(`_period`)
ORDER BY (`_period`, `trial`);

CREATE MATERIALIZED VIEW IF NOT EXISTS `acme`.`rollup_weekly_trials_va81b3de4_mv` TO `acme`.`rollup_weekly_trials_va81b3de4` AS
SELECT
    toMonday(`ts`, 'UTC') AS `_period`,
    `trial`,
    sumState(`bytes`) AS `_state_bytes`
FROM `acme`.`usage_raw`
GROUP BY `_period`, `trial`;

INSERT INTO `acme`.`rollup_weekly_trials_va81b3de4` (`_period`, `trial`, `_state_bytes`)
SELECT
    toMonday(`ts`, 'UTC') AS `_period`,
    `trial`,
    sumState(`bytes`) AS `_state_bytes`
FROM `acme`.`usage_raw`
GROUP BY `_period`, `trial`;

DROP TABLE IF EXISTS `acme`.`rollup_weekly_trials`;

CREATE VIEW IF NOT EXISTS `acme`.`rollup_weekly_trials` AS
SELECT
    `_period` AS `period`,
    `trial`,
    sumMerge(`_state_bytes`) AS `bytes`
FROM `acme`.`rollup_weekly_trials_va81b3de4`
GROUP BY `_period`, `trial`;

-- rollup monthly_plans version 104ee89f, read view columns: period, customer_id, planned, confidence
DROP TABLE IF EXISTS `acme`.`rollup_monthly_plans_v104ee89f_mv`;

DROP TABLE IF EXISTS `acme`.`rollup_monthly_plans_v104ee89f`;

CREATE TABLE IF NOT EXISTS `acme`.`rollup_monthly_plans_v104ee89f`
(
    `_period` Date,
    `customer_id` String,
    `_state_planned` AggregateFunction(sum, Float64),
    `_state_confidence` AggregateFunction(max, Nullable(Float64))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(`_period`)
ORDER BY (`_period`, `customer_id`);

CREATE MATERIALIZED VIEW IF NOT EXISTS `acme`.`rollup_monthly_plans_v104ee89f_mv` TO `acme`.`rollup_monthly_plans_v104ee89f` AS
SELECT
    toStartOfMonth(`period`) AS `_period`,
    `customer_id`,
    sumState(`quantity`) AS `_state_planned`,
    maxState(`confidence`) AS `_state_confidence`
FROM `acme`.`plans_raw`
GROUP BY `_period`, `customer_id`;

INSERT INTO `acme`.`rollup_monthly_plans_v104ee89f` (`_period`, `customer_id`, `_state_planned`, `_state_confidence`)
SELECT
    toStartOfMonth(`period`) AS `_period`,
    `customer_id`,
    sumState(`quantity`) AS `_state_planned`,
    maxState(`confidence`) AS `_state_confidence`
FROM `acme`.`plans_raw`
GROUP BY `_period`, `customer_id`;

DROP TABLE IF EXISTS `acme`.`rollup_monthly_plans`;

CREATE VIEW IF NOT EXISTS `acme`.`rollup_monthly_plans` AS
SELECT
    `_period` AS `period`,
    `customer_id`,
    sumMerge(`_state_planned`) AS `planned`,
    ifNull(maxMerge(`_state_confidence`), 0) AS `confidence`
FROM `acme`.`rollup_monthly_plans_v104ee89f`
GROUP BY `_period`, `customer_id`;

