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

// SASLMechanism is a Kafka SASL mechanism.
// +kubebuilder:validation:Enum=PLAIN;SCRAM-SHA-256;SCRAM-SHA-512
type SASLMechanism string

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

// Granularity is the length of the periods plans are made for.
// +kubebuilder:validation:Enum=Week;Month
type Granularity string

// FeedbackSpec says which streams' plans and usage are compared, and per what period.
// +kubebuilder:validation:XValidation:rule="!has(self.gapThresholdPercent) || has(self.publish)",message="gapThresholdPercent needs publish: flags are raised with the digests"
type FeedbackSpec struct {
	// usageStream names the Usage stream whose events are the actuals.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=48
	UsageStream string `json:"usageStream"`

	// planStream names the Plan stream whose submissions are the plans.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=48
	PlanStream string `json:"planStream"`

	// granularity of the periods: Week (from Monday) or Month, in UTC. Changing it
	// recreates the views; no data is involved.
	// +optional
	// +kubebuilder:default=Month
	Granularity Granularity `json:"granularity,omitempty"`

	// publish sends product teams a digest per product and period (planned, actual, gap,
	// accuracy, the customers with the largest gaps) on a Kafka topic, whenever its
	// figures change.
	// +optional
	Publish *PublishSpec `json:"publish,omitempty"`

	// gapThresholdPercent flags a product and period whose gap between actual and plan
	// exceeds this share of the plan: a Warning event on the loop, and "flagged" in the
	// digest. Needs publish.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	GapThresholdPercent *int32 `json:"gapThresholdPercent,omitempty"`
}

// PublishSpec says where and how often a loop's digests are published.
type PublishSpec struct {
	// topic receives the digests as JSON, keyed by product.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=249
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._-]+$`
	Topic string `json:"topic"`

	// interval between publication rounds; a round publishes only the digests whose
	// figures changed. Defaults to 5m.
	// +optional
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s') && duration(self) <= duration('24h')",message="interval must be a duration between 10s and 24h, e.g. \"5m\""
	Interval string `json:"interval,omitempty"`

	// topCustomers is how many customers with the largest gaps each digest lists.
	// Defaults to 5.
	// +optional
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	TopCustomers *int32 `json:"topCustomers,omitempty"`
}

// RollupGranularity is the length of a rollup's periods, in UTC.
// +kubebuilder:validation:Enum=Hour;Day;Week;Month
type RollupGranularity string

// RollupFunction is how a measure aggregates its field.
// +kubebuilder:validation:Enum=Count;Sum;Min;Max;Uniq;Quantiles
type RollupFunction string

// RollupSpec is one aggregate of a stream per period and dimensions.
// +kubebuilder:validation:XValidation:rule="self.measures.all(m, m.name != 'period' && (!has(self.dimensions) || !(m.name in self.dimensions)))",message="a measure is named like a dimension or period; the read view needs distinct column names"
type RollupSpec struct {
	// name of the rollup; its read view is "rollup_<name>".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=48
	// +kubebuilder:validation:Pattern=`^[a-z][a-z0-9_]*$`
	Name string `json:"name"`

	// stream names the stream in spec.streams whose raw table the rollup aggregates.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=48
	Stream string `json:"stream"`

	// dimensions the rollup groups by besides the period: customer_id, product, or
	// dimensions declared on the stream. Empty means one row per period.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z][a-z0-9_]*$`
	Dimensions []string `json:"dimensions,omitempty"`

	// granularity of the periods, in UTC: Hour, Day, Week (from Monday) or Month. A Usage
	// stream's periods follow ts; a Plan stream's follow period (the target period).
	// +required
	Granularity RollupGranularity `json:"granularity"`

	// measures are the aggregated columns.
	// +required
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	Measures []RollupMeasure `json:"measures"`
}

