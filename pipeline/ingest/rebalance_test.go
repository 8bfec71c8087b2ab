package ingest

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/go-logr/logr/testr"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// TestWorkersJoinAndLeave runs up to three workers in one consumer group of a loop with
// feedback, joining and leaving while messages arrive, and checks that every offset
// landed exactly once and that every event counts once per customer, product and month
// in the feedback_actuals rollup and feedback_gaps, as in the raw usage by event id.
func TestWorkersJoinAndLeave(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	const total = 60_000
	// The few plans take one partition: more would only slow every rebalance.
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(6, "rb.usage"), kfake.SeedTopics(1, "rb.plans"),
		kfake.AllowAutoTopicCreation(), kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cfg := pipeline.Config{
		Loop: "test/rebalance",
		Kafka: pipeline.KafkaConfig{Brokers: cluster.ListenAddrs(), Group: stacktest.UniqueName("rb"),
			SessionTimeout: pipeline.Duration{Duration: 2 * time.Second}, RebalanceTimeout: pipeline.Duration{Duration: 6 * time.Second}},
		ClickHouse: pipeline.ClickHouseConfig{Addr: chAddr, Database: stacktest.UniqueName("test_rebalance")},
		Streams: []pipeline.StreamConfig{{
			Name: "usage", Kind: pipeline.KindUsage, Topic: "rb.usage", DeadLetterTopic: "rb.usage.dlq",
			Mapping: pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts", Quantity: "qty"},
		}, {
			Name: "plans", Kind: pipeline.KindPlan, Topic: "rb.plans", DeadLetterTopic: "rb.plans.dlq",
			Mapping: pipeline.Mapping{PlanID: "id", CustomerID: "customer", Product: "product", Period: "period", Quantity: "qty"},
		}},
		Batch: pipeline.BatchConfig{MaxRows: 2000, MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}},
	}
	fc := pipeline.FeedbackConfig{Database: cfg.ClickHouse.Database, UsageTable: "usage_raw", PlanTable: "plans_raw", Grain: pipeline.GrainMonth}
	cfg.Feedback = &fc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The rollup behind feedback_actuals and the views, before any worker.
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	// Plans for a month with usage and for one without, so that feedback_gaps joins
	// plans to actuals and has cells with a plan alone.
	var plans []kafka.Message
	for i := range 40 {
		for _, period := range []string{"2026-11-01", "2026-12-01"} {
			plans = append(plans, kafka.Message{Key: []byte("c" + strconv.Itoa(i)), Value: []byte(fmt.Sprintf(
				`{"id":"pl%d-%s","customer":"c%d","product":"p1","period":%q,"qty":1000}`, i, period, i, period))})
		}
	}
	stacktest.Produce(t, cfg.Kafka.Brokers, "rb.plans", plans)

	produced := make(chan struct{})
	wantQty, want := 0.0, ddltest.Actuals{}
	var msgs []kafka.Message
	for i := range total {
		// Two products over two months (the last of October and the first of November).
		c, p, ts := "c"+strconv.Itoa(i%40), "p"+strconv.Itoa(i%2), 1793449815+i
		wantQty += float64(i % 7)
		want.Add(fc.Grain, c, p, time.Unix(int64(ts), 0), float64(i%7))
		msgs = append(msgs, kafka.Message{Key: []byte(c), Value: []byte(fmt.Sprintf(
			`{"id":"e%d","customer":%q,"product":%q,"ts":%d,"qty":%d}`, i, c, p, ts, i%7))})
	}
	go func() {
		defer close(produced)
		for i := 0; i < total; i += 1000 {
			stacktest.Produce(t, cfg.Kafka.Brokers, "rb.usage", msgs[i:i+1000])
			time.Sleep(100 * time.Millisecond)
		}
	}()

	type running struct {
		stop context.CancelFunc
		done chan error
	}
	startWorker := func(name string) running {
		w, err := NewWorker(ctx, cfg, testr.New(t).WithName(name), nil)
		if err != nil {
			t.Fatal(err)
		}
		wctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx); w.Close() }()
		return running{stop, done}
	}
	stopWorker := func(r running) {
		r.stop()
		if err := <-r.done; err != nil {
			t.Errorf("worker stopped with %v", err)
		}
	}
	rows := func() uint64 {
		var n uint64
		_ = ch.QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, "usage_raw")).Scan(&n)
		return n
	}

	a := startWorker("a")
	time.Sleep(1500 * time.Millisecond)
	b := startWorker("b")
	time.Sleep(1500 * time.Millisecond)
	c := startWorker("c")
	time.Sleep(1500 * time.Millisecond)
	t.Logf("three workers: %d rows", rows())
	stopWorker(a)
	time.Sleep(1500 * time.Millisecond)
	stopWorker(b)
	t.Logf("one worker left: %d rows", rows())
	d := startWorker("d")
	<-produced
	plansStored := func() uint64 {
		var n uint64
		_ = ch.QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, "plans_raw")).Scan(&n)
		return n
	}
	testkit.Eventually(t, 2*time.Minute, "all rows", func() (bool, string) {
		n, p := rows(), plansStored()
		return n >= total && p >= uint64(len(plans)), fmt.Sprintf("%d/%d rows, %d/%d plans", n, total, p, len(plans))
	})
	stopWorker(c)
	stopWorker(d)

	var n, distinct uint64
	var qty float64
	if err := ch.QueryRow(ctx, "SELECT count(), uniqExact(_partition, _offset), sum(quantity) FROM "+
		pipeline.QualifiedTable(cfg.ClickHouse.Database, "usage_raw")).Scan(&n, &distinct, &qty); err != nil {
		t.Fatal(err)
	}
	if n != total || distinct != total || qty != wantQty {
		t.Errorf("%d rows, %d distinct offsets, quantity %v; want %d, %d, %v", n, distinct, qty, total, total, wantQty)
	}
	var ledger uint64
	if err := ch.QueryRow(ctx, "SELECT sum(messages) FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.LedgerTable)).Scan(&ledger); err != nil {
		t.Fatal(err)
	}
	if ledger != total+uint64(len(plans)) {
		t.Errorf("the ledger covers %d messages, want %d usage events and %d plans", ledger, total, len(plans))
	}
	if n := plansStored(); n != uint64(len(plans)) {
		t.Errorf("%d plan rows, want %d", n, len(plans))
	}
	ddltest.CheckActualsOnce(t, ch, fc, want)
}
