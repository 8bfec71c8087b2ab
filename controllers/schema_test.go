package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/test/testkit"
)

func countRows(t *testing.T, query string) uint64 {
	t.Helper()
	var n uint64
	if err := ch.QueryRow(context.Background(), query).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSchemaEvolution adds a dimension to a loop that holds rows: the column appears, the
// rows stay, and new messages fill it. Then a type change stalls the loop with a reason,
// leaves the table alone, and reverting it makes the loop Ready again.
func TestSchemaEvolution(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	db := loop.Spec.ClickHouse.Database
	table := pipeline.QualifiedTable(db, "usage_raw")
	produceJSON(t, loop.Spec.Streams[0].Topic, []string{
		`{"id":"e1","customer":"c1","product":"p","ts":1793449815,"region":"eu"}`,
		`{"id":"e2","customer":"c2","product":"p","ts":1793449816,"region":"us"}`,
	})
	testkit.Eventually(t, 60*time.Second, "the first rows", func() (bool, string) {
		var n uint64
		err := ch.QueryRow(ctx, "SELECT count() FROM "+table).Scan(&n) // the table may not exist yet
		return err == nil && n == 2, fmt.Sprint(n, err)
	})

	updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) {
		l.Spec.Streams[0].Dimensions = append(l.Spec.Streams[0].Dimensions, loopsv1alpha1.Dimension{Name: "plan_tier", Field: "tier", Type: "String", Nullable: true})
	})
	testkit.Eventually(t, 30*time.Second, "the new column", func() (bool, string) {
		n := countRows(t, fmt.Sprintf("SELECT count() FROM system.columns WHERE database = '%s' AND table = 'usage_raw' AND name = 'plan_tier'", db))
		return n == 1, fmt.Sprint(n)
	})
	// The workers take the new mapping at the end of the reconcile that added the column;
	// a message read before that stores the column's default, as the README says.
	testkit.Eventually(t, 30*time.Second, "the new generation observed", func() (bool, string) {
		l := get(t, loop)
		return l.Status.ObservedGeneration == l.Generation && condition(l, "Ready") == "True/Succeeded",
			fmt.Sprintf("observed %d of %d, Ready=%s", l.Status.ObservedGeneration, l.Generation, condition(l, "Ready"))
	})
	produceJSON(t, loop.Spec.Streams[0].Topic, []string{`{"id":"e3","customer":"c1","product":"p","ts":1793449817,"region":"eu","tier":"gold"}`})
	testkit.Eventually(t, 60*time.Second, "the new message in the new column, the old rows kept", func() (bool, string) {
		n := countRows(t, "SELECT count() FROM "+table)
		gold := countRows(t, "SELECT count() FROM "+table+" WHERE plan_tier = 'gold'")
		return n == 3 && gold == 1, fmt.Sprintf("%d rows, %d gold", n, gold)
	})
	testkit.Eventually(t, 30*time.Second, "Ready after the evolution", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Ready") == "True/Succeeded" && l.Status.ObservedGeneration == l.Generation, condition(l, "Ready")
	})

	// region: String -> Int64 cannot be applied to rows that hold "eu".
	updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Dimensions[0].Type = "Int64" })
	testkit.Eventually(t, 30*time.Second, "Stalled on the unsafe change", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Stalled") == "True/UnsafeSchemaChange" && condition(l, "Ready") == "False/UnsafeSchemaChange",
			fmt.Sprintf("Stalled=%s Ready=%s", condition(l, "Stalled"), condition(l, "Ready"))
	})
	msg := meta.FindStatusCondition(get(t, loop).Status.Conditions, "Stalled").Message
	if !strings.Contains(msg, "region") || !strings.Contains(msg, "Int64") {
		t.Errorf("the Stalled message does not name the column and the type: %q", msg)
	}
	if typ := columnType(t, db, "usage_raw", "region"); typ != "Nullable(String)" {
		t.Errorf("region is now %s; a refused change must leave it Nullable(String)", typ)
	}
	updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Dimensions[0].Type = "String" })
	testkit.Eventually(t, 30*time.Second, "Ready after reverting", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Ready") == "True/Succeeded" && condition(l, "Stalled") == "False/Succeeded", condition(l, "Ready")
	})
}

func columnType(t *testing.T, db, table, column string) string {
	t.Helper()
	var typ string
	if err := ch.QueryRow(context.Background(), "SELECT type FROM system.columns WHERE database = ? AND table = ? AND name = ?",
		db, table, column).Scan(&typ); err != nil {
		t.Fatal(err)
	}
	return typ
}

// TestDeletionPolicyDelete: deleting a loop whose policy is Delete drops its tables and
// feedback views and keeps its database (Retain is covered by TestLoopLifecycle).
func TestDeletionPolicyDelete(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Spec.DeletionPolicy = loopsv1alpha1.DeletionDelete
	loop.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "plans", Granularity: "Week"}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	db := loop.Spec.ClickHouse.Database
	testkit.Eventually(t, 30*time.Second, "the tables and feedback views", func() (bool, string) {
		n := countRows(t, fmt.Sprintf("SELECT count() FROM system.tables WHERE database = '%s'", db))
		return n == 16, fmt.Sprint(n) // 2 raw tables, the ledger, the dead letters, the feedback rollups' 3 objects each, 6 views
	})
	if err := k8s.Delete(ctx, loop); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the loop gone", func() (bool, string) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(loop), &loopsv1alpha1.CustomerLoop{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	if n := countRows(t, fmt.Sprintf("SELECT count() FROM system.tables WHERE database = '%s'", db)); n != 0 {
		t.Errorf("%d tables left after deleting a loop with deletionPolicy Delete", n)
	}
	if n := countRows(t, fmt.Sprintf("SELECT count() FROM system.databases WHERE name = '%s'", db)); n != 1 {
		t.Errorf("the database is gone too; it may hold others' tables and must stay")
	}
}

// TestClusterNotReady: a loop naming a cluster the server does not have creates nothing
// and says what to fix on the ClickHouse side; no worker starts.
func TestClusterNotReady(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Spec.ClickHouse.Cluster = "analytics"
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "SchemaReady False/ClusterNotReady", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "SchemaReady") == "False/ClusterNotReady" && condition(l, "WorkersReady") == "False/NotReached",
			fmt.Sprintf("SchemaReady=%s WorkersReady=%s", condition(l, "SchemaReady"), condition(l, "WorkersReady"))
	})
	l := get(t, loop)
	if msg := meta.FindStatusCondition(l.Status.Conditions, "SchemaReady").Message; !strings.Contains(msg, `cluster "analytics"`) || !strings.Contains(msg, "remote_servers") {
		t.Errorf("the message does not say what is missing: %q", msg)
	}
	if c := meta.FindStatusCondition(l.Status.Conditions, "Stalled"); c != nil && c.Status == metav1.ConditionTrue {
		t.Errorf("Stalled is True (%s); a server-side fix must be picked up without a spec change", c.Reason)
	}
	if n := countTables(t, loop.Spec.ClickHouse.Database); n != 0 {
		t.Errorf("%d tables were created for a cluster the server does not have", n)
	}
}

func countTables(t *testing.T, db string) uint64 {
	t.Helper()
	var n uint64
	if err := ch.QueryRow(context.Background(), "SELECT count() FROM system.tables WHERE database = ?", db).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
