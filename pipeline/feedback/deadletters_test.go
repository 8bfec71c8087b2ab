package feedback

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

// summaryText is a summary as "period reason count [topic/partition:offset ...]".
func summaryText(ss []DeadLetterSummary) []string {
	var out []string
	for _, s := range ss {
		first := ""
		for _, f := range s.First {
			first += fmt.Sprintf(" %s/%d:%d", f.Topic, f.Partition, f.Offset)
		}
		out = append(out, fmt.Sprintf("%s %s %d [%s]", s.Period.Format(time.DateOnly), s.Reason, s.Count, first[min(1, len(first)):]))
	}
	return out
}

// TestReadDeadLetters reads two customers' dead letters, written as workers write them,
// some twice (a batch read again after a crash before the ledger): per period and
// reason, each message counts once, the first positions are in offset order, nothing of
// another customer is read; the statement carries them by period; a withdrawal deletes
// those of its scope's streams only.
func TestReadDeadLetters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_dead_letters"))
	cfg.ClickHouse.Addr = stacktest.ClickhouseAddr(t)
	cfg.Consent = &pipeline.ConsentConfig{Topic: "consent"}
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	db := cfg.ClickHouse.Database

	oct, nov := time.Date(2026, 10, 14, 9, 0, 0, 0, time.UTC), time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	at := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	row := func(customer, stream, reason, topic string, partition int32, offset int64, event time.Time) []any {
		return []any{customer, stream, reason, topic, partition, offset, event, at}
	}
	var rows [][]any
	for _, off := range []int64{10, 3, 7, 1, 9, 2, 8, 3, 7} { // 3 and 7 written twice
		rows = append(rows, row("c1", "usage", "wrong_type", "u", 0, off, oct))
	}
	rows = append(rows,
		row("c1", "usage", "wrong_type", "u", 1, 0, oct.Add(time.Hour)),
		row("c1", "usage", "missing_field", "u", 0, 20, oct),
		row("c1", "usage", "missing_field", "u", 0, 20, oct), // written twice
		row("c1", "plans", "invalid_json", "p", 0, 30, nov),
		row("c2", "usage", "wrong_type", "u", 0, 11, oct),
		row("", "usage", "invalid_json", "u", 0, 12, oct),
	)
	ddltest.InsertInto(t, ch, db, pipeline.DeadLettersTable, rows...)

	got, err := ReadDeadLetters(ctx, ch, fc, "c1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"2026-10-01 missing_field 1 [u/0:20]",
		"2026-10-01 wrong_type 8 [u/1:0 u/0:1 u/0:2 u/0:3 u/0:7]",
		"2026-11-01 invalid_json 1 [p/0:30]",
	}
	if !slices.Equal(summaryText(got), want) {
		t.Errorf("c1's dead letters:\n%q\nwant\n%q", summaryText(got), want)
	}
	weekly := fc
	weekly.Grain = pipeline.GrainWeek
	if got, err := ReadDeadLetters(ctx, ch, weekly, "c2"); err != nil || !slices.Equal(summaryText(got), []string{"2026-10-12 wrong_type 1 [u/0:11]"}) {
		t.Errorf("c2's dead letters by week: %q (%v)", summaryText(got), err)
	}
	if got, err := ReadDeadLetters(ctx, ch, fc, "c3"); err != nil || got == nil || len(got) != 0 {
		t.Errorf("a customer without dead letters: %v (%v), want empty", got, err)
	}

	st, err := ReadStatement(ctx, ch, fc, "test/acme", "c1", at)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st.DeadLetters)
	if err != nil {
		t.Fatal(err)
	}
	wantJSON := `[{"period":"2026-10-01","count":9,"reasons":[` +
		`{"reason":"missing_field","count":1,"first":[{"topic":"u","partition":0,"offset":20}]},` +
		`{"reason":"wrong_type","count":8,"first":[{"topic":"u","partition":1,"offset":0},{"topic":"u","partition":0,"offset":1},` +
		`{"topic":"u","partition":0,"offset":2},{"topic":"u","partition":0,"offset":3},{"topic":"u","partition":0,"offset":7}]}]},` +
		`{"period":"2026-11-01","count":1,"reasons":[{"reason":"invalid_json","count":1,"first":[{"topic":"p","partition":0,"offset":30}]}]}]`
	if string(b) != wantJSON {
		t.Errorf("the statement's dead letters:\n%s\nwant\n%s", b, wantJSON)
	}

	// c1 withdraws from usage: their usage dead letters go, their plans' stay, and
	// nobody else's are touched.
	now := time.Now().UTC().Truncate(time.Second)
	withdraw := pipeline.ConsentEvent{ID: "wd-1", Customer: "c1", Action: pipeline.ConsentWithdraw, Scope: []string{"usage"}, At: now, Received: now, Topic: "consent", Offset: 1}
	ddltest.InsertInto(t, ch, db, pipeline.ConsentTable, []any{withdraw.ID, withdraw.Customer, withdraw.Action, withdraw.Scope, withdraw.At, withdraw.Received, "", withdraw.Topic, int32(0), withdraw.Offset})
	plans, err := ddl.PlanRollups(cfg)
	if err != nil {
		t.Fatal(err)
	}
	audits, _, err := ApplyConsent(ctx, ch, cfg, plans, []pipeline.ConsentEvent{withdraw})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ReadDeadLetters(ctx, ch, fc, "c1"); err != nil || !slices.Equal(summaryText(got), want[2:]) {
		t.Errorf("c1's dead letters after withdrawing from usage: %q (%v), want %q", summaryText(got), err, want[2:])
	}
	var left uint64
	if err := ch.QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(db, pipeline.DeadLettersTable)+" WHERE customer_id != 'c1'").Scan(&left); err != nil || left != 2 {
		t.Errorf("%d rows of others left (err %v), want 2", left, err)
	}
	if i := slices.Index(audits[0].Tables, pipeline.DeadLettersTable); i < 0 || audits[0].RowsDeleted[i] != 12 {
		t.Errorf("audit: tables %v, rows deleted %v; want %s with 12 rows", audits[0].Tables, audits[0].RowsDeleted, pipeline.DeadLettersTable)
	}

	// A loop whose schema predates the table has no dead letters, not an error.
	if err := ch.Exec(ctx, "DROP TABLE "+pipeline.QualifiedTable(db, pipeline.DeadLettersTable)); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadDeadLetters(ctx, ch, fc, "c1"); err != nil || got == nil || len(got) != 0 {
		t.Errorf("without the table: %v (%v), want empty", got, err)
	}
}