// RollupMeasure is one aggregated column of a rollup.
// +kubebuilder:validation:XValidation:rule="self.function == 'Count' || has(self.field)",message="field is required for Sum, Min, Max, Uniq and Quantiles"
// +kubebuilder:validation:XValidation:rule="self.function != 'Count' || !has(self.field)",message="Count counts rows and takes no field"
// +kubebuilder:validation:XValidation:rule="(self.function == 'Quantiles') == has(self.quantiles)",message="quantiles are required for function Quantiles and only allowed with it"
type RollupMeasure struct {
	// name of the measure's column in the read view (Quantiles: one column
	// "<name>_p<digits>" per quantile, e.g. latency_p99).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=48
	// +kubebuilder:validation:Pattern=`^[a-z][a-z0-9_]*$`
	Name string `json:"name"`

	// function: Count (rows), Sum, Min, Max (of a numeric column), Uniq (approximate
	// number of distinct values of any column) or Quantiles (approximate, of a numeric
	// column).
	// +required
	Function RollupFunction `json:"function"`

	// field is the raw table's column the function aggregates: quantity, confidence
	// (Plan), or a declared dimension; for Uniq also customer_id, product and the ids.
	// NULLs are skipped.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z][a-z0-9_]*$`
	Field string `json:"field,omitempty"`

	// quantiles for function Quantiles, as decimals between 0 and 1 without trailing
	// zeros: "0.5", "0.99".
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:Pattern=`^0\.[0-9]{0,3}[1-9]$`
	Quantiles []string `json:"quantiles,omitempty"`
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

// KafkaSpec is the Kafka connection of a loop.
type KafkaSpec struct {
	// brokers are bootstrap addresses, host:port.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=261
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:[0-9]{1,5}$`
	Brokers []string `json:"brokers"`

	// consumerGroup is the Kafka consumer group of the loop's workers. Defaults to
	// "customerloop.<namespace>.<name>".
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=249
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._-]+$`
	ConsumerGroup string `json:"consumerGroup,omitempty"`

	// tls encrypts the connection to the brokers.
	// +optional
	TLS *KafkaTLS `json:"tls,omitempty"`

	// sasl authenticates the workers to the brokers.
	// +optional
	SASL *KafkaSASL `json:"sasl,omitempty"`
}

// KafkaTLS configures TLS to the brokers.
type KafkaTLS struct {
	// caSecretRef names a Secret key with the PEM CA bundle that signs the brokers'
	// certificates. Without it the system's roots are used.
	// +optional
	CASecretRef *SecretKeyRef `json:"caSecretRef,omitempty"`

	// serverName overrides the name checked in the brokers' certificates.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`
	ServerName string `json:"serverName,omitempty"`

	// clientCertSecretRef names a Secret with a client certificate and its key, for
	// brokers that authenticate clients by certificate (mutual TLS). For a Strimzi
	// KafkaUser with authentication type tls, name the user's Secret with certKey
	// user.crt and keyKey user.key.
	// +optional
	ClientCertSecretRef *ClientCertSecretRef `json:"clientCertSecretRef,omitempty"`

	// insecureSkipVerify accepts any broker certificate. For tests only.
	// +optional
	InsecureSkipVerify bool `json:"insecureSkipVerify,omitempty"`
}

// ClientCertSecretRef names a Secret in the loop's namespace holding a client
// certificate and its private key, both PEM. The default keys are those of a
// kubernetes.io/tls Secret, which cert-manager writes: tls.crt and tls.key.
type ClientCertSecretRef struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`

	// certKey is the Secret key holding the certificate, followed by any intermediate
	// CA certificates. Defaults to "tls.crt".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	CertKey string `json:"certKey,omitempty"`

	// keyKey is the Secret key holding the certificate's private key. Defaults to
	// "tls.key".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	KeyKey string `json:"keyKey,omitempty"`
}

// KafkaSASL configures SASL authentication to the brokers.
// +kubebuilder:validation:XValidation:rule="!has(self.username) || !has(self.credentialsSecretRef.usernameKey)",message="set username (the user name itself) or credentialsSecretRef.usernameKey (the Secret key holding it), not both"
type KafkaSASL struct {
	// mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512. PLAIN sends the password as it
	// is; use it only with tls.
	// +required
	Mechanism SASLMechanism `json:"mechanism"`

	// username is the SASL user name, for Secrets that hold only the password. A Strimzi
	// KafkaUser's Secret is one (keys password and sasl.jaas.config): the user name is
	// the KafkaUser's name, so set username to it and credentialsSecretRef.name to the
	// Secret Strimzi made. Without it the user name is read from the Secret.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^\S+$`
	Username string `json:"username,omitempty"`

	// credentialsSecretRef names the Secret with the SASL password and, unless username
	// is set, the user name.
	// +required
	CredentialsSecretRef CredentialsSecretRef `json:"credentialsSecretRef"`
}

