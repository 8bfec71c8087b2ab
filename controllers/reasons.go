package controllers

// Every reason the controller writes, in conditions and in events. docs/operations.md
// documents the condition reasons (test/docs checks it against ConditionReasons).

// Condition reasons that say how far the loop got.
const (
	// ReasonSucceeded: Ready, the schema in place and the workers consuming.
	ReasonSucceeded = "Succeeded"
	// ReasonProgressing: Reconciling while the loop is on its way (a Secret is awaited, say).
	ReasonProgressing = "Progressing"
	// ReasonSchemaApplied: SchemaReady, every ClickHouse object of the loop in place.
	ReasonSchemaApplied = "SchemaApplied"
	// ReasonWorkersRunning: WorkersReady, the workers consume.
	ReasonWorkersRunning = "WorkersRunning"
	// ReasonPaused: spec.paused is true, so no worker runs.
	ReasonPaused = "Paused"
	// ReasonScaledToZero: spec.workers.replicas is 0, so no worker runs.
	ReasonScaledToZero = "ScaledToZero"
	// ReasonNotReached: WorkersReady waits for the schema.
	ReasonNotReached = "NotReached"
	// ReasonRollupBackfill: the workers are stopped while a rollup is built (also the
	// event of a rollup built).
	ReasonRollupBackfill = "RollupBackfill"
	// ReasonConsent: the workers are stopped while consent messages are applied (also the
	// event of a consent message applied or refused).
	ReasonConsent = "Consent"
	// ReasonKafkaUnavailable: the loop's brokers do not answer with its settings.
	ReasonKafkaUnavailable = "KafkaUnavailable"
)

// Condition reasons of a failed phase: what kind of error, where the kind says more than
// the phase, else the phase (see phaseReason).
const (
	// ReasonInvalidSpec: the spec cannot be rendered or applied as written (stalls).
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonMissingInput: a referenced Secret or key does not exist yet.
	ReasonMissingInput = "MissingInput"
	// ReasonUnsafeSchemaChange: the spec asks for a change the tables cannot follow (stalls).
	ReasonUnsafeSchemaChange = "UnsafeSchemaChange"
	// ReasonInvalidRollup: a rollup does not fit its stream (stalls).
	ReasonInvalidRollup = "InvalidRollup"
	// ReasonClusterNotReady: the servers do not have the loop's cluster set up.
	ReasonClusterNotReady = "ClusterNotReady"
	// ReasonConfigFailed: the config phase failed (reading a Secret, say).
	ReasonConfigFailed = "ConfigFailed"
	// ReasonClickHouseError: the schema phase failed: ClickHouse unreachable or refusing.
	ReasonClickHouseError = "ClickHouseError"
	// ReasonFeedbackFailed: the feedback phase failed to create the feedback views.
	ReasonFeedbackFailed = "FeedbackFailed"
	// ReasonRollupsFailed: the rollups phase failed to build or check the rollups.
	ReasonRollupsFailed = "RollupsFailed"
	// ReasonConsentFailed: the consent phase failed to read or apply consent messages.
	ReasonConsentFailed = "ConsentFailed"
	// ReasonWorkersFailing: the workers phase failed, or a worker fails.
	ReasonWorkersFailing = "WorkersFailing"
	// ReasonRetentionFailed: the retention phase failed to expire old rows.
	ReasonRetentionFailed = "RetentionFailed"
	// ReasonDigestsFailed: the digests phase failed to start the digest publisher.
	ReasonDigestsFailed = "DigestsFailed"
	// ReasonStatementsFailed: the statements phase failed to start the channel publisher.
	ReasonStatementsFailed = "StatementsFailed"
)

// ConditionReasons are all the reasons the controller sets on conditions.
var ConditionReasons = []string{
	ReasonSucceeded, ReasonProgressing, ReasonSchemaApplied, ReasonWorkersRunning, ReasonPaused,
	ReasonScaledToZero, ReasonNotReached, ReasonRollupBackfill, ReasonConsent, ReasonKafkaUnavailable,
	ReasonInvalidSpec, ReasonMissingInput, ReasonUnsafeSchemaChange, ReasonInvalidRollup,
	ReasonClusterNotReady, ReasonConfigFailed, ReasonClickHouseError, ReasonFeedbackFailed,
	ReasonRollupsFailed, ReasonConsentFailed, ReasonWorkersFailing, ReasonRetentionFailed,
	ReasonDigestsFailed, ReasonStatementsFailed,
}

// Event reasons that are no condition's (events on a change of Ready carry Ready's
// reason; RollupBackfill and Consent are above).
const (
	// ReasonDDLPending: ON CLUSTER statements wait in the DDL queue for hosts that are down.
	ReasonDDLPending = "DDLPending"
	// ReasonDeleteFailed: dropping the tables of a loop with deletionPolicy Delete failed.
	ReasonDeleteFailed = "DeleteFailed"
	// ReasonRetention: partitions dropped by retention.
	ReasonRetention = "Retention"
	// ReasonGapThresholdExceeded: a published digest's gap is beyond the threshold.
	ReasonGapThresholdExceeded = "GapThresholdExceeded"
	// ReasonDigestPublishFailed: a digest publication round failed.
	ReasonDigestPublishFailed = "DigestPublishFailed"
	// ReasonTrackingSignalOutsideBand: a customer's tracking signal for a product crossed
	// out of spec.feedback.trackingSignalLimit (once per crossing).
	ReasonTrackingSignalOutsideBand = "TrackingSignalOutsideBand"
	// ReasonStatementPublishFailed: a round of the customers' statements failed.
	ReasonStatementPublishFailed = "StatementPublishFailed"
)

// phaseReasons name each phase in the reason of its failure, when the error's kind does
// not say more (see phaseReason). The observe phase does not fail: what it cannot read
// is left out of status.
var phaseReasons = map[phaseName]string{
	phaseConfig:     ReasonConfigFailed,
	phaseSchema:     ReasonClickHouseError,
	phaseFeedback:   ReasonFeedbackFailed,
	phaseRollups:    ReasonRollupsFailed,
	phaseConsent:    ReasonConsentFailed,
	phaseWorkers:    ReasonWorkersFailing,
	phaseRetention:  ReasonRetentionFailed,
	phaseDigests:    ReasonDigestsFailed,
	phaseStatements: ReasonStatementsFailed,
}
