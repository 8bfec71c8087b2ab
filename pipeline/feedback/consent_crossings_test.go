package feedback

import (
	"context"
	"slices"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

// TestWithdrawalDeletesTrackingCrossings: a withdrawal also deletes the customer's rows
// from the digest publisher's tracking crossings, and says so in the audit; another
// customer's rows stay.
func TestWithdrawalDeletesTrackingCrossings(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_consent_crossings"))
	cfg.ClickHouse.Addr = stacktest.ClickhouseAddr(t)
	cfg.Consent = &pipeline.ConsentConfig{Topic: "consent"}
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	stmt, err := ddl.TrackingTableStatement(cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	if err := ddl.ApplySchema(ctx, ch, []pipeline.Statement{stmt}); err != nil {
		t.Fatal(err)
	}
	db := cfg.ClickHouse.Database
	now := time.Now().UTC().Truncate(time.Second)
	signal := 4.5
	var crossings [][]any
	for _, c := range []string{"c1", "c1", "c2"} {
		crossings = append(crossings, []any{cfg.Loop, "p0", c, int8(1), &signal, now, now.UnixNano(), "test", now})
	}
	ddltest.InsertInto(t, ch, db, pipeline.TrackingTable, crossings...)
	withdraw := pipeline.ConsentEvent{ID: "wd-1", Customer: "c1", Action: pipeline.ConsentWithdraw, At: now, Received: now, Topic: "consent", Offset: 1}
	ddltest.InsertInto(t, ch, db, pipeline.ConsentTable, []any{withdraw.ID, withdraw.Customer, withdraw.Action, []string{}, withdraw.At, withdraw.Received, "", withdraw.Topic, int32(0), withdraw.Offset})
	plans, err := ddl.PlanRollups(cfg)
	if err != nil {
		t.Fatal(err)
	}
	audits, _, err := ApplyConsent(ctx, ch, cfg, plans, []pipeline.ConsentEvent{withdraw})
	if err != nil {
		t.Fatal(err)
	}
	left := map[string]uint64{}
	rows, err := ch.Query(ctx, "SELECT customer_id, count() FROM "+pipeline.QualifiedTable(db, pipeline.TrackingTable)+" GROUP BY customer_id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var c string
		var n uint64
		if err := rows.Scan(&c, &n); err != nil {
			t.Fatal(err)
		}
		left[c] = n
	}
	rows.Close()
	if left["c1"] != 0 || left["c2"] != 1 {
		t.Errorf("crossings left per customer %v, want none of c1 and c2's one", left)
	}
	if len(audits) != 1 {
		t.Fatalf("%d audits, want 1", len(audits))
	}
	a := audits[0]
	i := slices.Index(a.Tables, pipeline.TrackingTable)
	if i < 0 || a.RowsDeleted[i] != 2 {
		t.Errorf("audit: tables %v, rows deleted %v; want %s with 2 rows", a.Tables, a.RowsDeleted, pipeline.TrackingTable)
	}
}
