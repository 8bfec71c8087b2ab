-- acme.usage_raw_local
ALTER TABLE `acme`.`usage_raw_local` ON CLUSTER `customerloop` DELETE WHERE customer_id = ?;

-- acme.plans_raw_local
ALTER TABLE `acme`.`plans_raw_local` ON CLUSTER `customerloop` DELETE WHERE customer_id = ?;

