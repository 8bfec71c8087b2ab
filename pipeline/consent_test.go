package pipeline

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseConsent(t *testing.T) {
	streams := []string{"usage", "plans"}
	for name, tc := range map[string]struct {
		msg, err string
		scope    []string
		at       time.Time
	}{
		"withdraw everything, RFC 3339": {msg: `{"id":"w1","customerId":"c1","action":"withdraw","timestamp":"2026-11-29T10:00:00Z"}`,
			at: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)},
		"grant one stream, Unix seconds": {msg: `{"id":"g1","customerId":"c1","action":"grant","scope":["usage"],"timestamp":1795950000}`,
			scope: []string{"usage"}, at: time.Unix(1795950000, 0).UTC()},
		"unknown action":   {msg: `{"id":"x","customerId":"c1","action":"forget","timestamp":1}`, err: `action "forget"`},
		"unknown stream":   {msg: `{"id":"x","customerId":"c1","action":"withdraw","scope":["clicks"],"timestamp":1}`, err: `"clicks"`},
		"no customer":      {msg: `{"id":"x","action":"withdraw","timestamp":1}`, err: "customerId"},
		"no id":            {msg: `{"customerId":"c1","action":"withdraw","timestamp":1}`, err: "id must be"},
		"no timestamp":     {msg: `{"id":"x","customerId":"c1","action":"withdraw"}`, err: "timestamp is required"},
		"unknown field":    {msg: `{"id":"x","customerId":"c1","action":"withdraw","timestamp":1,"customer":"c2"}`, err: "unknown field"},
		"not JSON":         {msg: `withdraw c1`, err: "not a consent message"},
		"bad timestamp":    {msg: `{"id":"x","customerId":"c1","action":"grant","timestamp":"yesterday"}`, err: "timestamp"},
		"negative seconds": {msg: `{"id":"x","customerId":"c1","action":"grant","timestamp":-5}`, err: "timestamp"},
	} {
		t.Run(name, func(t *testing.T) {
			ev, err := ParseConsent([]byte(tc.msg), streams)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !ev.At.Equal(tc.at) || strings.Join(ev.Scope, ",") != strings.Join(tc.scope, ",") {
				t.Errorf("got at %v scope %v, want %v %v", ev.At, ev.Scope, tc.at, tc.scope)
			}
		})
	}
}

// TestResolveConsent: the latest message by timestamp wins, whatever order the messages
// were consumed in; an unscoped message resets the per-stream ones; invalid messages
// change nothing.
func TestResolveConsent(t *testing.T) {
	at := func(s int) time.Time { return time.Unix(int64(1_800_000_000+s), 0) }
	streams := []string{"usage", "plans"}
	for name, tc := range map[string]struct {
		events []ConsentEvent
		want   map[string][]string // stream -> withheld customers
	}{
		"withdraw all": {[]ConsentEvent{{Customer: "c1", Action: ConsentWithdraw, At: at(1)}},
			map[string][]string{"usage": {"c1"}, "plans": {"c1"}}},
		"withdraw one stream": {[]ConsentEvent{{Customer: "c1", Action: ConsentWithdraw, Scope: []string{"plans"}, At: at(1)}},
			map[string][]string{"plans": {"c1"}}},
		"a later grant wins even when consumed first": {[]ConsentEvent{
			{Customer: "c1", Action: ConsentGrant, At: at(2), Offset: 1},
			{Customer: "c1", Action: ConsentWithdraw, At: at(1), Offset: 2}}, nil},
		"grant one stream after withdrawing all": {[]ConsentEvent{
			{Customer: "c1", Action: ConsentWithdraw, At: at(1)},
			{Customer: "c1", Action: ConsentGrant, Scope: []string{"usage"}, At: at(2)}},
			map[string][]string{"plans": {"c1"}}},
		"an unscoped grant resets a scoped withdrawal": {[]ConsentEvent{
			{Customer: "c1", Action: ConsentWithdraw, Scope: []string{"usage"}, At: at(1)},
			{Customer: "c1", Action: ConsentGrant, At: at(2)}}, nil},
		"an invalid message is ignored": {[]ConsentEvent{
			{Customer: "c1", Action: ConsentWithdraw, At: at(1)},
			{Customer: "c1", Action: ConsentGrant, At: at(2), Err: "scope names an unknown stream"}},
			map[string][]string{"usage": {"c1"}, "plans": {"c1"}}},
		"customers are independent": {[]ConsentEvent{
			{Customer: "c1", Action: ConsentWithdraw, At: at(1)},
			{Customer: "c2", Action: ConsentWithdraw, Scope: []string{"usage"}, At: at(1)},
			{Customer: "c2", Action: ConsentGrant, At: at(0)}},
			map[string][]string{"usage": {"c1", "c2"}, "plans": {"c1"}}},
	} {
		t.Run(name, func(t *testing.T) {
			st := ResolveConsent(tc.events, streams)
			for _, s := range streams {
				if got, want := strings.Join(st.Customers(s), ","), strings.Join(tc.want[s], ","); got != want {
					t.Errorf("%s: withheld %q, want %q", s, got, want)
				}
				for _, c := range tc.want[s] {
					if !st.Withheld(s, c) {
						t.Errorf("Withheld(%s, %s) = false", s, c)
					}
				}
			}
			if st.Withheld("usage", "nobody") || (*ConsentState)(nil).Withheld("usage", "c1") {
				t.Error("a customer without consent messages, or a loop without consent, is withheld")
			}
		})
	}
}

