package pipeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fastjson"
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

// Decoder turns a stream's JSON messages into raw-table rows.
type Decoder struct {
	fields []fieldDecoder // one per column before the source columns
	// allowed and pattern restrict the customers accepted; both nil accepts all.
	allowed map[string]struct{}
	pattern *regexp.Regexp
	field   string // the customer's JSON field, for errors
}

// customerColumn is the index of customer_id in a decoded row, for both kinds.
const customerColumn = 1

// acceptsCustomer reports whether the row's customer passes the stream's restriction.
func (d *Decoder) acceptsCustomer(row []any) bool {
	if d.allowed == nil && d.pattern == nil {
		return true
	}
	c, _ := row[customerColumn].(string)
	if _, ok := d.allowed[c]; ok {
		return true
	}
	return d.pattern != nil && d.pattern.MatchString(c)
}

func (d *Decoder) unknownCustomer(row []any) *DecodeError {
	return &DecodeError{Reason: ReasonUnknownCustomer, Field: d.field,
		Err: fmt.Errorf("customer %q is not among the stream's customers", row[customerColumn])}
}

type fieldDecoder struct {
	path     []string
	field    string
	optional bool
	convert  func(v any) (any, error)
	missing  func(msgTime time.Time) any // value when optional and absent
}

// NewDecoder compiles the stream's mapping.
func NewDecoder(s StreamConfig) (*Decoder, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	m := s.Mapping
	var fs []fieldDecoder
	req := func(field string, conv func(any) (any, error)) {
		fs = append(fs, fieldDecoder{path: strings.Split(field, "."), field: field, convert: conv})
	}
	opt := func(field string, conv func(any) (any, error), missing func(time.Time) any) {
		if field == "" {
			fs = append(fs, fieldDecoder{optional: true, missing: missing})
			return
		}
		fs = append(fs, fieldDecoder{path: strings.Split(field, "."), field: field, optional: true, convert: conv, missing: missing})
	}
	one := func(time.Time) any { return float64(1) }
	msgTime := func(t time.Time) any { return t.UTC().Truncate(time.Second) }
	null := func(time.Time) any { return (*float64)(nil) }
	switch s.Kind {
	case KindPlan:
		req(m.PlanID, toID)
		req(m.CustomerID, toID)
		req(m.Product, toID)
		req(m.Period, toDate)
		req(m.Quantity, toNonNegative)
		opt(m.SubmittedAt, toDateTime, msgTime)
		opt(m.Confidence, toConfidence, null)
	default:
		req(m.EventID, toID)
		req(m.CustomerID, toID)
		req(m.Product, toID)
		req(m.Timestamp, toDateTime)
		opt(m.Quantity, toFloat64, one)
	}
	for _, d := range s.Dimensions {
		conv := dimensionConverters[d.Type]
		if d.Nullable {
			fs = append(fs, fieldDecoder{path: strings.Split(d.Field, "."), field: d.Field, optional: true,
				convert: nullable(conv), missing: nullOf(d.Type)})
		} else {
			req(d.Field, conv)
		}
	}
	dec := &Decoder{fields: fs, field: m.CustomerID}
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

// parsers are reused across messages: fastjson parses into the parser's own memory, so a
// warm parser allocates nothing but the strings a row keeps.
var parsers fastjson.ParserPool

// Decode parses one message. The returned row holds a value per column of the raw table
// except the trailing source columns, which the caller appends. msgTime is the Kafka
// message time, used where the mapping lets a role default to it.
func (d *Decoder) Decode(msg []byte, msgTime time.Time) ([]any, error) {
	p := parsers.Get()
	defer parsers.Put(p)
	doc, err := p.ParseBytes(msg)
	if err != nil {
		return nil, &DecodeError{Reason: ReasonInvalidJSON, Err: err}
	}
	if doc.Type() != fastjson.TypeObject {
		return nil, &DecodeError{Reason: ReasonInvalidJSON, Err: errors.New("message is not a JSON object")}
	}
	row := make([]any, len(d.fields), len(d.fields)+len(sourceColumns))
	for i, f := range d.fields {
		var v any
		if f.path != nil {
			v = leaf(doc.Get(f.path...))
		}
		if v == nil {
			if !f.optional {
				return nil, &DecodeError{Reason: ReasonMissingField, Field: f.field, Err: errors.New("required field is missing or null")}
			}
			row[i] = f.missing(msgTime)
			continue
		}
		out, err := f.convert(v)
		if err != nil {
			var de *DecodeError
			if errors.As(err, &de) {
				de.Field = f.field
				return nil, de
			}
			return nil, &DecodeError{Reason: ReasonWrongType, Field: f.field, Err: err}
		}
		row[i] = out
	}
	if !d.acceptsCustomer(row) {
		return nil, d.unknownCustomer(row)
	}
	return row, nil
}

// jsonObject and jsonArray stand for a container found where a value was expected.
type (
	jsonObject struct{}
	jsonArray  struct{}
)

// leaf turns a parsed value into what the converters take: string, json.Number (the
// number's own text), bool, jsonObject, jsonArray, or nil for null and absent.
func leaf(v *fastjson.Value) any {
	if v == nil {
		return nil
	}
	switch v.Type() {
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		return string(b)
	case fastjson.TypeNumber:
		return json.Number(v.MarshalTo(nil))
	case fastjson.TypeTrue:
		return true
	case fastjson.TypeFalse:
		return false
	case fastjson.TypeObject:
		return jsonObject{}
	case fastjson.TypeArray:
		return jsonArray{}
	default:
		return nil
	}
}

func wrongType(v any, want string) error {
	return &DecodeError{Reason: ReasonWrongType, Err: fmt.Errorf("got %s, want %s", jsonType(v), want)}
}

func outOfRange(format string, args ...any) error {
	return &DecodeError{Reason: ReasonOutOfRange, Err: fmt.Errorf(format, args...)}
}

func jsonType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case jsonObject:
		return "an object"
	case jsonArray:
		return "an array"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// maxIDLength bounds ids, customers and products; longer values are input errors, not data.
const maxIDLength = 256

func toID(v any) (any, error) {
	var s string
	switch t := v.(type) {
	case string:
		s = t
	case json.Number:
		s = t.String()
	default:
		return nil, wrongType(v, "a string or number")
	}
	if s == "" {
		return nil, outOfRange("must not be empty")
	}
	if len(s) > maxIDLength {
		return nil, outOfRange("longer than %d bytes", maxIDLength)
	}
	return s, nil
}

func toString(v any) (any, error) {
	switch t := v.(type) {
	case string:
		return t, nil
	case json.Number:
		return t.String(), nil
	case bool:
		return strconv.FormatBool(t), nil
	}
	return nil, wrongType(v, "a string")
}

func toFloat64(v any) (any, error) {
	n, ok := v.(json.Number)
	if !ok {
		return nil, wrongType(v, "a number")
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsInf(f, 0) {
		return nil, outOfRange("%s does not fit a 64-bit float", n)
	}
	return f, nil
}

func toFloat32(v any) (any, error) {
	f, err := toFloat64(v)
	if err != nil {
		return nil, err
	}
	if math.Abs(f.(float64)) > math.MaxFloat32 {
		return nil, outOfRange("%v does not fit a 32-bit float", f)
	}
	return float32(f.(float64)), nil
}

func toNonNegative(v any) (any, error) {
	f, err := toFloat64(v)
	if err != nil {
		return nil, err
	}
	if f.(float64) < 0 {
		return nil, outOfRange("%v is negative", f)
	}
	return f, nil
}

func toConfidence(v any) (any, error) {
	f, err := toFloat64(v)
	if err != nil {
		return nil, err
	}
	c := f.(float64)
	if c < 0 || c > 1 {
		return nil, outOfRange("confidence %v is outside 0..1", c)
	}
	return &c, nil
}

func intConverter(bits int, signed bool) func(any) (any, error) {
	return func(v any) (any, error) {
		n, ok := v.(json.Number)
		if !ok {
			return nil, wrongType(v, "an integer")
		}
		if signed {
			i, err := strconv.ParseInt(string(n), 10, bits)
			if err != nil {
				return nil, intError(n, err)
			}
			if bits == 32 {
				return int32(i), nil
			}
			return i, nil
		}
		u, err := strconv.ParseUint(string(n), 10, bits)
		if err != nil {
			return nil, intError(n, err)
		}
		if bits == 32 {
			return uint32(u), nil
		}
		return u, nil
	}
}

func intError(n json.Number, err error) error {
	if errors.Is(err, strconv.ErrRange) || strings.HasPrefix(string(n), "-") {
		return outOfRange("%s is out of range for the column", n)
	}
	return wrongType(n, "an integer")
}

func toBool(v any) (any, error) {
	b, ok := v.(bool)
	if !ok {
		return nil, wrongType(v, "a boolean")
	}
	if b {
		return uint8(1), nil
	}
	return uint8(0), nil
}

// DateTime in ClickHouse is seconds since the epoch in a UInt32.
var (
	minDateTime = time.Unix(0, 0).UTC()
	maxDateTime = time.Unix(math.MaxUint32, 0).UTC()
	// Date is days since the epoch in a UInt16; 2149-06-06 is its last day.
	maxDate = time.Date(2149, 6, 6, 0, 0, 0, 0, time.UTC)
)

// epochMillisThreshold separates epoch seconds from epoch milliseconds: 1e11 seconds is
// the year 5138, 1e11 milliseconds is 1973.
const epochMillisThreshold = 1e11

func parseTime(v any) (time.Time, error) {
	switch t := v.(type) {
	case string:
		if ts, err := time.Parse(time.RFC3339Nano, t); err == nil {
			return ts.UTC(), nil
		}
		if ts, err := time.Parse(time.DateOnly, t); err == nil {
			return ts, nil
		}
		return time.Time{}, &DecodeError{Reason: ReasonWrongType, Err: fmt.Errorf("%q is not RFC 3339, a date or epoch seconds/milliseconds", t)}
	case json.Number:
		f, err := strconv.ParseFloat(string(t), 64)
		if err != nil || math.IsInf(f, 0) {
			return time.Time{}, outOfRange("%s is not a usable epoch time", t)
		}
		if math.Abs(f) >= epochMillisThreshold {
			return time.UnixMilli(int64(f)).UTC(), nil
		}
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
	}
	return time.Time{}, wrongType(v, "a time (RFC 3339 string or epoch number)")
}

func toDateTime(v any) (any, error) {
	ts, err := parseTime(v)
	if err != nil {
		return nil, err
	}
	if ts.Before(minDateTime) || ts.After(maxDateTime) {
		return nil, outOfRange("%s is outside ClickHouse DateTime (1970 to 2106)", ts.Format(time.RFC3339))
	}
	return ts.Truncate(time.Second), nil
}

func toDate(v any) (any, error) {
	ts, err := parseTime(v)
	if err != nil {
		return nil, err
	}
	d := time.Date(ts.Year(), ts.Month(), ts.Day(), 0, 0, 0, 0, time.UTC)
	if d.Before(minDateTime) || d.After(maxDate) {
		return nil, outOfRange("%s is outside ClickHouse Date (1970 to 2149)", d.Format(time.DateOnly))
	}
	return d, nil
}

var dimensionConverters = map[string]func(any) (any, error){
	"String":   toString,
	"Int32":    intConverter(32, true),
	"Int64":    intConverter(64, true),
	"UInt32":   intConverter(32, false),
	"UInt64":   intConverter(64, false),
	"Float32":  toFloat32,
	"Float64":  toFloat64,
	"Bool":     toBool,
	"Date":     toDate,
	"DateTime": toDateTime,
}

// nullable wraps a converter so that it returns a pointer, the shape clickhouse-go takes
// for Nullable columns.
func nullable(conv func(any) (any, error)) func(any) (any, error) {
	return func(v any) (any, error) {
		out, err := conv(v)
		if err != nil {
			return nil, err
		}
		switch t := out.(type) {
		case string:
			return &t, nil
		case int32:
			return &t, nil
		case int64:
			return &t, nil
		case uint32:
			return &t, nil
		case uint64:
			return &t, nil
		case float32:
			return &t, nil
		case float64:
			return &t, nil
		case uint8:
			return &t, nil
		case time.Time:
			return &t, nil
		}
		return nil, fmt.Errorf("no nullable form for %T", out)
	}
}

func nullOf(typ string) func(time.Time) any {
	var v any
	switch typ {
	case "String":
		v = (*string)(nil)
	case "Int32":
		v = (*int32)(nil)
	case "Int64":
		v = (*int64)(nil)
	case "UInt32":
		v = (*uint32)(nil)
	case "UInt64":
		v = (*uint64)(nil)
	case "Float32":
		v = (*float32)(nil)
	case "Float64":
		v = (*float64)(nil)
	case "Bool":
		v = (*uint8)(nil)
	default: // Date, DateTime
		v = (*time.Time)(nil)
	}
	return func(time.Time) any { return v }
}
