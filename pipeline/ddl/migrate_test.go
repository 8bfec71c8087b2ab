package ddl

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

// columnsOf returns a config's tables as ClickHouse would list them.
func columnsOf(cfg pipeline.Config) map[string][]pipeline.Column {
	out := map[string][]pipeline.Column{}
	for _, t := range ManagedTables(cfg) {
		out[t.Name] = append([]pipeline.Column(nil), t.Columns...)
	}
	return out
}

// TestPlanMigrationGolden pins down the statements of a representative evolution: a
// ledger from before its dead-letter and duplicate counts, two new dimensions (one in
// the middle), a removed dimension (kept), and a new stream (created, not altered).
func TestPlanMigrationGolden(t *testing.T) {
	old := stacktest.SampleConfig()
	old.Streams[0].Dimensions = append(old.Streams[0].Dimensions[:1:1], old.Streams[0].Dimensions[2:]...) // without seats
	old.Streams[0].Dimensions = append(old.Streams[0].Dimensions, pipeline.Dimension{Name: "legacy", Field: "legacy", Type: "String"})
	existing := columnsOf(old)
	var ledger []pipeline.Column
	for _, c := range existing[pipeline.LedgerTable] {
		if c.Name != "dead_lettered" && c.Name != "duplicates" {
			ledger = append(ledger, c)
		}
	}
	existing[pipeline.LedgerTable] = ledger
	delete(existing, "plans_raw")

	cfg := stacktest.SampleConfig()
	cfg.Streams[0].Dimensions = append(cfg.Streams[0].Dimensions, pipeline.Dimension{Name: "plan_tier", Field: "tier", Type: "String", Nullable: true})
	stmts, err := PlanMigration(cfg.ClickHouse, ManagedTables(cfg), existing)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, s := range stmts {
		b.WriteString("-- " + s.Object + "\n" + s.SQL + ";\n\n")
	}
	path := filepath.Join("testdata", "migration.golden.sql")
	if *stacktest.Update {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Errorf("migration differs from %s:\n%s", path, b.String())
	}
	// Nothing to do once the tables match.
	if again, err := PlanMigration(cfg.ClickHouse, ManagedTables(cfg), columnsOf(cfg)); err != nil || len(again) != 0 {
		t.Errorf("migrating matching tables: %v, %v", again, err)
	}
}

func TestPlanMigrationRefusesTypeChanges(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*pipeline.Dimension)
		want   UnsafeChangeError
	}{
		{"String to Int64", func(d *pipeline.Dimension) { d.Type = "Int64" }, UnsafeChangeError{"acme.usage_raw", "region", "String", "Int64"}},
		{"made nullable", func(d *pipeline.Dimension) { d.Nullable = true }, UnsafeChangeError{"acme.usage_raw", "region", "String", "Nullable(String)"}},
	} {
		cfg := stacktest.SampleConfig()
		existing := columnsOf(cfg)
		tc.mutate(&cfg.Streams[0].Dimensions[0])
		stmts, err := PlanMigration(pipeline.ClickHouseConfig{Database: "acme"}, ManagedTables(cfg), existing)
		var ue *UnsafeChangeError
		if !errors.As(err, &ue) || *ue != tc.want || stmts != nil {
			t.Errorf("%s: %v, %v; want %+v", tc.name, stmts, err, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), "revert the type") {
			t.Errorf("%s: the error does not say what to do: %v", tc.name, err)
		}
	}
}

