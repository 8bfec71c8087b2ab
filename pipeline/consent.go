package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
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

var consentColumns = []Column{
	{"id", "String"},
	{"customer_id", "String"},
	{"action", "String"},
	{"scope", "Array(String)"},
	{"ts", "DateTime"},
	{"received_at", "DateTime"},
	{"error", "String"},
	{"_topic", "String"},
	{"_partition", "Int32"},
	{"_offset", "Int64"},
}

var consentAuditColumns = []Column{
	{"id", "String"},
	{"customer_id", "String"},
	{"action", "String"},
	{"scope", "Array(String)"},
	{"received_at", "DateTime"},
	{"tables", "Array(String)"},
	{"rows_deleted", "Array(UInt64)"},
	{"mutation_ids", "Array(String)"},
	{"completed_at", "DateTime"},
	{"error", "String"},
	{"_topic", "String"},
	{"_partition", "Int32"},
	{"_offset", "Int64"},
}

func consentDDL(ch ClickHouseConfig) []Statement {
	db := ch.Database
	return append(
		tableStatements(ch, db, ConsentTable, consentColumns, "MergeTree", "ORDER BY (_topic, _partition, _offset)", consentShardKey),
		tableStatements(ch, db, ConsentAuditTable, consentAuditColumns, "MergeTree", "ORDER BY (_topic, _partition, _offset)", consentShardKey)...)
}

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
	if m.ID == "" || len(m.ID) > maxIDLength {
		errs = append(errs, fmt.Errorf("id must be 1 to %d bytes", maxIDLength))
	}
	if m.CustomerID == "" || len(m.CustomerID) > maxIDLength {
		errs = append(errs, fmt.Errorf("customerId must be 1 to %d bytes", maxIDLength))
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

// PullConsent reads the consent topic from where the ConsentTable ends to the topic's
// end as of the call, and records every message, invalid ones with their error. It
// returns how many it recorded. Recording is the commit: a message is read again only
// if its insert failed.
func PullConsent(ctx context.Context, conn driver.Conn, cfg Config) (int, error) {
	db, topic := cfg.ClickHouse.Database, cfg.Consent.Topic
	kc, err := KafkaClient(cfg.Kafka)
	if err != nil {
		return 0, err
	}
	ends, err := TopicOffsets(ctx, kc, topic)
	if err != nil {
		return 0, err
	}
	next := map[int]int64{}
	rows, err := conn.Query(ctx, "SELECT _partition, max(_offset) FROM "+QualifiedTable(db, ConsentTable)+" WHERE _topic = ? GROUP BY _partition", topic)
	if err != nil {
		return 0, fmt.Errorf("reading where the consent topic stands: %w", err)
	}
	for rows.Next() {
		var p int32
		var off int64
		if err := rows.Scan(&p, &off); err != nil {
			rows.Close()
			return 0, err
		}
		next[int(p)] = off + 1
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	sec, err := securityOf(cfg.Kafka)
	if err != nil {
		return 0, err
	}
	streams := make([]string, len(cfg.Streams))
	for i, s := range cfg.Streams {
		streams[i] = s.Name
	}
	var events []ConsentEvent
	now := time.Now().UTC().Truncate(time.Second)
	for p, r := range ends {
		from := max(next[p], r.First)
		if from >= r.End {
			continue
		}
		msgs, err := readRange(ctx, sec, cfg.Kafka.Brokers, topic, p, from, r.End)
		if err != nil {
			return 0, err
		}
		for _, m := range msgs {
			ev, err := ParseConsent(m.Value, streams)
			if err != nil {
				ev.Err = err.Error()
			}
			if cfg.consentHashed() && ev.Customer != "" {
				ev.Customer = HashPII(cfg.HMACKey, []byte(ev.Customer))
			}
			ev.Received, ev.Topic, ev.Partition, ev.Offset = now, topic, m.Partition, m.Offset
			events = append(events, ev)
		}
	}
	if len(events) == 0 {
		return 0, nil
	}
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+QualifiedTable(db, ConsentTable))
	if err != nil {
		return 0, fmt.Errorf("preparing the consent insert: %w", err)
	}
	for _, e := range events {
		if err := b.Append(e.ID, e.Customer, e.Action, nonNil(e.Scope), e.At, e.Received, e.Err, e.Topic, int32(e.Partition), e.Offset); err != nil {
			_ = b.Abort()
			return 0, fmt.Errorf("appending consent: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return 0, fmt.Errorf("recording consent: %w", err)
	}
	return len(events), nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// readRange reads the messages of one partition with offsets in [from, end).
func readRange(ctx context.Context, sec kafkaSecurity, brokers []string, topic string, partition int, from, end int64) ([]kafka.Message, error) {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: brokers, Dialer: sec.dialer(), Topic: topic, Partition: partition,
		MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 250 * time.Millisecond,
	})
	defer r.Close()
	if err := r.SetOffset(from); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out []kafka.Message
	for {
		m, err := r.FetchMessage(rctx)
		if err != nil {
			return nil, fmt.Errorf("reading %s/%d at %d: %w", topic, partition, from, err)
		}
		if m.Offset >= end {
			return out, nil
		}
		out = append(out, m)
		if m.Offset == end-1 {
			return out, nil
		}
	}
}

const consentSelect = "SELECT id, customer_id, action, scope, ts, received_at, error, _topic, _partition, _offset FROM "

func scanConsent(rows driver.Rows) ([]ConsentEvent, error) {
	defer rows.Close()
	var out []ConsentEvent
	for rows.Next() {
		var e ConsentEvent
		var p int32
		if err := rows.Scan(&e.ID, &e.Customer, &e.Action, &e.Scope, &e.At, &e.Received, &e.Err, &e.Topic, &p, &e.Offset); err != nil {
			return nil, err
		}
		e.Partition = int(p)
		out = append(out, e)
	}
	return out, rows.Err()
}

// PendingConsent returns the recorded consent messages not yet applied (without an
// audit row), in the order they are applied.
func PendingConsent(ctx context.Context, conn driver.Conn, db string) ([]ConsentEvent, error) {
	rows, err := conn.Query(ctx, consentSelect+QualifiedTable(db, ConsentTable)+
		" WHERE (_topic, _partition, _offset) NOT IN (SELECT _topic, _partition, _offset FROM "+QualifiedTable(db, ConsentAuditTable)+
		") ORDER BY ts, _partition, _offset")
	if err != nil {
		return nil, fmt.Errorf("reading pending consent: %w", err)
	}
	return scanConsent(rows)
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

// consentHashed reports whether the consent tables keep customers as their hash: when
// every stream hashes customer ids, so that the clear id of a customer who withdrew is
// stored nowhere. A loop that hashes on some streams only keeps the clear id there.
func (c Config) consentHashed() bool {
	for _, s := range c.Streams {
		if s.PII == nil || s.PII.CustomerID != PIIHash {
			return false
		}
	}
	return len(c.Streams) > 0
}

// storedCustomer is the customer_id the stream stores for a customer of the consent
// tables.
func (c Config) storedCustomer(s StreamConfig, customer string) string {
	if c.consentHashed() {
		return customer
	}
	return s.StoredCustomer(c.HMACKey, customer)
}

// stored returns the state with each stream's customers as the stream stores them, so
// that a worker compares them with decoded (possibly hashed) customer ids.
func (s *ConsentState) stored(cfg Config) *ConsentState {
	out := &ConsentState{withheld: map[string]map[string]struct{}{}}
	for _, st := range cfg.Streams {
		set := s.withheld[st.Name]
		if len(set) == 0 {
			continue
		}
		m := make(map[string]struct{}, len(set))
		for c := range set {
			m[cfg.storedCustomer(st, c)] = struct{}{}
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

// LoadConsent reads the consent state of a loop's streams: every recorded message,
// applied or still pending, because a worker that starts after a withdrawal was recorded
// must withhold at once.
func LoadConsent(ctx context.Context, conn driver.Conn, db string, streams []string) (*ConsentState, error) {
	rows, err := conn.Query(ctx, consentSelect+QualifiedTable(db, ConsentTable)+" WHERE error = ''")
	if err != nil {
		return nil, fmt.Errorf("reading the consent state: %w", err)
	}
	events, err := scanConsent(rows)
	if err != nil {
		return nil, fmt.Errorf("reading the consent state: %w", err)
	}
	return ResolveConsent(events, streams), nil
}
