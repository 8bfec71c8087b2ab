// Package ddl is the schema plane: it plans, as plain statements, the ClickHouse objects
// a loop owns (raw tables, ledger, consent and digest tables, rollups, feedback views,
// retention) and applies them: creating what is missing, migrating what may change,
// refusing what may not. Planners are pure and golden-tested; applying goes through
// connect.
package ddl

import (
	"context"
	"fmt"
	"strings"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// InsertRows writes rows of one stream in one INSERT, so that the batch lands as a whole
// block (per partition of the table).
func InsertRows(ctx context.Context, conn driver.Conn, database string, s pipeline.StreamConfig, rows [][]any) error {
	batch, err := conn.PrepareBatch(ctx, InsertSQL(database, s))
	if err != nil {
		return fmt.Errorf("preparing insert into %s: %w", s.Table(), err)
	}
	for _, r := range rows {
		if err := batch.Append(r...); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("appending to %s: %w", s.Table(), err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("inserting into %s: %w", s.Table(), err)
	}
	return nil
}

// EventTimeColumn is the index of the row value that says when the customer did or
// decided something: ts for usage, submitted_at for plans.
func EventTimeColumn(kind pipeline.Kind) int {
	if kind == pipeline.KindPlan {
		return 5
	}
	return 3
}

// PlanSchema returns the DDL that creates the loop's database, its ledger, dead letters
// and raw tables. It is a pure function of the config; applying its statements again
// changes nothing.
func PlanSchema(cfg pipeline.Config) ([]pipeline.Statement, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	db := cfg.ClickHouse.Database
	stmts := []pipeline.Statement{{
		Object: db,
		SQL:    "CREATE DATABASE IF NOT EXISTS " + pipeline.QuoteIdent(db) + cfg.ClickHouse.OnCluster(),
	}}
	stmts = append(stmts, ledgerDDL(cfg.ClickHouse)...)
	stmts = append(stmts, deadLettersDDL(cfg.ClickHouse)...)
	if cfg.Consent != nil {
		stmts = append(stmts, consentDDL(cfg.ClickHouse)...)
	}
	for _, s := range cfg.Streams {
		stmts = append(stmts, rawTableDDL(cfg.ClickHouse, s)...)
	}
	return stmts, nil
}

// createTableDDL is the head of a CREATE TABLE statement, up to the engine clause.
func createTableDDL(db, table string, cols []pipeline.Column, onCluster string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s%s\n(\n", pipeline.QualifiedTable(db, table), onCluster)
	for i, c := range cols {
		sep := ","
		if i == len(cols)-1 {
			sep = ""
		}
		fmt.Fprintf(&b, "    %s %s%s\n", pipeline.QuoteIdent(c.Name), c.Type, sep)
	}
	b.WriteString(")\n")
	return b.String()
}

func rawTableDDL(ch pipeline.ClickHouseConfig, s pipeline.StreamConfig) []pipeline.Statement {
	// Partitions by month of the business time keep late data cheap to find and old data
	// cheap to drop; the sort key serves per-customer, per-product reads. On a cluster the
	// customer picks the shard, so a customer's usage, plans, rollups and gaps stay on one.
	keys := "PARTITION BY toYYYYMM(ts)\nORDER BY (customer_id, product, ts, event_id)"
	if s.Kind == pipeline.KindPlan {
		keys = "PARTITION BY toYYYYMM(period)\nORDER BY (customer_id, product, period, submitted_at, plan_id)"
	}
	return tableStatements(ch, ch.Database, s.Table(), s.Columns(), "MergeTree", keys, customerShardKey)
}

// InsertSQL returns the INSERT statement a batch of the stream's rows is prepared with.
func InsertSQL(db string, s pipeline.StreamConfig) string {
	cols := s.Columns()
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = pipeline.QuoteIdent(c.Name)
	}
	return fmt.Sprintf("INSERT INTO %s (%s)", pipeline.QualifiedTable(db, s.Table()), strings.Join(names, ", "))
}
