package ingest

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"customerloop.dev/customerloop/pipeline"
	"github.com/valyala/fastjson"
)

// Decoder turns a stream's JSON messages into raw-table rows.
type Decoder struct {
	fields []fieldDecoder // one per column before the source columns
	// allowed and pattern restrict the customers accepted; both nil accepts all.
	allowed map[string]struct{}
	pattern *regexp.Regexp
	field   string // the customer's JSON field, for errors

	limits  pipeline.Limits
	pii     bool  // some field is hashed or dropped
	hashed  []int // indexes of the fields hashed, hashed after the customer check
	hmacKey []byte
	macs    *pipeline.HMACs
}

// customerColumn is the index of customer_id in a decoded row, for both kinds.
const customerColumn = 1

// acceptsCustomer reports whether the row's customer passes the stream's restriction.
func (d *Decoder) acceptsCustomer(c []byte) bool {
	if d.allowed == nil && d.pattern == nil {
		return true
	}
	if _, ok := d.allowed[string(c)]; ok {
		return true
	}
	return d.pattern != nil && d.pattern.Match(c)
}

func (d *Decoder) unknownCustomer(c string) *pipeline.DecodeError {
	if d.fields[customerColumn].pii != "" {
		return &pipeline.DecodeError{Reason: pipeline.ReasonUnknownCustomer, Field: d.field,
			Err: errors.New("the customer (withheld: pii) is not among the stream's customers")}
	}
	return &pipeline.DecodeError{Reason: pipeline.ReasonUnknownCustomer, Field: d.field,
		Err: fmt.Errorf("customer %q is not among the stream's customers", c)}
}

type fieldDecoder struct {
	pii      string // PIIHash, PIIDrop or empty
	path     []string
	field    string
	optional bool
	kind     valKind
	nullable bool
	convert  func(v *fastjson.Value, out *value) error
	missing  func(msgTime time.Time, out *value) // value when optional and absent
}

// NewDecoder compiles the stream's mapping. A stream that hashes fields needs
// WithHMACKey.
func NewDecoder(s pipeline.StreamConfig, opts ...DecoderOption) (*Decoder, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	m := s.Mapping
	var fs []fieldDecoder
	req := func(field string, kind valKind, conv func(*fastjson.Value, *value) error) {
		fs = append(fs, fieldDecoder{path: strings.Split(field, "."), field: field, kind: kind, convert: conv})
	}
	opt := func(field string, kind valKind, nullable bool, conv func(*fastjson.Value, *value) error, missing func(time.Time, *value)) {
		f := fieldDecoder{field: field, optional: true, kind: kind, nullable: nullable, convert: conv, missing: missing}
		if field != "" {
			f.path = strings.Split(field, ".")
		}
		fs = append(fs, f)
	}
	one := func(_ time.Time, out *value) { out.f = 1 }
	msgTime := func(t time.Time, out *value) { out.i = t.Unix() }
	null := func(_ time.Time, out *value) { out.null = true }
	switch s.Kind {
	case pipeline.KindPlan:
		req(m.PlanID, vString, toID)
		req(m.CustomerID, vString, toID)
		req(m.Product, vString, toID)
		req(m.Period, vDate, toDate)
		req(m.Quantity, vFloat64, toNonNegative)
		opt(m.SubmittedAt, vDateTime, false, toDateTime, msgTime)
		opt(m.Confidence, vFloat64, true, toConfidence, null)
	default:
		req(m.EventID, vString, toID)
		req(m.CustomerID, vString, toID)
		req(m.Product, vString, toID)
		req(m.Timestamp, vDateTime, toDateTime)
		opt(m.Quantity, vFloat64, false, toFloat64, one)
	}
	for _, d := range s.Dimensions {
		dc := dimensionConverters[d.Type]
		if d.Nullable {
			opt(d.Field, dc.kind, true, dc.convert, null)
		} else {
			req(d.Field, dc.kind, dc.convert)
		}
	}
	dec := &Decoder{fields: fs, field: m.CustomerID, limits: pipeline.Limits{}.WithDefaults()}
	for _, o := range opts {
		o(dec)
	}
	if err := dec.markPII(s); err != nil {
		return nil, err
	}
	if f := s.Customers; f != nil {
		if len(f.Allowed) > 0 {
			dec.allowed = make(map[string]struct{}, len(f.Allowed))
			for _, c := range f.Allowed {
				dec.allowed[c] = struct{}{}
			}
		}
		if f.Pattern != "" {
			re, err := regexp.Compile("^(?:" + f.Pattern + ")$")
			if err != nil {
				return nil, fmt.Errorf("customers.pattern: %w", err)
			}
			dec.pattern = re
		}
	}
	return dec, nil
}

