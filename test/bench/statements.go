package main

// The channel publisher's figures: statements to a topic per customer against one keyed
// topic, for 100 and 100,000 customers.

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// statementCustomers are the loop sizes the channel publisher is timed at.
var statementCustomers = []int{100, 100_000}

// statementsSection times, for each size, in a database of its own with one product and
// three months of plans and usage per customer: the publisher's first round (every
// customer's every period) and a round after one customer's late event, each to a topic
// per customer ("topics") and to one keyed topic of 12 partitions ("keyed"), on a broker
// of its own in this process. It reports the rounds' milliseconds, the broker's topics
// and partitions, and the Go heap in use after the first round (the broker's topics and
// messages, and the publisher's state).
func statementsSection(ctx context.Context, o options, ch driver.Conn, db string) ([]figure, error) {
	var figs []figure
	for _, n := range statementCustomers {
		for _, mode := range []string{"topics", "keyed"} {
			f, err := statementRounds(ctx, o, ch, fmt.Sprintf("%s_st_%d_%s", db, n, mode), n, mode)
			if err != nil {
				return nil, fmt.Errorf("statements, %d customers, %s: %w", n, mode, err)
			}
			figs = append(figs, f...)
		}
	}
	return figs, nil
}

func statementRounds(ctx context.Context, o options, ch driver.Conn, db string, n int, mode string) ([]figure, error) {
	defer ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db))
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1)}
	if mode == "keyed" {
		opts = append(opts, kfake.SeedTopics(12, "bench.statements"))
	}
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	cfg, fc := feedbackLoop(o.clickhouse, db, brokers)
	if err := createFeedback(ctx, ch, &cfg, fc); err != nil {
		return nil, err
	}
	first := feedback.PeriodStart(pipeline.GrainMonth, time.Now().UTC().AddDate(0, -2, 0))
	step("statements: %d customers, %s: one product, plans and usage of three months", n, mode)
	if err := ch.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (plan_id, customer_id, product, period, quantity, submitted_at, _topic, _partition, _offset, _ingested_at, _produced_at_ms)
SELECT concat('plan-', toString(number)), concat('customer-', toString(intDiv(number, 3))), 'product-0',
    addMonths(toDate('%s'), toInt32(number %% 3)) AS period, toFloat64(100 + number %% 50), toDateTime(addMonths(period, -1)),
    'bench.fb.plans', toInt32(0), toInt64(number), now(), toInt64(0) FROM numbers(%d)`,
		pipeline.QualifiedTable(db, "plans_raw"), first.Format(time.DateOnly), 3*n)); err != nil {
		return nil, err
	}
	if err := ch.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (event_id, customer_id, product, ts, quantity, _topic, _partition, _offset, _ingested_at, _produced_at_ms)
SELECT concat('evt-', toString(number)), concat('customer-', toString(intDiv(number, 6))), 'product-0',
    least(toDateTime(addMonths(toDate('%s'), toInt32(intDiv(number %% 6, 2)))) + 86400 + number %% 86400, now() - 60),
    toFloat64(1 + number %% 90), 'bench.fb.usage', toInt32(0), toInt64(number), now(), toInt64(0) FROM numbers(%d)`,
		pipeline.QualifiedTable(db, "usage_raw"), first.Format(time.DateOnly), 6*n)); err != nil {
		return nil, err
	}
	topic := "bench.customer.{customer}.statements"
	if mode == "keyed" {
		topic = "bench.statements"
	}
	pub, err := feedback.NewChannelPublisher(pipeline.StatementConfig{Loop: cfg.Loop, Kafka: pipeline.KafkaConfig{Brokers: brokers},
		Topic: topic, Feedback: fc, Publisher: "bench"}, ch, logr.Discard())
	if err != nil {
		return nil, err
	}
	defer pub.Close()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heap0 := ms.HeapInuse
	t0 := time.Now()
	res, err := pub.PublishOnce(ctx)
	if err != nil {
		return nil, err
	}
	firstMs := float64(time.Since(t0).Microseconds()) / 1000
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapMiB := float64(int64(ms.HeapInuse)-int64(heap0)) / (1 << 20)
	// One customer's late event in the first month.
	if err := ch.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (event_id, customer_id, product, ts, quantity, _topic, _partition, _offset, _ingested_at, _produced_at_ms)
SELECT 'evt-late', 'customer-7', 'product-0', toDateTime(toDate('%s')) + 3600, toFloat64(5), 'bench.fb.usage', toInt32(0), toInt64(%d), now(), toInt64(0)`,
		pipeline.QualifiedTable(db, "usage_raw"), first.Format(time.DateOnly), 6*n)); err != nil {
		return nil, err
	}
	t0 = time.Now()
	late, err := pub.PublishOnce(ctx)
	if err != nil {
		return nil, err
	}
	lateMs := float64(time.Since(t0).Microseconds()) / 1000
	conn, err := kafka.Dial("tcp", brokers[0])
	if err != nil {
		return nil, err
	}
	parts, err := conn.ReadPartitions()
	_ = conn.Close()
	if err != nil {
		return nil, err
	}
	topics := map[string]bool{}
	for _, p := range parts {
		topics[p.Topic] = true
	}
	step("statements: %d customers, %s: first round %d statements in %.0f ms, heap +%.0f MiB; a late event: %d statements in %.0f ms; %d topics, %d partitions",
		n, mode, res.Statements, firstMs, heapMiB, late.Statements, lateMs, len(topics), len(parts))
	key := fmt.Sprintf("statements_%s_%d", mode, n)
	what := map[string]string{"topics": "a topic per customer", "keyed": "one keyed topic"}[mode]
	return []figure{
		{key: key + "_first_round_ms", label: fmt.Sprintf("%d customers, %s: the first round, %d statements (ms)", n, what, res.Statements), value: firstMs},
		{key: key + "_late_round_ms", label: fmt.Sprintf("%d customers, %s: a round after one late event, %d statements (ms)", n, what, late.Statements), value: lateMs},
		{key: key + "_broker_topics", label: fmt.Sprintf("%d customers, %s: topics on the broker", n, what), value: float64(len(topics))},
		{key: key + "_broker_partitions", label: fmt.Sprintf("%d customers, %s: partitions on the broker", n, what), value: float64(len(parts))},
		{key: key + "_heap_mib", label: fmt.Sprintf("%d customers, %s: Go heap after the first round, broker included (MiB)", n, what), value: heapMiB},
	}, nil
}
