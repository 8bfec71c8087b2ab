package ingest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/segmentio/kafka-go"
)

var testHMACKey = []byte("test-hmac-key-0123456789abcdef")

// piiConfig is the sample config with personal data marked: both streams hash the
// customer, usage hashes its event id and an email, and drops a phone number (nullable)
// and an age (required, but never read).
func piiConfig() pipeline.Config {
	cfg := stacktest.SampleConfig()
	cfg.HMACKey = testHMACKey
	u := &cfg.Streams[0]
	u.PII = &pipeline.CorePII{CustomerID: pipeline.PIIHash, ID: pipeline.PIIHash}
	u.Dimensions = append(u.Dimensions,
		pipeline.Dimension{Name: "email", Field: "contact.email", Type: "String", PII: pipeline.PIIHash},
		pipeline.Dimension{Name: "phone", Field: "contact.phone", Type: "String", Nullable: true, PII: pipeline.PIIDrop},
		pipeline.Dimension{Name: "age", Field: "age", Type: "Int32", PII: pipeline.PIIDrop},
	)
	cfg.Streams[1].PII = &pipeline.CorePII{CustomerID: pipeline.PIIHash}
	return cfg
}

func piiDecoder(t testing.TB, s pipeline.StreamConfig) *Decoder {
	t.Helper()
	d, err := NewDecoder(s, WithHMACKey(testHMACKey))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// column returns the decoded value of the named column.
func rowColumn(t *testing.T, s pipeline.StreamConfig, row []any, name string) any {
	t.Helper()
	for i, c := range s.Columns()[:len(row)] {
		if c.Name == name {
			return deref(row[i])
		}
	}
	t.Fatalf("no column %s", name)
	return nil
}

// TestDecodePII: hashed fields store the keyed HMAC of their text, the same for a plan
// and a usage event of one customer (so the feedback join holds) and different under
// another key; dropped fields store their empty value, whatever the message holds.
func TestDecodePII(t *testing.T) {
	cfg := piiConfig()
	usage, plans := cfg.Streams[0], cfg.Streams[1]
	du, dp := piiDecoder(t, usage), piiDecoder(t, plans)
	row, err := du.Decode([]byte(`{"id":"e1","customer":{"id":"alice@example.com"},"product":"api","ts":1,"region":"eu","bytes":1,"trial":true,`+
		`"contact":{"email":"alice@example.com","phone":"+1 555 0100"},"age":"not even a number"}`), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	wantCustomer := pipeline.HashPII(testHMACKey, []byte("alice@example.com"))
	if len(wantCustomer) != 64 || wantCustomer == pipeline.HashPII([]byte("another-key-0123456789"), []byte("alice@example.com")) {
		t.Fatalf("HashPII = %q: want 64 hex digits that depend on the key", wantCustomer)
	}
	for col, want := range map[string]any{
		"customer_id": wantCustomer, "event_id": pipeline.HashPII(testHMACKey, []byte("e1")), "email": wantCustomer,
		"phone": nil, "age": int32(0), "product": "api", "region": "eu",
	} {
		got := rowColumn(t, usage, row, col)
		if p, ok := got.(*string); ok && p == nil {
			got = nil
		}
		if got != want {
			t.Errorf("%s = %#v, want %#v", col, got, want)
		}
	}
	prow, err := dp.Decode([]byte(`{"plan_id":"p1","customer":"alice@example.com","product":"api","period":"2027-01-01","quantity":5}`), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := rowColumn(t, plans, prow, "customer_id"); got != wantCustomer {
		t.Errorf("plan customer_id = %v, want the usage event's %v", got, wantCustomer)
	}
	if got := rowColumn(t, plans, prow, "plan_id"); got != "p1" {
		t.Errorf("plan_id = %v, want it in clear (not marked)", got)
	}
	// A number is hashed as its JSON text.
	row, err = du.Decode([]byte(`{"id":7,"customer":{"id":42},"product":"api","ts":1,"region":"eu","bytes":1,"trial":true,"contact":{"email":"x"}}`), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := rowColumn(t, usage, row, "customer_id"); got != pipeline.HashPII(testHMACKey, []byte("42")) {
		t.Errorf("numeric customer hashed to %v", got)
	}
}

func TestPIIConfigRefused(t *testing.T) {
	for name, mutate := range map[string]func(*pipeline.StreamConfig){
		"hash on a number":   func(s *pipeline.StreamConfig) { s.Dimensions[1].PII = pipeline.PIIHash },
		"unknown action":     func(s *pipeline.StreamConfig) { s.Dimensions[0].PII = "Mask" },
		"drop the customer":  func(s *pipeline.StreamConfig) { s.PII = &pipeline.CorePII{CustomerID: pipeline.PIIDrop} },
		"drop the event id":  func(s *pipeline.StreamConfig) { s.PII = &pipeline.CorePII{ID: pipeline.PIIDrop} },
		"lowercase pii hash": func(s *pipeline.StreamConfig) { s.Dimensions[0].PII = "hash" },
	} {
		s := stacktest.SampleConfig().Streams[0]
		mutate(&s)
		if _, err := NewDecoder(s, WithHMACKey(testHMACKey)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	s := piiConfig().Streams[0]
	for _, key := range [][]byte{nil, []byte("short")} {
		if _, err := NewDecoder(s, WithHMACKey(key)); err == nil || !strings.Contains(err.Error(), "HMAC key") {
			t.Errorf("key %q: err = %v, want one asking for an HMAC key", key, err)
		}
	}
	// Dropping needs no key.
	s = stacktest.SampleConfig().Streams[0]
	s.Dimensions[0].PII = pipeline.PIIDrop
	if _, err := NewDecoder(s); err != nil {
		t.Errorf("drop without a key: %v", err)
	}
}

// TestDeadLetterPII: a dead letter of a stream with PII fields never carries their clear
// values: in the body (rewritten when it parses, withheld when it does not), the key
// (hashed like the customer) and the error header.
func TestDeadLetterPII(t *testing.T) {
	cfg := piiConfig().WithDefaults()
	s := &cfg.Streams[0]
	d, err := NewDecoder(*s, WithHMACKey(cfg.HMACKey), WithLimits(cfg.Limits))
	if err != nil {
		t.Fatal(err)
	}
	const email, phone, customer = "bob@example.com", "+44 20 7946 0000", "cust-bob"
	cases := []struct {
		name      string
		msg       string
		reason    pipeline.Reason
		withheld  string
		rewritten bool
	}{
		{"bad timestamp", `{"id":"evt-secret-1","customer":{"id":"` + customer + `"},"product":"p","ts":"yesterday","region":"eu","bytes":1,"trial":true,"contact":{"email":"` + email + `","phone":"` + phone + `"}}`,
			pipeline.ReasonWrongType, "", true},
		{"duplicate keys", `{"id":"evt-secret-1","customer":{"id":"` + customer + `"},"customer":{"id":"` + customer + `"},"product":"p","region":"eu","bytes":1,"trial":true,"contact":{"email":"` + email + `","email":"` + email + `"},"contact":{"phone":"` + phone + `"}}`,
			pipeline.ReasonMissingField, "", true},
		{"escaped key", `{"id":"evt-secret-1","customer":{"\u0069d":"` + customer + `"},"product":"p","region":"eu","bytes":1,"trial":true,"contact":{"em\u0061il":"` + email + `"}}`,
			pipeline.ReasonMissingField, "", true},
		{"email is an object", `{"id":"evt-secret-1","customer":{"id":"` + customer + `"},"product":"p","ts":1,"region":"eu","bytes":1,"trial":true,"contact":{"email":{"v":"` + email + `"}}}`,
			pipeline.ReasonWrongType, "", true},
		{"not json", `{"id":"evt-secret-1","customer":{"id":"` + customer + `"},"contact":{"email":"` + email + `"`, pipeline.ReasonInvalidJSON, "invalid_json", false},
		{"too deep", `{"contact":{"email":"` + email + `"},"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, pipeline.ReasonOversize, "oversize", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := kafka.Message{Topic: s.Topic, Key: []byte(customer), Value: []byte(tc.msg)}
			c := newColumns(d, s)
			_, err := d.decodeInto(m.Value, time.Now(), c)
			var de *pipeline.DecodeError
			if !errors.As(err, &de) || de.Reason != tc.reason {
				t.Fatalf("decode: %v, want reason %s", err, tc.reason)
			}
			dl := deadLetter(&item{stream: s, msg: m, err: de}, d, cfg.MaxMessageBytes, time.Now())
			all := string(dl.Key) + " " + string(dl.Value)
			for _, h := range dl.Headers {
				all += " " + h.Key + "=" + string(h.Value)
			}
			for _, clear := range []string{email, phone, customer, "evt-secret-1", "bob", "0000"} {
				if strings.Contains(all, clear) {
					t.Errorf("the dead letter carries %q: %s", clear, all)
				}
			}
			if !bytes.Equal(dl.Key, []byte(pipeline.HashPII(cfg.HMACKey, []byte(customer)))) {
				t.Errorf("key %q, want the customer's hash", dl.Key)
			}
			if header(dl, HeaderWithheld) != tc.withheld {
				t.Errorf("%s = %q, want %q", HeaderWithheld, header(dl, HeaderWithheld), tc.withheld)
			}
			if tc.withheld != "" && !bytes.Equal(dl.Value, WithheldBody) {
				t.Errorf("withheld body %q, want %q", dl.Value, WithheldBody)
			}
			if tc.rewritten {
				if header(dl, HeaderPII) != "rewritten" {
					t.Errorf("%s = %q, want rewritten", HeaderPII, header(dl, HeaderPII))
				}
				if tc.name != "email is an object" && !strings.Contains(string(dl.Value), pipeline.HashPII(cfg.HMACKey, []byte(email))) {
					t.Errorf("rewritten body lacks the email's hash: %s", dl.Value)
				}
				if !strings.Contains(string(dl.Value), `"product":"p"`) {
					t.Errorf("rewritten body lost the other fields: %s", dl.Value)
				}
			}
		})
	}

	// Unknown customers are named in the error header, unless the customer is PII.
	r := cfg.Streams[1]
	r.Customers = &pipeline.CustomerFilter{Allowed: []string{"acme"}}
	dr := piiDecoder(t, r)
	_, err = dr.Decode([]byte(`{"plan_id":"p","customer":"`+customer+`","product":"p","period":"2027-01-01","quantity":1}`), time.Now())
	if err == nil || strings.Contains(err.Error(), customer) {
		t.Errorf("unknown PII customer: %v, want an error without the customer", err)
	}

	// Without PII fields the dead letter is the message as it came.
	plain := stacktest.SampleConfig().Streams[0]
	dp := mustDecoder(t, plain)
	m := kafka.Message{Topic: plain.Topic, Key: []byte("k"), Value: []byte(`{"id":`)}
	dl := deadLetter(&item{stream: &plain, msg: m, err: &pipeline.DecodeError{Reason: pipeline.ReasonInvalidJSON, Err: errors.New("x")}}, dp, 0, time.Now())
	if string(dl.Value) != `{"id":` || string(dl.Key) != "k" || header(dl, HeaderWithheld) != "" || header(dl, HeaderPII) != "" {
		t.Errorf("dead letter of a stream without PII changed: %+v", dl)
	}
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// TestDecodeLimits: the field count, string length and depth limits dead-letter a
// message as oversize with the limit named, before it is parsed.
func TestDecodeLimits(t *testing.T) {
	s := stacktest.SampleConfig().Streams[0]
	d, err := NewDecoder(s, WithLimits(pipeline.Limits{MaxFields: 20, MaxStringBytes: 100, MaxDepth: 4}))
	if err != nil {
		t.Fatal(err)
	}
	ok := `"id":"e","customer":{"id":"c"},"product":"p","ts":1,"region":"eu","bytes":1,"trial":true`
	var many []string
	for i := range 20 {
		many = append(many, fmt.Sprintf(`"f%d":1`, i))
	}
	for _, tc := range []struct {
		name, msg, want string
	}{
		{"within", `{` + ok + `,"x":[[1]],"s":"` + strings.Repeat("a", 100) + `"}`, ""},
		{"escapes within", `{` + ok + `,"s":"` + strings.Repeat(`\"`, 50) + `"}`, ""},
		{"too many fields", `{` + ok + `,` + strings.Join(many, ",") + `}`, "20 fields"},
		{"long string", `{` + ok + `,"s":"` + strings.Repeat("a", 101) + `"}`, "101 bytes"},
		{"long key", `{` + ok + `,"` + strings.Repeat("k", 101) + `":1}`, "101 bytes"},
		{"deep", `{` + ok + `,"x":[[[[1]]]]}`, "4 levels"},
		{"brackets in strings do not count", `{` + ok + `,"x":"[[[[[[{{{{{{::::"}`, ""},
	} {
		_, err := d.Decode([]byte(tc.msg), time.Now())
		var de *pipeline.DecodeError
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (!errors.As(err, &de) || de.Reason != pipeline.ReasonOversize || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err = %v, want oversize naming %q", tc.name, err, tc.want)
		}
	}
}

// TestLimitsShortcutAgreesWithScan: the byte-count shortcut of Limits.Check never lets
// through a message the token scan refuses, over random messages made of the bytes the
// scan reads, near small limits.
func TestLimitsShortcutAgreesWithScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	alphabet := []byte(`{}[]":\ax,`)
	passed := 0
	for range 200_000 {
		l := pipeline.Limits{MaxFields: 1 + rng.IntN(6), MaxStringBytes: 1 + rng.IntN(40), MaxDepth: 1 + rng.IntN(4)}
		msg := make([]byte, rng.IntN(48))
		for i := range msg {
			msg[i] = alphabet[rng.IntN(len(alphabet))]
		}
		got, want := l.Check(msg), l.Scan(msg)
		if (got == nil) != (want == nil) || (got != nil && got.Error() != want.Error()) {
			t.Fatalf("limits %+v, message %q: check = %v, scan = %v", l, msg, got, want)
		}
		if l.PlainlyWithin(msg) {
			passed++
		}
	}
	if passed < 1000 {
		t.Errorf("only %d messages took the shortcut: the test does not exercise it", passed)
	}
}

// TestDepthBombRefusedCheaply: 100k nested arrays (and 1M keys) within the size limit
// are refused by the default limits before fastjson parses them: no recursion, and
// far less allocated than parsing would take.
func TestDepthBombRefusedCheaply(t *testing.T) {
	d := mustDecoder(t, stacktest.SampleConfig().Streams[0])
	bombs := map[string][]byte{
		"depth":  []byte(strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000)),
		"fields": []byte("{" + strings.Repeat(`"a":1,`, 200_000) + `"a":1}`),
	}
	for name, msg := range bombs {
		var err error
		allocs := testing.AllocsPerRun(3, func() { _, err = d.Decode(msg, time.Now()) })
		var de *pipeline.DecodeError
		if !errors.As(err, &de) || de.Reason != pipeline.ReasonOversize {
			t.Errorf("%s bomb: err = %v, want oversize", name, err)
		}
		// Decode builds a row-shaped columns value and the error; parsing would allocate
		// per nested value.
		if allocs > 50 {
			t.Errorf("%s bomb: %v allocations, want it refused before parsing", name, allocs)
		}
	}
}

// BenchmarkDecodePII decodes a usage event whose customer, id and email are hashed and
// phone and age dropped, to compare with BenchmarkDecodeUsage.
func BenchmarkDecodePII(b *testing.B) {
	s := piiConfig().Streams[0]
	d := piiDecoder(b, s)
	msg := []byte(`{"id":"evt-000000123456","customer":{"id":"customer-0042"},"product":"product-3","ts":1793449815,"qty":17,` +
		`"region":"eu-west-1","bytes":123456,"trial":false,"seats":12,"contact":{"email":"someone@example.com","phone":"+1 555 0100"},"age":40,"note":"` +
		strings.Repeat("x", 100) + `"}`)
	c := newColumns(d, nil)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.decodeInto(msg, time.Time{}, c); err != nil {
			b.Fatal(err)
		}
	}
}

// TestStringEndMatchesScan checks the quote-to-quote jump against a byte-by-byte scan of
// escapes, over random strings of letters, backslashes and quotes.
func TestStringEndMatchesScan(t *testing.T) {
	scan := func(msg []byte, start int) int {
		i := start
		for ; i < len(msg) && msg[i] != '"'; i++ {
			if msg[i] == '\\' {
				i++
			}
		}
		return min(i, len(msg))
	}
	rng := rand.New(rand.NewPCG(3, 5))
	for range 100_000 {
		msg := make([]byte, rng.IntN(12))
		for i := range msg {
			msg[i] = "a\\\""[rng.IntN(3)]
		}
		start := 0
		if len(msg) > 0 {
			start = rng.IntN(len(msg))
		}
		if got, want := pipeline.StringEnd(msg, start), scan(msg, start); got != want {
			t.Fatalf("StringEnd(%q, %d) = %d, want %d", msg, start, got, want)
		}
	}
}
