package ingest

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr/testr"
	"github.com/segmentio/kafka-go"
)

// TestResumeFromLedgerSkipsUnrecordedRows sets up what a crash leaves behind: a batch
// recorded in the ledger (offsets 0-299), then part of a batch inserted but never recorded
// (300-349), and nothing committed to Kafka. A worker must trust the ledger over Kafka,
// skip exactly the rows already there, and land every other offset once.
func TestResumeFromLedgerSkipsUnrecordedRows(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	cfg := stacktest.SampleConfig()
	cfg.Streams = cfg.Streams[:1]
	cfg.Streams[0].Dimensions = nil
	s := cfg.Streams[0]
	cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: chAddr, Database: stacktest.UniqueName("test_ledger")}
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.Kafka.Brokers = stacktest.StartBroker(t, 1, s.Topic)
	cfg.Batch = pipeline.BatchConfig{MaxRows: 200, MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ch := ddltest.ApplySchema(t, cfg)

	// Events spread over two months, so that an insert writes several parts.
	var msgs []kafka.Message
	for i := range 1000 {
		ts := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 90 * time.Minute)
		msgs = append(msgs, kafka.Message{Value: []byte(fmt.Sprintf(
			`{"id":"e%d","customer":{"id":"c%d"},"product":"p","ts":%q,"qty":1}`, i, i%7, ts.Format(time.RFC3339)))})
	}
	stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, msgs)

	// The state a crash leaves: rows for 0-349, a ledger entry for 0-299 only.
	dec := mustDecoder(t, s)
	var rows [][]any
	for i := range 350 {
		row, err := dec.Decode(msgs[i].Value, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, append(row, s.Topic, int32(0), int64(i), time.Now().UTC().Truncate(time.Second), time.Now().UnixMilli()))
	}
	if err := ddl.InsertRows(ctx, ch, cfg.ClickHouse.Database, s, rows); err != nil {
		t.Fatal(err)
	}
	if err := writeLedger(ctx, ch, cfg.ClickHouse.Database, "before-crash", "test",
		map[topicPartition]*span{{s.Topic, 0}: {first: 0, last: 299, messages: 300}}, time.Now().UTC()); err != nil {
		t.Fatal(err)
	}

	w, err := NewWorker(ctx, cfg, testr.New(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	testkit.Eventually(t, time.Minute, "the ledger to reach offset 999", func() (bool, string) {
		var last int64
		err := ch.QueryRow(ctx, "SELECT max(last_offset) FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.LedgerTable)).Scan(&last)
		return err == nil && last == 999, fmt.Sprintf("last=%d err=%v", last, err)
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	var n, distinct uint64
	if err := ch.QueryRow(ctx, "SELECT count(), uniqExact(_offset) FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, s.Table())).Scan(&n, &distinct); err != nil {
		t.Fatal(err)
	}
	if n != 1000 || distinct != 1000 {
		t.Fatalf("%d rows with %d distinct offsets, want 1000 and 1000", n, distinct)
	}
	// The ledger now covers every offset exactly once.
	var covered uint64
	var minFirst int64
	if err := ch.QueryRow(ctx, "SELECT sum(messages), min(first_offset) FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.LedgerTable)).Scan(&covered, &minFirst); err != nil {
		t.Fatal(err)
	}
	if covered != 1000 || minFirst != 0 {
		t.Errorf("ledger covers %d messages from offset %d, want 1000 from 0", covered, minFirst)
	}
	assertCommitted(t, cfg, s.Topic, 1000)
}

// TestRecoveryReadsWaitForEarlierInserts: an insert the client gave up on may still be
// running on the server; a recovery read must wait until it is done (or it would write
// its rows again), and an unrelated table's insert must not hold it up.
func TestRecoveryReadsWaitForEarlierInserts(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	cfg := stacktest.SampleConfig()
	cfg.Streams = cfg.Streams[:1]
	s := cfg.Streams[0]
	cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: chAddr, Database: stacktest.UniqueName("test_await"),
		Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ch := ddltest.ApplySchema(t, cfg)
	db := cfg.ClickHouse.Database

	var done atomic.Bool
	finished := make(chan error, 1)
	go func() {
		err := ch.Exec(ctx, "INSERT INTO "+pipeline.QualifiedTable(db, s.Table())+" (event_id) SELECT 'slow' FROM numbers(1) WHERE sleep(2) = 0")
		done.Store(true)
		finished <- err
	}()
	testkit.Eventually(t, 10*time.Second, "the slow insert running", func() (bool, string) {
		var n uint64
		if err := ch.QueryRow(ctx, "SELECT count() FROM system.processes WHERE query LIKE 'INSERT INTO%sleep(2)%'").Scan(&n); err != nil {
			return false, err.Error()
		}
		return n > 0, fmt.Sprintf("%d running", n)
	})
	if err := awaitEarlierInserts(ctx, []driver.Conn{ch}, db, []string{pipeline.LedgerTable}, false); err != nil || done.Load() {
		t.Fatalf("waiting on the ledger: err %v, slow insert done %v; an insert into another table must not hold it up", err, done.Load())
	}
	if err := awaitEarlierInserts(ctx, []driver.Conn{ch}, db, []string{s.Table(), pipeline.LedgerTable}, false); err != nil {
		t.Fatal(err)
	}
	if !done.Load() {
		t.Fatal("awaitEarlierInserts returned while an insert begun before it was still running")
	}
	if err := <-finished; err != nil {
		t.Fatal(err)
	}
}
