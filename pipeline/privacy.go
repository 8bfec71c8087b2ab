package pipeline

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"sync"
)

// PII says what happens to a field that holds personal data.
const (
	// PIIHash stores the field's value as the hex HMAC-SHA256 of its text (a number's
	// JSON text), keyed with the loop's HMAC key: equal values stay equal, so joins
	// and distinct counts still work, but the clear value is never stored.
	PIIHash = "Hash"
	// PIIDrop never reads the field: its column stores its empty value (NULL when
	// nullable, "" or 0 otherwise).
	PIIDrop = "Drop"
)

// CorePII says which core roles hold personal data. Only Hash is possible: the
// customer is the grain of every aggregate and the id deduplicates, so neither can be
// dropped. Plans and usage hashed with the same key keep joining on customer_id.
type CorePII struct {
	// CustomerID is Hash or empty.
	CustomerID string `json:"customerId,omitempty"`
	// ID (event_id or plan_id) is Hash or empty.
	ID string `json:"id,omitempty"`
}

// MinHMACKeyBytes is the shortest HMAC key accepted.
const MinHMACKeyBytes = 16

// HashedHexLen is the length of a hashed value: the full HMAC-SHA256, hex-encoded.
const HashedHexLen = 2 * sha256.Size

// hasHash reports whether any field of the stream is hashed.
func (s StreamConfig) hasHash() bool {
	if p := s.PII; p != nil && (p.CustomerID == PIIHash || p.ID == PIIHash) {
		return true
	}
	for _, d := range s.Dimensions {
		if d.PII == PIIHash {
			return true
		}
	}
	return false
}

// HasPII reports whether any field of the stream is hashed or dropped.
func (s StreamConfig) HasPII() bool {
	if s.hasHash() {
		return true
	}
	for _, d := range s.Dimensions {
		if d.PII != "" {
			return true
		}
	}
	return false
}

// validatePII checks the stream's PII declarations; it is part of StreamConfig.validate.
func (s StreamConfig) validatePII() error {
	var errs []error
	if p := s.PII; p != nil {
		for role, v := range map[string]string{"customerId": p.CustomerID, "id": p.ID} {
			if v != "" && v != PIIHash {
				errs = append(errs, fmt.Errorf("pii.%s %q: only Hash is possible for a core role", role, v))
			}
		}
	}
	for _, d := range s.Dimensions {
		switch d.PII {
		case "", PIIDrop:
		case PIIHash:
			if d.Type != "String" {
				errs = append(errs, fmt.Errorf("dimension %q: pii Hash needs type String (the hash is hex text)", d.Name))
			}
		default:
			errs = append(errs, fmt.Errorf("dimension %q: pii %q: want Hash or Drop", d.Name, d.PII))
		}
	}
	return errors.Join(errs...)
}

// HMACs pools HMAC states per key, so that hashing a value allocates nothing.
type HMACs struct {
	pool sync.Pool
}

// mac is a pooled HMAC state with room for its sum, which would escape to the heap if
// it were a local passed to the hash.Hash interface.
type mac struct {
	h   hash.Hash
	sum []byte
}

func NewHMACs(key []byte) *HMACs {
	m := &HMACs{}
	m.pool.New = func() any { return &mac{h: hmac.New(sha256.New, key), sum: make([]byte, 0, sha256.Size)} }
	return m
}

// Sum writes the hex HMAC of v onto dst[:0] and returns it. v may alias dst.
func (m *HMACs) Sum(dst, v []byte) []byte {
	st := m.pool.Get().(*mac)
	st.h.Reset()
	st.h.Write(v)
	st.sum = st.h.Sum(st.sum[:0])
	dst = append(dst[:0], make([]byte, HashedHexLen)...)
	hex.Encode(dst, st.sum)
	m.pool.Put(st)
	return dst
}

// HashPII returns the value a field marked Hash stores for v under key: the hex
// HMAC-SHA256 of v. It lets a reader find a known customer's rows.
func HashPII(key, v []byte) string {
	return string(NewHMACs(key).Sum(nil, v))
}