// TestMigrateOnServer evolves real tables holding rows: a new dimension becomes a column
// and the rows stay; a type change is refused and leaves the table as it was; dropping
// removes the loop's tables and keeps its database.
func TestMigrateOnServer(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := stacktest.SampleConfig()
	cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: chAddr, Database: stacktest.UniqueName("test_migrate")}
	ch := applySchema(t, cfg)
	usage := cfg.Streams[0]
	// Two rows as the worker stores them: the core columns, the dimensions, the source.
	now := time.Now().UTC().Truncate(time.Second)
	var rows [][]any
	for i, r := range []struct {
		id, region string
		ts         int64
		bytes      uint64
		trial      uint8
	}{{"e1", "eu", 1793449815, 1, 1}, {"e2", "us", 1793449816, 2, 0}} {
		rows = append(rows, []any{r.id, "c", "p", time.Unix(r.ts, 0).UTC(), 1.0,
			r.region, (*int32)(nil), r.bytes, (*float32)(nil), r.trial, (*time.Time)(nil), (*time.Time)(nil),
			usage.Topic, int32(0), int64(i), now, now.UnixMilli()})
	}
	if err := InsertRows(ctx, ch, cfg.ClickHouse.Database, usage, rows); err != nil {
		t.Fatal(err)
	}

	v2 := cfg
	v2.Streams = append([]pipeline.StreamConfig(nil), cfg.Streams...)
	v2.Streams[0].Dimensions = append(append([]pipeline.Dimension(nil), usage.Dimensions...),
		pipeline.Dimension{Name: "plan_tier", Field: "tier", Type: "String", Nullable: true},
		pipeline.Dimension{Name: "units", Field: "units", Type: "UInt32"})
	stmts, err := Migrate(ctx, ch, v2)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(stmts) - len(ManagedTables(v2)) - 1; n != 2 {
		t.Errorf("%d ALTER statements, want 2: %v", n, stmts)
	}
	existing, err := ExistingColumns(ctx, ch, cfg.ClickHouse.Database)
	if err != nil {
		t.Fatal(err)
	}
	got := existing[usage.Table()]
	if len(got) != len(v2.Streams[0].Columns()) {
		t.Fatalf("usage_raw columns %v, want %v", got, v2.Streams[0].Columns())
	}
	for i, c := range v2.Streams[0].Columns() {
		if got[i] != c {
			t.Errorf("column %d is %v, want %v (in the order of a new table)", i, got[i], c)
		}
	}
	var n, nulls, zeros uint64
	if err := ch.QueryRow(ctx, "SELECT count(), countIf(isNull(plan_tier)), countIf(units = 0) FROM "+
		pipeline.QualifiedTable(cfg.ClickHouse.Database, usage.Table())).Scan(&n, &nulls, &zeros); err != nil {
		t.Fatal(err)
	}
	if n != 2 || nulls != 2 || zeros != 2 {
		t.Errorf("after adding columns: %d rows, %d NULL plan_tier, %d zero units; want 2, 2, 2", n, nulls, zeros)
	}
	// Migrating again changes nothing.
	if again, err := Migrate(ctx, ch, v2); err != nil || len(again) != len(ManagedTables(v2))+1 {
		t.Errorf("migrating again: %v, %v", again, err)
	}

	v3 := v2
	v3.Streams = append([]pipeline.StreamConfig(nil), v2.Streams...)
	v3.Streams[0].Dimensions = append([]pipeline.Dimension(nil), v2.Streams[0].Dimensions...)
	v3.Streams[0].Dimensions[0].Type = "Int64"
	var ue *UnsafeChangeError
	if _, err := Migrate(ctx, ch, v3); !errors.As(err, &ue) || ue.Column != "region" {
		t.Fatalf("changing region to Int64: %v, want an UnsafeChangeError", err)
	}
	after, err := ExistingColumns(ctx, ch, cfg.ClickHouse.Database)
	if err != nil {
		t.Fatal(err)
	}
	if len(after[usage.Table()]) != len(got) || after[usage.Table()][5] != got[5] {
		t.Errorf("a refused change altered the table: %v", after[usage.Table()])
	}

	if err := ApplySchema(ctx, ch, PlanDrop(v2)); err != nil {
		t.Fatal(err)
	}
	var tables, dbs uint64
	if err := ch.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ?", cfg.ClickHouse.Database).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = ?", cfg.ClickHouse.Database).Scan(&dbs); err != nil {
		t.Fatal(err)
	}
	if tables != 0 || dbs != 1 {
		t.Errorf("after dropping: %d tables, %d databases; want 0 and 1", tables, dbs)
	}
}