// SecretKeyRef names one key of a Secret in the loop's namespace.
type SecretKeyRef struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`

	// key in the Secret. Defaults to "ca.crt".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// ClickHouseSpec is the ClickHouse connection of a loop.
// +kubebuilder:validation:XValidation:rule="has(self.cluster) == has(oldSelf.cluster) && (!has(self.cluster) || self.cluster == oldSelf.cluster)",message="cluster is immutable; the loop's tables stay where they were created: create a new CustomerLoop to move to or from a cluster"
// +kubebuilder:validation:XValidation:rule="has(self.address) != has(self.addresses)",message="set clickhouse.address (one server) or clickhouse.addresses (several, tried in order), not both"
type ClickHouseSpec struct {
	// address is the host:port of ClickHouse's native protocol: usually port 9000, or
	// 9440 with tls. Set address or addresses, not both.
	// +optional
	// +kubebuilder:validation:MaxLength=261
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:[0-9]{1,5}$`
	Address string `json:"address,omitempty"`

	// addresses are several host:port of the native protocol, for failover: each
	// connection goes to the first address that accepts it, in the order listed. The
	// addresses must serve the same data (replicas of one cluster, or endpoints of one
	// service): CustomerLoop fails over connections, it does not replicate. Set address
	// or addresses, not both.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=261
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:[0-9]{1,5}$`
	// +kubebuilder:validation:XValidation:rule="self.all(a, self.exists_one(b, b == a))",message="clickhouse.addresses lists an address twice"
	Addresses []string `json:"addresses,omitempty"`

	// tls encrypts the connections to ClickHouse and checks the server's certificate.
	// The address must then be the server's secure native port (tcp_port_secure, 9440
	// on ClickHouse Cloud).
	// +optional
	TLS *ClickHouseTLS `json:"tls,omitempty"`

	// database holds the loop's tables. It is created when missing and cannot be changed
	// afterwards (the data would be left behind).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z_][a-z0-9_]*$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="database is immutable; create a new CustomerLoop to use another database"
	Database string `json:"database"`

	// cluster names a cluster of the server's <remote_servers> (with ZooKeeper or Keeper,
	// <macros> shard and replica, and <distributed_ddl>). When set, every object is created
	// ON CLUSTER: a Replicated table per shard named <table>_local and a Distributed table
	// of the usual name over it, sharded by customer, so that a customer's rows, rollups and
	// gaps stay on one shard. The address may be any node of the cluster. It cannot be
	// changed once set.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=127
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	Cluster string `json:"cluster,omitempty"`

	// credentialsSecretRef names a Secret in the loop's namespace with the ClickHouse user
	// and password. Without it the server's default user is used.
	// +optional
	CredentialsSecretRef *CredentialsSecretRef `json:"credentialsSecretRef,omitempty"`
}

// ClickHouseTLS configures TLS to ClickHouse's secure native port.
type ClickHouseTLS struct {
	// caSecretRef names a Secret key with the PEM CA bundle that signs the server's
	// certificate. Without it the system's roots are used, which is right for servers
	// with a publicly trusted certificate such as ClickHouse Cloud's.
	// +optional
	CASecretRef *SecretKeyRef `json:"caSecretRef,omitempty"`

	// serverName is the name checked in the server's certificate. Defaults to the host
	// of the address connected to; set it when that is an IP address or a name the
	// certificate does not carry.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`
	ServerName string `json:"serverName,omitempty"`

	// clientCertSecretRef names a Secret with a client certificate and its key, for
	// servers that ask for one (verificationMode strict in the server's openSSL
	// config).
	// +optional
	ClientCertSecretRef *ClientCertSecretRef `json:"clientCertSecretRef,omitempty"`
}

