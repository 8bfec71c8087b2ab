package pipeline

import (
	"context"
	"fmt"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// TableSpec is a table the loop manages and the columns it must have.
type TableSpec struct {
	Name    string
	Columns []Column
}

// ManagedTables lists the tables of the loop's database that CustomerLoop owns: the
// ledger and one raw table per stream.
func ManagedTables(cfg Config) []TableSpec {
	tables := []TableSpec{{Name: LedgerTable, Columns: ledgerColumns}}
	if cfg.Consent != nil {
		tables = append(tables, TableSpec{Name: ConsentTable, Columns: consentColumns}, TableSpec{Name: ConsentAuditTable, Columns: consentAuditColumns})
	}
	for _, s := range cfg.Streams {
		tables = append(tables, TableSpec{Name: s.Table(), Columns: s.Columns()})
	}
	return tables
}

// UnsafeChangeError is a change of the spec that the existing tables cannot follow
// without losing or rewriting data, such as a column whose type changed.
type UnsafeChangeError struct {
	Table, Column, Existing, Desired string
}

func (e *UnsafeChangeError) Error() string {
	return fmt.Sprintf("column %s of table %s is %s and the spec now makes it %s; ClickHouse cannot convert it without "+
		"rewriting or losing data: revert the type, or declare the dimension under a new name", e.Column, e.Table, e.Existing, e.Desired)
}

// PlanMigration returns the statements that bring existing tables to the desired columns.
// Evolution is additive: a missing column is added after its predecessor in the desired
// order (a new dimension lands before the source columns, like in a new table; existing
// rows read its default, or NULL when nullable). A column no longer desired is kept, so
// that removing a dimension loses nothing. A column whose type differs is an
// UnsafeChangeError. Tables that do not exist yet are left to their CREATE statement.
//
// ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS, hence the plan against what exists.
func PlanMigration(db string, desired []TableSpec, existing map[string][]Column) ([]Statement, error) {
	var stmts []Statement
	for _, t := range desired {
		have, ok := existing[t.Name]
		if !ok {
			continue
		}
		types := make(map[string]string, len(have))
		for _, c := range have {
			types[c.Name] = c.Type
		}
		prev := ""
		for _, c := range t.Columns {
			typ, ok := types[c.Name]
			switch {
			case ok && typ != c.Type:
				return nil, &UnsafeChangeError{Table: db + "." + t.Name, Column: c.Name, Existing: typ, Desired: c.Type}
			case !ok:
				sql := fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", QualifiedTable(db, t.Name), QuoteIdent(c.Name), c.Type)
				if prev != "" {
					sql += " AFTER " + QuoteIdent(prev)
				}
				stmts = append(stmts, Statement{Object: db + "." + t.Name + "." + c.Name, SQL: sql})
			}
			prev = c.Name
		}
	}
	return stmts, nil
}

// ExistingColumns reads the columns of every table in the database.
func ExistingColumns(ctx context.Context, conn driver.Conn, db string) (map[string][]Column, error) {
	rows, err := conn.Query(ctx, "SELECT table, name, type FROM system.columns WHERE database = ?", db)
	if err != nil {
		return nil, fmt.Errorf("reading the columns of %s: %w", db, err)
	}
	defer rows.Close()
	out := map[string][]Column{}
	for rows.Next() {
		var table string
		var c Column
		if err := rows.Scan(&table, &c.Name, &c.Type); err != nil {
			return nil, fmt.Errorf("reading the columns of %s: %w", db, err)
		}
		out[table] = append(out[table], c)
	}
	return out, rows.Err()
}

// Migrate creates what is missing of the loop's schema and adds missing columns to what
// exists. It returns the statements it ran, for status and logs; an UnsafeChangeError
// leaves every table as it was.
func Migrate(ctx context.Context, conn driver.Conn, cfg Config) ([]Statement, error) {
	create, err := PlanSchema(cfg)
	if err != nil {
		return nil, err
	}
	db := cfg.ClickHouse.Database
	// The database first, so that its columns can be read; then check before creating
	// or altering anything.
	if err := ApplySchema(ctx, conn, create[:1]); err != nil {
		return nil, err
	}
	existing, err := ExistingColumns(ctx, conn, db)
	if err != nil {
		return nil, err
	}
	alter, err := PlanMigration(db, ManagedTables(cfg), existing)
	if err != nil {
		return nil, err
	}
	if err := ApplySchema(ctx, conn, append(create[1:], alter...)); err != nil {
		return nil, err
	}
	return append(create, alter...), nil
}

// PlanDrop returns the statements that drop the loop's rollups, feedback views and tables
// (not its database, which may hold other things). Of each rollup it drops the read view
// and the planned version; versions left by a crash are found by PlanRollupChanges.
func PlanDrop(cfg Config) []Statement {
	db := cfg.ClickHouse.Database
	var stmts []Statement
	plans, _ := PlanRollups(cfg) // an invalid rollup has no planned version to drop
	for _, p := range plans {
		for _, name := range []string{p.View, p.MV, p.Table} {
			stmts = append(stmts, Statement{Object: db + "." + name, SQL: "DROP TABLE IF EXISTS " + QualifiedTable(db, name)})
		}
	}
	for _, v := range FeedbackViews {
		stmts = append(stmts, Statement{Object: db + "." + v, SQL: "DROP TABLE IF EXISTS " + QualifiedTable(db, v)})
	}
	stmts = append(stmts, Statement{Object: db + "." + DigestTable, SQL: "DROP TABLE IF EXISTS " + QualifiedTable(db, DigestTable)})
	for _, t := range ManagedTables(cfg) {
		stmts = append(stmts, Statement{Object: db + "." + t.Name, SQL: "DROP TABLE IF EXISTS " + QualifiedTable(db, t.Name)})
	}
	return stmts
}
