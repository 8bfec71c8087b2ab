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

	"github.com/valyala/fastjson"
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

// hashedHexLen is the length of a hashed value: the full HMAC-SHA256, hex-encoded.
const hashedHexLen = 2 * sha256.Size

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

func (l Limits) withDefaults() Limits {
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

// check scans msg as JSON tokens without parsing it: strings are skipped with their
// escapes, brackets counted for depth, colons outside strings counted as object keys.
// A malformed message passes if it is within the limits; the parser refuses it after.
func (l Limits) check(msg []byte) error {
	if l.plainlyWithin(msg) {
		return nil
	}
	return l.scan(msg)
}

// plainlyWithin reports whether msg is within the limits however its bytes are read: no
// longer than the longest string allowed, and with no more brackets or colons anywhere,
// inside strings too, than the depth and the fields allowed. Counting bytes is a fraction
// of the scan's cost, and almost every message passes this way.
func (l Limits) plainlyWithin(msg []byte) bool {
	return len(msg) <= l.MaxStringBytes &&
		bytes.Count(msg, colon) <= l.MaxFields &&
		bytes.Count(msg, openBrace)+bytes.Count(msg, openBracket) <= l.MaxDepth
}

var colon, openBrace, openBracket = []byte{':'}, []byte{'{'}, []byte{'['}

// scan is check's token scan.
func (l Limits) scan(msg []byte) error {
	depth, fields := 0, 0
	for i := 0; i < len(msg); i++ {
		switch msg[i] {
		case '"':
			start := i + 1
			i = stringEnd(msg, start)
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

// stringEnd returns the index of the quote that closes the string starting at start (or
// len(msg) when none does), skipping escaped characters. It jumps from quote to quote:
// most of a message's bytes are in strings, and bytes.IndexByte is much faster than a
// loop over them.
func stringEnd(msg []byte, start int) int {
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

// DecoderOption configures a Decoder beyond its stream's mapping.
type DecoderOption func(*Decoder)

// WithHMACKey sets the key that fields marked Hash are hashed with.
func WithHMACKey(key []byte) DecoderOption {
	return func(d *Decoder) { d.hmacKey = append([]byte(nil), key...) }
}

// WithLimits sets the message limits; zero fields keep their defaults.
func WithLimits(l Limits) DecoderOption {
	return func(d *Decoder) { d.limits = l.withDefaults() }
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

// macs pools HMAC states per key, so that hashing a value allocates nothing.
type macs struct {
	pool sync.Pool
}

// mac is a pooled HMAC state with room for its sum, which would escape to the heap if
// it were a local passed to the hash.Hash interface.
type mac struct {
	h   hash.Hash
	sum []byte
}

func newMACs(key []byte) *macs {
	m := &macs{}
	m.pool.New = func() any { return &mac{h: hmac.New(sha256.New, key), sum: make([]byte, 0, sha256.Size)} }
	return m
}

// sum writes the hex HMAC of v onto dst[:0] and returns it. v may alias dst.
func (m *macs) sum(dst, v []byte) []byte {
	st := m.pool.Get().(*mac)
	st.h.Reset()
	st.h.Write(v)
	st.sum = st.h.Sum(st.sum[:0])
	dst = append(dst[:0], make([]byte, hashedHexLen)...)
	hex.Encode(dst, st.sum)
	m.pool.Put(st)
	return dst
}

// HashPII returns the value a field marked Hash stores for v under key: the hex
// HMAC-SHA256 of v. It lets a reader find a known customer's rows.
func HashPII(key, v []byte) string {
	return string(newMACs(key).sum(nil, v))
}

// Dead letters of a stream with PII fields never carry those fields' clear values.
const (
	// HeaderWithheld is set on a dead letter whose body was withheld; its value says why.
	HeaderWithheld = "customerloop.withheld"
	// HeaderPII is set on a dead letter whose body had its PII fields hashed or removed.
	HeaderPII = "customerloop.pii"
)

// WithheldBody replaces the body of a dead letter of a stream with PII fields when the
// message cannot be parsed within the limits, so its PII fields cannot be found.
var WithheldBody = []byte(`{"customerloop":"withheld"}`)

// scrubParsers are the parsers of dead letters being scrubbed: nothing parsed by one is
// used after scrub returns.
var scrubParsers fastjson.ParserPool

// scrub returns what a dead letter of the decoder's stream may carry of msg: msg itself
// when the stream has no PII fields; msg with them hashed or removed when it parses
// within the limits; otherwise WithheldBody, with the reason for the header.
func (d *Decoder) scrub(msg []byte, maxBytes int) (body []byte, pii, withheld string) {
	if !d.pii {
		return msg, "", ""
	}
	if maxBytes > 0 && len(msg) > maxBytes {
		return WithheldBody, "", "oversize"
	}
	if err := d.limits.check(msg); err != nil {
		return WithheldBody, "", "oversize"
	}
	p := scrubParsers.Get()
	defer scrubParsers.Put(p) // after MarshalTo has copied the document out
	doc, err := p.ParseBytes(msg)
	if err != nil || doc.Type() != fastjson.TypeObject {
		return WithheldBody, "", "invalid_json"
	}
	var a fastjson.Arena
	for i := range d.fields {
		f := &d.fields[i]
		if f.pii == "" || f.path == nil {
			continue
		}
		scrubPath(doc, f.path, func(v *fastjson.Value) *fastjson.Value {
			if f.pii == PIIHash {
				var out value
				if toString(v, &out) == nil {
					return a.NewStringBytes(d.macs.sum(nil, out.str))
				}
			}
			return nil // dropped, or not hashable (an object, an array)
		})
	}
	return doc.MarshalTo(nil), "rewritten", ""
}

// scrubPath replaces every value at path (every duplicate key on the way) with what
// repl returns, or removes it when repl returns nil.
func scrubPath(v *fastjson.Value, path []string, repl func(*fastjson.Value) *fastjson.Value) {
	o, err := v.Object()
	if err != nil {
		return
	}
	key := path[0]
	if len(path) > 1 {
		o.Visit(func(k []byte, child *fastjson.Value) {
			if string(k) == key {
				scrubPath(child, path[1:], repl)
			}
		})
		return
	}
	first := o.Get(key)
	if first == nil {
		return
	}
	r := repl(first)
	for o.Get(key) != nil {
		o.Del(key)
	}
	if r != nil {
		o.Set(key, r)
	}
}

// markPII records which of the decoder's fields are hashed or dropped.
func (d *Decoder) markPII(s StreamConfig) error {
	if p := s.PII; p != nil {
		if p.ID == PIIHash {
			d.fields[0].pii = PIIHash
		}
		if p.CustomerID == PIIHash {
			d.fields[customerColumn].pii = PIIHash
		}
	}
	core := len(d.fields) - len(s.Dimensions)
	for j, dim := range s.Dimensions {
		d.fields[core+j].pii = dim.PII
	}
	for i, f := range d.fields {
		if f.pii != "" {
			d.pii = true
		}
		if f.pii == PIIHash {
			d.hashed = append(d.hashed, i)
		}
	}
	if len(d.hashed) > 0 {
		if len(d.hmacKey) < MinHMACKeyBytes {
			return fmt.Errorf("stream %s hashes PII fields and needs an HMAC key of at least %d bytes", s.Name, MinHMACKeyBytes)
		}
		d.macs = newMACs(d.hmacKey)
	}
	return nil
}

// scrubKey is the key a dead letter carries: producers key messages by customer, so
// when the customer is hashed the key is hashed the same way.
func (d *Decoder) scrubKey(key []byte) []byte {
	if len(key) == 0 || d.fields[customerColumn].pii != PIIHash {
		return key
	}
	return d.macs.sum(nil, key)
}

// scrubError is the error a dead letter carries. The parser's errors quote the message
// around the fault, so a stream with PII fields carries only the reason for those.
func (d *Decoder) scrubError(err *DecodeError) string {
	if d.pii && err.Reason == ReasonInvalidJSON {
		return string(ReasonInvalidJSON) + ": details withheld: the stream has PII fields"
	}
	return err.Error()
}
