package v1alpha1

// PIIAction says what happens to a declared field that holds personal data.
// +kubebuilder:validation:Enum=Hash;Drop
type PIIAction string

const (
	// PIIHash stores the hex HMAC-SHA256 of the value, keyed with the loop's HMAC key.
	PIIHash PIIAction = "Hash"
	// PIIDrop never reads the field: the column stores its empty value (NULL when
	// nullable, "" or 0 otherwise).
	PIIDrop PIIAction = "Drop"
)

// PIIHashOnly is the one action possible on a core role: the customer is the grain of
// every aggregate and the id deduplicates, so neither can be dropped.
// +kubebuilder:validation:Enum=Hash
type PIIHashOnly string

// StreamPII marks the core roles of a stream that hold personal data.
type StreamPII struct {
	// customerId: Hash stores the customer as its keyed hash. Hash it on every stream of
	// the loop, so that plans and usage of one customer still join.
	// +optional
	CustomerID PIIHashOnly `json:"customerId,omitempty"`

	// id: Hash stores the event id (Usage) or plan id (Plan) as its keyed hash;
	// duplicates are still recognised.
	// +optional
	ID PIIHashOnly `json:"id,omitempty"`
}

// PrivacySpec holds what the loop needs to protect personal data.
type PrivacySpec struct {
	// hmacKeySecretRef names the Secret key holding the key of the HMAC-SHA256 that
	// fields marked "pii: Hash" are stored as: at least 16 bytes, as text (it reaches
	// the workers as an environment variable). Hashes change with the key: after a
	// rotation the same customer is stored under a new value.
	// +required
	HMACKeySecretRef HMACKeySecretRef `json:"hmacKeySecretRef"`
}

// HMACKeySecretRef names the Secret key holding a loop's HMAC key.
type HMACKeySecretRef struct {
	// name of the Secret, in the loop's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`

	// key in the Secret. Defaults to "hmac-key".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// GetKey returns the Secret key, "hmac-key" when unset.
func (r *HMACKeySecretRef) GetKey() string {
	if r.Key != "" {
		return r.Key
	}
	return "hmac-key"
}

// MessageLimits bound what one message may hold; a message beyond them is
// dead-lettered as oversize before it is parsed.
type MessageLimits struct {
	// maxFields is the most object keys in a message, nested ones included. Defaults
	// to 1000.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	MaxFields int32 `json:"maxFields,omitempty"`

	// maxStringBytes is the longest string (key or value) of a message as written,
	// escapes included. Defaults to 65536.
	// +optional
	// +kubebuilder:validation:Minimum=256
	// +kubebuilder:validation:Maximum=1048576
	MaxStringBytes int32 `json:"maxStringBytes,omitempty"`

	// maxDepth is the deepest nesting of objects and arrays. Defaults to 32.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=256
	MaxDepth int32 `json:"maxDepth,omitempty"`
}
