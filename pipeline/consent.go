package pipeline

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// ConsentConfig is a loop's consent stream: customers withdraw and grant consent to the
// storage of their data there. Workers read the consent state from ClickHouse (the
// ConsentTable), never from the topic: the controller consumes the topic, records each
// message, and applies it with the workers stopped (see ApplyConsent).
type ConsentConfig struct {
	Topic string `json:"topic"`
}

// ConsentTable records every consent message the controller consumed, in the loop's
// database. It is the consent state workers load before they ingest, and its
// (topic, partition, offset) say where consumption of the consent topic resumes.
const ConsentTable = "customerloop_consent"

// ConsentAuditTable records how each consent message was applied: per withdrawal the
// rows deleted from each raw table, the ids of the ClickHouse mutations that deleted
// them, and when all of it, rollups included, was complete.
const ConsentAuditTable = "customerloop_consent_audit"

// Consent actions.
const (
	ConsentWithdraw = "withdraw"
	ConsentGrant    = "grant"
)

// ConsentMessage is one consent message as a customer publishes it:
//
//	{"id": "w-42", "customerId": "acme", "action": "withdraw", "scope": ["usage"], "timestamp": "2026-11-29T12:00:00Z"}
//
// scope lists stream names; absent or empty means every stream of the loop. timestamp is
// RFC 3339 or Unix seconds; it orders a customer's messages (the later one wins).
type ConsentMessage struct {
	ID         string          `json:"id"`
	CustomerID string          `json:"customerId"`
	Action     string          `json:"action"`
	Scope      []string        `json:"scope,omitempty"`
	Timestamp  json.RawMessage `json:"timestamp"`
}

// ConsentEvent is a consumed consent message, valid or not (Err says why not).
type ConsentEvent struct {
	ID, Customer, Action string
	Scope                []string
	At, Received         time.Time
	Err                  string
	Topic                string
	Partition            int
	Offset               int64
}

// ParseConsent decodes and checks a consent message against the loop's stream names.
func ParseConsent(value []byte, streams []string) (ConsentEvent, error) {
	var m ConsentMessage
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return ConsentEvent{}, fmt.Errorf("not a consent message: %w", err)
	}
	ev := ConsentEvent{ID: m.ID, Customer: m.CustomerID, Action: m.Action, Scope: m.Scope}
	var errs []error
	if m.ID == "" || len(m.ID) > MaxIDLength {
		errs = append(errs, fmt.Errorf("id must be 1 to %d bytes", MaxIDLength))
	}
	if m.CustomerID == "" || len(m.CustomerID) > MaxIDLength {
		errs = append(errs, fmt.Errorf("customerId must be 1 to %d bytes", MaxIDLength))
	}
	if m.Action != ConsentWithdraw && m.Action != ConsentGrant {
		errs = append(errs, fmt.Errorf("action %q: want %s or %s", m.Action, ConsentWithdraw, ConsentGrant))
	}
	for _, s := range m.Scope {
		if !slices.Contains(streams, s) {
			errs = append(errs, fmt.Errorf("scope names %q, which is not a stream of the loop", s))
		}
	}
	at, err := consentTime(m.Timestamp)
	if err != nil {
		errs = append(errs, err)
	}
	ev.At = at
	return ev, errors.Join(errs...)
}

func consentTime(raw json.RawMessage) (time.Time, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return time.Time{}, errors.New("timestamp is required")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}, fmt.Errorf("timestamp: %w", err)
		}
		return t.UTC(), nil
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || n < 0 || n > 4294967295 {
		return time.Time{}, errors.New("timestamp must be RFC 3339 or Unix seconds")
	}
	return time.Unix(n, 0).UTC(), nil
}

func NonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// ConsentState is, per stream, the customers whose data is withheld.
type ConsentState struct {
	withheld map[string]map[string]struct{} // stream -> customers
}

// Withheld reports whether the customer's messages on the stream are not stored.
func (s *ConsentState) Withheld(stream, customer string) bool {
	if s == nil {
		return false
	}
	set := s.withheld[stream]
	if len(set) == 0 {
		return false
	}
	_, ok := set[customer]
	return ok
}

// StoredCustomer is the customer_id the stream stores for a customer: its hash under key
// when the stream hashes customer ids (pii.customerId Hash), else the id itself.
func (s StreamConfig) StoredCustomer(key []byte, customer string) string {
	if s.PII != nil && s.PII.CustomerID == PIIHash {
		return HashPII(key, []byte(customer))
	}
	return customer
}

// ConsentHashed reports whether the consent tables keep customers as their hash: when
// every stream hashes customer ids, so that the clear id of a customer who withdrew is
// stored nowhere. A loop that hashes on some streams only keeps the clear id there.
func (c Config) ConsentHashed() bool {
	for _, s := range c.Streams {
		if s.PII == nil || s.PII.CustomerID != PIIHash {
			return false
		}
	}
	return len(c.Streams) > 0
}

// StoredCustomer is the customer_id the stream stores for a customer of the consent
// tables.
func (c Config) StoredCustomer(s StreamConfig, customer string) string {
	if c.ConsentHashed() {
		return customer
	}
	return s.StoredCustomer(c.HMACKey, customer)
}

// Stored returns the state with each stream's customers as the stream stores them, so
// that a worker compares them with decoded (possibly hashed) customer ids.
func (s *ConsentState) Stored(cfg Config) *ConsentState {
	out := &ConsentState{withheld: map[string]map[string]struct{}{}}
	for _, st := range cfg.Streams {
		set := s.withheld[st.Name]
		if len(set) == 0 {
			continue
		}
		m := make(map[string]struct{}, len(set))
		for c := range set {
			m[cfg.StoredCustomer(st, c)] = struct{}{}
		}
		out.withheld[st.Name] = m
	}
	return out
}

// Customers returns the withheld customers of a stream.
func (s *ConsentState) Customers(stream string) []string {
	var out []string
	for c := range s.withheld[stream] {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// ResolveConsent folds valid consent events, in order of their timestamps, into the
// state of each stream: a message without scope sets every stream and overrides earlier
// per-stream messages; a scoped one sets its streams.
func ResolveConsent(events []ConsentEvent, streams []string) *ConsentState {
	events = slices.Clone(events)
	slices.SortStableFunc(events, func(a, b ConsentEvent) int {
		if c := a.At.Compare(b.At); c != 0 {
			return c
		}
		if a.Partition != b.Partition {
			return a.Partition - b.Partition
		}
		return int(a.Offset - b.Offset)
	})
	type customer struct {
		all    bool
		stream map[string]bool
	}
	byCustomer := map[string]*customer{}
	for _, e := range events {
		if e.Err != "" {
			continue
		}
		c := byCustomer[e.Customer]
		if c == nil {
			c = &customer{stream: map[string]bool{}}
			byCustomer[e.Customer] = c
		}
		withdrawn := e.Action == ConsentWithdraw
		if len(e.Scope) == 0 {
			c.all = withdrawn
			clear(c.stream)
			continue
		}
		for _, s := range e.Scope {
			c.stream[s] = withdrawn
		}
	}
	st := &ConsentState{withheld: map[string]map[string]struct{}{}}
	for _, s := range streams {
		for id, c := range byCustomer {
			w, ok := c.stream[s]
			if !ok {
				w = c.all
			}
			if w {
				if st.withheld[s] == nil {
					st.withheld[s] = map[string]struct{}{}
				}
				st.withheld[s][id] = struct{}{}
			}
		}
	}
	return st
}
