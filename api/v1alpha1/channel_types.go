package v1alpha1

// CustomerChannelSpec opens each customer's own figures to them, on the manager's
// customer API: their statement (plan against actual, accuracy by horizon, forecast
// value added), their consent messages with receipts, and a way to submit revised plans
// to the loop's plan stream. Every customer authenticates with a token of their own,
// declared in a Secret by its SHA-256 (docs/customers.md).
type CustomerChannelSpec struct {
	// tokensSecretRef names the Secret, in the loop's namespace, that holds the
	// customers' tokens: one entry per token, {"customer": ..., "sha256": ..., "expires":
	// ...}, and optionally "signing-key" for short-lived tokens a vendor's portal mints.
	// A change of the Secret takes effect on the next request.
	// +required
	TokensSecretRef ChannelSecretRef `json:"tokensSecretRef"`

	// requestsPerSecond each token may make on average. Defaults to 5.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	RequestsPerSecond int32 `json:"requestsPerSecond,omitempty"`

	// burst is how many requests a token may make at once. Defaults to 20.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	Burst int32 `json:"burst,omitempty"`

	// acceptPlans lets customers submit plans through the API, produced to the plan
	// stream's topic with the customer taken from their token. Defaults to true.
	// +optional
	AcceptPlans *bool `json:"acceptPlans,omitempty"`

	// statements, when set, publishes to Kafka, for each customer and period whose
	// figures changed, the customer's statement, and each applied consent message's
	// receipt.
	// +optional
	Statements *ChannelStatementsSpec `json:"statements,omitempty"`
}

// ChannelSecretRef names a Secret in the loop's namespace.
type ChannelSecretRef struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`
}

// RateOrDefault returns requestsPerSecond, 5 when unset.
func (c *CustomerChannelSpec) RateOrDefault() int32 {
	if c.RequestsPerSecond > 0 {
		return c.RequestsPerSecond
	}
	return 5
}

// BurstOrDefault returns burst, 20 when unset.
func (c *CustomerChannelSpec) BurstOrDefault() int32 {
	if c.Burst > 0 {
		return c.Burst
	}
	return 20
}

// PlansAccepted reports whether customers may submit plans.
func (c *CustomerChannelSpec) PlansAccepted() bool { return c.AcceptPlans == nil || *c.AcceptPlans }

// ChannelStatementsSpec says where the manager publishes each customer's statements and
// consent receipts.
// +kubebuilder:validation:XValidation:rule="!self.topic.contains('{customer}') || self.topic.indexOf('{customer}') == self.topic.lastIndexOf('{customer}')",message="topic: {customer} may appear once"
// +kubebuilder:validation:XValidation:rule="!self.topic.contains('{customer}') || self.topic.contains('{customer}.')",message="topic: {customer} must be followed by a dot (for example acme.customer.{customer}.statements), so that a prefixed ACL on one customer's topics matches no other customer's"
type ChannelStatementsSpec struct {
	// topic receives the statements and receipts as JSON, keyed by customer. With
	// {customer}, followed by a dot, each customer has a topic of their own
	// ("acme.customer.{customer}.statements"), which a Kafka administrator lets them read
	// with a prefixed ACL; without it, one topic carries every customer's, for the
	// vendor's own fan-out. docs/customers.md says how a customer id is spelled in a
	// topic name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=200
	// +kubebuilder:validation:Pattern=`^([A-Za-z0-9._-]|\{customer\})+$`
	Topic string `json:"topic"`

	// interval between publication rounds; a round sends only the statements whose
	// figures changed. Defaults to 5m.
	// +optional
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s') && duration(self) <= duration('24h')",message="interval must be a duration between 10s and 24h, e.g. \"5m\""
	Interval string `json:"interval,omitempty"`
}
