package ingest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
)

// clusterLedgerConfig is a one-stream loop on the test cluster, connected through node
// (0-based), reading a topic of partitions partitions on a broker of its own.
func clusterLedgerConfig(t *testing.T, node int, partitions int32) pipeline.Config {
	t.Helper()
	cfg := stacktest.SampleConfig()
	cfg.Streams = cfg.Streams[:1]
	cfg.Streams[0].Dimensions = nil
	cfg.ClickHouse = stacktest.ClusterClickHouse(t, stacktest.UniqueName("test_cluster_eo"), node)
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.Kafka.Brokers = stacktest.StartBroker(t, partitions, cfg.Streams[0].Topic)
	cfg.Batch = pipeline.BatchConfig{MaxRows: 200, MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}
	return cfg
}

// usageMessages are n events of 7 customers, so that every partition's rows spread over
// both shards.
func usageMessages(n int) []kafka.Message {
	var msgs []kafka.Message
	for i := range n {
		ts := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute)
		msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprint(i % 7)), Value: []byte(fmt.Sprintf(
			`{"id":"e%d","customer":{"id":"c%d"},"product":"p","ts":%q,"qty":1}`, i, i%7, ts.Format(time.RFC3339)))})
	}
	return msgs
}

type runningWorker struct {
	w    *Worker
	stop context.CancelFunc
	done chan error
}

func startClusterWorker(ctx context.Context, t *testing.T, cfg pipeline.Config, name string, metrics *Metrics, syncTimeout time.Duration) runningWorker {
	t.Helper()
	w, err := NewWorker(ctx, cfg, testr.New(t).WithName(name), metrics)
	if err != nil {
		t.Fatal(err)
	}
	if syncTimeout > 0 {
		w.replicas.syncTimeout = syncTimeout
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx); _ = w.Close() }()
	return runningWorker{w, stop, done}
}

func (r runningWorker) halt(t *testing.T) {
	t.Helper()
	r.stop()
	if err := <-r.done; err != nil {
		t.Errorf("worker stopped with %v", err)
	}
}

// syncAll brings every node's replicas of the loop's tables up to date.
func syncAll(ctx context.Context, t *testing.T, nodes []driver.Conn, db string, tables ...string) {
	t.Helper()
	for i, n := range nodes {
		for _, tb := range tables {
			if err := n.Exec(ctx, "SYSTEM SYNC REPLICA "+pipeline.QualifiedTable(db, pipeline.LocalTable(tb))); err != nil {
				t.Fatalf("node%d: SYSTEM SYNC REPLICA %s: %v", i+1, tb, err)
			}
		}
	}
}

// localCounts is, on one node, the rows and distinct source offsets of the raw table's
// local replica and the messages its ledger replica records.
type localCounts struct{ rows, distinct, ledger uint64 }

func countLocal(ctx context.Context, t *testing.T, n driver.Conn, db string, s pipeline.StreamConfig) localCounts {
	t.Helper()
	var c localCounts
	if err := n.QueryRow(ctx, "SELECT count(), uniqExact(_topic, _partition, _offset) FROM "+
		pipeline.QualifiedTable(db, pipeline.LocalTable(s.Table()))).Scan(&c.rows, &c.distinct); err != nil {
		t.Fatal(err)
	}
	if err := n.QueryRow(ctx, "SELECT toUInt64(sum(messages)) FROM "+pipeline.QualifiedTable(db, pipeline.LocalTable(pipeline.LedgerTable))).Scan(&c.ledger); err != nil {
		t.Fatal(err)
	}
	return c
}

// assertExactlyOnce syncs every replica and checks that the two replicas of shard 1 agree
// and that shard 1 (node1) and shard 2 (node3) together hold each of want offsets once,
// every one of them recorded once in the ledger.
func assertExactlyOnce(ctx context.Context, t *testing.T, db string, s pipeline.StreamConfig, want uint64) {
	t.Helper()
	nodes := stacktest.NodeConns(t)
	syncAll(ctx, t, nodes, db, s.Table(), pipeline.LedgerTable)
	n1, n2, n3 := countLocal(ctx, t, nodes[0], db, s), countLocal(ctx, t, nodes[1], db, s), countLocal(ctx, t, nodes[2], db, s)
	t.Logf("node1 %+v, node2 %+v, node3 %+v", n1, n2, n3)
	if n1 != n2 {
		t.Errorf("the replicas of shard 1 disagree: node1 %+v, node2 %+v", n1, n2)
	}
	if n1.rows == 0 || n3.rows == 0 {
		t.Errorf("rows on shard 1: %d, on shard 2: %d; the test wants both shards used", n1.rows, n3.rows)
	}
	if rows, distinct := n1.rows+n3.rows, n1.distinct+n3.distinct; rows != want || distinct != want {
		t.Errorf("%d rows with %d distinct offsets over the shards, want %d and %d", rows, distinct, want, want)
	}
	if ledger := n1.ledger + n3.ledger; ledger != want {
		t.Errorf("the ledger records %d messages, want %d", ledger, want)
	}
}

