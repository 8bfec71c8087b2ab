package ingest

import (
	"fmt"

	"customerloop.dev/customerloop/pipeline"
	"github.com/valyala/fastjson"
)

// DecoderOption configures a Decoder beyond its stream's mapping.
type DecoderOption func(*Decoder)

// WithHMACKey sets the key that fields marked Hash are hashed with.
func WithHMACKey(key []byte) DecoderOption {
	return func(d *Decoder) { d.hmacKey = append([]byte(nil), key...) }
}

// WithLimits sets the message limits; zero fields keep their defaults.
func WithLimits(l pipeline.Limits) DecoderOption {
	return func(d *Decoder) { d.limits = l.WithDefaults() }
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
	if err := d.limits.Check(msg); err != nil {
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
			if f.pii == pipeline.PIIHash {
				var out value
				if toString(v, &out) == nil {
					return a.NewStringBytes(d.macs.Sum(nil, out.str))
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
func (d *Decoder) markPII(s pipeline.StreamConfig) error {
	if p := s.PII; p != nil {
		if p.ID == pipeline.PIIHash {
			d.fields[0].pii = pipeline.PIIHash
		}
		if p.CustomerID == pipeline.PIIHash {
			d.fields[customerColumn].pii = pipeline.PIIHash
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
		if f.pii == pipeline.PIIHash {
			d.hashed = append(d.hashed, i)
		}
	}
	if len(d.hashed) > 0 {
		if len(d.hmacKey) < pipeline.MinHMACKeyBytes {
			return fmt.Errorf("stream %s hashes PII fields and needs an HMAC key of at least %d bytes", s.Name, pipeline.MinHMACKeyBytes)
		}
		d.macs = pipeline.NewHMACs(d.hmacKey)
	}
	return nil
}

// scrubKey is the key a dead letter carries: producers key messages by customer, so
// when the customer is hashed the key is hashed the same way.
func (d *Decoder) scrubKey(key []byte) []byte {
	if len(key) == 0 || d.fields[customerColumn].pii != pipeline.PIIHash {
		return key
	}
	return d.macs.Sum(nil, key)
}

// scrubError is the error a dead letter carries. The parser's errors quote the message
// around the fault, so a stream with PII fields carries only the reason for those.
func (d *Decoder) scrubError(err *pipeline.DecodeError) string {
	if d.pii && err.Reason == pipeline.ReasonInvalidJSON {
		return string(pipeline.ReasonInvalidJSON) + ": details withheld: the stream has PII fields"
	}
	return err.Error()
}