// TestConsentStoredCustomers: a stream that hashes customer ids withholds and deletes
// by the hash, as its rows store it; other streams by the clear id.
func TestConsentStoredCustomers(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	streams := []StreamConfig{{Name: "usage", PII: &CorePII{CustomerID: PIIHash}}, {Name: "plans"}}
	cfg := Config{Streams: streams, HMACKey: key}
	st := ResolveConsent([]ConsentEvent{{Customer: "c1", Action: ConsentWithdraw, At: time.Unix(1, 0)}}, []string{"usage", "plans"}).Stored(cfg)
	hashed := HashPII(key, []byte("c1"))
	if !st.Withheld("usage", hashed) || st.Withheld("usage", "c1") {
		t.Errorf("the hashing stream withholds by the clear id, not by its hash %s", hashed)
	}
	if !st.Withheld("plans", "c1") || st.Withheld("plans", hashed) {
		t.Error("the clear stream does not withhold by the clear id")
	}
	if streams[0].StoredCustomer(key, "c1") != hashed || streams[1].StoredCustomer(key, "c1") != "c1" {
		t.Error("StoredCustomer does not follow the stream's pii")
	}
}

// TestConsentHashedLoop: when every stream hashes customer ids, the consent tables keep
// the hash (the controller hashes on receipt), and workers compare it as it is.
func TestConsentHashedLoop(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	hashing := &CorePII{CustomerID: PIIHash}
	cfg := Config{Streams: []StreamConfig{{Name: "usage", PII: hashing}, {Name: "plans", PII: hashing}}, HMACKey: key}
	if !cfg.ConsentHashed() {
		t.Fatal("a loop hashing every stream's customers keeps clear ids in its consent tables")
	}
	hashed := HashPII(key, []byte("c1"))
	st := ResolveConsent([]ConsentEvent{{Customer: hashed, Action: ConsentWithdraw, At: time.Unix(1, 0)}}, []string{"usage", "plans"}).Stored(cfg)
	if !st.Withheld("usage", hashed) || !st.Withheld("plans", hashed) || cfg.StoredCustomer(cfg.Streams[0], hashed) != hashed {
		t.Error("a recorded hash is hashed again before comparing with stored rows")
	}
}

// FuzzParseConsent: whatever a customer publishes on the consent topic, parsing never
// panics, and an accepted message names a customer, a known action, only the loop's
// streams and a time.
func FuzzParseConsent(f *testing.F) {
	for _, s := range []string{
		`{"id":"w-1","customerId":"acme","action":"withdraw","scope":["usage"],"timestamp":"2026-11-29T12:00:00Z"}`,
		`{"id":"g-1","customerId":"acme","action":"grant","timestamp":1793449815}`,
		`{"id":"x","customerId":"","action":"delete","scope":["nope"],"timestamp":null}`,
		`{"id":"w-2","customerId":"acme","action":"withdraw","extra":1,"timestamp":"2026-11-29"}`,
		`[`, ``, `null`,
	} {
		f.Add([]byte(s))
	}
	streams := []string{"usage", "plans"}
	f.Fuzz(func(t *testing.T, msg []byte) {
		ev, err := ParseConsent(msg, streams)
		if err != nil {
			return
		}
		if ev.Customer == "" || ev.ID == "" || (ev.Action != ConsentWithdraw && ev.Action != ConsentGrant) || ev.At.IsZero() {
			t.Fatalf("accepted %q as %+v", msg, ev)
		}
		for _, s := range ev.Scope {
			if !slices.Contains(streams, s) {
				t.Fatalf("accepted %q with scope %q outside the loop's streams", msg, s)
			}
		}
	})
}
