package ddl

import (
	"context"
	"testing"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// applySchema is ddltest.ApplySchema for this package's own tests, which cannot import
// ddltest (it imports this package).
func applySchema(t testing.TB, cfg pipeline.Config) driver.Conn {
	t.Helper()
	ch := stacktest.Database(t, cfg.ClickHouse)
	stmts, err := PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplySchema(context.Background(), ch, stmts); err != nil {
		t.Fatal(err)
	}
	return ch
}