// Decode parses one message into a row: a value per column of the raw table except the
// trailing source columns. It is the row-shaped view of DecodeInto, for callers that
// handle a few messages; the worker decodes straight into a batch's columns.
func (d *Decoder) Decode(msg []byte, msgTime time.Time) ([]any, error) {
	c := newColumns(d, nil)
	// Room for the message's strings, rather than the batch-sized arena internString
	// starts with: 64 KiB per message was most of what Decode cost.
	c.arena = make([]byte, 0, len(msg)+2*pipeline.HashedHexLen)
	if _, err := d.decodeInto(msg, msgTime, c); err != nil {
		return nil, err
	}
	c.appendDecoded()
	row := make([]any, len(d.fields))
	for i := range d.fields {
		row[i] = c.cols[i].any(0)
	}
	return row, nil
}

// decodeInto parses one message into c's scratch values, which c.appendDecoded then
// appends to its columns, and returns the message id (event_id or plan_id). Both are
// valid until the next call.
func (d *Decoder) decodeInto(msg []byte, msgTime time.Time, c *columns) (id []byte, err error) {
	if err := d.limits.Check(msg); err != nil {
		return nil, err
	}
	// c's own parser, reused message after message: fastjson parses into the parser's
	// memory, so a warm parser allocates nothing, and the strings it returns stay valid
	// until c decodes the next message.
	doc, err := c.parser.ParseBytes(msg)
	if err != nil {
		return nil, &pipeline.DecodeError{Reason: pipeline.ReasonInvalidJSON, Err: err}
	}
	if doc.Type() != fastjson.TypeObject {
		return nil, &pipeline.DecodeError{Reason: pipeline.ReasonInvalidJSON, Err: errors.New("message is not a JSON object")}
	}
	vals := c.scratch
	for i := range d.fields {
		f := &d.fields[i]
		out := &vals[i]
		out.null = false
		if f.pii == pipeline.PIIDrop {
			*out = value{buf: out.buf, null: f.nullable}
			continue
		}
		var v *fastjson.Value
		if f.path != nil {
			v = doc.Get(f.path...)
		}
		if v == nil || v.Type() == fastjson.TypeNull {
			if !f.optional {
				return nil, &pipeline.DecodeError{Reason: pipeline.ReasonMissingField, Field: f.field, Err: errors.New("required field is missing or null")}
			}
			f.missing(msgTime, out)
			continue
		}
		if err := f.convert(v, out); err != nil {
			var de *pipeline.DecodeError
			if errors.As(err, &de) {
				de.Field = f.field
				return nil, de
			}
			return nil, &pipeline.DecodeError{Reason: pipeline.ReasonWrongType, Field: f.field, Err: err}
		}
	}
	if !d.acceptsCustomer(vals[customerColumn].str) {
		return nil, d.unknownCustomer(string(vals[customerColumn].str))
	}
	for _, i := range d.hashed {
		if v := &vals[i]; !v.null {
			v.buf = d.macs.Sum(v.buf, v.str)
			v.str = v.buf
		}
	}
	return vals[0].str, nil
}

// jsonType names a JSON value's type for error messages.
func jsonType(v *fastjson.Value) string {
	switch v.Type() {
	case fastjson.TypeString:
		return "a string"
	case fastjson.TypeNumber:
		return "a number"
	case fastjson.TypeTrue, fastjson.TypeFalse:
		return "a boolean"
	case fastjson.TypeObject:
		return "an object"
	case fastjson.TypeArray:
		return "an array"
	default:
		return "null"
	}
}

func wrongType(v *fastjson.Value, want string) error {
	return &pipeline.DecodeError{Reason: pipeline.ReasonWrongType, Err: fmt.Errorf("got %s, want %s", jsonType(v), want)}
}

func outOfRange(format string, args ...any) error {
	return &pipeline.DecodeError{Reason: pipeline.ReasonOutOfRange, Err: fmt.Errorf(format, args...)}
}

// numberText is a JSON number's own text, in the value's scratch buffer.
func numberText(v *fastjson.Value, out *value) []byte {
	out.buf = v.MarshalTo(out.buf[:0])
	return out.buf
}

// bytesString views b as a string without copying, for parsing; the string must not
// outlive b's contents.
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

func toID(v *fastjson.Value, out *value) error {
	switch v.Type() {
	case fastjson.TypeString:
		out.str, _ = v.StringBytes()
	case fastjson.TypeNumber:
		out.str = numberText(v, out)
	default:
		return wrongType(v, "a string or number")
	}
	if len(out.str) == 0 {
		return outOfRange("must not be empty")
	}
	if len(out.str) > pipeline.MaxIDLength {
		return outOfRange("longer than %d bytes", pipeline.MaxIDLength)
	}
	return nil
}

