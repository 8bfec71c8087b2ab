package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/test/testkit"
)

type dailyKey struct{ day, customer, product, region string }

type dailyTotals struct {
	events uint64
	used   float64
}

// usageEvents returns n usage events numbered from first, over three days, some without
// a region, and adds them to want.
func usageEvents(first, n int, want map[dailyKey]dailyTotals) []string {
	var out []string
	for i := first; i < first+n; i++ {
		ts := int64(1793449815 + i*617)
		k := dailyKey{time.Unix(ts, 0).UTC().Format("2006-01-02"), fmt.Sprintf("c%d", i%4), fmt.Sprintf("p%d", i%3), "-"}
		qty := float64(i%17) / 4
		region := ""
		if i%5 != 0 {
			k.region = []string{"eu", "us"}[i%2]
			region = fmt.Sprintf(`,"region":%q`, k.region)
		}
		out = append(out, fmt.Sprintf(`{"id":"e%d","customer":%q,"product":%q,"ts":%d,"qty":%v%s}`, i, k.customer, k.product, ts, qty, region))
		w := want[k]
		w.events++
		w.used += qty
		want[k] = w
	}
	return out
}

// readRollup reads the per-group totals of a loop's rollup_daily read view.
func readRollup(t *testing.T, db string) (map[dailyKey]dailyTotals, error) {
	t.Helper()
	return readRollupOn(t, ch, db)
}

// readRollupOn reads the rollup_daily read view through conn.
func readRollupOn(t *testing.T, conn driver.Conn, db string) (map[dailyKey]dailyTotals, error) {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT toString(period), customer_id, product, ifNull(region, '-'), events, used FROM "+
		pipeline.QualifiedTable(db, "rollup_daily"))
	if err != nil {
		return nil, err // the view may not exist yet
	}
	defer rows.Close()
	got := map[dailyKey]dailyTotals{}
	for rows.Next() {
		var k dailyKey
		var v dailyTotals
		if err := rows.Scan(&k.day, &k.customer, &k.product, &k.region, &v.events, &v.used); err != nil {
			return nil, err
		}
		got[k] = v
	}
	return got, rows.Err()
}

func diffTotals(got, want map[dailyKey]dailyTotals) string {
	var diffs []string
	for k, w := range want {
		if g := got[k]; g != w {
			diffs = append(diffs, fmt.Sprintf("%v: %+v, want %+v", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%v: %+v, want no row", k, g))
		}
	}
	slices.Sort(diffs)
	if len(diffs) > 5 {
		diffs = append(diffs[:5], fmt.Sprintf("and %d more", len(diffs)-5))
	}
	return strings.Join(diffs, "; ")
}

func dailyRollup() loopsv1alpha1.RollupSpec {
	return loopsv1alpha1.RollupSpec{
		Name: "daily", Stream: "usage", Dimensions: []string{"customer_id", "product", "region"}, Granularity: "Day",
		Measures: []loopsv1alpha1.RollupMeasure{
			{Name: "events", Function: "Count"},
			{Name: "used", Function: "Sum", Field: "quantity"},
		},
	}
}

// TestRollupLoop runs a loop with a rollup through the in-process runner: its read view
// holds exactly what was produced, per group. Adding a measure while events keep arriving
// builds a new version behind stopped workers, and the totals stay exact: a row counted
// twice or missed by the swap would show. Deleting the loop (policy Delete) drops every
// rollup object.
func TestRollupLoop(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Spec.DeletionPolicy = loopsv1alpha1.DeletionDelete
	loop.Spec.Rollups = []loopsv1alpha1.RollupSpec{dailyRollup()}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	db, topic := loop.Spec.ClickHouse.Database, loop.Spec.Streams[0].Topic
	want := map[dailyKey]dailyTotals{}
	produceJSON(t, topic, usageEvents(0, 400, want))

	exact := func(what string, rows int64) {
		t.Helper()
		testkit.Eventually(t, 90*time.Second, what, func() (bool, string) {
			l := get(t, loop)
			got, err := readRollup(t, db)
			if err != nil {
				return false, err.Error()
			}
			diff := diffTotals(got, want)
			return l.Status.RowsIngested == rows && diff == "" && condition(l, "Ready") == "True/Succeeded",
				fmt.Sprintf("rows=%d Ready=%s rollup: %s", l.Status.RowsIngested, condition(l, "Ready"), diff)
		})
	}
	exact("the rollup equal to what was produced", 400)
	l := get(t, loop)
	var version1 string
	for _, o := range l.Status.Objects {
		if strings.HasPrefix(o, db+".rollup_daily_v") && !strings.HasSuffix(o, "_mv") {
			version1 = o
		}
	}
	if version1 == "" || !slices.Contains(l.Status.Objects, db+".rollup_daily") || !slices.Contains(l.Status.Objects, version1+"_mv") {
		t.Fatalf("status.objects = %v, want the read view, the version table and its materialized view", l.Status.Objects)
	}

	// A rollup in place costs nothing: reconciles go on (every second here) and the
	// worker is never stopped.
	worker := func() *inProcessLoop {
		runner.mu.Lock()
		defer runner.mu.Unlock()
		return runner.loops[client.ObjectKeyFromObject(loop)]
	}
	w0 := worker()
	time.Sleep(3 * time.Second)
	if w := worker(); w == nil || w != w0 {
		t.Errorf("the worker was restarted while the rollup was current")
	}

	// Events keep arriving while a measure is added.
	produced := make(chan error, 1)
	go func() {
		w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond}
		defer w.Close()
		for batch := range 10 {
			var msgs []kafka.Message
			for _, v := range usageEvents(400+batch*60, 60, map[dailyKey]dailyTotals{}) {
				msgs = append(msgs, kafka.Message{Value: []byte(v)})
			}
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				produced <- err
				return
			}
			time.Sleep(150 * time.Millisecond)
		}
		produced <- nil
	}()
	usageEvents(400, 600, want)
	time.Sleep(300 * time.Millisecond)
	l = updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) {
		l.Spec.Rollups[0].Measures = append(l.Spec.Rollups[0].Measures, loopsv1alpha1.RollupMeasure{Name: "largest", Function: "Max", Field: "quantity"})
	})
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	exact("the rollup exact after the swap", 1000)
	testkit.Eventually(t, 30*time.Second, "status naming the new version alone", func() (bool, string) {
		l := get(t, loop)
		return !slices.Contains(l.Status.Objects, version1) && l.Status.ObservedGeneration == l.Generation, fmt.Sprint(l.Status.Objects)
	})
	var largest float64
	if err := ch.QueryRow(ctx, "SELECT max(largest) FROM "+pipeline.QualifiedTable(db, "rollup_daily")).Scan(&largest); err != nil || largest != 4 {
		t.Errorf("max(largest) = %v (%v), want 4", largest, err)
	}
	if n := countRows(t, fmt.Sprintf("SELECT count() FROM system.tables WHERE database = '%s' AND name LIKE 'rollup_daily_v%%'", db)); n != 2 {
		t.Errorf("%d version tables and views, want the new table and its materialized view", n)
	}

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
}