// TestClusterWorkersLandEveryOffsetOnce runs two workers of one consumer group, connected
// through different nodes, into the cluster.
func TestClusterWorkersLandEveryOffsetOnce(t *testing.T) {
	cfg := clusterLedgerConfig(t, 0, 4)
	s := cfg.Streams[0]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ch := ddltest.ApplySchema(t, cfg)
	msgs := usageMessages(3000)
	stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, msgs[:1500])

	a := startClusterWorker(ctx, t, cfg, "a", nil, 0)
	other := cfg
	other.ClickHouse = stacktest.ClusterClickHouse(t, cfg.ClickHouse.Database, 2)
	b := startClusterWorker(ctx, t, other, "b", nil, 0)
	stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, msgs[1500:])
	testkit.Eventually(t, 2*time.Minute, "the ledger to record every message", func() (bool, string) {
		tot, err := ReadLedgerTotals(ctx, ch, cfg.ClickHouse.Database, s.Topic)
		return err == nil && tot.Messages >= int64(len(msgs)), fmt.Sprintf("%d messages, %v", tot.Messages, err)
	})
	a.halt(t)
	b.halt(t)
	assertExactlyOnce(ctx, t, cfg.ClickHouse.Database, s, uint64(len(msgs)))
}

// TestClusterIngestsWhileAReplicaIsDown stops node2 mid-stream: inserts fail over to node1,
// a worker taking over meanwhile recovers every partition without node2, and once node2
// is back every replica holds every offset once.
func TestClusterIngestsWhileAReplicaIsDown(t *testing.T) {
	cfg := clusterLedgerConfig(t, 0, 4)
	s := cfg.Streams[0]
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ch := ddltest.ApplySchema(t, cfg)
	msgs := usageMessages(3000)
	delivered := func(want int64) {
		t.Helper()
		testkit.Eventually(t, 2*time.Minute, fmt.Sprintf("the ledger to record %d messages", want), func() (bool, string) {
			tot, err := ReadLedgerTotals(ctx, ch, cfg.ClickHouse.Database, s.Topic)
			return err == nil && tot.Messages >= want, fmt.Sprintf("%d messages, %v", tot.Messages, err)
		})
	}

	a := startClusterWorker(ctx, t, cfg, "a", nil, 0)
	stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, msgs[:1000])
	delivered(1000)

	restart := stopNode(t, 2)
	stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, msgs[1000:1500])
	delivered(1500)
	a.halt(t)
	other := cfg
	other.ClickHouse = stacktest.ClusterClickHouse(t, cfg.ClickHouse.Database, 2)
	mb := NewMetrics(prometheus.NewRegistry())
	b := startClusterWorker(ctx, t, other, "b", mb, 0)
	stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, msgs[1500:2000])
	delivered(2000)
	if n := testutil.ToFloat64(mb.SentEvents.WithLabelValues(cfg.Loop, s.Name)); n != 500 {
		t.Errorf("the worker that took over inserted %v rows, want the 500 produced after it started", n)
	}

	restart()
	stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, msgs[2000:])
	delivered(3000)
	b.halt(t)
	assertExactlyOnce(ctx, t, cfg.ClickHouse.Database, s, uint64(len(msgs)))
}

// crashLeftovers writes what a crash between the rows and the ledger leaves, through
// node1: rows for offsets 0-349 of partition 0 and a ledger entry for 0-299 only. With
// prefer_localhost_replica (on by default) node1 takes shard 1's part itself.
func crashLeftovers(ctx context.Context, t *testing.T, node1 driver.Conn, db string, s pipeline.StreamConfig, msgs []kafka.Message) {
	t.Helper()
	dec := mustDecoder(t, s)
	var rows [][]any
	for i := range 350 {
		row, err := dec.Decode(msgs[i].Value, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, append(row, s.Topic, int32(0), int64(i), time.Now().UTC().Truncate(time.Second), time.Now().UnixMilli()))
	}
	if err := ddl.InsertRows(stacktest.SyncInserts(ctx), node1, db, s, rows); err != nil {
		t.Fatal(err)
	}
	if err := writeLedger(stacktest.SyncInserts(ctx), node1, db, "before-crash", "test",
		map[topicPartition]*span{{s.Topic, 0}: {first: 0, last: 299, messages: 300}}, time.Now().UTC()); err != nil {
		t.Fatal(err)
	}
}

