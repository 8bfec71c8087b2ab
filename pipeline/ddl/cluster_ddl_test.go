package ddl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// clusterTestConfig is a loop with a usage stream (one dimension), a plan stream and
// consent in a new database on the test cluster, connected through node1.
func clusterTestConfig(t *testing.T) pipeline.Config {
	cfg := pipeline.Config{
		Kafka:      pipeline.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}, Group: "g"},
		ClickHouse: stacktest.ClusterClickHouse(t, stacktest.UniqueName("cluster_ddl"), 0),
		Consent:    &pipeline.ConsentConfig{Topic: "consent"},
		Streams: []pipeline.StreamConfig{
			{Name: "usage", Kind: pipeline.KindUsage, Topic: "usage", DeadLetterTopic: "usage.dlq",
				Mapping:    pipeline.Mapping{EventID: "id", CustomerID: "c", Product: "p", Timestamp: "ts"},
				Dimensions: []pipeline.Dimension{{Name: "region", Field: "region", Type: "String"}}},
			{Name: "plans", Kind: pipeline.KindPlan, Topic: "plans", DeadLetterTopic: "plans.dlq",
				Mapping: pipeline.Mapping{PlanID: "id", CustomerID: "c", Product: "p", Period: "period", Quantity: "q"}},
		},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// syncInsert makes an insert through a Distributed table return once every shard has
// it, so that the test reads what it wrote.
func syncInsert() context.Context {
	return clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1}))
}

// clusterUsageRows are n usage rows of customers c0..c(n-1) at ts, with extra values
// (dimensions) after the quantity.
func clusterUsageRows(n int, ts time.Time, extra ...any) [][]any {
	var rows [][]any
	for i := range n {
		r := []any{fmt.Sprintf("e%d-%d", ts.Unix(), i), fmt.Sprintf("c%d", i), "p", ts, 1.0}
		r = append(r, extra...)
		rows = append(rows, append(r, "usage", int32(0), int64(i), ts, ts.UnixMilli()))
	}
	return rows
}

// syncReplicas waits until every node has fetched what its shard's other replicas have.
func syncLocalReplicas(t *testing.T, nodes []driver.Conn, db, table string) {
	t.Helper()
	for i, n := range nodes {
		if err := n.Exec(context.Background(), "SYSTEM SYNC REPLICA "+pipeline.QualifiedTable(db, table)); err != nil {
			t.Fatalf("node%d: %v", i+1, err)
		}
	}
}