// TestInvalidRollupStalls: a rollup that sums a String column stalls the loop with a
// reason and a message naming the rollup and the field; fixing it makes the loop Ready.
func TestInvalidRollupStalls(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	r := dailyRollup()
	r.Measures[1].Field = "region"
	loop.Spec.Rollups = []loopsv1alpha1.RollupSpec{r}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "Stalled with InvalidRollup", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Stalled") == "True/InvalidRollup" && condition(l, "Ready") == "False/InvalidRollup",
			fmt.Sprintf("Stalled=%s Ready=%s", condition(l, "Stalled"), condition(l, "Ready"))
	})
	msg := meta.FindStatusCondition(get(t, loop).Status.Conditions, "Stalled").Message
	if !strings.Contains(msg, "rollup daily") || !strings.Contains(msg, `"region"`) || !strings.Contains(msg, `"used"`) {
		t.Errorf("the Stalled message does not name the rollup, the measure and the field: %q", msg)
	}
	updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Rollups[0].Measures[1].Field = "quantity" })
	testkit.Eventually(t, 30*time.Second, "Ready once fixed", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Ready") == "True/Succeeded" && condition(l, "Stalled") == "False/Succeeded", condition(l, "Ready")
	})
}

// TestRollupWaitsForWorkerPods: with the Deployment runner, a new rollup is built only
// once no worker pod of the loop exists (a terminating pod may still be writing); until
// then the loop says so, and its workers are not started.
func TestRollupWaitsForWorkerPods(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Namespace = deploymentNamespace
	useClickHouseSecret(t, loop)
	loop.Spec.Rollups = []loopsv1alpha1.RollupSpec{dailyRollup()}

	// A worker pod of the loop, still running (envtest has no kubelet: it stays).
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: deploymentNamespace}}
	if err := k8s.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-worker-7d9f-x2x5", Namespace: deploymentNamespace, Labels: workerLabels(loop)},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "worker", Image: "customerloop:test"}}},
	}
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	db := loop.Spec.ClickHouse.Database
	testkit.Eventually(t, 30*time.Second, "Reconciling on the rollup backfill, naming the pod", func() (bool, string) {
		l := get(t, loop)
		c := meta.FindStatusCondition(l.Status.Conditions, "Reconciling")
		if c == nil {
			return false, "no Reconciling condition"
		}
		return c.Status == "True" && c.Reason == ReasonRollupBackfill && strings.Contains(c.Message, pod.Name) &&
				strings.Contains(c.Message, "rollup daily") && condition(l, "Ready") == "False/RollupBackfill",
			fmt.Sprintf("Reconciling=%s/%s %q Ready=%s", c.Status, c.Reason, c.Message, condition(l, "Ready"))
	})
	if n := countRows(t, fmt.Sprintf("SELECT count() FROM system.tables WHERE database = '%s' AND name LIKE 'rollup%%'", db)); n != 0 {
		t.Errorf("%d rollup objects exist while a worker pod runs", n)
	}
	key := types.NamespacedName{Namespace: deploymentNamespace, Name: loop.Name + "-worker"}
	if err := k8s.Get(ctx, key, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("the worker Deployment exists while the rollup waits: %v", err)
	}

	if err := k8s.Delete(ctx, pod, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the rollup built, then the workers started", func() (bool, string) {
		n := countRows(t, fmt.Sprintf("SELECT count() FROM system.tables WHERE database = '%s' AND name LIKE 'rollup%%'", db))
		err := k8s.Get(ctx, key, &appsv1.Deployment{})
		l := get(t, loop)
		return n == 3 && err == nil && condition(l, "SchemaReady") == "True/SchemaApplied",
			fmt.Sprintf("%d rollup objects, Deployment: %v, SchemaReady=%s", n, err, condition(l, "SchemaReady"))
	})
}
