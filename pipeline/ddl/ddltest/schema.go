// Package ddltest creates a loop's tables on the test servers for the tests of the planes
// above the schema plane, fills them, and checks what ClickHouse aggregates from them.
package ddltest

import (
	"context"
	"testing"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ApplySchema creates the config's database and tables on the test server (ON CLUSTER
// for a clustered config); the database is dropped, and the connection closed, when the
// test ends.
func ApplySchema(t testing.TB, cfg pipeline.Config) driver.Conn {
	t.Helper()
	ch := stacktest.Database(t, cfg.ClickHouse)
	stmts, err := ddl.PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ddl.ApplySchema(context.Background(), ch, stmts); err != nil {
		t.Fatal(err)
	}
	return ch
}

// ApplyFeedback creates the config's tables, as ApplySchema, then the feedback rollup
// and views, as Feedback.
func ApplyFeedback(t testing.TB, cfg pipeline.Config, fc pipeline.FeedbackConfig) driver.Conn {
	t.Helper()
	ch := ApplySchema(t, cfg)
	Feedback(t, ch, cfg, fc)
	return ch
}

// Feedback creates, over tables that exist, what a loop with feedback fc has: the
// feedback_actuals rollup (built and backfilled as the controller does, with no worker
// to stop) and the feedback views.
func Feedback(t testing.TB, ch driver.Conn, cfg pipeline.Config, fc pipeline.FeedbackConfig) {
	t.Helper()
	ctx := context.Background()
	cfg.Feedback = &fc
	plans, err := ddl.PlanRollups(cfg)
	if err != nil {
		t.Fatal(err)
	}
	noWorkers := func([]string) (bool, error) { return true, nil }
	if _, _, err := ddl.ApplyRollups(ctx, ch, cfg.ClickHouse.Database, plans, noWorkers); err != nil {
		t.Fatal(err)
	}
	stmts, err := ddl.PlanFeedback(fc)
	if err != nil {
		t.Fatal(err)
	}
	if err := ddl.ApplyFeedback(ctx, ch, fc.Database, stmts); err != nil {
		t.Fatal(err)
	}
}

// Insert adds rows, each the values of stream s's columns in order, to the stream's
// table in one batch (ddl.InsertRows; 18.16 hangs on INSERT ... VALUES with inline data).
func Insert(t testing.TB, ch driver.Conn, db string, s pipeline.StreamConfig, rows ...[]any) {
	t.Helper()
	if err := ddl.InsertRows(context.Background(), ch, db, s, rows); err != nil {
		t.Fatal(err)
	}
}

// InsertInto adds rows, each the values of the table's columns in order, to any table
// of db in one batch: the loop's own tables beside the streams'.
func InsertInto(t testing.TB, ch driver.Conn, db, table string, rows ...[]any) {
	t.Helper()
	b, err := ch.PrepareBatch(context.Background(), "INSERT INTO "+pipeline.QualifiedTable(db, table))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if err := b.Append(r...); err != nil {
			_ = b.Abort()
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}
