-- acme.customerloop_ledger.dead_lettered
ALTER TABLE `acme`.`customerloop_ledger` ADD COLUMN `dead_lettered` UInt64 AFTER `messages`;

-- acme.customerloop_ledger.duplicates
ALTER TABLE `acme`.`customerloop_ledger` ADD COLUMN `duplicates` UInt64 AFTER `dead_lettered`;

-- acme.usage_raw.seats
ALTER TABLE `acme`.`usage_raw` ADD COLUMN `seats` Nullable(Int32) AFTER `region`;

-- acme.usage_raw.plan_tier
ALTER TABLE `acme`.`usage_raw` ADD COLUMN `plan_tier` Nullable(String) AFTER `seen_at`;

