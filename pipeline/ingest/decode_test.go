package ingest

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/valyala/fastjson"
)

func mustDecoder(t testing.TB, s pipeline.StreamConfig) *Decoder {
	t.Helper()
	d, err := NewDecoder(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDecodeUsage(t *testing.T) {
	s := stacktest.SampleConfig().Streams[0]
	d := mustDecoder(t, s)
	msgTime := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	ts := time.Date(2026, 10, 31, 12, 30, 15, 0, time.UTC)
	base := `"id":"e1","customer":{"id":"c-1"},"product":"api","region":"eu","bytes":42,"trial":true`

	cases := []struct {
		name string
		msg  string
		want map[string]any // column -> value, only the columns checked
	}{
		{"rfc3339 and qty", `{` + base + `,"ts":"2026-10-31T13:30:15+01:00","qty":2.5}`,
			map[string]any{"event_id": "e1", "customer_id": "c-1", "product": "api", "ts": ts, "quantity": 2.5, "bytes": uint64(42), "trial": uint8(1)}},
		{"epoch seconds, default quantity", `{` + base + `,"ts":1793449815}`,
			map[string]any{"ts": ts, "quantity": float64(1)}},
		{"epoch millis", `{` + base + `,"ts":1793449815123}`,
			map[string]any{"ts": ts}},
		{"numeric customer id", `{"id":7,"customer":{"id":123},"product":"api","ts":1793449815,"region":"eu","bytes":1,"trial":false}`,
			map[string]any{"event_id": "7", "customer_id": "123", "trial": uint8(0)}},
		{"nullable present", `{` + base + `,"ts":1793449815,"seats":12,"ratio":0.5,"signup":"2026-01-02","seen":"2026-10-31T12:30:15Z"}`,
			map[string]any{"seats": ptr(int32(12)), "ratio": ptr(float32(0.5)),
				"signup": ptr(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)), "seen_at": &ts}},
		{"nullable absent or null", `{` + base + `,"ts":1793449815,"seats":null}`,
			map[string]any{"seats": (*int32)(nil), "ratio": (*float32)(nil), "signup": (*time.Time)(nil), "seen_at": (*time.Time)(nil)}},
	}
	cols := s.Columns()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			row, err := d.Decode([]byte(tc.msg), msgTime)
			if err != nil {
				t.Fatal(err)
			}
			if len(row) != len(cols)-len(pipeline.SourceColumns) {
				t.Fatalf("row has %d values, want %d", len(row), len(cols)-len(pipeline.SourceColumns))
			}
			for i, v := range row {
				want, ok := tc.want[cols[i].Name]
				if !ok {
					continue
				}
				if !equalValue(v, want) {
					t.Errorf("%s = %#v, want %#v", cols[i].Name, deref(v), deref(want))
				}
			}
		})
	}
}

func TestDecodePlan(t *testing.T) {
	s := stacktest.SampleConfig().Streams[1]
	d := mustDecoder(t, s)
	msgTime := time.Date(2026, 11, 5, 8, 0, 0, 0, time.UTC)
	row, err := d.Decode([]byte(`{"plan_id":"p1","customer":"c-1","product":"api","period":"2027-01-01","quantity":1000}`), msgTime)
	if err != nil {
		t.Fatal(err)
	}
	want := []any{"p1", "c-1", "api", time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), float64(1000), msgTime, (*float64)(nil)}
	for i := range want {
		if !equalValue(row[i], want[i]) {
			t.Errorf("column %s = %#v, want %#v", s.Columns()[i].Name, deref(row[i]), deref(want[i]))
		}
	}
	row, err = d.Decode([]byte(`{"plan_id":"p2","customer":"c-1","product":"api","period":"2027-01-15T10:00:00Z","quantity":5,"submitted_at":1793449815,"confidence":0.8}`), msgTime)
	if err != nil {
		t.Fatal(err)
	}
	if !equalValue(row[3], time.Date(2027, 1, 15, 0, 0, 0, 0, time.UTC)) || !equalValue(row[6], ptr(0.8)) {
		t.Errorf("period/confidence = %v/%v", row[3], deref(row[6]))
	}
}

