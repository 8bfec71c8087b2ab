-- rollup daily_usage version 809bfa9c, read view columns: period, customer_id, product, region, events, used, smallest, largest, customers, seats_p50, seats_p99
DROP TABLE IF EXISTS `acme`.`rollup_daily_usage_v809bfa9c_mv` ON CLUSTER `analytics`;

DROP TABLE IF EXISTS `acme`.`rollup_daily_usage_v809bfa9c` ON CLUSTER `analytics`;

DROP TABLE IF EXISTS `acme`.`rollup_daily_usage_v809bfa9c_local` ON CLUSTER `analytics`;

CREATE TABLE IF NOT EXISTS `acme`.`rollup_daily_usage_v809bfa9c_local` ON CLUSTER `analytics`
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
    `_state_seats` AggregateFunction(quantiles(0.5, 0.99), Int32)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/customerloop/acme/rollup_daily_usage_v809bfa9c_local', '{replica}')
PARTITION BY toYYYYMM(`_period`)
ORDER BY (`_period`, `customer_id`, `product`, `_value_region`, `_null_region`);

CREATE TABLE IF NOT EXISTS `acme`.`rollup_daily_usage_v809bfa9c` ON CLUSTER `analytics`
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
    `_state_seats` AggregateFunction(quantiles(0.5, 0.99), Int32)
)
ENGINE = Distributed('analytics', 'acme', 'rollup_daily_usage_v809bfa9c_local', cityHash64(`customer_id`));

CREATE MATERIALIZED VIEW IF NOT EXISTS `acme`.`rollup_daily_usage_v809bfa9c_mv` ON CLUSTER `analytics` TO `acme`.`rollup_daily_usage_v809bfa9c_local` AS
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
FROM `acme`.`usage_raw_local`
GROUP BY `_period`, `customer_id`, `product`, `_value_region`, `_null_region`;

INSERT INTO `acme`.`rollup_daily_usage_v809bfa9c` (`_period`, `customer_id`, `product`, `_value_region`, `_null_region`, `_state_events`, `_state_used`, `_state_smallest`, `_state_largest`, `_state_customers`, `_state_seats`)
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

INSERT INTO `acme`.`rollup_daily_usage_v809bfa9c` (`_period`, `customer_id`, `product`, `_value_region`, `_null_region`, `_state_events`, `_state_used`, `_state_smallest`, `_state_largest`, `_state_customers`, `_state_seats`)
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

DROP TABLE IF EXISTS `acme`.`rollup_daily_usage` ON CLUSTER `analytics`;

CREATE VIEW IF NOT EXISTS `acme`.`rollup_daily_usage` ON CLUSTER `analytics` AS
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
    quantilesMerge(0.5, 0.99)(`_state_seats`)[1] AS `seats_p50`,
    quantilesMerge(0.5, 0.99)(`_state_seats`)[2] AS `seats_p99`
FROM `acme`.`rollup_daily_usage_v809bfa9c`
GROUP BY `_period`, `customer_id`, `product`, `_value_region`, `_null_region`;

-- rollup hourly version e6b2ca0d, read view columns: period, events
DROP TABLE IF EXISTS `acme`.`rollup_hourly_ve6b2ca0d_mv` ON CLUSTER `analytics`;

DROP TABLE IF EXISTS `acme`.`rollup_hourly_ve6b2ca0d` ON CLUSTER `analytics`;

DROP TABLE IF EXISTS `acme`.`rollup_hourly_ve6b2ca0d_local` ON CLUSTER `analytics`;

