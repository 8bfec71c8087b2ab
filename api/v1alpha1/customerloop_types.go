package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// StreamKind says which kind of customer data a stream carries.
// +kubebuilder:validation:Enum=Usage;Plan
type StreamKind string

const (
	// StreamUsage carries real-use data: usage events.
	StreamUsage StreamKind = "Usage"
	// StreamPlan carries plan-ahead data: planned quantities for coming periods.
	StreamPlan StreamKind = "Plan"
)

// DeletionPolicy says what happens to a loop's ClickHouse objects when the loop is deleted.
// +kubebuilder:validation:Enum=Retain;Delete
type DeletionPolicy string

const (
	// DeletionRetain keeps the loop's tables and their data.
	DeletionRetain DeletionPolicy = "Retain"
	// DeletionDelete drops the loop's tables (not the database, which may hold others').
	DeletionDelete DeletionPolicy = "Delete"
)

// DimensionType is the ClickHouse type of a declared dimension.
// +kubebuilder:validation:Enum=String;Int32;Int64;UInt32;UInt64;Float32;Float64;Bool;Date;DateTime
type DimensionType string

// CustomerLoopSpec declares one feedback loop: where customers' usage events and plans
// arrive (Kafka) and where they are kept and aggregated (ClickHouse).
// +kubebuilder:validation:XValidation:rule="self.streams.all(s, !has(s.deadLetterTopic) || self.streams.all(t, t.topic != s.deadLetterTopic))",message="a stream's deadLetterTopic must not be the topic of any stream"
// +kubebuilder:validation:XValidation:rule="!has(self.feedback) || self.streams.exists(s, s.name == self.feedback.usageStream && s.kind == 'Usage')",message="feedback.usageStream must name a stream of kind Usage"
// +kubebuilder:validation:XValidation:rule="!has(self.feedback) || self.streams.exists(s, s.name == self.feedback.planStream && s.kind == 'Plan')",message="feedback.planStream must name a stream of kind Plan"
// +kubebuilder:validation:XValidation:rule="!has(self.rollups) || self.rollups.all(r, self.streams.exists(s, s.name == r.stream))",message="a rollup's stream must name a stream in spec.streams"
// +kubebuilder:validation:XValidation:rule="!has(self.rollups) || self.rollups.all(r, r.granularity != 'Hour' || self.streams.exists(s, s.name == r.stream && s.kind == 'Usage'))",message="granularity Hour needs a Usage stream: a Plan stream's periods are days"
// +kubebuilder:validation:XValidation:rule="!has(self.feedback) || !has(self.rollups) || self.rollups.all(r, r.name != 'feedback_actuals' && r.name != 'feedback_plans')",message="with feedback, the rollup names feedback_actuals and feedback_plans are taken by the feedback's own aggregates: choose another"
// +kubebuilder:validation:XValidation:rule="!has(self.customerChannel) || has(self.feedback)",message="customerChannel needs feedback: a customer's statement is made of the feedback figures"
// +kubebuilder:validation:XValidation:rule="!has(self.consent) || self.streams.all(s, s.topic != self.consent.topic && (!has(s.deadLetterTopic) || s.deadLetterTopic != self.consent.topic))",message="consent.topic must not be the topic or dead-letter topic of a stream"
// +kubebuilder:validation:XValidation:rule="has(self.privacy) || self.streams.all(s, (!has(s.pii) || (!has(s.pii.customerId) && !has(s.pii.id))) && (!has(s.dimensions) || s.dimensions.all(d, !has(d.pii) || d.pii != 'Hash')))",message="pii Hash needs privacy.hmacKeySecretRef: the key the fields are hashed with"
type CustomerLoopSpec struct {
	// kafka is where the loop's streams are read from.
	// +required
	Kafka KafkaSpec `json:"kafka"`

	// clickhouse is where the loop's tables live.
	// +required
	ClickHouse ClickHouseSpec `json:"clickhouse"`

	// streams are the Kafka topics the loop ingests, each into its own raw table.
	// +required
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.all(s, self.exists_one(t, t.topic == s.topic))",message="two streams read the same topic; give each stream its own topic"
	Streams []StreamSpec `json:"streams"`

	// feedback joins a Plan stream to a Usage stream: plan against actual per customer,
	// product and period, as views in the loop's database.
	// +optional
	Feedback *FeedbackSpec `json:"feedback,omitempty"`

	// rollups are aggregates of a stream kept up to date as rows arrive: a materialized
	// view into an AggregatingMergeTree table per rollup, read through the view
	// "rollup_<name>" with one plain column per dimension and measure.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	Rollups []RollupSpec `json:"rollups,omitempty"`

	// consent is the loop's consent stream: customers withdraw or grant consent to the
	// storage of their data, per stream.
	// +optional
	Consent *ConsentSpec `json:"consent,omitempty"`

	// customerChannel opens each customer's own figures to them on the manager's
	// customer API, and lets them answer with revised plans. It needs feedback.
	// +optional
	CustomerChannel *CustomerChannelSpec `json:"customerChannel,omitempty"`

	// workers run the loop's ingestion.
	// +optional
	// +kubebuilder:default={}
	Workers WorkersSpec `json:"workers,omitempty"`

	// paused stops ingestion without deleting anything (workers scale to zero); the loop's
	// consumer group keeps its position and ingestion resumes where it stopped.
	// +optional
	Paused bool `json:"paused,omitempty"`

	// deletionPolicy says what deleting the loop does to its ClickHouse tables: Retain
	// (the default) keeps them and their data, Delete drops them.
	// +optional
	// +kubebuilder:default=Retain
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`

	// privacy holds the key that fields marked "pii: Hash" are hashed with.
	// +optional
	Privacy *PrivacySpec `json:"privacy,omitempty"`

	// limits bound each message's fields, strings and nesting.
	// +optional
	Limits *MessageLimits `json:"limits,omitempty"`
}

// WorkersSpec sizes the loop's workers: pods of "customerloop worker" in one Kafka
// consumer group, which spreads the streams' partitions over them.
type WorkersSpec struct {
	// replicas is the number of worker pods. More replicas than partitions leave the
	// extra ones idle.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=128
	Replicas *int32 `json:"replicas,omitempty"`

	// resources of each worker container.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// batch bounds each worker's inserts into ClickHouse.
	// +optional
	Batch *BatchSpec `json:"batch,omitempty"`
}

// BatchSpec bounds a batch: it is inserted when it holds maxRows rows or maxBytes of
// messages, or when its oldest message has waited maxWait, whichever comes first.
type BatchSpec struct {
	// maxRows per insert. Defaults to 20000.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	MaxRows int32 `json:"maxRows,omitempty"`

	// maxBytes of messages per batch; a worker holds at most twice this in memory.
	// Defaults to 32 MiB.
	// +optional
	// +kubebuilder:validation:Minimum=65536
	// +kubebuilder:validation:Maximum=1073741824
	MaxBytes int64 `json:"maxBytes,omitempty"`

	// maxWait is the longest a message waits for its batch, as a duration ("1s",
	// "250ms"). Defaults to 1s.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10ms') && duration(self) <= duration('5m')",message="maxWait must be a duration between 10ms and 5m, e.g. \"1s\""
	MaxWait string `json:"maxWait,omitempty"`
}

// StreamSpec is one Kafka topic of customer data and how its JSON messages map onto the
// loop's data model.
// +kubebuilder:validation:XValidation:rule="self.kind != 'Usage' || has(self.mapping.eventId)",message="a Usage stream needs mapping.eventId"
// +kubebuilder:validation:XValidation:rule="self.kind != 'Usage' || has(self.mapping.timestamp)",message="a Usage stream needs mapping.timestamp"
// +kubebuilder:validation:XValidation:rule="self.kind != 'Plan' || has(self.mapping.planId)",message="a Plan stream needs mapping.planId"
// +kubebuilder:validation:XValidation:rule="self.kind != 'Plan' || has(self.mapping.period)",message="a Plan stream needs mapping.period (the period the plan is for)"
// +kubebuilder:validation:XValidation:rule="self.kind != 'Plan' || has(self.mapping.quantity)",message="a Plan stream needs mapping.quantity"
// +kubebuilder:validation:XValidation:rule="self.kind != 'Usage' || (!has(self.mapping.planId) && !has(self.mapping.period) && !has(self.mapping.submittedAt) && !has(self.mapping.confidence))",message="planId, period, submittedAt and confidence belong to Plan streams"
// +kubebuilder:validation:XValidation:rule="self.kind != 'Plan' || (!has(self.mapping.eventId) && !has(self.mapping.timestamp))",message="eventId and timestamp belong to Usage streams"
// +kubebuilder:validation:XValidation:rule="self.kind == oldSelf.kind",message="a stream's kind is immutable; add a stream with a new name instead"
type StreamSpec struct {
	// name of the stream; its raw table is "<name>_raw".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=48
	// +kubebuilder:validation:Pattern=`^[a-z][a-z0-9_]*$`
	Name string `json:"name"`

	// kind of customer data: Usage (usage events) or Plan (planned quantities).
	// +required
	Kind StreamKind `json:"kind"`

	// topic the stream is read from.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=249
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._-]+$`
	Topic string `json:"topic"`

	// deadLetterTopic receives messages that cannot be ingested, with the reason.
	// Defaults to "<topic>.dlq".
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=249
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._-]+$`
	DeadLetterTopic string `json:"deadLetterTopic,omitempty"`

	// mapping names the JSON field that holds each core role of the data model.
	// +required
	Mapping FieldMapping `json:"mapping"`

	// dimensions are further typed fields kept as columns of the raw table.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	Dimensions []Dimension `json:"dimensions,omitempty"`

	// dedupWindow is how long a stored event or plan id is remembered so that a
	// producer's retry is not stored twice, as a duration ("1m") of produce time (the
	// messages' Kafka timestamps), whatever the consumers' lag. Defaults to 1m.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('24h')",message="dedupWindow must be a duration between 0s and 24h, e.g. \"5m\""
	DedupWindow string `json:"dedupWindow,omitempty"`

	// customers restricts which customers the stream accepts; messages of any other
	// customer are dead-lettered with reason unknown_customer. Without it every customer
	// is accepted.
	// +optional
	Customers *CustomerRestriction `json:"customers,omitempty"`

	// retentionDays is how long the stream's rows are kept, by their time (ts of usage
	// events, period of plans). On ClickHouse before 19.6, which has no table TTL,
	// retention is applied per month partition: a month is dropped once all of it is
	// older than the retention. Without it rows are kept.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=36500
	RetentionDays *int32 `json:"retentionDays,omitempty"`
	// pii marks core roles that hold personal data: they are stored, and
	// dead-lettered, as their keyed hash. Needs spec.privacy.
	// +optional
	PII *StreamPII `json:"pii,omitempty"`
}

// CustomerRestriction lists the customers a stream accepts: those named in allowed and
// those whose id matches pattern.
// +kubebuilder:validation:XValidation:rule="has(self.allowed) || has(self.pattern)",message="customers needs allowed, pattern or both"
type CustomerRestriction struct {
	// allowed customer ids.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=10000
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	Allowed []string `json:"allowed,omitempty"`

	// pattern is an RE2 regular expression a customer id must match in full.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	Pattern string `json:"pattern,omitempty"`
}

// FieldMapping names, for each core role, the JSON field of a message that holds it.
// Fields are dotted paths into nested objects, e.g. "account.id".
type FieldMapping struct {
	// customerId is the field identifying the customer. Required for both kinds.
	// +required
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$`
	CustomerID string `json:"customerId"`

	// product is the field naming the product. Required for both kinds.
	// +required
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$`
	Product string `json:"product"`

	// quantity is the field with the used or planned quantity. Optional for Usage
	// streams (each event then counts 1), required for Plan streams.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$`
	Quantity string `json:"quantity,omitempty"`

	// eventId is the field with the event's unique id (Usage).
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$`
	EventID string `json:"eventId,omitempty"`

	// timestamp is the field with the time of use (Usage): RFC 3339, epoch seconds or
	// epoch milliseconds.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$`
	Timestamp string `json:"timestamp,omitempty"`

	// planId is the field with the plan submission's unique id (Plan).
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$`
	PlanID string `json:"planId,omitempty"`

	// period is the field with the first day of the period the plan is for (Plan), as a
	// date ("2026-12-01") or a timestamp.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$`
	Period string `json:"period,omitempty"`

	// submittedAt is the field with the time the plan was made (Plan). Without it, the
	// Kafka message time is used.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$`
	SubmittedAt string `json:"submittedAt,omitempty"`

	// confidence is the field with the customer's confidence in the plan, 0 to 1 (Plan).
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$`
	Confidence string `json:"confidence,omitempty"`
}

// Dimension is a declared field kept as its own typed column.
// +kubebuilder:validation:XValidation:rule="!has(self.pii) || self.pii != 'Hash' || self.type == 'String'",message="pii Hash needs type String: the hash is stored as hex text"
// +kubebuilder:validation:XValidation:rule="!(self.name in ['event_id','plan_id','customer_id','product','ts','quantity','period','submitted_at','confidence'])",message="dimension name collides with a core column; choose another name"
type Dimension struct {
	// name of the column. Names starting with "_" are reserved.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z][a-z0-9_]*$`
	Name string `json:"name"`

	// field is the JSON field holding the value; defaults to the column name.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$`
	Field string `json:"field,omitempty"`

	// type of the column.
	// +required
	Type DimensionType `json:"type"`

	// nullable keeps a missing value as NULL; otherwise a message without the field is
	// dead-lettered.
	// +optional
	Nullable bool `json:"nullable,omitempty"`

	// pii marks the field as personal data: Hash stores its keyed hash (needs
	// spec.privacy and type String), Drop never reads it and stores the column's empty
	// value. Either way, dead letters never carry its clear value.
	// +optional
	PII PIIAction `json:"pii,omitempty"`
}

// CustomerLoop streams customers' usage events and plans from Kafka into ClickHouse and
// feeds the aggregates back to product teams.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.workers.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=cloop;cloops,categories=customerloop
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Streams",type=integer,JSONPath=`.status.streamCount`
// +kubebuilder:printcolumn:name="Lag",type=integer,JSONPath=`.status.lag`
// +kubebuilder:printcolumn:name="Rows",type=integer,JSONPath=`.status.rowsIngested`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type CustomerLoop struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec CustomerLoopSpec `json:"spec"`
	// +optional
	Status CustomerLoopStatus `json:"status,omitempty"`
}

// CustomerLoopList is a list of CustomerLoops.
// +kubebuilder:object:root=true
type CustomerLoopList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CustomerLoop `json:"items"`
}

func init() {
	SchemeBuilder.Register(&CustomerLoop{}, &CustomerLoopList{})
}
