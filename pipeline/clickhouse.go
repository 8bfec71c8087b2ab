package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// OpenClickHouse connects over the native protocol. It sets no default database, so that
// the loop's database can be created through the same connection; all SQL CustomerLoop
// writes names its database explicitly.
func OpenClickHouse(ctx context.Context, cfg ClickHouseConfig) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr: []string{cfg.Addr},
		Auth: clickhouse.Auth{Username: cfg.Username, Password: cfg.Password},
		// Insert big batches; long inserts are expected.
		DialTimeout:  5 * time.Second,
		ReadTimeout:  5 * time.Minute,
		MaxOpenConns: 4,
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", cfg.Addr, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := conn.Ping(pctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("clickhouse %s: %w", cfg.Addr, err)
	}
	return conn, nil
}

// How long ApplySchema waits, in seconds (distributed_ddl_task_timeout, 180 by default),
// for every host of a cluster to run an ON CLUSTER statement. A host that is down would
// otherwise hold every reconcile 180 s per statement, although it needs nobody to wait:
// ClickHouse's distributed DDL queue keeps the statements and each host runs them in
// order when it is back. So the first statement that some host has not run waits
// ddlTimeout, and once one has, the rest wait only ddlPendingTimeout each (enough for
// the hosts that are up, which run them at once).
const (
	ddlTimeout        = 15
	ddlPendingTimeout = 2
)

// ApplySchema runs the planned statements in order. Each is idempotent. On a cluster, a
// statement that fails on some host is a DDLHostError naming the host; when every host
// that answered ran every statement but some hosts had not within the wait, the
// statements are all applied where they can be and the error is a DDLPendingError
// (errors.Is(err, ErrDDLPending)) naming those hosts: a warning, not a failure.
func ApplySchema(ctx context.Context, conn driver.Conn, stmts []Statement) error {
	var pending *DDLPendingError
	timeout := ddlTimeout
	for _, s := range stmts {
		hosts, err := runDDL(ctx, conn, s, timeout)
		if err != nil {
			return err
		}
		if len(hosts) > 0 {
			if pending == nil {
				pending = &DDLPendingError{}
			}
			pending.add(s.Object, hosts)
			timeout = ddlPendingTimeout
		}
	}
	if pending != nil {
		return pending
	}
	return nil
}

// TableStats is what a raw table says about its stream.
type TableStats struct {
	Rows         int64
	LastIngested time.Time // zero when the table is empty
}

// StreamStats reads the row count and newest ingestion time of a stream's raw table.
func StreamStats(ctx context.Context, conn driver.Conn, database string, s StreamConfig) (TableStats, error) {
	var (
		rows uint64
		last time.Time
	)
	q := "SELECT count(), max(_ingested_at) FROM " + QualifiedTable(database, s.Table())
	if err := conn.QueryRow(ctx, q).Scan(&rows, &last); err != nil {
		return TableStats{}, fmt.Errorf("reading %s.%s: %w", database, s.Table(), err)
	}
	st := TableStats{Rows: int64(rows)}
	if rows > 0 {
		st.LastIngested = last.UTC()
	}
	return st, nil
}

// insertRows writes rows of one stream in one INSERT, so that the batch lands as a whole
// block (per partition of the table).
func insertRows(ctx context.Context, conn driver.Conn, database string, s StreamConfig, rows [][]any) error {
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

// permanentError reports whether a ClickHouse error will fail again however often it is
// retried (a schema mismatch, bad SQL), as opposed to a network or server hiccup.
func permanentError(err error) bool {
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) {
		return false
	}
	switch ex.Code {
	case 16, // NO_SUCH_COLUMN_IN_TABLE
		44, // ILLEGAL_COLUMN
		47, // UNKNOWN_IDENTIFIER
		53, // TYPE_MISMATCH
		60, // UNKNOWN_TABLE
		62, // SYNTAX_ERROR
		81: // UNKNOWN_DATABASE
		return true
	}
	return false
}
