package ddl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// TableSpec is a table the loop manages and the columns it must have.
type TableSpec struct {
	Name    string
	Columns []pipeline.Column
	// ShardKey is what its Distributed table shards rows by on a cluster (see
	// tableStatements).
	ShardKey string
}

// The shard keys of the loop's tables: a customer's rows stay on one shard; the ledger
// and the consent tables are spread by Kafka partition.
const (
	customerShardKey  = "cityHash64(customer_id)"
	partitionShardKey = "cityHash64(topic, partition)"
	consentShardKey   = "cityHash64(_topic, _partition)"
)

// ManagedTables lists the tables of the loop's database that CustomerLoop owns: the
// ledger, the dead letters, the consent tables and one raw table per stream.
func ManagedTables(cfg pipeline.Config) []TableSpec {
	tables := []TableSpec{{Name: pipeline.LedgerTable, Columns: ledgerColumns, ShardKey: partitionShardKey},
		{Name: pipeline.DeadLettersTable, Columns: deadLetterColumns, ShardKey: customerShardKey}}
	if cfg.Consent != nil {
		tables = append(tables, TableSpec{Name: pipeline.ConsentTable, Columns: consentColumns, ShardKey: consentShardKey},
			TableSpec{Name: pipeline.ConsentAuditTable, Columns: consentAuditColumns, ShardKey: consentShardKey})
	}
	for _, s := range cfg.Streams {
		tables = append(tables, TableSpec{Name: s.Table(), Columns: s.Columns(), ShardKey: customerShardKey})
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
//
// On a cluster the columns are added to the local table ON CLUSTER (replicated tables
// run it once per shard and replicate it). The Distributed table in front cannot be
// altered ON CLUSTER when the cluster sets internal_replication (ClickHouse refuses an
// ALTER of a non-replicated table there, code 371), so a Distributed table that lacks a
// desired column is dropped and created again ON CLUSTER with the desired columns. It
// holds no rows, but between the two statements a node has no table of that name:
// Migrate runs before the workers are given the new config, so the workers still
// running the old one may fail an insert there and retry it (see worker.go's retry);
// nothing is lost, and the columns they insert still exist.
func PlanMigration(ch pipeline.ClickHouseConfig, desired []TableSpec, existing map[string][]pipeline.Column) ([]pipeline.Statement, error) {
	db := ch.Database
	var stmts []pipeline.Statement
	for _, t := range desired {
		have, ok := existing[ch.StoredTable(t.Name)]
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
				stored := ch.StoredTable(t.Name)
				sql := fmt.Sprintf("ALTER TABLE %s%s ADD COLUMN %s %s", pipeline.QualifiedTable(db, stored), ch.OnCluster(), pipeline.QuoteIdent(c.Name), c.Type)
				if prev != "" {
					sql += " AFTER " + pipeline.QuoteIdent(prev)
				}
				stmts = append(stmts, pipeline.Statement{Object: db + "." + stored + "." + c.Name, SQL: sql})
			}
			prev = c.Name
		}
		if front, ok := existing[t.Name]; ok && ch.Clustered() && lacksColumn(front, t.Columns) {
			stmts = append(stmts,
				pipeline.Statement{Object: db + "." + t.Name, SQL: "DROP TABLE IF EXISTS " + pipeline.QualifiedTable(db, t.Name) + ch.OnCluster()},
				distributedStatement(ch, db, t.Name, t.Columns, t.ShardKey))
		}
	}
	return stmts, nil
}

// lacksColumn reports whether a table with columns have misses one of want.
func lacksColumn(have, want []pipeline.Column) bool {
	for _, w := range want {
		if !slices.ContainsFunc(have, func(c pipeline.Column) bool { return c.Name == w.Name }) {
			return true
		}
	}
	return false
}

// ExistingColumns reads the columns of every table in the database.
func ExistingColumns(ctx context.Context, conn driver.Conn, db string) (map[string][]pipeline.Column, error) {
	rows, err := conn.Query(ctx, "SELECT table, name, type FROM system.columns WHERE database = ?", db)
	if err != nil {
		return nil, fmt.Errorf("reading the columns of %s: %w", db, err)
	}
	defer rows.Close()
	out := map[string][]pipeline.Column{}
	for rows.Next() {
		var table string
		var c pipeline.Column
		if err := rows.Scan(&table, &c.Name, &c.Type); err != nil {
			return nil, fmt.Errorf("reading the columns of %s: %w", db, err)
		}
		out[table] = append(out[table], c)
	}
	return out, rows.Err()
}

