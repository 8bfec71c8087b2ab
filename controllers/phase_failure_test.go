package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ingest"
	"customerloop.dev/customerloop/test/testkit"
)

// swapTable puts a table of the given engine in place of a loop's table, holding the
// same columns and rows: something ClickHouse lets a user do behind the loop's back,
// which the loop's schema (all its columns are there) does not notice.
func swapTable(t *testing.T, db, table, engine string) {
	t.Helper()
	ctx := context.Background()
	q := func(name string) string { return pipeline.QualifiedTable(db, name) }
	for _, sql := range []string{
		fmt.Sprintf("CREATE TABLE %s AS %s ENGINE = %s", q(table+"_swap"), q(table), engine),
		fmt.Sprintf("INSERT INTO %s SELECT * FROM %s", q(table+"_swap"), q(table)),
		fmt.Sprintf("RENAME TABLE %s TO %s, %s TO %s", q(table), q(table+"_orig"), q(table+"_swap"), q(table)),
	} {
		if err := ch.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// readyCondition returns the loop's Ready condition, or one that says there is none.
func readyCondition(l *loopsv1alpha1.CustomerLoop) metav1.Condition {
	if c := meta.FindStatusCondition(l.Status.Conditions, loopsv1alpha1.ConditionReady); c != nil {
		return *c
	}
	return metav1.Condition{Reason: "<none>"}
}

// TestConsentFailureCondition: a withdrawal that cannot be applied (the usage table was
// swapped for one that has no mutations) sets Ready and WorkersReady False with reason
// ConsentFailed and a message saying what failed, without a credential in it.
func TestConsentFailureCondition(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	useClickHouseSecret(t, loop)
	loop.Spec.Consent = &loopsv1alpha1.ConsentSpec{Topic: loop.Name + ".consent"}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	db, topic := loop.Spec.ClickHouse.Database, loop.Spec.Streams[0].Topic
	var msgs []string
	for i := range 10 {
		msgs = append(msgs, fmt.Sprintf(`{"id":"e%d","customer":"c%d","product":"p0","ts":%d,"qty":1}`, i, i%2, time.Now().Unix()))
	}
	produceJSON(t, topic, msgs)
	testkit.Eventually(t, 60*time.Second, "the events ingested, the loop Ready", func() (bool, string) {
		led, err := ingest.ReadLedgerTotals(ctx, ch, db, topic)
		if err != nil {
			return false, err.Error()
		}
		l := get(t, loop)
		return led.Messages == 10 && condition(l, "Ready") == "True/Succeeded", fmt.Sprintf("ledger %d of 10, Ready=%s", led.Messages, condition(l, "Ready"))
	})
	swapTable(t, db, "usage_raw", "Log")
	produceJSON(t, loop.Spec.Consent.Topic, []string{`{"id":"wd-1","customerId":"c1","action":"withdraw","timestamp":"2026-11-29T10:00:00Z"}`})

	testkit.Eventually(t, 60*time.Second, "Ready=False/ConsentFailed saying what failed", func() (bool, string) {
		l := get(t, loop)
		c := readyCondition(l)
		return c.Status == metav1.ConditionFalse && c.Reason == ReasonConsentFailed &&
				strings.Contains(c.Message, "applying consent") && strings.Contains(c.Message, "usage_raw") &&
				condition(l, "WorkersReady") == "False/ConsentFailed" && condition(l, "SchemaReady") == "True/SchemaApplied" &&
				condition(l, "Reconciling") == "True/Progressing" && c.ObservedGeneration == l.Generation,
			fmt.Sprintf("Ready %s/%s %q; WorkersReady %s, SchemaReady %s", c.Status, c.Reason, c.Message, condition(l, "WorkersReady"), condition(l, "SchemaReady"))
	})
	if c := readyCondition(get(t, loop)); chPass != "" && strings.Contains(c.Message, chPass) {
		t.Error("the ClickHouse password is in Ready's message")
	}
}

// TestRetentionFailureCondition: retention that cannot drop an expired month (the raw
// table was swapped for one partitioned by a String) sets Ready False with reason
// RetentionFailed and a message saying what failed; status.observedGeneration stays at the
// last generation reconciled until a generation reconciles again, while the conditions
// carry the new one.
func TestRetentionFailureCondition(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	db, topic := loop.Spec.ClickHouse.Database, loop.Spec.Streams[0].Topic
	old := time.Date(2020, 3, 10, 0, 0, 0, 0, time.UTC).Unix()
	produceJSON(t, topic, []string{
		fmt.Sprintf(`{"id":"old","customer":"c0","product":"p0","ts":%d,"qty":1}`, old),
		fmt.Sprintf(`{"id":"new","customer":"c0","product":"p0","ts":%d,"qty":1}`, time.Now().Unix()),
	})
	var reconciled int64
	testkit.Eventually(t, 60*time.Second, "the events ingested, the loop Ready", func() (bool, string) {
		led, err := ingest.ReadLedgerTotals(ctx, ch, db, topic)
		if err != nil {
			return false, err.Error()
		}
		l := get(t, loop)
		reconciled = l.Status.ObservedGeneration
		return led.Messages == 2 && condition(l, "Ready") == "True/Succeeded" && reconciled == l.Generation,
			fmt.Sprintf("ledger %d of 2, Ready=%s, generation %d/%d", led.Messages, condition(l, "Ready"), reconciled, l.Generation)
	})
	swapTable(t, db, "usage_raw", "MergeTree PARTITION BY toString(toYYYYMM(ts)) ORDER BY tuple()")
	failing := updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].RetentionDays = ptr(int32(90)) })

	testkit.Eventually(t, 60*time.Second, "Ready=False/RetentionFailed saying what failed", func() (bool, string) {
		l := get(t, loop)
		c := readyCondition(l)
		return c.Status == metav1.ConditionFalse && c.Reason == ReasonRetentionFailed &&
				strings.Contains(c.Message, "retention of stream usage") && strings.Contains(c.Message, "202003") &&
				c.ObservedGeneration == failing.Generation && condition(l, "Reconciling") == "True/Progressing" &&
				condition(l, "SchemaReady") == "True/SchemaApplied" && condition(l, "WorkersReady") == "True/WorkersRunning",
			fmt.Sprintf("Ready %s/%s %q (generation %d); SchemaReady %s, WorkersReady %s", c.Status, c.Reason, c.Message, c.ObservedGeneration,
				condition(l, "SchemaReady"), condition(l, "WorkersReady"))
	})
	if l := get(t, loop); l.Status.ObservedGeneration != reconciled {
		t.Errorf("status.observedGeneration = %d while generation %d fails, want %d, the last one reconciled", l.Status.ObservedGeneration, l.Generation, reconciled)
	}

	fixed := updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].RetentionDays = nil })
	testkit.Eventually(t, 60*time.Second, "Ready again, the new generation observed", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Ready") == "True/Succeeded" && l.Status.ObservedGeneration >= fixed.Generation,
			fmt.Sprintf("Ready=%s, observed %d of %d", condition(l, "Ready"), l.Status.ObservedGeneration, fixed.Generation)
	})
}
