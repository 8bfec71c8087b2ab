package ingest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/go-logr/logr/testr"
	"github.com/segmentio/kafka-go"
)

// deadLetterConfig is a loop of one usage stream without dimensions on the test stack.
func deadLetterConfig(t *testing.T, db string) pipeline.Config {
	cfg := stacktest.SampleConfig()
	cfg.Streams = cfg.Streams[:1]
	cfg.Streams[0].Dimensions = nil
	cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: stacktest.ClickhouseAddr(t), Database: stacktest.UniqueName(db)}
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.Batch = pipeline.BatchConfig{MaxRows: 4, MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}
	return cfg
}

// deadLetterMessages are two customers' refused messages, one with no customer and one
// that is not JSON, among good ones; the Kafka timestamps are kafkaTime.
func deadLetterMessages(kafkaTime time.Time) []kafka.Message {
	vals := []string{
		`{"id":"e0","customer":{"id":"c-a"},"product":"p","ts":"2026-10-01T00:00:00Z","qty":1}`,
		`{"id":"e1","customer":{"id":"c-a"},"ts":"2026-10-05T10:00:00Z","qty":1}`,                    // missing_field, c-a
		`{"id":"e2","customer":{"id":"c-b"},"product":"p","ts":"2026-10-06T00:00:00Z","qty":"many"}`, // wrong_type, c-b
		`{"id":"e3","customer":{"id":"c-b"},"product":`,                                              // invalid_json, nobody
		`{"id":"e4","product":"p","ts":"2026-10-07T00:00:00Z","qty":1}`,                              // missing_field, nobody
		`{"id":"e5","customer":{"id":"c-a"},"product":"p","ts":"soon","qty":1}`,                      // wrong_type, c-a, Kafka time
		`{"id":"e6","customer":{"id":"c-b"},"product":"p","ts":"2026-10-02T00:00:00Z","qty":2}`,
	}
	msgs := make([]kafka.Message, len(vals))
	for i, v := range vals {
		msgs[i] = kafka.Message{Value: []byte(v), Time: kafkaTime}
	}
	return msgs
}

// deadLetterRows reads the table's rows as "customer|stream|reason|offset|event time",
// sorted, one per row as stored (duplicates included).
func deadLetterRows(t *testing.T, ctx context.Context, cfg pipeline.Config) []string {
	t.Helper()
	ch, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	rows, err := ch.Query(ctx, "SELECT customer_id, stream, reason, source_topic, source_partition, source_offset, event_time, dead_lettered_at FROM "+
		pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.DeadLettersTable))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var (
			customer, stream, reason, topic string
			partition                       int32
			offset                          int64
			event, at                       time.Time
		)
		if err := rows.Scan(&customer, &stream, &reason, &topic, &partition, &offset, &event, &at); err != nil {
			t.Fatal(err)
		}
		if topic != cfg.Streams[0].Topic || partition != 0 || at.IsZero() {
			t.Errorf("row of offset %d: source %s/%d, dead-lettered at %v", offset, topic, partition, at)
		}
		out = append(out, fmt.Sprintf("%s|%s|%s|%d|%s", customer, stream, reason, offset, event.UTC().Format(time.RFC3339)))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// TestWorkerRecordsDeadLetters runs a worker on the real broker and ClickHouse: each