func customersOn(t *testing.T, c driver.Conn, db, table string) []string {
	t.Helper()
	rows, err := c.Query(context.Background(), "SELECT DISTINCT customer_id FROM "+pipeline.QualifiedTable(db, table)+" ORDER BY customer_id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func countOn(t *testing.T, c driver.Conn, q string, args ...any) uint64 {
	t.Helper()
	var n uint64
	if err := c.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// TestClusterSchemaLifecycle creates a loop's schema through node1 and follows it through
// what the loop does to it on a cluster: inserts through the Distributed names, a new
// dimension, retention and a consent withdrawal, checked on every node.
func TestClusterSchemaLifecycle(t *testing.T) {
	cfg := clusterTestConfig(t)
	ctx := context.Background()
	ch := applySchema(t, cfg)
	nodes := stacktest.NodeConns(t)
	db := cfg.ClickHouse.Database
	usage := cfg.Streams[0]
	local := pipeline.LocalTable(usage.Table())

	digest, err := DigestTableStatement(cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplySchema(ctx, ch, []pipeline.Statement{digest}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{pipeline.DigestTable: "ReplicatedMergeTree"}
	for _, tbl := range ManagedTables(cfg) {
		want[tbl.Name], want[pipeline.LocalTable(tbl.Name)] = "Distributed", "ReplicatedMergeTree"
	}
	// A dead letter written again after a crash before the ledger collapses in merges.
	want[pipeline.LocalTable(pipeline.DeadLettersTable)] = "ReplicatedReplacingMergeTree"
	for i, n := range nodes {
		for name, engine := range want {
			var got string
			if err := n.QueryRow(ctx, "SELECT engine FROM system.tables WHERE database = ? AND name = ?", db, name).Scan(&got); err != nil || got != engine {
				t.Errorf("node%d: %s is %q (%v), want %s", i+1, name, got, err, engine)
			}
		}
	}

	// Rows inserted through the Distributed name are split by customer between the
	// shards and replicated within shard 1.
	month := time.Now().UTC().Truncate(time.Hour)
	if err := InsertRows(syncInsert(), ch, db, usage, clusterUsageRows(40, month, "eu")); err != nil {
		t.Fatal(err)
	}
	syncLocalReplicas(t, nodes, db, local)
	shard1, replica, shard2 := customersOn(t, nodes[0], db, local), customersOn(t, nodes[1], db, local), customersOn(t, nodes[2], db, local)
	if len(shard1) == 0 || len(shard2) == 0 || len(shard1)+len(shard2) != 40 || !slices.Equal(shard1, replica) {
		t.Fatalf("customers by node: %v / %v / %v; want 40 split between the shards, node1 = node2", shard1, replica, shard2)
	}
	for _, c := range shard1 {
		if slices.Contains(shard2, c) {
			t.Fatalf("customer %s is on both shards", c)
		}
	}

	// A new dimension: the local tables get the column, the Distributed tables are
	// created again with it, and an insert through them with the new column reads back
	// everywhere.
	evolved := cfg
	evolved.Streams = slices.Clone(cfg.Streams)
	evolved.Streams[0].Dimensions = append(slices.Clone(usage.Dimensions), pipeline.Dimension{Name: "tier", Field: "tier", Type: "String"})
	if _, err := Migrate(ctx, ch, evolved); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		for _, name := range []string{usage.Table(), local} {
			if c := countOn(t, n, "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = 'tier'", db, name); c != 1 {
				t.Errorf("node%d: %s has no column tier after the migration", i+1, name)
			}
		}
	}
	if err := InsertRows(syncInsert(), ch, db, evolved.Streams[0], clusterUsageRows(10, month.Add(time.Minute), "eu", "gold")); err != nil {
		t.Fatalf("inserting with the new column: %v", err)
	}
	syncLocalReplicas(t, nodes, db, local)
	for i, n := range nodes {
		if c := countOn(t, n, "SELECT count() FROM "+pipeline.QualifiedTable(db, usage.Table())+" WHERE tier = 'gold'"); c != 10 {
			t.Errorf("node%d reads %d rows of the new tier, want 10", i+1, c)
		}
	}
	if again, err := Migrate(ctx, ch, evolved); err != nil || slices.ContainsFunc(again, func(s pipeline.Statement) bool { return !strings.HasPrefix(s.SQL, "CREATE") }) {
		t.Errorf("migrating again: %v, %v; want only the idempotent CREATEs", err, again)
	}

	// Retention drops an old month on every node, and keeps the current one.
	old := time.Date(2020, 1, 15, 0, 0, 0, 0, time.UTC)
	if err := InsertRows(syncInsert(), ch, db, evolved.Streams[0], clusterUsageRows(20, old, "eu", "")); err != nil {
		t.Fatal(err)
	}
	v, err := pipeline.ReadServerVersion(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	if v.HasTTL() {
		t.Skipf("server %d.%d has TTL; the partition path is for older servers", v.Major, v.Minor)
	}
	dropped, err := ApplyRetention(ctx, ch, v, cfg.ClickHouse, evolved.Streams[0], 30, time.Now())
	if err != nil || !slices.Contains(dropped, 202001) {
		t.Fatalf("retention dropped %v (%v), want 202001 among them", dropped, err)
	}
	syncLocalReplicas(t, nodes, db, local)
	for i, n := range nodes {
		if c := countOn(t, n, "SELECT count() FROM "+pipeline.QualifiedTable(db, local)+" WHERE toYYYYMM(ts) = 202001"); c != 0 {
			t.Errorf("node%d still has %d rows of 2020-01", i+1, c)
		}
	}
	if c := countOn(t, ch, "SELECT count() FROM "+pipeline.QualifiedTable(db, usage.Table())); c != 50 {
		t.Errorf("after retention the table has %d rows, want the 50 recent ones", c)
	}

	// A consent withdrawal deletes the customer's rows on every node of its shard, for a
	// customer of each shard.
	for _, customer := range []string{shard1[0], shard2[0]} {
		n, _, err := DeleteCustomer(ctx, ch, cfg.ClickHouse, usage.Table(), customer)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Errorf("DeleteCustomer found no rows of %s", customer)
		}
		for i, node := range nodes {
			if c := countOn(t, node, "SELECT count() FROM "+pipeline.QualifiedTable(db, local)+" WHERE customer_id = ?", customer); c != 0 {
				t.Errorf("node%d still has %d rows of %s after DeleteCustomer returned", i+1, c, customer)
			}
		}
	}
}

// TestClusterDDLFailureNamesHost makes one host fail a statement the others run.
func TestClusterDDLFailureNamesHost(t *testing.T) {
	cfg := clusterTestConfig(t)
	ctx := context.Background()
	ch := applySchema(t, cfg)
	nodes := stacktest.NodeConns(t)
	_, addrs := stacktest.TestCluster(t)
	db := cfg.ClickHouse.Database
	if err := nodes[2].Exec(ctx, "CREATE TABLE "+pipeline.QualifiedTable(db, "taken")+" (x UInt8) ENGINE = Memory"); err != nil {
		t.Fatal(err)
	}
	err := ApplySchema(ctx, ch, []pipeline.Statement{{Object: db + ".taken",
		SQL: "CREATE TABLE " + pipeline.QualifiedTable(db, "taken") + cfg.ClickHouse.OnCluster() + " (x UInt8) ENGINE = Memory"}})
	var he *connect.DDLHostError
	if !errors.As(err, &he) || he.Host != addrs[2] || he.Code != 57 {
		t.Fatalf("got %v, want a DDLHostError of node3 with code 57 (table already exists)", err)
	}
	t.Log(err)
}

// TestClusterDDLWithReplicaDown stops node2: applying a new table returns ErrDDLPending
// naming node2 instead of waiting for it, and node2 creates the table once it is back.
func TestClusterDDLWithReplicaDown(t *testing.T) {
	cfg := clusterTestConfig(t)
	ctx := context.Background()
	ch := applySchema(t, cfg)
	_, addrs := stacktest.TestCluster(t)
	db := cfg.ClickHouse.Database
	testkit.ClusterNode(t, "stop", 2)
	t.Cleanup(func() { testkit.ClusterNode(t, "start", 2) })

	stmts := tableStatements(cfg.ClickHouse, db, "extra", []pipeline.Column{{Name: "customer_id", Type: "String"}}, "MergeTree", "ORDER BY customer_id", customerShardKey)
	start := time.Now()
	err := ApplySchema(ctx, ch, stmts)
	t.Logf("ApplySchema with node2 down returned after %v: %v", time.Since(start).Round(time.Millisecond), err)
	var pe *connect.DDLPendingError
	if !errors.Is(err, connect.ErrDDLPending) || !errors.As(err, &pe) || !slices.Equal(pe.Hosts, []string{addrs[1]}) || len(pe.Objects) != 2 {
		t.Fatalf("got %v, want ErrDDLPending for both tables on %s only", err, addrs[1])
	}
	for i, n := range []int{0, 2} {
		c := connectNode(t, addrs, n)
		if got := countOn(t, c, "SELECT count() FROM system.tables WHERE database = ? AND name IN ('extra', 'extra_local')", db); got != 2 {
			t.Errorf("node%d (up) has %d of the two tables", []int{1, 3}[i], got)
		}
	}

	testkit.ClusterNode(t, "start", 2)
	node2 := connectNode(t, addrs, 1)
	// node2 runs the queued statements once it is back; wait for that, bounded.
	deadline := time.Now().Add(60 * time.Second)
	for countOn(t, node2, "SELECT count() FROM system.tables WHERE database = ? AND name IN ('extra', 'extra_local')", db) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("node2 did not create the tables from the DDL queue within a minute of its restart")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// connectNode connects to the node at addrs[i] alone (another may be down).
func connectNode(t *testing.T, addrs []string, i int) driver.Conn {
	t.Helper()
	cfg := stacktest.ClusterClickHouse(t, "", i)
	c, err := connect.OpenClickHouse(context.Background(), pipeline.ClickHouseConfig{Addr: addrs[i], Username: cfg.Username, Password: cfg.Password})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
