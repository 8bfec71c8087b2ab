package pipeline

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"sync"
)

// MaxIDLength bounds ids, customers and products; longer values are input errors, not data.
const MaxIDLength = 256

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

// Limits bound what one message may make the decoder do. They are checked in one pass
// over the message before it is parsed, so a hostile message costs its length and no
// memory. A violation dead-letters the message as oversize.
type Limits struct {
	// MaxFields is the most object keys in the whole message, nested ones included.
	MaxFields int `json:"maxFields,omitempty"`
	// MaxStringBytes is the longest string (key or value) as written, escapes included.
	MaxStringBytes int `json:"maxStringBytes,omitempty"`
	// MaxDepth is the deepest nesting of objects and arrays.
	MaxDepth int `json:"maxDepth,omitempty"`
}

// Defaults of Limits.
const (
	DefaultMaxFields      = 1000
	DefaultMaxStringBytes = 64 << 10
	DefaultMaxDepth       = 32
)

func (l Limits) WithDefaults() Limits {
	if l.MaxFields <= 0 {
		l.MaxFields = DefaultMaxFields
	}
	if l.MaxStringBytes <= 0 {
		l.MaxStringBytes = DefaultMaxStringBytes
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	return l
}

func oversize(format string, args ...any) *DecodeError {
	return &DecodeError{Reason: ReasonOversize, Err: fmt.Errorf(format, args...)}
}

// Check scans msg as JSON tokens without parsing it: strings are skipped with their
// escapes, brackets counted for depth, colons outside strings counted as object keys.
// A malformed message passes if it is within the limits; the parser refuses it after.
func (l Limits) Check(msg []byte) error {
	if l.PlainlyWithin(msg) {
		return nil
	}
	return l.Scan(msg)
}

// PlainlyWithin reports whether msg is within the limits however its bytes are read: no
// longer than the longest string allowed, and with no more brackets or colons anywhere,
// inside strings too, than the depth and the fields allowed. Counting bytes is a fraction
// of the scan's cost, and almost every message passes this way.
func (l Limits) PlainlyWithin(msg []byte) bool {
	return len(msg) <= l.MaxStringBytes &&
		bytes.Count(msg, colon) <= l.MaxFields &&
		bytes.Count(msg, openBrace)+bytes.Count(msg, openBracket) <= l.MaxDepth
}

var colon, openBrace, openBracket = []byte{':'}, []byte{'{'}, []byte{'['}

// Scan is check's token scan.
func (l Limits) Scan(msg []byte) error {
	depth, fields := 0, 0
	for i := 0; i < len(msg); i++ {
		switch msg[i] {
		case '"':
			start := i + 1
			i = StringEnd(msg, start)
			if n := min(i, len(msg)) - start; n > l.MaxStringBytes {
				return oversize("a string of %d bytes exceeds the limit of %d", n, l.MaxStringBytes)
			}
		case '{', '[':
			if depth++; depth > l.MaxDepth {
				return oversize("nesting deeper than the limit of %d levels", l.MaxDepth)
			}
		case '}', ']':
			depth--
		case ':':
			if fields++; fields > l.MaxFields {
				return oversize("more than the limit of %d fields", l.MaxFields)
			}
		}
	}
	return nil
}

// StringEnd returns the index of the quote that closes the string starting at start (or
// len(msg) when none does), skipping escaped characters. It jumps from quote to quote:
// most of a message's bytes are in strings, and bytes.IndexByte is much faster than a
// loop over them.
func StringEnd(msg []byte, start int) int {
	i := start
	for {
		q := bytes.IndexByte(msg[i:], '"')
		if q < 0 {
			return len(msg)
		}
		q += i
		// The quote is escaped when an odd number of backslashes precede it.
		b := 0
		for j := q - 1; j >= start && msg[j] == '\\'; j-- {
			b++
		}
		if b%2 == 0 {
			return q
		}
		i = q + 1
	}
}

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
