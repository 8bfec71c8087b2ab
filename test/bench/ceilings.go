package main

// The ceilings around CustomerLoop: ClickHouse's Kafka engine, bare consume, bare insert.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// kafkaEngine lets ClickHouse's Kafka table engine drain the topic through a materialized
// view into a table of the same columns as the raw table (without the source columns the
// engine cannot fill on every version).
func kafkaEngine(ctx context.Context, ch driver.Conn, brokers []string, db string, s pipeline.StreamConfig, o options) (float64, error) {
	// A new group of the engine starts at the end of the topic: commit the start first.
	offsets := map[string][]kafka.OffsetCommit{}
	for p := range o.partitions {
		offsets["bench.usage"] = append(offsets["bench.usage"], kafka.OffsetCommit{Partition: p, Offset: 0})
	}
	kc := &kafka.Client{Addr: kafka.TCP(brokers...)}
	if _, err := kc.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: "clickhouse-engine", GenerationID: -1, Topics: offsets}); err != nil {
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
			"', kafka_topic_list = 'bench.usage', kafka_group_name = 'clickhouse-engine', kafka_format = 'JSONEachRow', kafka_num_consumers = 1",
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

// bareInsert decodes the messages first, then times only their insert in batches of 20k,
// column by column (gathering the typed columns is timed too, as the worker pays for it).
func bareInsert(ctx context.Context, ch driver.Conn, db string, msgs [][]byte) (float64, error) {
	cfg := benchConfig(nil, "", db, "bare", "bench.bare")
	s := cfg.Streams[0]
	stmts, err := ddl.PlanSchema(pipeline.Config{Kafka: pipeline.KafkaConfig{Brokers: []string{"x:1"}, Group: "g"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: "x:1", Database: db}, Streams: cfg.Streams})
	if err != nil {
		return 0, err
	}
	if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
		return 0, err
	}
	dec, err := ingest.NewDecoder(s)
	if err != nil {
		return 0, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	rows := make([][]any, len(msgs))
	for i, m := range msgs {
		r, err := dec.Decode(m, now)
		if err != nil {
			return 0, err
		}
		rows[i] = append(r, s.Topic, int32(0), int64(i), now, now.UnixMilli())
	}
	start := time.Now()
	for i := 0; i < len(rows); i += bareInsertRows {
		b, err := ch.PrepareBatch(ctx, ddl.InsertSQL(db, s))
		if err != nil {
			return 0, err
		}
		// Column by column, as the worker inserts: clickhouse-go's fastest path.
		part := rows[i:min(i+bareInsertRows, len(rows))]
		for j := range part[0] {
			if err := b.Column(j).Append(columnOf(part, j)); err != nil {
				return 0, err
			}
		}
		if err := b.Send(); err != nil {
			return 0, err
		}
	}
	return float64(len(rows)) / time.Since(start).Seconds(), nil
}

// columnOf gathers column j of the rows into a typed slice.
func columnOf(rows [][]any, j int) any {
	switch rows[0][j].(type) {
	case string:
		return gather[string](rows, j)
	case float64:
		return gather[float64](rows, j)
	case int32:
		return gather[int32](rows, j)
	case int64:
		return gather[int64](rows, j)
	case time.Time:
		return gather[time.Time](rows, j)
	}
	panic(fmt.Sprintf("column %d: no typed slice for %T", j, rows[0][j]))
}

func gather[T any](rows [][]any, j int) []T {
	out := make([]T, len(rows))
	for i, r := range rows {
		out[i] = r[j].(T)
	}
	return out
}

// bareInsertRows is the bare insert's batch: the workers' default. Batches of 50k rows
// measured half as fast (72k-113k against 160k-199k rows/s, go run ./test/bench -only
// insert), clickhouse-go copying its growing string buffers out of the CPU's caches.
const bareInsertRows = 20_000
