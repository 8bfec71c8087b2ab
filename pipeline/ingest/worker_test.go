package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
)

// TestWorkerIngestsBothKinds runs a worker against the real broker and the real ClickHouse:
// every valid message lands once with its source coordinates, every bad one is in the
// dead-letter topic with its reason, and offsets are committed for all of them.
func TestWorkerIngestsBothKinds(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	cfg := stacktest.SampleConfig()
	cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: chAddr, Database: stacktest.UniqueName("test_worker")}
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.Batch = pipeline.BatchConfig{MaxRows: 500, MaxBytes: 64 << 10, MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}
	cfg.MaxMessageBytes = 4096
	usage, plans := cfg.Streams[0], cfg.Streams[1]
	cfg.Kafka.Brokers = stacktest.StartBroker(t, 3, usage.Topic, plans.Topic)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ch := ddltest.ApplySchema(t, cfg)

	// 2000 usage events over 5 customers and 3 products, 12 bad ones mixed in; 40 plans.
	rng := rand.New(rand.NewPCG(1, 2))
	var usageMsgs []kafka.Message
	wantQty := map[string]float64{}
	wantBad := map[pipeline.Reason]int{}
	for i := range 2000 {
		cust, prod := fmt.Sprintf("c%d", rng.IntN(5)), fmt.Sprintf("p%d", rng.IntN(3))
		qty := float64(rng.IntN(100)) / 4
		wantQty[cust+"/"+prod] += qty
		v := fmt.Sprintf(`{"id":"e%d","customer":{"id":%q},"product":%q,"ts":%d,"qty":%v,"region":"eu","bytes":%d,"trial":%t}`,
			i, cust, prod, 1793449815000+int64(i)*1000, qty, i, i%2 == 0)
		usageMsgs = append(usageMsgs, kafka.Message{Key: []byte(cust), Value: []byte(v)})
		if i%200 == 0 {
			bad := []struct {
				v string
				r pipeline.Reason
			}{
				{`{"id":"x","customer":{"id":"c"},`, pipeline.ReasonInvalidJSON},
				{`{"id":"x","product":"p","ts":1,"region":"eu","bytes":1,"trial":true}`, pipeline.ReasonMissingField},
			}[i/200%2]
			usageMsgs = append(usageMsgs, kafka.Message{Key: []byte(cust), Value: []byte(bad.v)})
			wantBad[bad.r]++
		}
	}
	var planMsgs []kafka.Message
	for i := range 40 {
		v := fmt.Sprintf(`{"plan_id":"p%d","customer":"c%d","product":"p%d","period":"2027-0%d-01","quantity":%d,"confidence":0.9}`,
			i, i%5, i%3, 1+i%6, 100+i)
		planMsgs = append(planMsgs, kafka.Message{Key: []byte(strconv.Itoa(i % 5)), Value: []byte(v)})
	}
	planMsgs = append(planMsgs, kafka.Message{Value: []byte(`{"plan_id":"bad","customer":"c","product":"p","period":"2027-01-01","quantity":-1}`)})
	wantBad[pipeline.ReasonOutOfRange]++
	planMsgs = append(planMsgs, kafka.Message{Value: []byte(`{"plan_id":"big","customer":"c","product":"p","period":"2027-01-01","quantity":1,"note":"` +
		strings.Repeat("x", 5000) + `"}`)})
	wantBad[pipeline.ReasonOversize]++

	stacktest.Produce(t, cfg.Kafka.Brokers, usage.Topic, usageMsgs[:1000])
	stacktest.Produce(t, cfg.Kafka.Brokers, plans.Topic, planMsgs)

	metrics := NewMetrics(prometheus.NewRegistry())
	w, err := NewWorker(ctx, cfg, testr.New(t), metrics)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	done := make(chan error, 1)
	wctx, stop := context.WithCancel(ctx)
	go func() { done <- w.Run(wctx) }()

	// The second half arrives while the worker runs, with a producer's retries of 25
	// events already sent (same key, same id): they must not be stored again.
	retries := append([]kafka.Message(nil), usageMsgs[100:125]...) // no malformed message among them
	stacktest.Produce(t, cfg.Kafka.Brokers, usage.Topic, usageMsgs[1000:])
	stacktest.Produce(t, cfg.Kafka.Brokers, usage.Topic, retries)

	testkit.Eventually(t, time.Minute, "all valid rows in ClickHouse", func() (bool, string) {
		u, err1 := StreamStats(ctx, ch, cfg.ClickHouse.Database, usage)
		p, err2 := StreamStats(ctx, ch, cfg.ClickHouse.Database, plans)
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		return u.Rows >= 2000 && p.Rows >= 40, fmt.Sprintf("usage %d/2000, plans %d/40", u.Rows, p.Rows)
	})
	testkit.Eventually(t, time.Minute, "the retries to be read", func() (bool, string) {
		n := testutil.ToFloat64(metrics.Discarded.WithLabelValues(cfg.Loop, "usage", "duplicate"))
		return n == 25, fmt.Sprintf("%v duplicates", n)
	})
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v after a clean stop", err)
	}

	// Exactly the valid rows, each offset once, with the produced quantities.
	var rows, distinct uint64
	if err := ch.QueryRow(ctx, "SELECT count(), uniqExact(_topic, _partition, _offset) FROM "+
		pipeline.QualifiedTable(cfg.ClickHouse.Database, usage.Table())).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != 2000 || distinct != 2000 {
		t.Errorf("usage rows = %d, distinct offsets = %d, want 2000 and 2000", rows, distinct)
	}
	got := map[string]float64{}
	r, err := ch.Query(ctx, "SELECT customer_id, product, sum(quantity) FROM "+
		pipeline.QualifiedTable(cfg.ClickHouse.Database, usage.Table())+" GROUP BY customer_id, product")
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var c, p string
		var q float64
		if err := r.Scan(&c, &p, &q); err != nil {
			t.Fatal(err)
		}
		got[c+"/"+p] = q
	}
	r.Close()
	for k, want := range wantQty {
		if got[k] != want {
			t.Errorf("sum(quantity) for %s = %v, want %v", k, got[k], want)
		}
	}
	var planRows uint64
	var conf float64
	if err := ch.QueryRow(ctx, "SELECT count(), min(assumeNotNull(confidence)) FROM "+
		pipeline.QualifiedTable(cfg.ClickHouse.Database, plans.Table())).Scan(&planRows, &conf); err != nil {
		t.Fatal(err)
	}
	if planRows != 40 || conf != 0.9 {
		t.Errorf("plans: %d rows, min confidence %v; want 40 and 0.9", planRows, conf)
	}

	// Every bad message is in its dead-letter topic with reason and source coordinates.
	gotBad := map[pipeline.Reason]int{}
	for _, topic := range []string{usage.DeadLetterTopic, plans.DeadLetterTopic} {
		for _, m := range testkit.ReadTopic(t, cfg.Kafka.Brokers, topic) {
			h := map[string]string{}
			for _, x := range m.Headers {
				h[x.Key] = string(x.Value)
			}
			if h["customerloop.source.topic"] == "" || h["customerloop.source.offset"] == "" || h["customerloop.error"] == "" {
				t.Errorf("dead letter without source or error headers: %v", h)
			}
			gotBad[pipeline.Reason(h["customerloop.reason"])]++
		}
	}
	for reason, n := range wantBad {
		if gotBad[reason] != n {
			t.Errorf("dead letters with reason %s = %d, want %d (all: %v)", reason, gotBad[reason], n, gotBad)
		}
	}

	// The ledger accounts for every message: rows, dead letters and duplicates.
	lt, err := ReadLedgerTotals(ctx, ch, cfg.ClickHouse.Database, usage.Topic)
	if err != nil {
		t.Fatal(err)
	}
	usageBad := int64(wantBad[pipeline.ReasonInvalidJSON] + wantBad[pipeline.ReasonMissingField])
	if lt.Messages != int64(len(usageMsgs)+len(retries)) || lt.DeadLettered != usageBad || lt.Duplicates != 25 {
		t.Errorf("ledger of %s: %+v, want %d messages, %d dead-lettered, 25 duplicates", usage.Topic, lt, len(usageMsgs)+len(retries), usageBad)
	}

	// The metrics tell the same story.
	loop := cfg.Loop
	for _, c := range []struct {
		what string
		got  float64
		want int
	}{
		{"received usage", testutil.ToFloat64(metrics.ReceivedEvents.WithLabelValues(loop, "usage")), len(usageMsgs) + len(retries)},
		{"received plans", testutil.ToFloat64(metrics.ReceivedEvents.WithLabelValues(loop, "plans")), len(planMsgs)},
		{"sent usage", testutil.ToFloat64(metrics.SentEvents.WithLabelValues(loop, "usage")), 2000},
		{"sent plans", testutil.ToFloat64(metrics.SentEvents.WithLabelValues(loop, "plans")), 40},
		{"dead-lettered invalid_json", testutil.ToFloat64(metrics.DeadLettered.WithLabelValues(loop, "usage", "invalid_json")), wantBad[pipeline.ReasonInvalidJSON]},
		{"dead-lettered missing_field", testutil.ToFloat64(metrics.DeadLettered.WithLabelValues(loop, "usage", "missing_field")), wantBad[pipeline.ReasonMissingField]},
		{"dead-lettered out_of_range", testutil.ToFloat64(metrics.DeadLettered.WithLabelValues(loop, "plans", "out_of_range")), wantBad[pipeline.ReasonOutOfRange]},
		{"dead-lettered oversize", testutil.ToFloat64(metrics.DeadLettered.WithLabelValues(loop, "plans", "oversize")), wantBad[pipeline.ReasonOversize]},
	} {
		if int(c.got) != c.want {
			t.Errorf("metric %s = %v, want %d", c.what, c.got, c.want)
		}
	}
	if n := testutil.CollectAndCount(metrics.Freshness); n != 4 {
		t.Errorf("freshness has %d series, want event and receive clocks for both streams", n)
	}

	// Offsets are committed past every message, good and bad.
	assertCommitted(t, cfg, usage.Topic, int64(len(usageMsgs)+len(retries)))

	// A new worker remembers what the last one ingested: more retries of the same events
	// are still recognised.
	stacktest.Produce(t, cfg.Kafka.Brokers, usage.Topic, usageMsgs[210:220]) // no malformed message among them
	again := NewMetrics(prometheus.NewRegistry())
	w2, err := NewWorker(ctx, cfg, testr.New(t), again)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	wctx, stop = context.WithCancel(ctx)
	go func() { done <- w2.Run(wctx) }()
	testkit.Eventually(t, time.Minute, "the new worker to read the retries", func() (bool, string) {
		n := testutil.ToFloat64(again.Discarded.WithLabelValues(cfg.Loop, "usage", "duplicate"))
		return n == 10, fmt.Sprintf("%v duplicates", n)
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := ch.QueryRow(ctx, "SELECT count(), uniqExact(event_id) FROM "+
		pipeline.QualifiedTable(cfg.ClickHouse.Database, usage.Table())).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != 2000 || distinct != 2000 {
		t.Errorf("after the retries: %d usage rows, %d distinct event ids; want 2000 and 2000", rows, distinct)
	}
	assertCommitted(t, cfg, plans.Topic, int64(len(planMsgs)))
}

func assertCommitted(t *testing.T, cfg pipeline.Config, topic string, want int64) {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(cfg.Kafka.Brokers...)}
	resp, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{
		GroupID: cfg.Kafka.Group, Topics: map[string][]int{topic: {0, 1, 2}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, p := range resp.Topics[topic] {
		if p.CommittedOffset > 0 {
			sum += p.CommittedOffset
		}
	}
	if sum != want {
		t.Errorf("committed offsets of %s sum to %d, want %d", topic, sum, want)
	}
}

// TestCleanStopWritesWhatWasRead: a worker stopped while it writes batches back to back
// still writes, records and commits every message it read: the batch being written,
// those handed over and the one being filled. None is left for the next owner to read
// again.
func TestCleanStopWritesWhatWasRead(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	cfg := stacktest.SampleConfig()
	cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: chAddr, Database: stacktest.UniqueName("test_stop")}
	cfg.Kafka.Group = stacktest.UniqueName("group")
	// Small batches, written as fast as they fill: a stop almost always finds one being
	// written.
	cfg.Batch = pipeline.BatchConfig{MaxRows: 200, MaxBytes: 64 << 10, MaxWait: pipeline.Duration{Duration: 5 * time.Millisecond}}
	usage := cfg.Streams[0]
	cfg.Kafka.Brokers = stacktest.StartBroker(t, 3, usage.Topic, cfg.Streams[1].Topic)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ch := ddltest.ApplySchema(t, cfg)
	var msgs []kafka.Message
	for i := range 30000 {
		cust := fmt.Sprintf("c%d", i%7)
		msgs = append(msgs, kafka.Message{Key: []byte(cust), Value: fmt.Appendf(nil,
			`{"id":"e%d","customer":{"id":%q},"product":"p","ts":%d,"qty":1,"region":"eu","bytes":1,"trial":true}`, i, cust, 1793449815000+int64(i))})
	}
	stacktest.Produce(t, cfg.Kafka.Brokers, usage.Topic, msgs)

	metrics := NewMetrics(prometheus.NewRegistry())
	stop := runWorker(t, ctx, cfg, metrics)
	testkit.Eventually(t, time.Minute, "a third of the messages written", func() (bool, string) {
		lt, err := ReadLedgerTotals(ctx, ch, cfg.ClickHouse.Database, usage.Topic)
		return err == nil && lt.Messages >= 10000, fmt.Sprint(lt.Messages, err)
	})
	stop()
	received := int64(testutil.ToFloat64(metrics.ReceivedEvents.WithLabelValues(cfg.Loop, "usage")))
	lt, err := ReadLedgerTotals(ctx, ch, cfg.ClickHouse.Database, usage.Topic)
	if err != nil {
		t.Fatal(err)
	}
	var rows uint64
	if err := ch.QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, usage.Table())).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if lt.Messages != received || int64(rows) != received || received == int64(len(msgs)) {
		t.Errorf("the worker read %d of %d messages before it stopped; the ledger records %d and the table holds %d rows: "+
			"it must write everything it read", received, len(msgs), lt.Messages, rows)
	}
	assertCommitted(t, cfg, usage.Topic, received)
}
