package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/test/testkit"
)

// clusterNodes returns connections to the three nodes of the test cluster (make test
// provisions it), skipping or failing without one.
func clusterNodes(t *testing.T) (string, []string, []driver.Conn) {
	t.Helper()
	name, addrs := testkit.Cluster(t)
	var conns []driver.Conn
	for _, a := range addrs {
		c, err := connect.OpenClickHouse(context.Background(), pipeline.ClickHouseConfig{Addr: a, Username: chUser, Password: chPass})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		conns = append(conns, c)
	}
	return name, addrs, conns
}

// TestClusterLoop runs a loop on the three-node cluster through the controller: the
// schema, the rollup and the feedback views are created ON CLUSTER; a new dimension
// (schema evolution) and a new measure (a rollup swap, behind stopped workers, while
// events keep arriving) are applied on every node; totals read through each node equal
// what was produced; deleting the loop (policy Delete) leaves nothing on any node.
func TestClusterLoop(t *testing.T) {
	ctx := context.Background()
	cluster, addrs, nodes := clusterNodes(t)
	loop := newLoop(t)
	loop.Spec.ClickHouse.Address, loop.Spec.ClickHouse.Cluster = addrs[0], cluster
	useClickHouseSecret(t, loop)
	loop.Spec.DeletionPolicy = loopsv1alpha1.DeletionDelete
	loop.Spec.Rollups = []loopsv1alpha1.RollupSpec{dailyRollup()}
	loop.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "plans"}
	db, topic := loop.Spec.ClickHouse.Database, loop.Spec.Streams[0].Topic
	t.Cleanup(func() {
		_ = nodes[0].Exec(context.Background(), "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db)+" ON CLUSTER "+pipeline.QuoteIdent(cluster))
	})
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	want := map[dailyKey]dailyTotals{}
	produceJSON(t, topic, usageEvents(0, 300, want))

	// exactOn waits until the loop is Ready for its current generation with rows ingested
	// and the rollup read through each of conns equals what was produced.
	exactOn := func(what string, rows int64, conns []driver.Conn) {
		t.Helper()
		testkit.Eventually(t, 2*time.Minute, what, func() (bool, string) {
			l := get(t, loop)
			if l.Status.RowsIngested != rows || condition(l, "Ready") != "True/Succeeded" || l.Status.ObservedGeneration != l.Generation {
				return false, fmt.Sprintf("rows=%d Ready=%s generation %d/%d", l.Status.RowsIngested, condition(l, "Ready"), l.Status.ObservedGeneration, l.Generation)
			}
			for i, n := range conns {
				got, err := readRollupOn(t, n, db)
				if err != nil {
					return false, fmt.Sprintf("node %d: %v", i, err)
				}
				if d := diffTotals(got, want); d != "" {
					return false, fmt.Sprintf("node %d: %s", i, d)
				}
			}
			return true, ""
		})
	}
	exactEverywhere := func(what string, rows int64) { t.Helper(); exactOn(what, rows, nodes) }
	exactEverywhere("the rollup exact through every node", 300)
	for i, n := range nodes {
		for table, engine := range map[string]string{"usage_raw": "Distributed", "usage_raw_local": "ReplicatedMergeTree",
			"customerloop_ledger_local": "ReplicatedMergeTree", "feedback_gaps": "View"} {
			if got := tableEngine(t, n, db, table); got != engine {
				t.Errorf("node%d: %s is %q, want %s", i+1, table, got, engine)
			}
		}
	}

	// Schema evolution: a new dimension reaches the local and the Distributed tables of
	// every node, and rows carrying it read back through any of them.
	updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) {
		l.Spec.Streams[0].Dimensions = append(l.Spec.Streams[0].Dimensions, loopsv1alpha1.Dimension{Name: "tier", Type: "String", Nullable: true})
	})
	testkit.Eventually(t, time.Minute, "the tier column on every node", func() (bool, string) {
		for i, n := range nodes {
			for _, table := range []string{"usage_raw", "usage_raw_local"} {
				var c uint64
				if err := n.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = 'tier'", db, table).Scan(&c); err != nil || c != 1 {
					return false, fmt.Sprintf("node%d %s: %d (%v)", i+1, table, c, err)
				}
			}
		}
		l := get(t, loop)
		return condition(l, "Ready") == "True/Succeeded" && l.Status.ObservedGeneration == l.Generation, condition(l, "Ready")
	})
	var tiered []string
	for i := range 20 {
		tiered = append(tiered, fmt.Sprintf(`{"id":"t%d","customer":"c%d","product":"p0","ts":1793449815,"qty":1,"tier":"gold"}`, i, i%4))
	}
	k := dailyKey{time.Unix(1793449815, 0).UTC().Format("2006-01-02"), "", "p0", "-"}
	for i := range 20 {
		k.customer = fmt.Sprintf("c%d", i%4)
		w := want[k]
		w.events++
		w.used++
		want[k] = w
	}
	produceJSON(t, topic, tiered)
	exactEverywhere("the rollup exact after the evolution", 320)
	for i, n := range nodes {
		var gold uint64
		if err := n.QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(db, "usage_raw")+" WHERE tier = 'gold'").Scan(&gold); err != nil || gold != 20 {
			t.Errorf("node%d: %d gold rows (%v), want 20", i+1, gold, err)
		}
	}

	// A rollup swap on the cluster while events arrive.
	updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) {
		l.Spec.Rollups[0].Measures = append(l.Spec.Rollups[0].Measures, loopsv1alpha1.RollupMeasure{Name: "largest", Function: "Max", Field: "quantity"})
	})
	produceJSON(t, topic, usageEvents(300, 200, want))
	exactEverywhere("the rollup exact after the swap", 520)
	for i, n := range nodes {
		var largest float64
		if err := n.QueryRow(ctx, "SELECT max(largest) FROM "+pipeline.QualifiedTable(db, "rollup_daily")).Scan(&largest); err != nil || largest != 4 {
			t.Errorf("node%d: max(largest) = %v (%v), want 4", i+1, largest, err)
		}
		var versions uint64
		if err := n.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name LIKE 'rollup\\_daily\\_v%' AND name NOT LIKE '%\\_mv'", db).Scan(&versions); err != nil || versions != 2 {
			t.Errorf("node%d: %d version tables (%v), want the new version's local and Distributed tables only", i+1, versions, err)
		}
	}

	// A replica down: a new dimension is applied on the nodes that answer, the loop stays
	// Ready with a DDLPending warning, ingestion goes on, and the stopped node catches up
	// from the DDL queue when it is back.
	testkit.ClusterNode(t, "stop", 2)
	t.Cleanup(func() { testkit.ClusterNode(t, "start", 2) })
	updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) {
		l.Spec.Streams[0].Dimensions = append(l.Spec.Streams[0].Dimensions, loopsv1alpha1.Dimension{Name: "plan_name", Field: "plan", Type: "String", Nullable: true})
	})
	testkit.Eventually(t, 2*time.Minute, "a DDLPending warning naming node2", func() (bool, string) {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs, client.InNamespace(loop.Namespace)); err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == loop.Name && e.Reason == "DDLPending" && e.Type == "Warning" && strings.Contains(e.Note, addrs[1]) {
				return true, ""
			}
		}
		return false, "no such event yet"
	})
	produceJSON(t, topic, usageEvents(500, 100, want))
	exactOn("Ready and exact with node2 down", 620, []driver.Conn{nodes[0], nodes[2]})
	testkit.ClusterNode(t, "start", 2)
	testkit.Eventually(t, time.Minute, "node2 caught up with the DDL queue", func() (bool, string) {
		var c uint64
		if err := nodes[1].QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = 'usage_raw_local' AND name = 'plan_name'", db).Scan(&c); err != nil || c != 1 {
			return false, fmt.Sprintf("%d (%v)", c, err)
		}
		return true, ""
	})
	if err := nodes[1].Exec(ctx, "SYSTEM SYNC REPLICA "+pipeline.QualifiedTable(db, "usage_raw_local")); err != nil {
		t.Fatal(err)
	}
	var onNode1, onNode2 uint64
	q := "SELECT count() FROM " + pipeline.QualifiedTable(db, "usage_raw_local")
	if err := nodes[0].QueryRow(ctx, q).Scan(&onNode1); err != nil {
		t.Fatal(err)
	}
	if err := nodes[1].QueryRow(ctx, q).Scan(&onNode2); err != nil {
		t.Fatal(err)
	}
	if onNode1 != onNode2 || onNode1 == 0 {
		t.Errorf("shard 1 after node2's return: node1 holds %d rows, node2 %d", onNode1, onNode2)
	}

	if err := k8s.Delete(ctx, loop); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, time.Minute, "no table left on any node", func() (bool, string) {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(loop), &loopsv1alpha1.CustomerLoop{}); err == nil {
			return false, "the loop is still there"
		}
		for i, n := range nodes {
			var c uint64
			if err := n.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ?", db).Scan(&c); err != nil || c != 0 {
				return false, fmt.Sprintf("node%d: %d tables (%v)", i+1, c, err)
			}
		}
		return true, ""
	})
}

func tableEngine(t *testing.T, conn driver.Conn, db, table string) string {
	t.Helper()
	var engine string
	if err := conn.QueryRow(context.Background(), "SELECT engine FROM system.tables WHERE database = ? AND name = ?", db, table).Scan(&engine); err != nil {
		return "missing"
	}
	return engine
}
