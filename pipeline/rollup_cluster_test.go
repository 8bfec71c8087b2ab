package pipeline

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// syncInserts makes inserts through Distributed tables synchronous: acknowledged rows are
// on one replica of their shard, not in a node's spool.
func syncInserts(ctx context.Context) context.Context {
	return clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1}))
}

// syncReplicas waits until every node has fetched the parts of the local tables that
// another replica of its shard received (replication is asynchronous), so that a read
// through any node sees every acknowledged insert.
func syncReplicas(t *testing.T, nodes []driver.Conn, db string, tables ...string) {
	t.Helper()
	for i, n := range nodes {
		for _, tb := range tables {
			if err := n.Exec(context.Background(), "SYSTEM SYNC REPLICA "+QualifiedTable(db, LocalTable(tb))); err != nil {
				t.Fatalf("node%d: SYSTEM SYNC REPLICA %s: %v", i+1, LocalTable(tb), err)
			}
		}
	}
}

// TestRollupsOnCluster builds rollups on the three-node cluster and checks the read view,
// through every node, against totals computed here: after the backfill (from rows
// inserted through the Distributed raw table, on both shards), after further inserts
// (through the materialized views on the shards), after a version swap, and with a
// replica of shard 1 stopped (Distributed reads fail over to the other replica).
func TestRollupsOnCluster(t *testing.T) {
	cfg := rollupConfig()
	cfg.ClickHouse = clusterClickHouse(t, uniqueName("test_rollups_cluster"), 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ch := applyClusterSchema(t, cfg)
	nodes := nodeConns(t)
	db, usage := cfg.ClickHouse.Database, cfg.Streams[0]
	rng := rand.New(rand.NewPCG(3, 5))
	want := map[rollupKey]*rollupTotals{}
	var offset int64
	insert := func(n int) {
		t.Helper()
		if err := insertRows(syncInserts(ctx), ch, db, usage, usageRows(rng, &offset, n, want)); err != nil {
			t.Fatal(err)
		}
	}
	apply := func(cfg Config) ([]string, RollupPlan) {
		t.Helper()
		plans, err := PlanRollups(cfg)
		if err != nil {
			t.Fatal(err)
		}
		rebuilt, done, err := ApplyRollups(ctx, ch, db, plans, func([]string) (bool, error) { return true, nil })
		if err != nil || !done {
			t.Fatalf("ApplyRollups: done %v, %v", done, err)
		}
		return rebuilt, plans[0]
	}
	checkNodes := func(what string, v RollupPlan) {
		t.Helper()
		syncReplicas(t, nodes, db, usage.Table(), v.Table)
		for i, n := range nodes {
			checkTotals(t, fmt.Sprintf("%s, read through node%d", what, i+1), readDaily(t, n, db), want)
		}
	}

	insert(3000)
	for _, i := range []int{0, 2} { // node1 holds shard 1, node3 shard 2
		var n uint64
		if err := nodes[i].QueryRow(ctx, "SELECT count() FROM "+QualifiedTable(db, LocalTable(usage.Table()))).Scan(&n); err != nil || n == 0 {
			t.Fatalf("node%d holds %d raw rows (%v), want some: both shards", i+1, n, err)
		}
	}
	rebuilt, v1 := apply(cfg)
	if len(rebuilt) != 4 {
		t.Fatalf("first apply rebuilt %v, want all 4 rollups", rebuilt)
	}
	checkNodes("after the backfill", v1)

	insert(500)
	insert(700)
	checkNodes("after inserts through the materialized views", v1)
	if rebuilt, _ := apply(cfg); len(rebuilt) != 0 {
		t.Errorf("re-applying the same rollups rebuilt %v", rebuilt)
	}

	// A new measure: a new version, backfilled on the cluster; the old one dropped on
	// every node.
	cfg.Rollups[0].Measures = append(cfg.Rollups[0].Measures, MeasureConfig{Name: "biggest_seats", Function: FuncMax, Field: "seats"})
	rebuilt, v2 := apply(cfg)
	if !slices.Equal(rebuilt, []string{"daily_usage"}) || v2.Version == v1.Version {
		t.Fatalf("after a new measure, rebuilt %v (version %s, was %s), want daily_usage in a new version", rebuilt, v2.Version, v1.Version)
	}
	checkNodes("after the swap", v2)
	for i, n := range nodes {
		objects := rollupObjects(t, n, db)
		for _, gone := range []string{v1.Table, v1.StateTable(), v1.MV} {
			if slices.Contains(objects, gone) {
				t.Errorf("node%d: %s is left after the swap", i+1, gone)
			}
		}
		for _, kept := range []string{v2.Table, v2.StateTable(), v2.MV, v2.View} {
			if !slices.Contains(objects, kept) {
				t.Errorf("node%d: %s is missing after the swap", i+1, kept)
			}
		}
	}
	insert(600)
	checkNodes("after inserts into the new version", v2)

	// A crash mid-rebuild: the version's tables and materialized view exist on the
	// cluster, without backfill, the read view reads the second version. The next apply
	// sees a version that is not behind the read view and rebuilds it; the first
	// definition's ZooKeeper path, dropped with it, is created again.
	cfg.Rollups[0] = rollupConfig().Rollups[0]
	plans, _ := PlanRollups(cfg)
	v3 := plans[0]
	if v3.Version != v1.Version {
		t.Fatalf("the first definition again has version %s, want %s", v3.Version, v1.Version)
	}
	var half []Statement
	for _, s := range v3.Rebuild(nil) {
		if strings.HasPrefix(s.SQL, "INSERT") {
			break
		}
		half = append(half, s)
	}
	if err := ApplySchema(ctx, ch, half); err != nil {
		t.Fatal(err)
	}
	insert(400)
	checkNodes("while a rebuild is half done", v2)
	if rebuilt, _ := apply(cfg); !slices.Equal(rebuilt, []string{"daily_usage"}) {
		t.Fatalf("after a crash, rebuilt %v, want daily_usage", rebuilt)
	}
	checkNodes("after recovering the crash", v3)

	// With node2 (a replica of shard 1) stopped, reads through node1 and node3 still
	// see every shard.
	clusterNode(t, "stop", 2)
	defer clusterNode(t, "start", 2)
	for _, i := range []int{0, 2} {
		checkTotals(t, fmt.Sprintf("node2 stopped, read through node%d", i+1), readDaily(t, nodes[i], db), want)
	}
	clusterNode(t, "start", 2)

	// Rollups no longer declared are dropped on every node.
	existing, err := ReadRollups(ctx, ch, db)
	if err != nil {
		t.Fatal(err)
	}
	_, stale := PlanRollupChanges(db, nil, existing)
	for _, s := range stale {
		if !strings.HasSuffix(s.SQL, cfg.ClickHouse.OnCluster()) {
			t.Errorf("%s: not ON CLUSTER", s.SQL)
		}
	}
	if err := ApplySchema(ctx, ch, stale); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if left := rollupObjects(t, n, db); len(left) != 0 {
			t.Errorf("node%d: left after dropping the rollups: %v", i+1, left)
		}
	}
}