func TestDecodeRejects(t *testing.T) {
	usage := mustDecoder(t, stacktest.SampleConfig().Streams[0])
	plan := mustDecoder(t, stacktest.SampleConfig().Streams[1])
	okUsage := `"id":"e1","customer":{"id":"c"},"product":"p","ts":1793449815,"region":"eu","bytes":1,"trial":true`
	okPlan := `"plan_id":"p","customer":"c","product":"p","period":"2027-01-01"`
	cases := []struct {
		name   string
		d      *Decoder
		msg    string
		reason pipeline.Reason
		field  string
	}{
		{"not json", usage, `{"id":`, pipeline.ReasonInvalidJSON, ""},
		{"array", usage, `[1,2]`, pipeline.ReasonInvalidJSON, ""},
		{"null", usage, `null`, pipeline.ReasonInvalidJSON, ""},
		{"trailing", usage, `{` + okUsage + `} {}`, pipeline.ReasonInvalidJSON, ""},
		{"missing customer", usage, `{"id":"e","product":"p","ts":1,"region":"eu","bytes":1,"trial":true}`, pipeline.ReasonMissingField, "customer.id"},
		{"customer not object", usage, `{"id":"e","customer":"c","product":"p","ts":1,"region":"eu","bytes":1,"trial":true}`, pipeline.ReasonMissingField, "customer.id"},
		{"empty id", usage, `{"id":"","customer":{"id":"c"},"product":"p","ts":1,"region":"eu","bytes":1,"trial":true}`, pipeline.ReasonOutOfRange, "id"},
		{"bad timestamp", usage, `{"id":"e","customer":{"id":"c"},"product":"p","ts":"yesterday","region":"eu","bytes":1,"trial":true}`, pipeline.ReasonWrongType, "ts"},
		{"timestamp before 1970", usage, `{"id":"e","customer":{"id":"c"},"product":"p","ts":"1969-12-31T00:00:00Z","region":"eu","bytes":1,"trial":true}`, pipeline.ReasonOutOfRange, "ts"},
		{"quantity string", usage, `{` + okUsage + `,"qty":"3"}`, pipeline.ReasonWrongType, "qty"},
		{"bool dimension", usage, `{"id":"e","customer":{"id":"c"},"product":"p","ts":1,"region":"eu","bytes":1,"trial":"yes"}`, pipeline.ReasonWrongType, "trial"},
		{"negative uint", usage, `{"id":"e","customer":{"id":"c"},"product":"p","ts":1,"region":"eu","bytes":-1,"trial":true}`, pipeline.ReasonOutOfRange, "bytes"},
		{"fractional int", usage, `{` + okUsage + `,"seats":1.5}`, pipeline.ReasonWrongType, "seats"},
		{"int32 overflow", usage, `{` + okUsage + `,"seats":3000000000}`, pipeline.ReasonOutOfRange, "seats"},
		{"missing required dimension", usage, `{"id":"e","customer":{"id":"c"},"product":"p","ts":1,"bytes":1,"trial":true}`, pipeline.ReasonMissingField, "region"},
		{"plan negative quantity", plan, `{` + okPlan + `,"quantity":-5}`, pipeline.ReasonOutOfRange, "quantity"},
		{"plan confidence above 1", plan, `{` + okPlan + `,"quantity":5,"confidence":1.5}`, pipeline.ReasonOutOfRange, "confidence"},
		{"plan missing quantity", plan, `{` + okPlan + `}`, pipeline.ReasonMissingField, "quantity"},
		{"plan bad period", plan, `{"plan_id":"p","customer":"c","product":"p","period":"next month","quantity":1}`, pipeline.ReasonWrongType, "period"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.d.Decode([]byte(tc.msg), time.Now())
			var de *pipeline.DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("err = %v, want a DecodeError", err)
			}
			if de.Reason != tc.reason || de.Field != tc.field {
				t.Errorf("got reason %s field %q (%v), want %s field %q", de.Reason, de.Field, err, tc.reason, tc.field)
			}
		})
	}
}

