-- acme
CREATE DATABASE IF NOT EXISTS `acme` ON CLUSTER `customerloop`;

-- acme.customerloop_ledger_local
CREATE TABLE IF NOT EXISTS `acme`.`customerloop_ledger_local` ON CLUSTER `customerloop`
(
    `topic` String,
    `partition` Int32,
    `first_offset` Int64,
    `last_offset` Int64,
    `messages` UInt64,
    `dead_lettered` UInt64,
    `duplicates` UInt64,
    `batch_id` String,
    `worker` String,
    `written_at` DateTime,
    `withheld` UInt64
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/customerloop/acme/customerloop_ledger_local', '{replica}')
ORDER BY (topic, partition, last_offset);

-- acme.customerloop_ledger
CREATE TABLE IF NOT EXISTS `acme`.`customerloop_ledger` ON CLUSTER `customerloop`
(
    `topic` String,
    `partition` Int32,
    `first_offset` Int64,
    `last_offset` Int64,
    `messages` UInt64,
    `dead_lettered` UInt64,
    `duplicates` UInt64,
    `batch_id` String,
    `worker` String,
    `written_at` DateTime,
    `withheld` UInt64
)
ENGINE = Distributed('customerloop', 'acme', 'customerloop_ledger_local', cityHash64(topic, partition));

-- acme.dead_letters_local
CREATE TABLE IF NOT EXISTS `acme`.`dead_letters_local` ON CLUSTER `customerloop`
(
    `customer_id` String,
    `stream` String,
    `reason` String,
    `source_topic` String,
    `source_partition` Int32,
    `source_offset` Int64,
    `event_time` DateTime,
    `dead_lettered_at` DateTime
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/customerloop/acme/dead_letters_local', '{replica}')
PARTITION BY toYYYYMM(event_time)
ORDER BY (customer_id, source_topic, source_partition, source_offset);

-- acme.dead_letters
CREATE TABLE IF NOT EXISTS `acme`.`dead_letters` ON CLUSTER `customerloop`
(
    `customer_id` String,
    `stream` String,
    `reason` String,
    `source_topic` String,
    `source_partition` Int32,
    `source_offset` Int64,
    `event_time` DateTime,
    `dead_lettered_at` DateTime
)
ENGINE = Distributed('customerloop', 'acme', 'dead_letters_local', cityHash64(customer_id));

-- acme.customerloop_consent_local
CREATE TABLE IF NOT EXISTS `acme`.`customerloop_consent_local` ON CLUSTER `customerloop`
(
    `id` String,
    `customer_id` String,
    `action` String,
    `scope` Array(String),
    `ts` DateTime,
    `received_at` DateTime,
    `error` String,
    `_topic` String,
    `_partition` Int32,
    `_offset` Int64
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/customerloop/acme/customerloop_consent_local', '{replica}')
ORDER BY (_topic, _partition, _offset);

-- acme.customerloop_consent
CREATE TABLE IF NOT EXISTS `acme`.`customerloop_consent` ON CLUSTER `customerloop`
(
    `id` String,
    `customer_id` String,
    `action` String,
    `scope` Array(String),
    `ts` DateTime,
    `received_at` DateTime,
    `error` String,
    `_topic` String,
    `_partition` Int32,
    `_offset` Int64
)
ENGINE = Distributed('customerloop', 'acme', 'customerloop_consent_local', cityHash64(_topic, _partition));

-- acme.customerloop_consent_audit_local
CREATE TABLE IF NOT EXISTS `acme`.`customerloop_consent_audit_local` ON CLUSTER `customerloop`
(
    `id` String,
    `customer_id` String,
    `action` String,
    `scope` Array(String),
    `received_at` DateTime,
    `tables` Array(String),
    `rows_deleted` Array(UInt64),
    `mutation_ids` Array(String),
    `completed_at` DateTime,
    `error` String,
    `_topic` String,
    `_partition` Int32,
    `_offset` Int64
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/customerloop/acme/customerloop_consent_audit_local', '{replica}')
ORDER BY (_topic, _partition, _offset);

-- acme.customerloop_consent_audit
CREATE TABLE IF NOT EXISTS `acme`.`customerloop_consent_audit` ON CLUSTER `customerloop`
(
    `id` String,
    `customer_id` String,
    `action` String,
    `scope` Array(String),
    `received_at` DateTime,
    `tables` Array(String),
    `rows_deleted` Array(UInt64),
    `mutation_ids` Array(String),
    `completed_at` DateTime,
    `error` String,
    `_topic` String,
    `_partition` Int32,
    `_offset` Int64
)
ENGINE = Distributed('customerloop', 'acme', 'customerloop_consent_audit_local', cityHash64(_topic, _partition));

-- acme.usage_raw_local
CREATE TABLE IF NOT EXISTS `acme`.`usage_raw_local` ON CLUSTER `customerloop`
(
    `event_id` String,
    `customer_id` String,
    `product` String,
    `ts` DateTime,
    `quantity` Float64,
    `region` String,
    `seats` Nullable(Int32),
    `bytes` UInt64,
    `ratio` Nullable(Float32),
    `trial` UInt8,
    `signup` Nullable(Date),
    `seen_at` Nullable(DateTime),
    `_topic` String,
    `_partition` Int32,
    `_offset` Int64,
    `_ingested_at` DateTime,
    `_produced_at_ms` Int64
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/customerloop/acme/usage_raw_local', '{replica}')
PARTITION BY toYYYYMM(ts)
ORDER BY (customer_id, product, ts, event_id);

-- acme.usage_raw
CREATE TABLE IF NOT EXISTS `acme`.`usage_raw` ON CLUSTER `customerloop`
(
    `event_id` String,
    `customer_id` String,
    `product` String,
    `ts` DateTime,
    `quantity` Float64,
    `region` String,
    `seats` Nullable(Int32),
    `bytes` UInt64,
    `ratio` Nullable(Float32),
    `trial` UInt8,
    `signup` Nullable(Date),
    `seen_at` Nullable(DateTime),
    `_topic` String,
    `_partition` Int32,
    `_offset` Int64,
    `_ingested_at` DateTime,
    `_produced_at_ms` Int64
)
ENGINE = Distributed('customerloop', 'acme', 'usage_raw_local', cityHash64(customer_id));

-- acme.plans_raw_local
CREATE TABLE IF NOT EXISTS `acme`.`plans_raw_local` ON CLUSTER `customerloop`
(
    `plan_id` String,
    `customer_id` String,
    `product` String,
    `period` Date,
    `quantity` Float64,
    `submitted_at` DateTime,
    `confidence` Nullable(Float64),
    `_topic` String,
    `_partition` Int32,
    `_offset` Int64,
    `_ingested_at` DateTime,
    `_produced_at_ms` Int64
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/customerloop/acme/plans_raw_local', '{replica}')
PARTITION BY toYYYYMM(period)
ORDER BY (customer_id, product, period, submitted_at, plan_id);

-- acme.plans_raw
CREATE TABLE IF NOT EXISTS `acme`.`plans_raw` ON CLUSTER `customerloop`
(
    `plan_id` String,
    `customer_id` String,
    `product` String,
    `period` Date,
    `quantity` Float64,
    `submitted_at` DateTime,
    `confidence` Nullable(Float64),
    `_topic` String,
    `_partition` Int32,
    `_offset` Int64,
    `_ingested_at` DateTime,
    `_produced_at_ms` Int64
)
ENGINE = Distributed('customerloop', 'acme', 'plans_raw_local', cityHash64(customer_id));

-- insert usage
INSERT INTO `acme`.`usage_raw` (`event_id`, `customer_id`, `product`, `ts`, `quantity`, `region`, `seats`, `bytes`, `ratio`, `trial`, `signup`, `seen_at`, `_topic`, `_partition`, `_offset`, `_ingested_at`, `_produced_at_ms`);

-- insert plans
INSERT INTO `acme`.`plans_raw` (`plan_id`, `customer_id`, `product`, `period`, `quantity`, `submitted_at`, `confidence`, `_topic`, `_partition`, `_offset`, `_ingested_at`, `_produced_at_ms`);

