package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// The observed state of a loop, read from its systems of record.

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
	// observedGeneration is the last generation the controller finished reconciling:
	// every phase ran for it, or it stalled (Stalled=True). While a newer generation
	// fails and is retried it stays behind; the conditions carry the generation they
	// were computed for.
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

	// customerChannel is what the loop's customer channel published; nil when it
	// publishes no statements.
	// +optional
	CustomerChannel *CustomerChannelStatus `json:"customerChannel,omitempty"`
}

// CustomerChannelStatus is what the channel publisher sent to customers.
type CustomerChannelStatus struct {
	// statementsPublished and receiptsPublished count the messages this loop's publisher
	// sent since it started.
	// +optional
	StatementsPublished int64 `json:"statementsPublished,omitempty"`
	// +optional
	ReceiptsPublished int64 `json:"receiptsPublished,omitempty"`

	// lastRoundTime is when the last publication round ended well.
	// +optional
	LastRoundTime *metav1.Time `json:"lastRoundTime,omitempty"`

	// message says why the last publication round failed; empty when it succeeded.
	// +optional
	Message string `json:"message,omitempty"`
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
