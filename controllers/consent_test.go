package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ingest"
	"customerloop.dev/customerloop/test/testkit"
)

// withoutCustomer returns the totals of want without one customer's groups.
func withoutCustomer(want map[dailyKey]dailyTotals, customer string) map[dailyKey]dailyTotals {
	out := map[dailyKey]dailyTotals{}
	for k, v := range want {
		if k.customer != customer {
			out[k] = v
		}
	}
	return out
}

// TestConsentWithdrawalAndGrant runs a loop with a rollup, feedback and a consent
// stream on the real stack. Customer c1 withdraws while its events are still being
// produced and ingested: once the withdrawal is audited as complete and every produced
// offset is in the ledger, no row of c1 is in either raw table, the rollup equals the
// totals of the other customers exactly (so c1's contribution left and nothing else
// did), the feedback gaps hold no c1 row, and the ledger accounts for every message, c1's
// later ones as withheld. After a grant, c1's new events are stored and counted again.
func TestConsentWithdrawalAndGrant(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Spec.Consent = &loopsv1alpha1.ConsentSpec{Topic: loop.Name + ".consent"}
	// rollup_daily groups by customer (its groups of c1 are deleted), rollup_products
	// does not (it is rebuilt from raw).
	loop.Spec.Rollups = []loopsv1alpha1.RollupSpec{dailyRollup(), {Name: "products", Stream: "usage", Dimensions: []string{"product"},
		Granularity: "Month", Measures: []loopsv1alpha1.RollupMeasure{{Name: "events", Function: "Count"}}}}
	loop.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "plans"}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	db, topic, plansTopic, consentTopic := loop.Spec.ClickHouse.Database, loop.Spec.Streams[0].Topic, loop.Spec.Streams[1].Topic, loop.Spec.Consent.Topic
	usage, plans := pipeline.QualifiedTable(db, "usage_raw"), pipeline.QualifiedTable(db, "plans_raw")
	want := map[dailyKey]dailyTotals{}
	produceJSON(t, topic, usageEvents(0, 400, want))
	var planMsgs []string
	for i := range 8 {
		planMsgs = append(planMsgs, fmt.Sprintf(`{"id":"p%d","customer":"c%d","product":"p%d","period":"2026-11-01","qty":%d}`, i, i%4, i%3, 100+i))
	}
	produceJSON(t, plansTopic, planMsgs)

	settled := func(what string, produced int64, want map[dailyKey]dailyTotals) {
		t.Helper()
		testkit.Eventually(t, 90*time.Second, what, func() (bool, string) {
			led, err := ingest.ReadLedgerTotals(ctx, ch, db, topic)
			if err != nil {
				return false, err.Error()
			}
			got, err := readRollup(t, db)
			if err != nil {
				return false, err.Error()
			}
			diff := diffTotals(got, want)
			l := get(t, loop)
			var stored, byProduct uint64
			if err := ch.QueryRow(ctx, "SELECT (SELECT count() FROM "+usage+"), (SELECT sum(events) FROM "+
				pipeline.QualifiedTable(db, "rollup_products")+")").Scan(&stored, &byProduct); err != nil {
				return false, err.Error()
			}
			return led.Messages == produced && diff == "" && stored == byProduct && condition(l, "Ready") == "True/Succeeded",
				fmt.Sprintf("ledger messages=%d of %d, Ready=%s, rollup_products counts %d of %d rows, rollup_daily: %s",
					led.Messages, produced, condition(l, "Ready"), byProduct, stored, diff)
		})
	}
	settled("all 400 events ingested", 400, want)
	if n := countRows(t, "SELECT count() FROM "+usage+" WHERE customer_id = 'c1'"); n != 100 {
		t.Fatalf("c1 has %d usage rows before the withdrawal, want 100", n)
	}

	// c1 withdraws while events (c1's among them) are produced: some are read before the
	// withdrawal is recorded, some while the workers stop, some after.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for batch := range 10 {
			produceJSON(t, topic, usageEvents(400+batch*40, 40, map[dailyKey]dailyTotals{}))
			if batch == 3 {
				produceJSON(t, consentTopic, []string{`{"id":"bad-1","customerId":"c2","action":"forget","timestamp":1}`, `{"id":"wd-1","customerId":"c1","action":"withdraw","timestamp":"2026-11-29T10:00:00Z"}`})
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	usageEvents(400, 400, want)
	<-done
	audited := func(id string) {
		t.Helper()
		testkit.Eventually(t, 90*time.Second, "consent "+id+" audited as complete", func() (bool, string) {
			n := countRows(t, fmt.Sprintf("SELECT count() FROM %s WHERE id = '%s' AND completed_at > toDateTime(0)",
				pipeline.QualifiedTable(db, pipeline.ConsentAuditTable), id))
			return n == 1, fmt.Sprintf("%d audit rows", n)
		})
	}
	audited("wd-1")
	// More of c1's events after the withdrawal is complete: withheld, never stored.
	produceJSON(t, topic, usageEvents(800, 200, want))
	settled("the rollup without c1", 1000, withoutCustomer(want, "c1"))
	for table, q := range map[string]string{usage: "SELECT count() FROM %s WHERE customer_id = 'c1'", plans: "SELECT count() FROM %s WHERE customer_id = 'c1'",
		pipeline.QualifiedTable(db, pipeline.ViewGaps): "SELECT count() FROM %s WHERE customer_id = 'c1'"} {
		if n := countRows(t, fmt.Sprintf(q, table)); n != 0 {
			t.Errorf("%s holds %d rows of c1 after its withdrawal", table, n)
		}
	}
	if n := countRows(t, "SELECT count() FROM "+usage); n != 750 {
		t.Errorf("usage holds %d rows, want the other customers' 750", n)
	}
	if n := countRows(t, "SELECT count() FROM "+plans); n != 6 {
		t.Errorf("plans holds %d rows, want the other customers' 6", n)
	}
	led, err := ingest.ReadLedgerTotals(ctx, ch, db, topic)
	if err != nil {
		t.Fatal(err)
	}
	// c1's last 50 events came after the withdrawal was complete; earlier ones may have
	// been stored and deleted, or withheld, depending on when they were read.
	if led.Withheld < 50 || led.Withheld > 150 {
		t.Errorf("ledger: %d messages withheld, want between 50 (c1's after the withdrawal) and 150 (all c1's since it)", led.Withheld)
	}
	testkit.Eventually(t, 30*time.Second, "status counting the withheld messages", func() (bool, string) {
		l := get(t, loop)
		if len(l.Status.Streams) == 0 {
			return false, "no stream status"
		}
		return l.Status.Streams[0].MessagesWithheld == led.Withheld, fmt.Sprintf("status.streams[0].messagesWithheld = %d, ledger %d", l.Status.Streams[0].MessagesWithheld, led.Withheld)
	})
	var (
		tables     []string
		deleted    []uint64
		mutations  []string
		action     string
		receivedAt time.Time
	)
	if err := ch.QueryRow(ctx, "SELECT tables, rows_deleted, mutation_ids, action, received_at FROM "+
		pipeline.QualifiedTable(db, pipeline.ConsentAuditTable)+" WHERE id = 'wd-1'").Scan(&tables, &deleted, &mutations, &action, &receivedAt); err != nil {
		t.Fatal(err)
	}
	// usage_raw, then the version tables of rollup_daily and of the feedback actuals
	// (c1's groups), then plans_raw and the version table of the feedback plans.
	if action != "withdraw" || len(tables) != 5 || len(deleted) != 5 || tables[0] != "usage_raw" || !strings.HasPrefix(tables[1], "rollup_daily_v") ||
		!strings.HasPrefix(tables[2], "rollup_feedback_actuals_v") || tables[3] != "plans_raw" || !strings.HasPrefix(tables[4], "rollup_feedback_plans_v") ||
		deleted[0] < 100 || deleted[1] == 0 || deleted[2] == 0 || deleted[3] != 2 || deleted[4] == 0 || len(mutations) != 5 || receivedAt.IsZero() {
		t.Errorf("audit of wd-1: action %s, tables %v, rows deleted %v, mutations %v, received %v; want usage_raw (>= 100 rows), the tables of rollup_daily and of the feedback actuals, plans_raw (2 rows) and the table of the feedback plans, five mutations",
			action, tables, deleted, mutations, receivedAt)
	}

	// A grant resumes ingestion.
	produceJSON(t, consentTopic, []string{`{"id":"gr-1","customerId":"c1","action":"grant","scope":["usage"],"timestamp":1795950000}`})
	audited("gr-1")
	fresh := map[dailyKey]dailyTotals{}
	produceJSON(t, topic, usageEvents(1000, 40, fresh))
	after := withoutCustomer(want, "c1")
	for k, v := range fresh {
		a := after[k]
		a.events += v.events
		a.used += v.used
		after[k] = a
	}
	settled("c1's events stored again after the grant", 1040, after)
	if n := countRows(t, "SELECT count() FROM "+usage+" WHERE customer_id = 'c1'"); n != 10 {
		t.Errorf("c1 has %d usage rows after the grant, want its 10 new ones", n)
	}

	// A withdrawal dated before the grant arrives late: the grant stands, nothing is
	// deleted. A refused message was audited with its error and changed nothing (c2's
	// rows are all there).
	produceJSON(t, consentTopic, []string{`{"id":"wd-late","customerId":"c1","action":"withdraw","timestamp":"2026-11-29T10:30:00Z"}`})
	audited("wd-late")
	if n := countRows(t, "SELECT count() FROM "+usage+" WHERE customer_id = 'c1'"); n != 10 {
		t.Errorf("c1 has %d usage rows after a withdrawal older than its grant, want 10", n)
	}
	if n := countRows(t, fmt.Sprintf("SELECT count() FROM %s WHERE id = 'bad-1' AND error LIKE '%%forget%%'", pipeline.QualifiedTable(db, pipeline.ConsentAuditTable))); n != 1 {
		t.Errorf("the refused message has %d audit rows with its error, want 1", n)
	}
	if n := countRows(t, "SELECT count() FROM "+usage+" WHERE customer_id = 'c2'"); n != 260 {
		t.Errorf("c2 has %d usage rows, want 260", n)
	}
}
