// Package ddltest creates a loop's tables on the test servers for the tests of the planes
// above the schema plane.
package ddltest

import (
	"context"
	"testing"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ApplyClusterSchema creates cfg's schema ON CLUSTER and drops the database on every
// node when the test ends.
func ApplyClusterSchema(t testing.TB, cfg pipeline.Config) driver.Conn {
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
	stmts, err := ddl.PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
		t.Fatal(err)
	}
	return ch
}

// ApplySchema creates the config's database and tables on the test server; the database
// is dropped, and the connection closed, when the test ends.
func ApplySchema(t *testing.T, cfg pipeline.Config) driver.Conn {
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
	stmts, err := ddl.PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
		t.Fatal(err)
	}
	return ch
}
