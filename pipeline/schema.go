package pipeline

import (
	"fmt"
	"strings"
)

// Column is a column of a raw table.
type Column struct {
	Name string
	Type string // ClickHouse type
}

// dimensionTypes maps a declared dimension type to its ClickHouse column type. ClickHouse
// before 21.12 has no Bool; UInt8 holds 0/1 on every version.
var dimensionTypes = map[string]string{
	"String":   "String",
	"Int32":    "Int32",
	"Int64":    "Int64",
	"UInt32":   "UInt32",
	"UInt64":   "UInt64",
	"Float32":  "Float32",
	"Float64":  "Float64",
	"Bool":     "UInt8",
	"Date":     "Date",
	"DateTime": "DateTime",
}

// sourceColumns record where every raw row came from; the (topic, partition, offset)
// triple identifies a message. _produced_at_ms is the message's Kafka timestamp (Unix
// milliseconds), which the duplicate window runs on and is rebuilt from; rows written
// before it existed read 0 there.
var sourceColumns = []Column{
	{"_topic", "String"},
	{"_partition", "Int32"},
	{"_offset", "Int64"},
	{"_ingested_at", "DateTime"},
	{"_produced_at_ms", "Int64"},
}

func coreColumns(kind Kind) []Column {
	switch kind {
	case KindPlan:
		return []Column{
			{"plan_id", "String"},
			{"customer_id", "String"},
			{"product", "String"},
			{"period", "Date"},
			{"quantity", "Float64"},
			{"submitted_at", "DateTime"},
			{"confidence", "Nullable(Float64)"},
		}
	default:
		return []Column{
			{"event_id", "String"},
			{"customer_id", "String"},
			{"product", "String"},
			{"ts", "DateTime"},
			{"quantity", "Float64"},
		}
	}
}

// eventTimeColumn is the index of the row value that says when the customer did or
// decided something: ts for usage, submitted_at for plans.
func eventTimeColumn(kind Kind) int {
	if kind == KindPlan {
		return 5
	}
	return 3
}

// Columns returns the raw table's columns in insert order: core roles, declared
// dimensions, then the source coordinates.
func (s StreamConfig) Columns() []Column {
	cols := coreColumns(s.Kind)
	for _, d := range s.Dimensions {
		t := dimensionTypes[d.Type]
		if d.Nullable {
			t = "Nullable(" + t + ")"
		}
		cols = append(cols, Column{d.Name, t})
	}
	return append(cols, sourceColumns...)
}

// Statement is one idempotent DDL statement and the object it manages.
type Statement struct {
	Object string // database-qualified name, unquoted, for status and logs
	SQL    string
}

// PlanSchema returns the DDL that creates the loop's database, its ledger and raw tables. It is a pure
// function of the config; applying its statements again changes nothing.
func PlanSchema(cfg Config) ([]Statement, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	db := cfg.ClickHouse.Database
	stmts := []Statement{{
		Object: db,
		SQL:    "CREATE DATABASE IF NOT EXISTS " + QuoteIdent(db) + cfg.ClickHouse.OnCluster(),
	}}
	stmts = append(stmts, ledgerDDL(cfg.ClickHouse)...)
	if cfg.Consent != nil {
		stmts = append(stmts, consentDDL(cfg.ClickHouse)...)
	}
	for _, s := range cfg.Streams {
		stmts = append(stmts, rawTableDDL(cfg.ClickHouse, s)...)
	}
	return stmts, nil
}

// createTableDDL is the head of a CREATE TABLE statement, up to the engine clause.
func createTableDDL(db, table string, cols []Column, onCluster string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s%s\n(\n", QualifiedTable(db, table), onCluster)
	for i, c := range cols {
		sep := ","
		if i == len(cols)-1 {
			sep = ""
		}
		fmt.Fprintf(&b, "    %s %s%s\n", QuoteIdent(c.Name), c.Type, sep)
	}
	b.WriteString(")\n")
	return b.String()
}

func rawTableDDL(ch ClickHouseConfig, s StreamConfig) []Statement {
	// Partitions by month of the business time keep late data cheap to find and old data
	// cheap to drop; the sort key serves per-customer, per-product reads. On a cluster the
	// customer picks the shard, so a customer's usage, plans, rollups and gaps stay on one.
	keys := "PARTITION BY toYYYYMM(ts)\nORDER BY (customer_id, product, ts, event_id)"
	if s.Kind == KindPlan {
		keys = "PARTITION BY toYYYYMM(period)\nORDER BY (customer_id, product, period, submitted_at, plan_id)"
	}
	return tableStatements(ch, ch.Database, s.Table(), s.Columns(), "MergeTree", keys, customerShardKey)
}

// InsertSQL returns the INSERT statement a batch of the stream's rows is prepared with.
func InsertSQL(db string, s StreamConfig) string {
	cols := s.Columns()
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = QuoteIdent(c.Name)
	}
	return fmt.Sprintf("INSERT INTO %s (%s)", QualifiedTable(db, s.Table()), strings.Join(names, ", "))
}