// FuzzDecode checks that no input makes the decoder panic, and that whatever it accepts
// has one value per column of a type the column takes.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"id":"e1","customer":{"id":"c-1"},"product":"api","ts":1793449815,"region":"eu","bytes":42,"trial":true}`))
	f.Add([]byte(`{"id":1,"customer":{"id":2},"product":"p","ts":"2026-10-31T13:30:15Z","qty":1e308,"region":"","bytes":0,"trial":false,"seats":null}`))
	f.Add([]byte(`{"plan_id":"p","customer":"c","product":"p","period":"2027-01-01","quantity":1}`))
	f.Add([]byte("\x00\xff{"))
	f.Add([]byte(`{"id":"e","customer":{"id":"c"},"customer":{"id":"d"},"contact":{"email":"a@b","email":1,"phone":[]},"age":{}}`))
	usage := mustDecoder(f, stacktest.SampleConfig().Streams[0])
	plan := mustDecoder(f, stacktest.SampleConfig().Streams[1])
	pii := piiDecoder(f, piiConfig().Streams[0])
	f.Fuzz(func(t *testing.T, msg []byte) {
		// A dead letter of a stream with PII fields is the placeholder or a JSON object.
		if body, _, withheld := pii.scrub(msg, 1<<20); withheld == "" {
			var p fastjson.Parser
			if v, err := p.ParseBytes(body); err != nil || v.Type() != fastjson.TypeObject {
				t.Fatalf("rewritten dead letter is not a JSON object (%v): %q", err, body)
			}
		} else if !bytes.Equal(body, WithheldBody) {
			t.Fatalf("withheld (%s) but the body is %q", withheld, body)
		}
		for _, d := range []*Decoder{usage, plan, pii} {
			row, err := d.Decode(msg, time.Unix(1793449815, 0))
			if err != nil {
				var de *pipeline.DecodeError
				if !errors.As(err, &de) || de.Reason == "" {
					t.Fatalf("error without a reason: %v", err)
				}
				continue
			}
			if len(row) != len(d.fields) {
				t.Fatalf("row has %d values for %d fields", len(row), len(d.fields))
			}
			for i, v := range row {
				if v == nil {
					t.Fatalf("value %d is an untyped nil", i)
				}
				if f, ok := floatOf(v); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
					t.Fatalf("value %d is %v: no non-finite number may be stored (%q)", i, f, msg)
				}
			}
		}
	})
}

// floatOf is a decoded value's float, if it is one.
func floatOf(v any) (float64, bool) {
	switch f := v.(type) {
	case float64:
		return f, true
	case float32:
		return float64(f), true
	case *float64:
		if f != nil {
			return *f, true
		}
	case *float32:
		if f != nil {
			return float64(*f), true
		}
	}
	return 0, false
}

