package ingest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// TestRetryReadLongAfterItsOriginal stops the consumer for longer than the duplicate
// window between a producer's originals and their retries, which were produced right
// after them: the retries must still be dropped, since the window runs on the messages'
// produce times, not on when a worker happens to read them. A message sent again with
// its id after more than the window of produce time is stored again, as documented. On
// the single server and on the cluster, where a partition's rows are spread over the
// shards and the window is rebuilt from both.
func TestRetryReadLongAfterItsOriginal(t *testing.T) {
	const window = 2 * time.Second
	for _, where := range []string{"server", "cluster"} {
		t.Run(where, func(t *testing.T) {
			var cfg pipeline.Config
			var ch driver.Conn
			if where == "server" {
				cfg = stacktest.SampleConfig()
				cfg.Streams = cfg.Streams[:1]
				cfg.Streams[0].Dimensions = nil
				cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: stacktest.ClickhouseAddr(t), Database: stacktest.UniqueName("test_retry")}
				cfg.Kafka.Group = stacktest.UniqueName("group")
				cfg.Kafka.Brokers = stacktest.StartBroker(t, 2, cfg.Streams[0].Topic)
				cfg.Batch = pipeline.BatchConfig{MaxRows: 200, MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}
				ch = ddltest.ApplySchema(t, cfg)
			} else {
				cfg = clusterLedgerConfig(t, 0, 2)
				ch = ddltest.ApplySchema(t, cfg)
			}
			s := cfg.Streams[0]
			s.DedupWindow = pipeline.Duration{Duration: window}
			cfg.Streams[0] = s
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()

			// Produced a minute ago, 10 ms apart; 7 customers over both partitions (and,
			// on the cluster, both shards).
			t0 := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
			msg := func(i int, at time.Time) kafka.Message {
				m := usageMessages(i + 1)[i]
				m.Time = at
				return m
			}
			var originals []kafka.Message
			for i := range 40 {
				originals = append(originals, msg(i, t0.Add(time.Duration(i)*10*time.Millisecond)))
			}
			stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, originals)
			run := func(want uint64) {
				t.Helper()
				metrics := NewMetrics(prometheus.NewRegistry())
				r := startClusterWorker(ctx, t, cfg, "worker", metrics, 0)
				testkit.Eventually(t, time.Minute, "the ledger to cover every message", func() (bool, string) {
					var n uint64
					if err := ch.QueryRow(ctx, "SELECT toUInt64(sum(messages)) FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.LedgerTable)).Scan(&n); err != nil {
						return false, err.Error()
					}
					return n == want, fmt.Sprintf("%d of %d", n, want)
				})
				r.halt(t)
			}
			run(40)
			// Longer than the window with nobody reading.
			time.Sleep(window + time.Second)
			var later []kafka.Message
			for i := range 30 { // the retries, 5 ms after their originals
				later = append(later, msg(i, t0.Add(time.Duration(i)*10*time.Millisecond+5*time.Millisecond)))
			}
			// e30..e34 again, but produced more than the window after the originals: stored.
			for i := 30; i < 35; i++ {
				later = append(later, msg(i, t0.Add(window+time.Second)))
			}
			stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, later)
			run(75)

			if where == "cluster" {
				syncAll(ctx, t, stacktest.NodeConns(t), cfg.ClickHouse.Database, s.Table(), pipeline.LedgerTable)
			}
			var rows, ids uint64
			var dups uint64
			table := pipeline.QualifiedTable(cfg.ClickHouse.Database, s.Table())
			if err := ch.QueryRow(ctx, "SELECT count(), uniqExact(event_id) FROM "+table).Scan(&rows, &ids); err != nil {
				t.Fatal(err)
			}
			if err := ch.QueryRow(ctx, "SELECT toUInt64(sum(duplicates)) FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.LedgerTable)).Scan(&dups); err != nil {
				t.Fatal(err)
			}
			if rows != 45 || ids != 40 || dups != 30 {
				t.Errorf("%d rows of %d ids with %d duplicates dropped; want 45 rows of 40 ids (e30..e34 twice) and the 30 retries dropped", rows, ids, dups)
			}
			// The rows keep the produce times the window is rebuilt from.
			var wrong uint64
			if err := ch.QueryRow(ctx, "SELECT countIf(_produced_at_ms < ? OR _produced_at_ms > ?) FROM "+table,
				t0.UnixMilli(), t0.Add(window+time.Second).UnixMilli()).Scan(&wrong); err != nil {
				t.Fatal(err)
			}
			if wrong != 0 {
				t.Errorf("%d rows do not hold their message's Kafka timestamp in _produced_at_ms", wrong)
			}
		})
	}
}
