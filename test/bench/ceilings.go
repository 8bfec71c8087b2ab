package main

// The ceilings around CustomerLoop: ClickHouse's Kafka engine and a bare consume loop
// (the server's own ceiling, the Native insert, is in native.go).

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"customerloop.dev/customerloop/pipeline"
)

// kafkaEngine lets ClickHouse's Kafka table engine drain the topic through a materialized
// view into a table of the same columns as the raw table (without the source columns the
// engine cannot fill on every version). group is the engine's consumer group: a new one
// for every round, so that each drains the whole topic.
func kafkaEngine(ctx context.Context, ch driver.Conn, brokers []string, db, group string, s pipeline.StreamConfig, o options) (float64, error) {
	// A new group of the engine starts at the end of the topic: commit the start first.
	offsets := map[string][]kafka.OffsetCommit{}
	for p := range o.partitions {
		offsets["bench.usage"] = append(offsets["bench.usage"], kafka.OffsetCommit{Partition: p, Offset: 0})
	}
	kc := &kafka.Client{Addr: kafka.TCP(brokers...)}
	if _, err := kc.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1, Topics: offsets}); err != nil {
		return 0, fmt.Errorf("committing the engine group's start: %w", err)
	}
	var cols []string
	for _, c := range s.Columns() {
		if !strings.HasPrefix(c.Name, "_") {
			cols = append(cols, pipeline.QuoteIdent(c.Name)+" "+c.Type)
		}
	}
	target := pipeline.QualifiedTable(db, "engine_raw")
	queue := pipeline.QualifiedTable(db, "engine_queue")
	stmts := []string{
		"CREATE TABLE " + target + " (" + strings.Join(cols, ", ") + ") ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (customer_id, product, ts, event_id)",
		"CREATE TABLE " + queue + " (" + strings.Join(cols, ", ") + ") ENGINE = Kafka SETTINGS kafka_broker_list = '" + brokers[0] +
			"', kafka_topic_list = 'bench.usage', kafka_group_name = '" + group + "', kafka_format = 'JSONEachRow', kafka_num_consumers = 1",
	}
	for _, q := range stmts {
		if err := ch.Exec(ctx, q); err != nil {
			return 0, fmt.Errorf("%s: %w", q, err)
		}
	}
	start := time.Now()
	if err := ch.Exec(ctx, "CREATE MATERIALIZED VIEW "+pipeline.QualifiedTable(db, "engine_mv")+" TO "+target+" AS SELECT * FROM "+queue); err != nil {
		return 0, err
	}
	defer ch.Exec(context.Background(), "DROP TABLE IF EXISTS "+pipeline.QualifiedTable(db, "engine_mv"))
	defer ch.Exec(context.Background(), "DROP TABLE IF EXISTS "+queue)
	deadline := start.Add(10 * time.Minute)
	for {
		var n uint64
		if err := ch.QueryRow(ctx, "SELECT count() FROM "+target).Scan(&n); err != nil {
			return 0, err
		}
		if n >= uint64(o.messages) {
			return float64(n) / time.Since(start).Seconds(), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the Kafka engine stored %d of %d in 10 minutes", n, o.messages)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// bareConsume reads every partition to its end with kafka-go readers and counts.
func bareConsume(ctx context.Context, brokers []string, topic string, partitions, want int) (float64, error) {
	var wg sync.WaitGroup
	counts := make([]int, partitions)
	errs := make([]error, partitions)
	start := time.Now()
	for p := range partitions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, p)
			if err != nil {
				errs[p] = err
				return
			}
			end, err := conn.ReadLastOffset()
			conn.Close()
			if err != nil {
				errs[p] = err
				return
			}
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 250 * time.Millisecond})
			defer r.Close()
			for int64(counts[p]) < end {
				if _, err := r.FetchMessage(ctx); err != nil {
					errs[p] = err
					return
				}
				counts[p]++
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	total := 0
	for p := range partitions {
		if errs[p] != nil {
			return 0, errs[p]
		}
		total += counts[p]
	}
	if total != want {
		return 0, fmt.Errorf("consumed %d of %d", total, want)
	}
	return float64(total) / took.Seconds(), nil
}