// CredentialsSecretRef points at a username and a password in a Secret of the loop's
// namespace.
type CredentialsSecretRef struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`

	// usernameKey is the Secret key holding the user name. Defaults to "username".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	UsernameKey string `json:"usernameKey,omitempty"`

	// passwordKey is the Secret key holding the password. Defaults to "password".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	PasswordKey string `json:"passwordKey,omitempty"`
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

// StreamStatus is what the systems of record say about one stream.
type StreamStatus struct {
	// name of the stream.
	Name string `json:"name"`

	// table is the stream's raw table, database-qualified.
	// +optional
	Table string `json:"table,omitempty"`

	// rowsIngested is the number of rows in the stream's raw table.
	// +optional
	RowsIngested int64 `json:"rowsIngested"`

	// rowsDeadLettered is the number of messages the ledger records as sent to the
	// dead-letter topic.
	// +optional
	RowsDeadLettered int64 `json:"rowsDeadLettered"`

	// duplicatesDropped is the number of producer retries the ledger records as not
	// stored again.
	// +optional
	DuplicatesDropped int64 `json:"duplicatesDropped,omitempty"`

	// messagesWithheld counts messages read but not stored because their customer had
	// withdrawn consent (spec.consent), from the ledger.
	// +optional
	MessagesWithheld int64 `json:"messagesWithheld,omitempty"`

	// lag is the number of messages in the stream's topic not yet ingested: the
	// partitions' end offsets minus where the ledger says ingestion stands.
	// +optional
	Lag int64 `json:"lag"`

	// lastIngestTime is the newest ingestion time recorded in the raw table.
	// +optional
	LastIngestTime *metav1.Time `json:"lastIngestTime,omitempty"`
}

// CustomerLoopStatus is the observed state of a CustomerLoop.
type CustomerLoopStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Reconciling, Stalled, SchemaReady, WorkersReady.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// streams reports each stream's ingestion.
	// +optional
	// +listType=map
	// +listMapKey=name
	Streams []StreamStatus `json:"streams,omitempty"`

	// rowsIngested is the sum of rows over all streams.
	// +optional
	RowsIngested int64 `json:"rowsIngested,omitempty"`

	// streamCount is the number of streams in the spec, for kubectl's printer columns.
	// +optional
	StreamCount int32 `json:"streamCount,omitempty"`

	// lag is the sum of the streams' lag.
	// +optional
	Lag int64 `json:"lag,omitempty"`

	// replicas is the number of worker pods running, for the scale subresource.
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// selector is the label selector of the loop's worker pods, for the scale
	// subresource.
	// +optional
	Selector string `json:"selector,omitempty"`

	// objects are the ClickHouse objects the loop manages, database-qualified.
	// +optional
	// +listType=atomic
	Objects []string `json:"objects,omitempty"`

	// feedback reports the digests published for product teams.
	// +optional
	Feedback *FeedbackStatus `json:"feedback,omitempty"`
}

// FeedbackStatus is what the loop has told product teams, from its digest table.
type FeedbackStatus struct {
	// lastPublishedPeriod is the start (a date) of the latest period a digest was
	// published for.
	// +optional
	LastPublishedPeriod string `json:"lastPublishedPeriod,omitempty"`

	// lastPublishedTime is when a digest was last published.
	// +optional
	LastPublishedTime *metav1.Time `json:"lastPublishedTime,omitempty"`

	// customersWithPlans counts the customers with a plan for the current period.
	// +optional
	CustomersWithPlans int64 `json:"customersWithPlans,omitempty"`

	// wape is the plans' weighted absolute percentage error over completed periods, all
	// products and horizons: sum |plan - actual| / sum actual, as a decimal ("0.153").
	// Empty while there is no usage to compare with.
	// +optional
	WAPE string `json:"wape,omitempty"`

	// digestsPublished counts the digests this loop's publisher sent since it started.
	// +optional
	DigestsPublished int64 `json:"digestsPublished,omitempty"`

	// message says why the last publication round failed; empty when it succeeded.
	// +optional
	Message string `json:"message,omitempty"`
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