// refused message has its row in dead_letters, under its customer as the stream stores
// it (hashed on a hashed stream: no clear id in the table), empty without a readable
// one, counted in its event time or else its Kafka time. A batch read again after a
// crash between the dead letters' insert and the ledger writes them again: the rows
// count once by source position.
func TestWorkerRecordsDeadLetters(t *testing.T) {
	for _, hashed := range []bool{false, true} {
		t.Run(map[bool]string{false: "clear", true: "hashed"}[hashed], func(t *testing.T) {
			cfg := deadLetterConfig(t, "test_dead_rows")
			id := func(c string) string { return c }
			if hashed {
				cfg.HMACKey = []byte("0123456789abcdef0123456789abcdef")
				cfg.Streams[0].PII = &pipeline.CorePII{CustomerID: pipeline.PIIHash}
				id = func(c string) string { return pipeline.HashPII(cfg.HMACKey, []byte(c)) }
			}
			s := cfg.Streams[0]
			cfg.Kafka.Brokers = stacktest.StartBroker(t, 1, s.Topic)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			ch := ddltest.ApplySchema(t, cfg)
			kafkaTime := time.Date(2026, 11, 3, 4, 5, 6, 0, time.UTC)
			stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, deadLetterMessages(kafkaTime))

			ledgerAt := func(last int64) {
				testkit.Eventually(t, time.Minute, fmt.Sprintf("the ledger to reach offset %d", last), func() (bool, string) {
					var got int64
					var n uint64
					err := ch.QueryRow(ctx, "SELECT max(last_offset), count() FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.LedgerTable)).Scan(&got, &n)
					return err == nil && n > 0 && got == last, fmt.Sprintf("last=%d entries=%d err=%v", got, n, err)
				})
			}
			stop := runWorker(t, ctx, cfg, nil)
			ledgerAt(6)
			stop()

			want := []string{
				"|usage|invalid_json|3|" + kafkaTime.Format(time.RFC3339),
				"|usage|missing_field|4|2026-10-07T00:00:00Z",
				id("c-a") + "|usage|missing_field|1|2026-10-05T10:00:00Z",
				id("c-a") + "|usage|wrong_type|5|" + kafkaTime.Format(time.RFC3339),
				id("c-b") + "|usage|wrong_type|2|2026-10-06T00:00:00Z",
			}
			slices.Sort(want)
			got := deadLetterRows(t, ctx, cfg)
			if !slices.Equal(got, want) {
				t.Fatalf("dead_letters rows:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if hashed {
				for _, r := range got {
					if strings.Contains(r, "c-a") || strings.Contains(r, "c-b") {
						t.Errorf("a clear customer id in dead_letters of a hashed stream: %s", r)
					}
				}
			}

			// The crash: the rows are in, the ledger never recorded the batch (dropped
			// and created empty), and the group committed nothing (a new group). The
			// next worker reads it all again.
			if err := ch.Exec(ctx, "DROP TABLE "+pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.LedgerTable)); err != nil {
				t.Fatal(err)
			}
			stmts, err := ddl.PlanSchema(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
				t.Fatal(err)
			}
			cfg.Kafka.Group = stacktest.UniqueName("group")
			stop = runWorker(t, ctx, cfg, nil)
			ledgerAt(6)
			stop()
			var rows, distinct uint64
			if err := ch.QueryRow(ctx, "SELECT count(), uniqExact(source_topic, source_partition, source_offset) FROM "+
				pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.DeadLettersTable)).Scan(&rows, &distinct); err != nil {
				t.Fatal(err)
			}
			if distinct != 5 {
				t.Errorf("%d distinct dead letters after the re-read, want 5", distinct)
			}
			// Each is there once or twice (a merge may have collapsed them already): the
			// re-read wrote them again, and what readers count is the distinct positions.
			if rows < 5 || rows > 10 {
				t.Errorf("%d rows after the re-read, want 5 to 10", rows)
			}
			var raw uint64
			if err := ch.QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, s.Table())).Scan(&raw); err != nil || raw != 2 {
				t.Errorf("%d raw rows (err %v) after the re-read, want 2", raw, err)
			}
			if err := ch.Exec(ctx, "OPTIMIZE TABLE "+pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.DeadLettersTable)+" FINAL"); err != nil {
				t.Fatal(err)
			}
			if got := deadLetterRows(t, ctx, cfg); !slices.Equal(got, want) {
				t.Errorf("dead_letters rows after merging:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestDeadLetterRetryStoresOnce: an insert of dead-letter rows that failed after the
// server stored them is retried through retryWrite, which first drops what landed.
func TestDeadLetterRetryStoresOnce(t *testing.T) {
	cfg := deadLetterConfig(t, "test_dead_retry")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ch := ddltest.ApplySchema(t, cfg)
	db := cfg.ClickHouse.Database
	w := &Worker{cfg: cfg, log: testr.New(t), metrics: NewMetrics(nil), ch: ch}
	at := time.Now().UTC().Truncate(time.Second)
	row := func(offset int64) deadRow {
		return deadRow{customer: "c-a", stream: "usage", reason: pipeline.ReasonWrongType, topic: "t", offset: offset, eventTime: at, at: at}
	}
	// An earlier batch's row at offset 3 of another partition must not hide this one's.
	other := row(3)
	other.partition = 1
	if err := writeDeadRows(ctx, ch, db, []deadRow{other}); err != nil {
		t.Fatal(err)
	}
	rows := []deadRow{row(1), row(2), row(3)}
	attempts := 0
	err := w.retryWrite(ctx, StageDeadLetter, "dead letters", pipeline.DeadLettersTable, func(shards []shardReader) (bool, error) {
		var err error
		rows, err = deadRowsNotLanded(ctx, shards, db, rows)
		return len(rows) == 0, err
	}, func() error {
		attempts++
		switch attempts {
		case 1: // stored, but the client hears an error
			if err := writeDeadRows(ctx, ch, db, rows[:2]); err != nil {
				return err
			}
			return errors.New("connection reset after the server stored two rows")
		default:
			return writeDeadRows(ctx, ch, db, rows)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	var n, distinct uint64
	if err := ch.QueryRow(ctx, "SELECT count(), uniqExact(source_partition, source_offset) FROM "+
		pipeline.QualifiedTable(db, pipeline.DeadLettersTable)).Scan(&n, &distinct); err != nil {
		t.Fatal(err)
	}
	if attempts != 2 || n != 4 || distinct != 4 {
		t.Errorf("%d attempts, %d rows, %d distinct; want 2 attempts and 4 rows, each once", attempts, n, distinct)
	}
}

// TestReadRefusedCustomer: the customer of a refused message is read by the stream's
// mapping, best effort, and hashed when the stream hashes it.
func TestReadRefusedCustomer(t *testing.T) {
	s := stacktest.SampleConfig().Streams[0]
	s.Dimensions = nil
	clear := mustDecoder(t, s)
	key := []byte("0123456789abcdef0123456789abcdef")
	hs := s
	hs.PII = &pipeline.CorePII{CustomerID: pipeline.PIIHash}
	hashed, err := NewDecoder(hs, WithHMACKey(key))
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2026, 10, 5, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		msg, customer string
		event         bool
	}{
		{`{"customer":{"id":"c-a"},"ts":"2026-10-05T00:00:00Z","qty":"x"}`, "c-a", true},
		{`{"customer":{"id":42},"ts":1791158400}`, "42", true},
		{`{"customer":{"id":""},"ts":"later"}`, "", false},
		{`{"customer":{"id":{"x":1}}}`, "", false},
		{`{"customer":"c-a"}`, "", false},
		{`{"customer":{"id":"c-a"},`, "", false},
		{`["c-a"]`, "", false},
		{`{"customer":{"id":"c-a"},"deep":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, "", false},
	} {
		customer, event, ok := clear.readRefused([]byte(c.msg), ddl.EventTimeColumn(s.Kind))
		if customer != c.customer || ok != c.event || ok && !event.Equal(ts) {
			t.Errorf("%s: customer %q, event %v %v; want %q, %v", c.msg, customer, event, ok, c.customer, c.event)
		}
		customer, _, _ = hashed.readRefused([]byte(c.msg), ddl.EventTimeColumn(s.Kind))
		want := c.customer
		if want != "" {
			want = pipeline.HashPII(key, []byte(want))
		}
		if customer != want {
			t.Errorf("%s on a hashed stream: customer %q, want %q", c.msg, customer, want)
		}
	}
}

// TestClusterDeadLetterRetryStoresOnce: on a cluster a failed insert of dead-letter
// rows may have reached one shard only; the retry reads every shard's synced replica
// and writes only the rows none holds.
func TestClusterDeadLetterRetryStoresOnce(t *testing.T) {
	cfg := clusterLedgerConfig(t, 0, 1)
	db := cfg.ClickHouse.Database
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ddltest.ApplySchema(t, cfg)
	nodes := stacktest.NodeConns(t)
	at := time.Now().UTC().Truncate(time.Second)
	var rows []deadRow
	for i := range 8 {
		rows = append(rows, deadRow{customer: fmt.Sprintf("c%d", i), stream: "usage", reason: pipeline.ReasonMissingField,
			topic: "t", offset: int64(i), eventTime: at, at: at})
	}
	// The half-done write: three rows on shard 2 only.
	b, err := nodes[2].PrepareBatch(ctx, "INSERT INTO "+pipeline.QualifiedTable(db, pipeline.LocalTable(pipeline.DeadLettersTable))+
		" (`customer_id`, `source_topic`, `source_partition`, `source_offset`, `event_time`)")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows[2:5] {
		if err := b.Append(r.customer, r.topic, r.partition, r.offset, r.eventTime); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	rs := newReplicaSet(cfg.ClickHouse, nodes[0])
	defer rs.close()
	shards, err := rs.synced(ctx, pipeline.DeadLettersTable)
	if err != nil {
		t.Fatal(err)
	}
	left, err := deadRowsNotLanded(ctx, shards, db, rows)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 5 {
		t.Fatalf("%d rows left to write, want the 5 shard 2 does not hold", len(left))
	}
	if err := writeDeadRows(stacktest.SyncInserts(ctx), nodes[0], db, left); err != nil {
		t.Fatal(err)
	}
	syncAll(ctx, t, nodes, db, pipeline.DeadLettersTable)
	var n, distinct uint64
	if err := nodes[1].QueryRow(ctx, "SELECT count(), uniqExact(source_offset) FROM "+pipeline.QualifiedTable(db, pipeline.DeadLettersTable)).Scan(&n, &distinct); err != nil {
		t.Fatal(err)
	}
	if n != 8 || distinct != 8 {
		t.Errorf("%d rows over %d offsets, want 8 and 8", n, distinct)
	}
}