// TestDecodeRefusesNonFinite: NaN and the infinities, in every spelling the JSON parser
// takes, and numbers too large for a float, are dead-lettered wherever a number goes (a
// usage quantity, a plan's quantity and confidence, float dimensions, epoch times), and
// never stored: one NaN would make every sum of its customer and product nan.
func TestDecodeRefusesNonFinite(t *testing.T) {
	usage := pipeline.StreamConfig{
		Name: "usage", Kind: pipeline.KindUsage, Topic: "u", DeadLetterTopic: "u.dlq",
		Mapping: pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts", Quantity: "qty"},
		Dimensions: []pipeline.Dimension{
			{Name: "f64", Field: "f64", Type: "Float64", Nullable: true},
			{Name: "f32", Field: "f32", Type: "Float32", Nullable: true},
			{Name: "seen_at", Field: "seen", Type: "DateTime", Nullable: true},
			{Name: "signup", Field: "signup", Type: "Date", Nullable: true},
		},
	}
	plan := stacktest.SampleConfig().Streams[1]
	decoders := map[string]*Decoder{"usage": mustDecoder(t, usage), "plans": mustDecoder(t, plan)}
	fields := []struct{ stream, field, base string }{
		{"usage", "qty", `"id":"e","customer":"c","product":"p","ts":1793449815`},
		{"usage", "f64", `"id":"e","customer":"c","product":"p","ts":1793449815`},
		{"usage", "f32", `"id":"e","customer":"c","product":"p","ts":1793449815`},
		{"usage", "ts", `"id":"e","customer":"c","product":"p"`},
		{"usage", "seen", `"id":"e","customer":"c","product":"p","ts":1793449815`},
		{"usage", "signup", `"id":"e","customer":"c","product":"p","ts":1793449815`},
		{"plans", "quantity", `"plan_id":"p","customer":"c","product":"p","period":"2027-01-01"`},
		{"plans", "confidence", `"plan_id":"p","customer":"c","product":"p","period":"2027-01-01","quantity":1`},
		{"plans", "submitted_at", `"plan_id":"p","customer":"c","product":"p","period":"2027-01-01","quantity":1`},
		{"plans", "period", `"plan_id":"p","customer":"c","product":"p","quantity":1`},
	}
	spellings := []string{"NaN", "nan", "-NaN", "+NaN", "NAN", "Inf", "-Inf", "+Inf", "inf", "Infinity",
		"-Infinity", "infinity", "INF", "1e400", "-1e400", "1e309"}
	parsed := 0
	for _, f := range fields {
		for _, sp := range spellings {
			msg := fmt.Sprintf(`{%s,%q:%s}`, f.base, f.field, sp)
			_, err := decoders[f.stream].Decode([]byte(msg), time.Unix(1793449815, 0))
			var de *pipeline.DecodeError
			if !errors.As(err, &de) {
				t.Errorf("%s: accepted (%v), want a dead letter", msg, err)
				continue
			}
			switch de.Reason {
			case pipeline.ReasonOutOfRange, pipeline.ReasonWrongType:
				parsed++ // the parser took it as a number (or a date field refused a number)
			case pipeline.ReasonInvalidJSON:
			default:
				t.Errorf("%s: reason %s (%v)", msg, de.Reason, err)
			}
		}
	}
	// fastjson takes NaN and Inf as numbers; if it ever stops, this test no longer
	// covers what it was written for.
	if parsed < len(fields)*3 {
		t.Errorf("only %d of the non-finite spellings reached the number converters", parsed)
	}
	if _, err := decoders["usage"].Decode([]byte(`{"id":"b5","customer":"c","product":"p","ts":1793449815,"qty": NaN}`), time.Now()); err == nil ||
		!strings.Contains(err.Error(), "finite") {
		t.Errorf("the reported message: err = %v, want out of range as not finite", err)
	}
}

func ptr[T any](v T) *T { return &v }

func deref(v any) any {
	switch p := v.(type) {
	case *int32:
		if p != nil {
			return *p
		}
	case *float32:
		if p != nil {
			return *p
		}
	case *float64:
		if p != nil {
			return *p
		}
	case *time.Time:
		if p != nil {
			return *p
		}
	}
	return v
}

func equalValue(a, b any) bool {
	if ta, ok := deref(a).(time.Time); ok {
		tb, ok := deref(b).(time.Time)
		return ok && ta.Equal(tb)
	}
	return deref(a) == deref(b)
}

// TestParseFloatMatchesStrconv: the digits-only shortcut gives what strconv.ParseFloat
// gives, on both sides of its 15-digit bound and for what it hands on.
func TestParseFloatMatchesStrconv(t *testing.T) {
	cases := []string{"0", "7", "00", "0123", "17", "1793449815", "1793449815000", "999999999999999",
		"1000000000000000", "9007199254740993", "123456789012345678901234567890", "-0", "-12", "1.5",
		"1e3", "1E-2", "0x10", "1_000", "", "+1", "inf", "NaN", "12a", " 1"}
	rng := rand.New(rand.NewPCG(9, 9))
	for range 2000 {
		n := make([]byte, 1+rng.IntN(18))
		for i := range n {
			n[i] = byte('0' + rng.IntN(10))
		}
		cases = append(cases, string(n))
	}
	for _, c := range cases {
		got, gotErr := parseFloat([]byte(c))
		want, wantErr := strconv.ParseFloat(c, 64)
		if math.Float64bits(got) != math.Float64bits(want) || (gotErr == nil) != (wantErr == nil) {
			t.Errorf("parseFloat(%q) = %v, %v; strconv.ParseFloat gives %v, %v", c, got, gotErr, want, wantErr)
		}
	}
}