// Migrate creates what is missing of the loop's schema and adds missing columns to what
// exists. It returns the statements it planned, for status and logs; an UnsafeChangeError
// leaves every table as it was. On a cluster the columns are read from the connected
// node's local tables (and its Distributed tables); when some host has not run every
// statement yet the error matches ErrDDLPending and the statements are returned as well.
func Migrate(ctx context.Context, conn driver.Conn, cfg pipeline.Config) ([]pipeline.Statement, error) {
	stmts, _, err := MigrateChanges(ctx, conn, cfg)
	return stmts, err
}

// MigrateChanges is Migrate, also reporting what it changed: the database when it
// created it, then each table (created, altered or unchanged; see Apply).
//
// The tables go through Apply, read on the connected node only. The database is
// created before, by itself: it is not a table of system.tables, and its tables and
// columns can only be read once it exists. The columns are read here, not by Apply,
// because the ALTERs are planned from them (PlanMigration) and an UnsafeChangeError must
// stop the migration before anything is created.
func MigrateChanges(ctx context.Context, conn driver.Conn, cfg pipeline.Config) ([]pipeline.Statement, []Change, error) {
	create, err := PlanSchema(cfg)
	if err != nil {
		return nil, nil, err
	}
	db := cfg.ClickHouse.Database
	var dbs uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = ?", db).Scan(&dbs); err != nil {
		return nil, nil, fmt.Errorf("looking for database %s: %w", db, err)
	}
	var pending error
	var changes []Change
	if dbs == 0 {
		pending = ApplySchema(ctx, conn, create[:1])
		if pending != nil && !errors.Is(pending, connect.ErrDDLPending) {
			return nil, nil, pending
		}
		changes = append(changes, Change{Object: db, Action: Created})
	}
	existing, err := ExistingColumns(ctx, conn, db)
	if err != nil {
		return nil, nil, err
	}
	alter, err := PlanMigration(cfg.ClickHouse, ManagedTables(cfg), existing)
	if err != nil {
		return nil, nil, err
	}
	tables, err := Apply(ctx, conn, nil, migrationObjects(create[1:], alter))
	changes = append(changes, tables...)
	if err != nil {
		if !errors.Is(err, connect.ErrDDLPending) {
			return nil, changes, err
		}
		pending = err
	}
	return append(create, alter...), changes, pending
}

// migrationObjects declares the loop's tables: each created by its CREATE statement and
// altered by the statements PlanMigration planned for it (its added columns; for a
// Distributed table on a cluster, dropping and creating it again with the new columns).
func migrationObjects(create, alter []pipeline.Statement) []Object {
	objs := make([]Object, 0, len(create))
	at := map[string]int{}
	for _, s := range create {
		at[s.Object] = len(objs)
		objs = append(objs, Object{Name: s.Object, Create: []pipeline.Statement{s}})
	}
	for _, s := range alter {
		// An added column's statement is about "db.table.column".
		table := s.Object
		if parts := strings.SplitN(s.Object, ".", 3); len(parts) == 3 {
			table = parts[0] + "." + parts[1]
		}
		i, ok := at[table]
		if !ok {
			at[table], i = len(objs), len(objs)
			objs = append(objs, Object{Name: table})
		}
		objs[i].Alter = append(objs[i].Alter, s)
	}
	return objs
}

// PlanDrop returns the statements that drop the loop's rollups, feedback views and tables
// (not its database, which may hold other things). Of each rollup it drops the read view
// and the planned version; versions left by a crash are found by PlanRollupChanges. On a
// cluster it drops them ON CLUSTER, each Distributed table before its local table. A
// replicated table's DROP removes its replica from ZooKeeper before it returns (18.16
// has no DROP ... SYNC and needs none), so creating it again at the same path works.
func PlanDrop(cfg pipeline.Config) []pipeline.Statement {
	ch := cfg.ClickHouse
	db := ch.Database
	var stmts []pipeline.Statement
	drop := func(name string) {
		stmts = append(stmts, pipeline.Statement{Object: db + "." + name, SQL: "DROP TABLE IF EXISTS " + pipeline.QualifiedTable(db, name) + ch.OnCluster()})
	}
	dropTable := func(name string) {
		drop(name)
		if ch.Clustered() {
			drop(pipeline.LocalTable(name))
		}
	}
	plans, _ := PlanRollups(cfg) // an invalid rollup has no planned version to drop
	for _, p := range plans {
		drop(p.View)
		drop(p.MV)
		dropTable(p.Table)
	}
	for _, v := range pipeline.FeedbackViews {
		drop(v)
	}
	drop(pipeline.DigestTable)
	drop(pipeline.TrackingTable)
	drop(pipeline.ChannelTable)
	for _, t := range ManagedTables(cfg) {
		dropTable(t.Name)
	}
	return stmts
}
