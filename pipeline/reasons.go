package pipeline

import (
	"fmt"
)

// Reason is a machine-readable cause for dead-lettering a message.
type Reason string

const (
	ReasonInvalidJSON  Reason = "invalid_json"
	ReasonMissingField Reason = "missing_field"
	ReasonWrongType    Reason = "wrong_type"
	ReasonOutOfRange   Reason = "out_of_range"
	ReasonOversize     Reason = "oversize"
	// ReasonUnknownCustomer: the stream restricts its customers and this one is not
	// among them.
	ReasonUnknownCustomer Reason = "unknown_customer"
)

// DecodeError says why a message cannot be ingested.
type DecodeError struct {
	Reason Reason
	Field  string // the JSON field at fault; empty for the whole message
	Err    error
}

func (e *DecodeError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s: %v", e.Reason, e.Err)
	}
	return fmt.Sprintf("%s: field %q: %v", e.Reason, e.Field, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }
