package v1alpha1

// ConsentSpec is a loop's consent stream: customers publish withdrawals and grants of
// consent to the storage of their data (the message schema is in docs/messages.md).
// From the moment a withdrawal is processed, the customer's messages on the streams in
// its scope are not stored, their stored rows are deleted from the raw tables, and the
// rollups of those tables are rebuilt without them; a grant resumes ingestion. Each
// message is recorded in the table customerloop_consent_audit of the loop's database.
type ConsentSpec struct {
	// topic the consent messages are read from, keyed by customer id. It must not be the
	// topic or dead-letter topic of a stream.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=249
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._-]+$`
	Topic string `json:"topic"`
}
