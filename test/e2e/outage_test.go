package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// clickhouseServer runs hack/clickhouse.sh for a private server of this test, on its own
// port and data directory, so that the test can stop and start it.
func clickhouseServer(t *testing.T, port int, state string, args ...string) string {
	t.Helper()
	cmd := exec.Command("../../hack/clickhouse.sh", args...)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CLICKHOUSE_ADDR=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "CLICKHOUSE_PORT="+strconv.Itoa(port), "CLICKHOUSE_HTTP_PORT="+strconv.Itoa(port+1), "CUSTOMERLOOP_STATE="+state)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/clickhouse.sh %v: %v\n%s", args, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// TestClickHouseOutage stops ClickHouse for 30 s while a worker ingests, then starts it
// again: the worker must hold back, retry, and land every offset exactly once with no
// manual step, and every event must count once in the aggregates: a hand-made
// materialized view's totals, and per customer, product and month the feedback_actuals
// rollup, feedback_gaps and the raw usage by event id.
func TestClickHouseOutage(t *testing.T) {
	requireStack(t)
	const total = 40_000
	port, state := 19400, t.TempDir()
	addr := clickhouseServer(t, port, state)
	t.Cleanup(func() { clickhouseServer(t, port, state, "stop") })

	// The few plans take one partition: more would only slow every rebalance.
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "outage.usage"), kfake.SeedTopics(1, "outage.plans"), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cfg := pipeline.Config{
		Loop:       "e2e/outage",
		Kafka:      pipeline.KafkaConfig{Brokers: cluster.ListenAddrs(), Group: "outage"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: addr, Database: "outage"},
		Streams: []pipeline.StreamConfig{{
			Name: "usage", Kind: pipeline.KindUsage, Topic: "outage.usage", DeadLetterTopic: "outage.usage.dlq",
			Mapping: pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts", Quantity: "qty"},
		}, {
			Name: "plans", Kind: pipeline.KindPlan, Topic: "outage.plans", DeadLetterTopic: "outage.plans.dlq",
			Mapping: pipeline.Mapping{PlanID: "id", CustomerID: "customer", Product: "product", Period: "period", Quantity: "qty"},
		}},
		Batch: pipeline.BatchConfig{MaxRows: 2000, MaxWait: pipeline.Duration{Duration: 200 * time.Millisecond}},
	}
	fc := pipeline.FeedbackConfig{Database: cfg.ClickHouse.Database, UsageTable: "usage_raw", PlanTable: "plans_raw", Grain: pipeline.GrainMonth}
	cfg.Feedback = &fc
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ch := createSchema(t, cfg)
	if err := ch.Exec(ctx, "CREATE MATERIALIZED VIEW outage.rollup ENGINE = SummingMergeTree ORDER BY customer_id "+
		"AS SELECT customer_id, sum(quantity) AS qty, count() AS events FROM outage.usage_raw GROUP BY customer_id"); err != nil {
		t.Fatal(err)
	}
	ddltest.Feedback(t, ch, cfg, fc)
	ch.Close()
	// Plans for a month with usage and for one without, so that feedback_gaps joins
	// plans to actuals and has cells with a plan alone.
	plans := planMessages(30, "p1", "2026-11-01", "2026-12-01")
	produce(t, ctx, cfg.Kafka.Brokers, "outage.plans", plans)

	w, err := ingest.NewWorker(ctx, cfg, testr.New(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()

	wantQty, want := 0.0, ddltest.Actuals{}
	produced := make(chan error, 1)
	var msgs []kafka.Message
	for i := range total {
		// Three products over two months, so that there are cells to compare.
		c, p, ts := "c"+strconv.Itoa(i%30), "p"+strconv.Itoa(i%3), 1793449815+3*i
		wantQty += float64(i%5 + 1)
		want.Add(fc.Grain, c, p, time.Unix(int64(ts), 0), float64(i%5+1))
		msgs = append(msgs, kafka.Message{Key: []byte(c), Value: []byte(fmt.Sprintf(
			`{"id":"e%d","customer":%q,"product":%q,"ts":%d,"qty":%d}`, i, c, p, ts, i%5+1))})
	}
	go func() {
		pw := &kafka.Writer{Addr: kafka.TCP(cfg.Kafka.Brokers...), Topic: "outage.usage", Balancer: &kafka.Hash{},
			RequiredAcks: kafka.RequireAll, BatchTimeout: 2 * time.Millisecond}
		defer pw.Close()
		for i := 0; i < total; i += 1000 {
			if err := pw.WriteMessages(ctx, msgs[i:i+1000]...); err != nil {
				produced <- err
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
		produced <- nil
	}()

	time.Sleep(3 * time.Second)
	clickhouseServer(t, port, state, "stop")
	t.Log("ClickHouse stopped")
	time.Sleep(30 * time.Second)
	clickhouseServer(t, port, state)
	t.Log("ClickHouse started again")
	if err := <-produced; err != nil {
		t.Fatal(err)
	}

	ch, err = connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	const usageLedger = "SELECT sum(messages) FROM outage.customerloop_ledger WHERE topic = 'outage.usage'"
	const planLedger = "SELECT sum(messages) FROM outage.customerloop_ledger WHERE topic = 'outage.plans'"
	deadline := time.Now().Add(2 * time.Minute)
	for count(t, ch, usageLedger) < total || count(t, ch, planLedger) < uint64(len(plans)) {
		if time.Now().After(deadline) {
			t.Fatalf("the ledger covers %d of %d usage messages and %d of %d plans two minutes after ClickHouse came back",
				count(t, ch, usageLedger), total, count(t, ch, planLedger), len(plans))
		}
		time.Sleep(250 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("worker stopped with %v", err)
	}
	if n := count(t, ch, "SELECT count() FROM outage.usage_raw"); n != total {
		t.Errorf("raw rows = %d, want %d", n, total)
	}
	if n := count(t, ch, "SELECT uniqExact(_partition, _offset) FROM outage.usage_raw"); n != total {
		t.Errorf("distinct offsets = %d, want %d", n, total)
	}
	if n := count(t, ch, usageLedger); n != total {
		t.Errorf("the ledger covers %d messages, want exactly %d", n, total)
	}
	var qty float64
	var events uint64
	if err := ch.QueryRow(ctx, "SELECT sum(qty), sum(events) FROM outage.rollup").Scan(&qty, &events); err != nil {
		t.Fatal(err)
	}
	if qty != wantQty || events != total {
		t.Errorf("rollup: quantity %v over %d events, want %v over %d", qty, events, wantQty, total)
	}
	if n := count(t, ch, "SELECT uniqExact(plan_id) FROM outage.plans_raw"); n != uint64(len(plans)) {
		t.Errorf("%d plans stored, want %d", n, len(plans))
	}
	ddltest.CheckActualsOnce(t, ch, fc, want)
}
