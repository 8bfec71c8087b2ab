-- acme.feedback_digests
CREATE TABLE IF NOT EXISTS `acme`.`feedback_digests` ON CLUSTER `customerloop`
(
    `loop` String,
    `product` String,
    `period` Date,
    `version` Int64,
    `content_hash` String,
    `published` UInt8,
    `publisher` String,
    `recorded_at` DateTime
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/customerloop/acme/feedback_digests', '{replica}')
ORDER BY (loop, product, period, version);

-- acme.feedback_tracking_crossings
CREATE TABLE IF NOT EXISTS `acme`.`feedback_tracking_crossings` ON CLUSTER `customerloop`
(
    `loop` String,
    `product` String,
    `customer_id` String,
    `side` Int8,
    `tracking_signal` Nullable(Float64),
    `since` Date,
    `version` Int64,
    `publisher` String,
    `recorded_at` DateTime
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/customerloop/acme/feedback_tracking_crossings', '{replica}')
ORDER BY (loop, product, customer_id, version);

