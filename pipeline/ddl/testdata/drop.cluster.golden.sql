-- acme.rollup_daily_usage
DROP TABLE IF EXISTS `acme`.`rollup_daily_usage` ON CLUSTER `customerloop`;

-- acme.rollup_daily_usage_v2fbed798_mv
DROP TABLE IF EXISTS `acme`.`rollup_daily_usage_v2fbed798_mv` ON CLUSTER `customerloop`;

-- acme.rollup_daily_usage_v2fbed798
DROP TABLE IF EXISTS `acme`.`rollup_daily_usage_v2fbed798` ON CLUSTER `customerloop`;

-- acme.rollup_daily_usage_v2fbed798_local
DROP TABLE IF EXISTS `acme`.`rollup_daily_usage_v2fbed798_local` ON CLUSTER `customerloop`;

-- acme.feedback_actuals
DROP TABLE IF EXISTS `acme`.`feedback_actuals` ON CLUSTER `customerloop`;

-- acme.feedback_plan_versions
DROP TABLE IF EXISTS `acme`.`feedback_plan_versions` ON CLUSTER `customerloop`;

-- acme.feedback_gaps
DROP TABLE IF EXISTS `acme`.`feedback_gaps` ON CLUSTER `customerloop`;

-- acme.feedback_accuracy
DROP TABLE IF EXISTS `acme`.`feedback_accuracy` ON CLUSTER `customerloop`;

-- acme.feedback_value_added
DROP TABLE IF EXISTS `acme`.`feedback_value_added` ON CLUSTER `customerloop`;

-- acme.feedback_tracking
DROP TABLE IF EXISTS `acme`.`feedback_tracking` ON CLUSTER `customerloop`;

-- acme.feedback_digests
DROP TABLE IF EXISTS `acme`.`feedback_digests` ON CLUSTER `customerloop`;

-- acme.feedback_tracking_crossings
DROP TABLE IF EXISTS `acme`.`feedback_tracking_crossings` ON CLUSTER `customerloop`;

-- acme.customer_channel
DROP TABLE IF EXISTS `acme`.`customer_channel` ON CLUSTER `customerloop`;

-- acme.customerloop_ledger
DROP TABLE IF EXISTS `acme`.`customerloop_ledger` ON CLUSTER `customerloop`;

-- acme.customerloop_ledger_local
DROP TABLE IF EXISTS `acme`.`customerloop_ledger_local` ON CLUSTER `customerloop`;

-- acme.dead_letters
DROP TABLE IF EXISTS `acme`.`dead_letters` ON CLUSTER `customerloop`;

-- acme.dead_letters_local
DROP TABLE IF EXISTS `acme`.`dead_letters_local` ON CLUSTER `customerloop`;

-- acme.customerloop_consent
DROP TABLE IF EXISTS `acme`.`customerloop_consent` ON CLUSTER `customerloop`;

-- acme.customerloop_consent_local
DROP TABLE IF EXISTS `acme`.`customerloop_consent_local` ON CLUSTER `customerloop`;

-- acme.customerloop_consent_audit
DROP TABLE IF EXISTS `acme`.`customerloop_consent_audit` ON CLUSTER `customerloop`;

-- acme.customerloop_consent_audit_local
DROP TABLE IF EXISTS `acme`.`customerloop_consent_audit_local` ON CLUSTER `customerloop`;

-- acme.usage_raw
DROP TABLE IF EXISTS `acme`.`usage_raw` ON CLUSTER `customerloop`;

-- acme.usage_raw_local
DROP TABLE IF EXISTS `acme`.`usage_raw_local` ON CLUSTER `customerloop`;

-- acme.plans_raw
DROP TABLE IF EXISTS `acme`.`plans_raw` ON CLUSTER `customerloop`;

-- acme.plans_raw_local
DROP TABLE IF EXISTS `acme`.`plans_raw_local` ON CLUSTER `customerloop`;

