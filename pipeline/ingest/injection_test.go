package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// messageCorpus holds values that would change a statement if any reached SQL as text,
// or that a careless encoder would alter: quotes, backticks, comments and statement
// separators naming the very table they land in, control characters, NUL, escapes,
// Unicode beyond the BMP, a byte that is not UTF-8, and the longest id allowed.
var messageCorpus = []string{
	"plain",
	"it's",
	"`backtick`",
	`"double"`,
	"x'); DROP TABLE usage_raw; --",
	"x`; DROP DATABASE system; --",
	"1; SELECT * FROM system.users",
	"/* comment */ x -- y",
	"line\nbreak\r\ntab\there",
	"nul\x00byte",
	`back\slash\`,
	"\\N",
	"{{template}} ${var} %s %n",
	"emoji 🚀 combining é RTL \u202e x \u2028",
	"invalid utf8 \xff\xfe",
	strings.Repeat("9", 256),
}

// runWorker runs a worker on cfg, counting into metrics (nil: its own), until stop is
// called; stop waits for it to return and fails the test if it returns an error.
func runWorker(t *testing.T, ctx context.Context, cfg pipeline.Config, metrics *Metrics) (stop func()) {
	t.Helper()
	if metrics == nil {
		metrics = NewMetrics(prometheus.NewRegistry())
	}
	w, err := NewWorker(ctx, cfg, testr.New(t), metrics)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
		_ = w.Close()
	}
}

func rawRows(t *testing.T, ch driver.Conn, cfg pipeline.Config, s pipeline.StreamConfig, cols string) [][]string {
	t.Helper()
	r, err := ch.Query(context.Background(), "SELECT "+cols+" FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, s.Table())+" ORDER BY _offset")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out [][]string
	n := len(strings.Split(cols, ","))
	for r.Next() {
		row := make([]string, n)
		ptrs := make([]any, n)
		for i := range row {
			ptrs[i] = &row[i]
		}
		if err := r.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		out = append(out, row)
	}
	return out
}

// TestMessageValuesStoredAsData sends the corpus as ids, customers, products and a
// String dimension through the real broker and worker into the real ClickHouse, and
// reads every value back byte for byte: values travel as data in native batches and
// never become SQL, so the fragments naming the raw table drop nothing.
func TestMessageValuesStoredAsData(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	cfg := stacktest.SampleConfig()
	cfg.Streams = cfg.Streams[:1]
	usage := cfg.Streams[0]
	cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: chAddr, Database: stacktest.UniqueName("test_inject")}
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.Kafka.Brokers = stacktest.StartBroker(t, 1, usage.Topic)
	cfg.Batch = pipeline.BatchConfig{MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}
	ch := ddltest.ApplySchema(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var msgs []kafka.Message
	var want [][]string
	for i, v := range messageCorpus {
		id := fmt.Sprintf("%d:%s", i, v)
		if len(id) > pipeline.MaxIDLength {
			id = id[:pipeline.MaxIDLength]
		}
		enc := func(s string) string {
			// encoding/json would replace the invalid bytes; write them raw, which the JSON
			// parser takes as they are.
			b, _ := json.Marshal(strings.ReplaceAll(s, "\xff\xfe", "INVALID"))
			return strings.ReplaceAll(string(b), "INVALID", "\xff\xfe")
		}
		msg := fmt.Sprintf(`{"id":%s,"customer":{"id":%s},"product":%s,"ts":1793449815,"region":%s,"bytes":1,"trial":false}`,
			enc(id), enc(v), enc(v), enc(v))
		msgs = append(msgs, kafka.Message{Value: []byte(msg)})
		want = append(want, []string{id, v, v, v})
	}
	stacktest.Produce(t, cfg.Kafka.Brokers, usage.Topic, msgs)
	stop := runWorker(t, ctx, cfg, nil)
	testkit.Eventually(t, time.Minute, "every corpus message stored", func() (bool, string) {
		s, err := StreamStats(ctx, ch, cfg.ClickHouse.Database, usage)
		if err != nil {
			return false, err.Error()
		}
		return s.Rows >= int64(len(want)), fmt.Sprintf("%d/%d rows", s.Rows, len(want))
	})
	stop()
	got := rawRows(t, ch, cfg, usage, "event_id, customer_id, product, region")
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	for i := range want {
		for j := range want[i] {
			if got[i][j] != want[i][j] {
				t.Errorf("row %d column %d = %q, want %q", i, j, got[i][j], want[i][j])
			}
		}
	}
	var tables uint64
	if err := ch.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = ?",
		cfg.ClickHouse.Database, usage.Table()).Scan(&tables); err != nil || tables != 1 {
		t.Errorf("the raw table after the corpus: %d tables, err %v", tables, err)
	}
}

// TestWorkerPII runs a worker on a stream with PII fields through the real broker into
// the real ClickHouse: stored rows hold the hashes (the same for plans and usage of one
// customer) and empty dropped columns; the dead-letter topic holds no clear value, a
// rewritten body for a parseable message and the withheld placeholder otherwise.
func TestWorkerPII(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	cfg := piiConfig()
	usage, plans := cfg.Streams[0], cfg.Streams[1]
	cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: chAddr, Database: stacktest.UniqueName("test_pii")}
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.Kafka.Brokers = stacktest.StartBroker(t, 1, usage.Topic, plans.Topic)
	cfg.Batch = pipeline.BatchConfig{MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}
	ch := ddltest.ApplySchema(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const email, phone, customer = "carol@example.com", "+33 1 99 00 00 00", "cust-carol"
	good := `{"id":"evt-carol-1","customer":{"id":"` + customer + `"},"product":"api","ts":1793449815,"region":"eu","bytes":1,"trial":true,` +
		`"contact":{"email":"` + email + `","phone":"` + phone + `"},"age":41}`
	badTS := strings.Replace(good, `"ts":1793449815`, `"ts":"yesterday"`, 1)
	broken := good[:len(good)-5]
	stacktest.Produce(t, cfg.Kafka.Brokers, usage.Topic, []kafka.Message{
		{Key: []byte(customer), Value: []byte(good)},
		{Key: []byte(customer), Value: []byte(badTS)},
		{Key: []byte(customer), Value: []byte(broken)},
	})
	stacktest.Produce(t, cfg.Kafka.Brokers, plans.Topic, []kafka.Message{{Key: []byte(customer),
		Value: []byte(`{"plan_id":"p1","customer":"` + customer + `","product":"api","period":"2027-01-01","quantity":5}`)}})
	stop := runWorker(t, ctx, cfg, nil)
	var dead []kafka.Message
	testkit.Eventually(t, time.Minute, "the rows and the dead letters", func() (bool, string) {
		u, err1 := StreamStats(ctx, ch, cfg.ClickHouse.Database, usage)
		p, err2 := StreamStats(ctx, ch, cfg.ClickHouse.Database, plans)
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		dead = testkit.ReadTopic(t, cfg.Kafka.Brokers, usage.DeadLetterTopic)
		return u.Rows == 1 && p.Rows == 1 && len(dead) == 2, fmt.Sprintf("usage %d, plans %d, dead letters %d", u.Rows, p.Rows, len(dead))
	})
	stop()

	hashed := pipeline.HashPII(cfg.HMACKey, []byte(customer))
	row := rawRows(t, ch, cfg, usage, "event_id, customer_id, email, toString(isNull(phone)), toString(age)")[0]
	wantRow := []string{pipeline.HashPII(cfg.HMACKey, []byte("evt-carol-1")), hashed, pipeline.HashPII(cfg.HMACKey, []byte(email)), "1", "0"}
	if strings.Join(row, "|") != strings.Join(wantRow, "|") {
		t.Errorf("usage row %q, want %q", row, wantRow)
	}
	var joined uint64
	if err := ch.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s AS u ANY INNER JOIN %s AS p USING customer_id",
		pipeline.QualifiedTable(cfg.ClickHouse.Database, usage.Table()), pipeline.QualifiedTable(cfg.ClickHouse.Database, plans.Table()))).Scan(&joined); err != nil || joined != 1 {
		t.Errorf("usage joined to plans on the hashed customer: %d rows, err %v; want 1", joined, err)
	}
	for _, m := range dead {
		all := string(m.Key) + string(m.Value)
		for _, h := range m.Headers {
			all += h.Key + "=" + string(h.Value)
		}
		for _, clear := range []string{email, phone, customer, "evt-carol-1", `"age"`} {
			if strings.Contains(all, clear) {
				t.Errorf("dead letter at offset %s carries %q: %s", header(m, "customerloop.source.offset"), clear, all)
			}
		}
		switch header(m, "customerloop.reason") {
		case string(pipeline.ReasonWrongType):
			if header(m, HeaderPII) != "rewritten" || !strings.Contains(string(m.Value), hashed) {
				t.Errorf("the dead letter of a bad time was not rewritten: %s", m.Value)
			}
		case string(pipeline.ReasonInvalidJSON):
			if header(m, HeaderWithheld) != "invalid_json" || string(m.Value) != string(WithheldBody) {
				t.Errorf("the dead letter of broken JSON was not withheld: %q %q", header(m, HeaderWithheld), m.Value)
			}
		default:
			t.Errorf("unexpected dead letter %s", header(m, "customerloop.reason"))
		}
	}
	// Their rows of dead_letters: the bad time under the hashed customer, the broken
	// JSON under none; the clear id nowhere.
	got := strings.Join(deadLetterRows(t, ctx, cfg), "\n")
	if want := "|usage|invalid_json|2|"; !strings.Contains(got, want) || !strings.Contains(got, hashed+"|usage|wrong_type|1|") || strings.Contains(got, customer) {
		t.Errorf("dead_letters rows of the PII stream:\n%s", got)
	}
}
