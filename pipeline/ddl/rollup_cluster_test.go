package ddl

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// syncReplicas waits until every node has fetched the parts of the local tables that
// another replica of its shard received (replication is asynchronous), so that a read
// through any node sees every acknowledged insert.
func syncReplicas(t *testing.T, nodes []driver.Conn, db string, tables ...string) {
	t.Helper()
	for i, n := range nodes {
		for _, tb := range tables {
			if err := n.Exec(context.Background(), "SYSTEM SYNC REPLICA "+pipeline.QualifiedTable(db, pipeline.LocalTable(tb))); err != nil {
				t.Fatalf("node%d: SYSTEM SYNC REPLICA %s: %v", i+1, pipeline.LocalTable(tb), err)
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
	cfg.ClickHouse = stacktest.ClusterClickHouse(t, stacktest.UniqueName("test_rollups_cluster"), 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ch := applySchema(t, cfg)
	nodes := stacktest.NodeConns(t)
	db, usage := cfg.ClickHouse.Database, cfg.Streams[0]
	rng := rand.New(rand.NewPCG(3, 5))
	want := map[rollupKey]*rollupTotals{}
	var offset int64
	insert := func(n int) {
		t.Helper()
		if err := InsertRows(stacktest.SyncInserts(ctx), ch, db, usage, usageRows(rng, &offset, n, want)); err != nil {
			t.Fatal(err)
		}
	}
	apply := func(cfg pipeline.Config) ([]string, RollupPlan) {
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
		if err := nodes[i].QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(db, pipeline.LocalTable(usage.Table()))).Scan(&n); err != nil || n == 0 {
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
	cfg.Rollups[0].Measures = append(cfg.Rollups[0].Measures, pipeline.MeasureConfig{Name: "biggest_seats", Function: pipeline.FuncMax, Field: "seats"})
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
	var half []pipeline.Statement
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
	testkit.ClusterNode(t, "stop", 2)
	defer testkit.ClusterNode(t, "start", 2)
	for _, i := range []int{0, 2} {
		checkTotals(t, fmt.Sprintf("node2 stopped, read through node%d", i+1), readDaily(t, nodes[i], db), want)
	}
	testkit.ClusterNode(t, "start", 2)

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

// feedbackRows generates usage and plans over a few months: several plan revisions per
// customer, product and period, some periods with usage only or plans only.
func feedbackRows(rng *rand.Rand) (usage, plans [][]any) {
	now := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	month := func(m int) time.Time { return time.Date(2026, time.Month(6+m), 1, 0, 0, 0, 0, time.UTC) }
	var offset int64
	for range 2000 {
		offset++
		ts := month(rng.IntN(4)).Add(time.Duration(rng.IntN(28*24*3600)) * time.Second)
		usage = append(usage, []any{fmt.Sprintf("e%d", offset), fmt.Sprintf("c%d", rng.IntN(12)), fmt.Sprintf("p%d", rng.IntN(3)),
			ts, float64(rng.IntN(80)) / 4, "u", int32(0), offset, now, now.UnixMilli()})
	}
	for i := range 300 {
		offset++
		period := month(1 + rng.IntN(4))
		submitted := period.AddDate(0, -rng.IntN(3), rng.IntN(40)-10)
		var conf *float64
		plans = append(plans, []any{fmt.Sprintf("plan%d", i%250), fmt.Sprintf("c%d", rng.IntN(12)), fmt.Sprintf("p%d", rng.IntN(3)),
			period, float64(rng.IntN(400)) / 4, submitted, conf, "p", int32(0), offset, now, now.UnixMilli()})
	}
	return usage, plans
}

// gapRows reads a feedback view, every row rendered, sorted.
func gapRows(t *testing.T, conn driver.Conn, db, view string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT customer_id, product, toString(period), toString(planned_latest), toString(planned_at_start), "+
		"versions, actual, events, toString(gap), toString(round(gap_ratio, 9)), toString(round(consumed_share, 9)) FROM "+pipeline.QualifiedTable(db, view))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var c, p, period, latest, start, gap, ratio, share string
		var versions, events uint64
		var actual float64
		if err := rows.Scan(&c, &p, &period, &latest, &start, &versions, &actual, &events, &gap, &ratio, &share); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprint(c, p, period, latest, start, versions, actual, events, gap, ratio, share))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// TestFeedbackOnCluster: the feedback views on the cluster read the Distributed tables,
// and their gaps are the single server's for the same data, through every node. A view
// made from another definition on one node only (node3) is replaced there too.
func TestFeedbackOnCluster(t *testing.T) {
	single := stacktest.ClickhouseAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db := stacktest.UniqueName("test_feedback_cluster")
	cfg, fc := stacktest.FeedbackConfig(db)
	cfg.ClickHouse = stacktest.ClusterClickHouse(t, db, 0)
	fc.Cluster = cfg.ClickHouse.Cluster
	ch := applySchema(t, cfg)
	nodes := stacktest.NodeConns(t)

	scfg, sfc := stacktest.FeedbackConfig(stacktest.UniqueName("test_feedback_single"))
	scfg.ClickHouse.Addr = single
	sch := applySchema(t, scfg)

	usage, plans := feedbackRows(rand.New(rand.NewPCG(13, 17)))
	for _, x := range []struct {
		conn driver.Conn
		db   string
	}{{ch, db}, {sch, sfc.Database}} {
		if err := InsertRows(stacktest.SyncInserts(ctx), x.conn, x.db, cfg.Streams[0], usage); err != nil {
			t.Fatal(err)
		}
		if err := InsertRows(stacktest.SyncInserts(ctx), x.conn, x.db, cfg.Streams[1], plans); err != nil {
			t.Fatal(err)
		}
	}
	feedbackRollup(t, ctx, sch, scfg, sfc)
	feedbackRollup(t, ctx, ch, cfg, fc)
	sstmts, err := PlanFeedback(sfc)
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplyFeedback(ctx, sch, sfc.Database, sstmts); err != nil {
		t.Fatal(err)
	}

	// node3 alone has an outdated feedback_actuals (another definition).
	if err := nodes[2].Exec(ctx, "CREATE VIEW "+pipeline.QualifiedTable(db, pipeline.ViewActuals)+" AS SELECT customer_id, product, toStartOfMonth(ts) AS period, "+
		"sum(quantity) AS actual, toUInt64(0) AS events, max(ts) AS last_event_at FROM "+pipeline.QualifiedTable(db, "usage_raw")+" GROUP BY customer_id, product, period"); err != nil {
		t.Fatal(err)
	}
	stmts, err := PlanFeedback(fc)
	if err != nil {
		t.Fatal(err)
	}
	cluster, err := connect.ClusterNodes(ctx, ch, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range cluster {
			_ = c.Close()
		}
	}()
	if len(cluster) != 3 {
		t.Fatalf("ClusterNodes found %d nodes, want 3", len(cluster))
	}
	if _, err := ApplyFeedbackChanges(ctx, ch, cluster, db, stmts); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		views, err := nodeViews(ctx, n, db)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stmts {
			if !strings.Contains(views[s.View], s.Fingerprint) {
				t.Errorf("node%d: %s is not the current definition: %s", i+1, s.View, views[s.View])
			}
		}
	}

	syncReplicas(t, nodes, db, "usage_raw", "plans_raw")
	want := gapRows(t, sch, sfc.Database, pipeline.ViewGaps)
	if len(want) < 100 {
		t.Fatalf("only %d gap rows on the single server", len(want))
	}
	for i, n := range nodes {
		got := gapRows(t, n, db, pipeline.ViewGaps)
		if !slices.Equal(got, want) {
			t.Errorf("node%d: %d gap rows differ from the single server's %d", i+1, len(got), len(want))
			for j := 0; j < min(len(got), len(want)); j++ {
				if got[j] != want[j] {
					t.Errorf("first difference: %q, single server %q", got[j], want[j])
					break
				}
			}
		}
	}
	t.Logf("%d gap rows, equal through every node and on the single server", len(want))
}

// feedbackRollup builds and backfills the rollup behind feedback_actuals of a loop with
// feedback fc, as the controller does before the feedback views.
func feedbackRollup(t *testing.T, ctx context.Context, ch driver.Conn, cfg pipeline.Config, fc pipeline.FeedbackConfig) {
	t.Helper()
	cfg.Feedback = &fc
	plans, err := PlanRollups(cfg)
	if err != nil {
		t.Fatal(err)
	}
	noWorkers := func([]string) (bool, error) { return true, nil }
	if _, _, err := ApplyRollups(ctx, ch, cfg.ClickHouse.Database, plans, noWorkers); err != nil {
		t.Fatal(err)
	}
}
