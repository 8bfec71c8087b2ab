-- acme.usage_raw_local
ALTER TABLE `acme`.`usage_raw_local` ON CLUSTER `customerloop` DELETE WHERE customer_id = ?;

-- acme.plans_raw_local
ALTER TABLE `acme`.`plans_raw_local` ON CLUSTER `customerloop` DELETE WHERE customer_id = ?;

-- acme.dead_letters_local
ALTER TABLE `acme`.`dead_letters_local` ON CLUSTER `customerloop` DELETE WHERE customer_id = ? AND has(?, stream);

