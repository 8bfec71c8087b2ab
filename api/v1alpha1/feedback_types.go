package v1alpha1

// What a loop gives back to product teams: plan against actual per period, its digests,
// and rollups of its streams.

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

	// trackingSignalLimit is the alert band of the tracking signal (view
	// feedback_tracking): a customer and product whose |tracking signal| exceeds it keeps
	// missing its plans in one direction. The report and the dashboard list them; with
	// publish, each digest of a completed period carries them and is flagged, and a
	// customer and product crossing out of the band raises a Warning event, once per
	// crossing. A decimal above 0, e.g. "4" (the default) or "3.5".
	// +optional
	// +kubebuilder:default="4"
	// +kubebuilder:validation:MaxLength=8
	// +kubebuilder:validation:Pattern=`^[0-9]{1,3}(\.[0-9]{1,3})?$`
	// +kubebuilder:validation:XValidation:rule="double(self) > 0.0",message="trackingSignalLimit must be above 0, e.g. \"4\""
	TrackingSignalLimit string `json:"trackingSignalLimit,omitempty"`
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