// stopNode stops a node (1-based) until the test ends, and makes sure it is down: a stop
// that did not happen would make the test prove nothing.
func stopNode(t *testing.T, node int) (restart func()) {
	t.Helper()
	testkit.ClusterNode(t, "stop", node)
	_, addrs := stacktest.TestCluster(t)
	if c, err := connect.OpenClickHouse(context.Background(), pipeline.ClickHouseConfig{Addr: addrs[node-1]}); err == nil {
		_ = c.Close()
		t.Fatalf("node%d still answers after clickhouse-cluster.sh stop-node (another state directory?)", node)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			testkit.ClusterNode(t, "start", node)
		}
	})
	return func() { testkit.ClusterNode(t, "start", node); restarted = true }
}

// stopFetches keeps node's replicas of the tables from fetching parts until the test ends.
func stopFetches(ctx context.Context, t *testing.T, node driver.Conn, db string, tables ...string) {
	t.Helper()
	for _, tb := range tables {
		name := pipeline.QualifiedTable(db, pipeline.LocalTable(tb))
		if err := node.Exec(ctx, "SYSTEM STOP FETCHES "+name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = node.Exec(context.Background(), "SYSTEM START FETCHES "+name) })
	}
}

// TestClusterRecoveryReadsASyncedReplica recovers a crashed partition through node2, a
// replica that has not fetched the crashed batch's part (its fetches are stopped): a
// plain read there would miss the rows and the ledger entry and write them again. The
// worker must find node2 unsyncable, read node1 instead, and land every offset once.
func TestClusterRecoveryReadsASyncedReplica(t *testing.T) {
	cfg := clusterLedgerConfig(t, 1, 1)
	s := cfg.Streams[0]
	db := cfg.ClickHouse.Database
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ch := ddltest.ApplySchema(t, cfg)
	nodes := stacktest.NodeConns(t)
	msgs := usageMessages(1000)
	stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, msgs)

	stopFetches(ctx, t, nodes[1], db, s.Table(), pipeline.LedgerTable)
	crashLeftovers(ctx, t, nodes[0], db, s, msgs)
	if n1, n2 := countLocal(ctx, t, nodes[0], db, s), countLocal(ctx, t, nodes[1], db, s); n1.rows == 0 || n2.rows != 0 {
		t.Fatalf("node1 holds %d rows, node2 %d: the test wants them on node1 only", n1.rows, n2.rows)
	}

	metrics := NewMetrics(prometheus.NewRegistry())
	w := startClusterWorker(ctx, t, cfg, "a", metrics, 2*time.Second)
	testkit.Eventually(t, 2*time.Minute, "the ledger to reach offset 999", func() (bool, string) {
		tot, err := ReadLedgerTotals(ctx, ch, db, s.Topic)
		return err == nil && tot.Next[0] == 1000, fmt.Sprintf("next %v, %v", tot.Next, err)
	})
	w.halt(t)
	if n := testutil.ToFloat64(metrics.Discarded.WithLabelValues(cfg.Loop, s.Name, "already_landed")); n != 50 {
		t.Errorf("%v messages skipped as already landed, want 50", n)
	}
	for _, tb := range []string{s.Table(), pipeline.LedgerTable} {
		if err := nodes[1].Exec(ctx, "SYSTEM START FETCHES "+pipeline.QualifiedTable(db, pipeline.LocalTable(tb))); err != nil {
			t.Fatal(err)
		}
	}
	assertExactlyOnce(ctx, t, db, s, uint64(len(msgs)))
}

// TestClusterRecoveryWaitsForAnUnsyncableShard leaves the crashed batch's shard-1 part
// only on node1, stops node1 and lets node2 try to fetch it: no replica of shard 1 can be
// synced, so recovery must fail (node2 cannot fetch the part, node1 does not answer) and
// the worker must not resume the partition until node1 is back.
func TestClusterRecoveryWaitsForAnUnsyncableShard(t *testing.T) {
	cfg := clusterLedgerConfig(t, 1, 1)
	s := cfg.Streams[0]
	db := cfg.ClickHouse.Database
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ch := ddltest.ApplySchema(t, cfg)
	nodes := stacktest.NodeConns(t)
	msgs := usageMessages(1000)
	stacktest.Produce(t, cfg.Kafka.Brokers, s.Topic, msgs)

	stopFetches(ctx, t, nodes[1], db, s.Table(), pipeline.LedgerTable)
	crashLeftovers(ctx, t, nodes[0], db, s, msgs)
	restart := stopNode(t, 1)
	for _, tb := range []string{s.Table(), pipeline.LedgerTable} {
		if err := nodes[1].Exec(ctx, "SYSTEM START FETCHES "+pipeline.QualifiedTable(db, pipeline.LocalTable(tb))); err != nil {
			t.Fatal(err)
		}
	}

	rs := newReplicaSet(cfg.ClickHouse, ch)
	rs.syncTimeout = 2 * time.Second
	defer rs.close()
	_, err := rs.synced(ctx, s.Table(), pipeline.LedgerTable)
	var unsynced *UnsyncedShardError
	if !errors.As(err, &unsynced) || unsynced.Shard != 1 {
		t.Fatalf("syncing with shard 1's part only on a stopped replica: %v, want an UnsyncedShardError of shard 1", err)
	}
	t.Logf("recovery error: %v", err)

	metrics := NewMetrics(prometheus.NewRegistry())
	w := startClusterWorker(ctx, t, cfg, "a", metrics, 2*time.Second)
	testkit.Eventually(t, time.Minute, "recovery to fail for want of a synced replica", func() (bool, string) {
		n := testutil.ToFloat64(metrics.Errors.WithLabelValues(cfg.Loop, StageReplicaSync))
		return n >= 2, fmt.Sprintf("%v replica_sync errors", n)
	})
	if n := testutil.ToFloat64(metrics.SentEvents.WithLabelValues(cfg.Loop, s.Name)); n != 0 {
		t.Errorf("the worker inserted %v rows before its partition could be recovered", n)
	}

	restart()
	testkit.Eventually(t, 2*time.Minute, "the ledger to reach offset 999", func() (bool, string) {
		tot, err := ReadLedgerTotals(ctx, ch, db, s.Topic)
		return err == nil && tot.Next[0] == 1000, fmt.Sprintf("next %v, %v", tot.Next, err)
	})
	w.halt(t)
	assertExactlyOnce(ctx, t, db, s, uint64(len(msgs)))
}