CREATE TABLE IF NOT EXISTS `acme`.`rollup_hourly_ve6b2ca0d_local` ON CLUSTER `analytics`
(
    `_period` DateTime,
    `_state_events` AggregateFunction(count)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/customerloop/acme/rollup_hourly_ve6b2ca0d_local', '{replica}')
PARTITION BY toYYYYMM(`_period`)
ORDER BY (`_period`);

CREATE TABLE IF NOT EXISTS `acme`.`rollup_hourly_ve6b2ca0d` ON CLUSTER `analytics`
(
    `_period` DateTime,
    `_state_events` AggregateFunction(count)
)
ENGINE = Distributed('analytics', 'acme', 'rollup_hourly_ve6b2ca0d_local', cityHash64(`_period`));

CREATE MATERIALIZED VIEW IF NOT EXISTS `acme`.`rollup_hourly_ve6b2ca0d_mv` ON CLUSTER `analytics` TO `acme`.`rollup_hourly_ve6b2ca0d_local` AS
SELECT
    toStartOfHour(`ts`, 'UTC') AS `_period`,
    countState() AS `_state_events`
FROM `acme`.`usage_raw_local`
GROUP BY `_period`;

INSERT INTO `acme`.`rollup_hourly_ve6b2ca0d` (`_period`, `_state_events`)
SELECT
    toStartOfHour(`ts`, 'UTC') AS `_period`,
    countState() AS `_state_events`
FROM `acme`.`usage_raw`
GROUP BY `_period`;

DROP TABLE IF EXISTS `acme`.`rollup_hourly` ON CLUSTER `analytics`;

CREATE VIEW IF NOT EXISTS `acme`.`rollup_hourly` ON CLUSTER `analytics` AS
SELECT
    `_period` AS `period`,
    countMerge(`_state_events`) AS `events`
FROM `acme`.`rollup_hourly_ve6b2ca0d`
GROUP BY `_period`;

-- rollup weekly_trials version a81b3de4, read view columns: period, trial, bytes
DROP TABLE IF EXISTS `acme`.`rollup_weekly_trials_va81b3de4_mv` ON CLUSTER `analytics`;

DROP TABLE IF EXISTS `acme`.`rollup_weekly_trials_va81b3de4` ON CLUSTER `analytics`;

DROP TABLE IF EXISTS `acme`.`rollup_weekly_trials_va81b3de4_local` ON CLUSTER `analytics`;

CREATE TABLE IF NOT EXISTS `acme`.`rollup_weekly_trials_va81b3de4_local` ON CLUSTER `analytics`
(
    `_period` Date,
    `trial` UInt8,
    `_state_bytes` AggregateFunction(sum, UInt64)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/customerloop/acme/rollup_weekly_trials_va81b3de4_local', '{replica}')
PARTITION BY toYYYYMM(`_period`)
ORDER BY (`_period`, `trial`);

CREATE TABLE IF NOT EXISTS `acme`.`rollup_weekly_trials_va81b3de4` ON CLUSTER `analytics`
(
    `_period` Date,
    `trial` UInt8,
    `_state_bytes` AggregateFunction(sum, UInt64)
)
ENGINE = Distributed('analytics', 'acme', 'rollup_weekly_trials_va81b3de4_local', cityHash64(`_period`, `trial`));

CREATE MATERIALIZED VIEW IF NOT EXISTS `acme`.`rollup_weekly_trials_va81b3de4_mv` ON CLUSTER `analytics` TO `acme`.`rollup_weekly_trials_va81b3de4_local` AS
SELECT
    toMonday(`ts`, 'UTC') AS `_period`,
    `trial`,
    sumState(`bytes`) AS `_state_bytes`
FROM `acme`.`usage_raw_local`
GROUP BY `_period`, `trial`;

INSERT INTO `acme`.`rollup_weekly_trials_va81b3de4` (`_period`, `trial`, `_state_bytes`)
SELECT
    toMonday(`ts`, 'UTC') AS `_period`,
    `trial`,
    sumState(`bytes`) AS `_state_bytes`
FROM `acme`.`usage_raw`
GROUP BY `_period`, `trial`;

DROP TABLE IF EXISTS `acme`.`rollup_weekly_trials` ON CLUSTER `analytics`;

CREATE VIEW IF NOT EXISTS `acme`.`rollup_weekly_trials` ON CLUSTER `analytics` AS
SELECT
    `_period` AS `period`,
    `trial`,
    sumMerge(`_state_bytes`) AS `bytes`
FROM `acme`.`rollup_weekly_trials_va81b3de4`
GROUP BY `_period`, `trial`;

-- rollup monthly_plans version 01dc932d, read view columns: period, customer_id, planned, confidence
DROP TABLE IF EXISTS `acme`.`rollup_monthly_plans_v01dc932d_mv` ON CLUSTER `analytics`;

DROP TABLE IF EXISTS `acme`.`rollup_monthly_plans_v01dc932d` ON CLUSTER `analytics`;

DROP TABLE IF EXISTS `acme`.`rollup_monthly_plans_v01dc932d_local` ON CLUSTER `analytics`;

CREATE TABLE IF NOT EXISTS `acme`.`rollup_monthly_plans_v01dc932d_local` ON CLUSTER `analytics`
(
    `_period` Date,
    `customer_id` String,
    `_state_planned` AggregateFunction(sum, Float64),
    `_state_confidence` AggregateFunction(max, Float64)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/customerloop/acme/rollup_monthly_plans_v01dc932d_local', '{replica}')
PARTITION BY toYYYYMM(`_period`)
ORDER BY (`_period`, `customer_id`);

CREATE TABLE IF NOT EXISTS `acme`.`rollup_monthly_plans_v01dc932d` ON CLUSTER `analytics`
(
    `_period` Date,
    `customer_id` String,
    `_state_planned` AggregateFunction(sum, Float64),
    `_state_confidence` AggregateFunction(max, Float64)
)
ENGINE = Distributed('analytics', 'acme', 'rollup_monthly_plans_v01dc932d_local', cityHash64(`customer_id`));

CREATE MATERIALIZED VIEW IF NOT EXISTS `acme`.`rollup_monthly_plans_v01dc932d_mv` ON CLUSTER `analytics` TO `acme`.`rollup_monthly_plans_v01dc932d_local` AS
SELECT
    toStartOfMonth(`period`) AS `_period`,
    `customer_id`,
    sumState(`quantity`) AS `_state_planned`,
    maxState(`confidence`) AS `_state_confidence`
FROM `acme`.`plans_raw_local`
GROUP BY `_period`, `customer_id`;

INSERT INTO `acme`.`rollup_monthly_plans_v01dc932d` (`_period`, `customer_id`, `_state_planned`, `_state_confidence`)
SELECT
    toStartOfMonth(`period`) AS `_period`,
    `customer_id`,
    sumState(`quantity`) AS `_state_planned`,
    maxState(`confidence`) AS `_state_confidence`
FROM `acme`.`plans_raw`
GROUP BY `_period`, `customer_id`;

DROP TABLE IF EXISTS `acme`.`rollup_monthly_plans` ON CLUSTER `analytics`;

CREATE VIEW IF NOT EXISTS `acme`.`rollup_monthly_plans` ON CLUSTER `analytics` AS
SELECT
    `_period` AS `period`,
    `customer_id`,
    sumMerge(`_state_planned`) AS `planned`,
    maxMerge(`_state_confidence`) AS `confidence`
FROM `acme`.`rollup_monthly_plans_v01dc932d`
GROUP BY `_period`, `customer_id`;

