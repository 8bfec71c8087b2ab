package ddl

import (
	"context"
	"testing"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ApplyClusterSchema creates cfg's schema ON CLUSTER and drops the database on every
// node when the test ends.
func applyClusterSchema(t testing.TB, cfg pipeline.Config) driver.Conn {
	t.Helper()
	ctx := context.Background()
	ch, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ch.Exec(ctx, "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(cfg.ClickHouse.Database)+cfg.ClickHouse.OnCluster())
		_ = ch.Close()
	})
	stmts, err := PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplySchema(ctx, ch, stmts); err != nil {
		t.Fatal(err)
	}
	return ch
}

// ApplySchema creates the config's database and tables on the test server; the database
// is dropped, and the connection closed, when the test ends.
func applySchema(t *testing.T, cfg pipeline.Config) driver.Conn {
	t.Helper()
	ctx := context.Background()
	ch, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ch.Exec(ctx, "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(cfg.ClickHouse.Database))
		_ = ch.Close()
	})
	stmts, err := PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplySchema(ctx, ch, stmts); err != nil {
		t.Fatal(err)
	}
	return ch
}