var (
	trueText  = []byte("true")
	falseText = []byte("false")
)

func toString(v *fastjson.Value, out *value) error {
	switch v.Type() {
	case fastjson.TypeString:
		out.str, _ = v.StringBytes()
	case fastjson.TypeNumber:
		out.str = numberText(v, out)
	case fastjson.TypeTrue:
		out.str = trueText
	case fastjson.TypeFalse:
		out.str = falseText
	default:
		return wrongType(v, "a string")
	}
	return nil
}

// parseFloat is strconv.ParseFloat(n, 64), with a shortcut for what most numbers in
// events are: up to 15 decimal digits and nothing else, whose value a float64 holds
// exactly.
func parseFloat(n []byte) (float64, error) {
	if len(n) == 0 || len(n) > 15 {
		return strconv.ParseFloat(bytesString(n), 64)
	}
	var u uint64
	for _, c := range n {
		if c < '0' || c > '9' {
			return strconv.ParseFloat(bytesString(n), 64)
		}
		u = 10*u + uint64(c-'0')
	}
	return float64(u), nil
}

// finite reports whether f is a number ClickHouse can sum: the JSON parser takes NaN and
// Infinity (in any case, with a sign) as numbers, and strconv parses them, but one NaN
// stored would turn every sum, digest and accuracy figure of its product into nan.
func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func parseNumber(v *fastjson.Value, out *value) (float64, error) {
	if v.Type() != fastjson.TypeNumber {
		return 0, wrongType(v, "a number")
	}
	n := numberText(v, out)
	f, err := parseFloat(n)
	if err != nil || !finite(f) {
		return 0, outOfRange("%s is not a finite 64-bit float", n)
	}
	return f, nil
}

func toFloat64(v *fastjson.Value, out *value) error {
	f, err := parseNumber(v, out)
	out.f = f
	return err
}

func toFloat32(v *fastjson.Value, out *value) error {
	f, err := parseNumber(v, out)
	if err != nil {
		return err
	}
	if math.Abs(f) > math.MaxFloat32 {
		return outOfRange("%v does not fit a 32-bit float", f)
	}
	out.f = f
	return nil
}

func toNonNegative(v *fastjson.Value, out *value) error {
	f, err := parseNumber(v, out)
	if err != nil {
		return err
	}
	if f < 0 {
		return outOfRange("%v is negative", f)
	}
	out.f = f
	return nil
}

func toConfidence(v *fastjson.Value, out *value) error {
	c, err := parseNumber(v, out)
	if err != nil {
		return err
	}
	if c < 0 || c > 1 {
		return outOfRange("confidence %v is outside 0..1", c)
	}
	out.f = c
	return nil
}

func intConverter(bits int, signed bool) func(*fastjson.Value, *value) error {
	return func(v *fastjson.Value, out *value) error {
		if v.Type() != fastjson.TypeNumber {
			return wrongType(v, "an integer")
		}
		n := numberText(v, out)
		if signed {
			i, err := strconv.ParseInt(bytesString(n), 10, bits)
			if err != nil {
				return intError(n, err)
			}
			out.i = i
			return nil
		}
		u, err := strconv.ParseUint(bytesString(n), 10, bits)
		if err != nil {
			return intError(n, err)
		}
		out.u = u
		return nil
	}
}

func intError(n []byte, err error) error {
	if errors.Is(err, strconv.ErrRange) || (len(n) > 0 && n[0] == '-') {
		return outOfRange("%s is out of range for the column", n)
	}
	return &pipeline.DecodeError{Reason: pipeline.ReasonWrongType, Err: errors.New("got a number, want an integer")}
}

func toBool(v *fastjson.Value, out *value) error {
	switch v.Type() {
	case fastjson.TypeTrue:
		out.u = 1
	case fastjson.TypeFalse:
		out.u = 0
	default:
		return wrongType(v, "a boolean")
	}
	return nil
}

type dimensionConverter struct {
	kind    valKind
	convert func(*fastjson.Value, *value) error
}

var dimensionConverters = map[string]dimensionConverter{
	"String":   {vString, toString},
	"Int32":    {vInt32, intConverter(32, true)},
	"Int64":    {vInt64, intConverter(64, true)},
	"UInt32":   {vUInt32, intConverter(32, false)},
	"UInt64":   {vUInt64, intConverter(64, false)},
	"Float32":  {vFloat32, toFloat32},
	"Float64":  {vFloat64, toFloat64},
	"Bool":     {vBool, toBool},
	"Date":     {vDate, toDate},
	"DateTime": {vDateTime, toDateTime},
}
