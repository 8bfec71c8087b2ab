package ddl

import (
	"context"
	"strings"
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

// nodeViews reads the CREATE query of every table and view of db on one server.
func nodeViews(ctx context.Context, conn driver.Conn, db string) (map[string]string, error) {
	all := map[string]definition{}
	if err := readTables(ctx, conn, db, all); err != nil {
		return nil, err
	}
	existing := make(map[string]string, len(all))
	for name, d := range all {
		existing[strings.TrimPrefix(name, db+".")] = d.query
	}
	return existing, nil
}