// TestClusterLedgerRetryRecordsEachSpanOnce leaves a batch's ledger write done on shard 2
// only, as a write that failed on shard 1 does: the retry must find exactly shard 2's
// partitions recorded and write the others.
func TestClusterLedgerRetryRecordsEachSpanOnce(t *testing.T) {
	cfg := clusterLedgerConfig(t, 0, 1)
	db := cfg.ClickHouse.Database
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ddltest.ApplySchema(t, cfg)
	nodes := stacktest.NodeConns(t)
	spans := map[topicPartition]*span{}
	for p := range 8 {
		spans[topicPartition{"t", p}] = &span{first: 0, last: 9, messages: 10}
	}
	// Where each partition's entries go: write a first batch through the Distributed table.
	if err := writeLedger(stacktest.SyncInserts(ctx), nodes[0], db, "probe", "test", spans, time.Now().UTC()); err != nil {
		t.Fatal(err)
	}
	onShard2 := map[topicPartition]*span{}
	rows, err := nodes[2].Query(ctx, "SELECT partition FROM "+pipeline.QualifiedTable(db, pipeline.LocalTable(pipeline.LedgerTable))+" WHERE batch_id = 'probe'")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var p int32
		if err := rows.Scan(&p); err != nil {
			t.Fatal(err)
		}
		onShard2[topicPartition{"t", int(p)}] = spans[topicPartition{"t", int(p)}]
	}
	rows.Close()
	if len(onShard2) == 0 || len(onShard2) == len(spans) {
		t.Fatalf("%d of %d partitions on shard 2; the test wants both shards used", len(onShard2), len(spans))
	}
	// The half-done write: batch b on shard 2 only.
	b, err := nodes[2].PrepareBatch(ctx, "INSERT INTO "+pipeline.QualifiedTable(db, pipeline.LocalTable(pipeline.LedgerTable))+" (`topic`, `partition`, `last_offset`, `messages`, `batch_id`)")
	if err != nil {
		t.Fatal(err)
	}
	for tp, s := range onShard2 {
		if err := b.Append(tp.topic, int32(tp.partition), s.last, s.messages, "b"); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}

	rs := newReplicaSet(cfg.ClickHouse, nodes[0])
	defer rs.close()
	shards, err := rs.synced(ctx, pipeline.LedgerTable)
	if err != nil {
		t.Fatal(err)
	}
	done, err := ledgerRecorded(ctx, shards, db, "b")
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != len(onShard2) {
		t.Errorf("the ledger holds %d spans of the batch, want shard 2's %d", len(done), len(onShard2))
	}
	if err := writeLedger(stacktest.SyncInserts(ctx), nodes[0], db, "b", "test", unrecorded(spans, done), time.Now().UTC()); err != nil {
		t.Fatal(err)
	}
	syncAll(ctx, t, nodes, db, pipeline.LedgerTable)
	var entries, distinct uint64
	if err := nodes[0].QueryRow(ctx, "SELECT count(), uniqExact(partition) FROM "+pipeline.QualifiedTable(db, pipeline.LedgerTable)+
		" WHERE batch_id = 'b'").Scan(&entries, &distinct); err != nil {
		t.Fatal(err)
	}
	if entries != 8 || distinct != 8 {
		t.Errorf("batch b has %d ledger entries over %d partitions, want 8 and 8", entries, distinct)
	}
}
