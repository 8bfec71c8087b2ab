-- acme.usage_raw_local
ALTER TABLE `acme`.`usage_raw_local` ON CLUSTER `customerloop` MODIFY TTL `ts` + toIntervalDay(30);

-- acme.usage_raw_local
ALTER TABLE `acme`.`usage_raw_local` ON CLUSTER `customerloop` DROP PARTITION 202611;

-- acme.plans_raw_local
ALTER TABLE `acme`.`plans_raw_local` ON CLUSTER `customerloop` MODIFY TTL `period` + toIntervalDay(30);

-- acme.plans_raw_local
ALTER TABLE `acme`.`plans_raw_local` ON CLUSTER `customerloop` DROP PARTITION 202611;