// BenchmarkDecodeUsage decodes a typical usage event of about 300 bytes.
func BenchmarkDecodeUsage(b *testing.B) {
	s := stacktest.SampleConfig().Streams[0]
	d := mustDecoder(b, s)
	msg := []byte(`{"id":"evt-000000123456","customer":{"id":"customer-0042"},"product":"product-3","ts":1793449815,"qty":17,` +
		`"region":"eu-west-1","bytes":123456,"trial":false,"seats":12,"note":"` + strings.Repeat("x", 150) + `"}`)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Decode(msg, time.Time{}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDecodeCustomerRestriction checks that a stream restricted to some customers takes
// those listed or matching its pattern, in full, and dead-letters the others.
func TestDecodeCustomerRestriction(t *testing.T) {
	s := stacktest.SampleConfig().Streams[1]
	s.Customers = &pipeline.CustomerFilter{Allowed: []string{"acme", "globex"}, Pattern: `cust-[0-9]+`}
	d := mustDecoder(t, s)
	for _, tc := range []struct {
		customer string
		ok       bool
	}{
		{"acme", true}, {"globex", true}, {"cust-42", true},
		{"initech", false}, {"acme2", false}, {"xcust-42", false}, {"cust-42x", false}, {"", false},
	} {
		msg := `{"plan_id":"p","customer":"` + tc.customer + `","product":"p","period":"2027-01-01","quantity":1}`
		_, err := d.Decode([]byte(msg), time.Now())
		var de *pipeline.DecodeError
		switch {
		case tc.ok && err != nil:
			t.Errorf("customer %q refused: %v", tc.customer, err)
		case !tc.ok && (!errors.As(err, &de) || (de.Reason != pipeline.ReasonUnknownCustomer && tc.customer != "")):
			t.Errorf("customer %q: err = %v, want reason %s", tc.customer, err, pipeline.ReasonUnknownCustomer)
		}
	}
	s.Customers = &pipeline.CustomerFilter{Pattern: "("}
	if _, err := NewDecoder(s); err == nil || !strings.Contains(err.Error(), "customers.pattern") {
		t.Errorf("invalid pattern: err = %v, want one naming customers.pattern", err)
	}
}

// TestConcurrentDecodesKeepTheirStrings: several workers in one process (the manager's
// in-process runner runs one per loop) decode at the same time. A decoded message's
// strings point into its parser's memory until they are copied into the batch; a parser
// shared through a pool was handed to another goroutine before that copy, which then
// copied the other message's bytes.
func TestConcurrentDecodesKeepTheirStrings(t *testing.T) {
	s := pipeline.StreamConfig{Name: "usage", Kind: pipeline.KindUsage, Topic: "u", DeadLetterTopic: "u.dlq",
		Mapping: pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts", Quantity: "qty"}}
	d, err := NewDecoder(s)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newColumns(d, nil)
			for i := range 20000 {
				id := fmt.Sprintf("g%d-event-%06d", g, i)
				msg := fmt.Sprintf(`{"id":%q,"customer":"customer-%d-%d","product":"p","ts":1793449815,"qty":1}`, id, g, i)
				if _, err := d.decodeInto([]byte(msg), time.Unix(1793449815, 0), c); err != nil {
					errs <- err.Error()
					return
				}
				runtime.Gosched() // as the scheduler may: the others decode meanwhile
				c.appendDecoded()
				if got := c.cols[0].any(c.n - 1); got != id {
					errs <- fmt.Sprintf("decoded event_id %v, want %s", got, id)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
