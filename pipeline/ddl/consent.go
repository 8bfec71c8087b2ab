package ddl

import (
	"context"
	"fmt"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

var consentColumns = []pipeline.Column{
	{Name: "id", Type: "String"},
	{Name: "customer_id", Type: "String"},
	{Name: "action", Type: "String"},
	{Name: "scope", Type: "Array(String)"},
	{Name: "ts", Type: "DateTime"},
	{Name: "received_at", Type: "DateTime"},
	{Name: "error", Type: "String"},
	{Name: "_topic", Type: "String"},
	{Name: "_partition", Type: "Int32"},
	{Name: "_offset", Type: "Int64"},
}

var consentAuditColumns = []pipeline.Column{
	{Name: "id", Type: "String"},
	{Name: "customer_id", Type: "String"},
	{Name: "action", Type: "String"},
	{Name: "scope", Type: "Array(String)"},
	{Name: "received_at", Type: "DateTime"},
	{Name: "tables", Type: "Array(String)"},
	{Name: "rows_deleted", Type: "Array(UInt64)"},
	{Name: "mutation_ids", Type: "Array(String)"},
	{Name: "completed_at", Type: "DateTime"},
	{Name: "error", Type: "String"},
	{Name: "_topic", Type: "String"},
	{Name: "_partition", Type: "Int32"},
	{Name: "_offset", Type: "Int64"},
}

func consentDDL(ch pipeline.ClickHouseConfig) []pipeline.Statement {
	db := ch.Database
	return append(
		tableStatements(ch, db, pipeline.ConsentTable, consentColumns, "MergeTree", "ORDER BY (_topic, _partition, _offset)", consentShardKey),
		tableStatements(ch, db, pipeline.ConsentAuditTable, consentAuditColumns, "MergeTree", "ORDER BY (_topic, _partition, _offset)", consentShardKey)...)
}

// DeleteCustomerStatement is the mutation that deletes a customer's rows from a table:
// on a cluster from its local tables ON CLUSTER (each shard's replicated table runs it
// once; its replicas apply it from the replication log). The customer is its one
// parameter.
func DeleteCustomerStatement(ch pipeline.ClickHouseConfig, table string) pipeline.Statement {
	t := ch.StoredTable(table)
	return pipeline.Statement{Object: ch.Database + "." + t,
		SQL: "ALTER TABLE " + pipeline.QualifiedTable(ch.Database, t) + ch.OnCluster() + " DELETE WHERE customer_id = ?"}
}

// DeleteCustomer deletes a customer's rows from a raw table with a mutation and waits
// until ClickHouse reports it done. It returns the rows the table held of the customer
// before, and the mutation's id (on a cluster, its id on the connected node's shard).
// The caller stops every writer of the table first, so that no row of the customer is
// inserted behind the mutation.
func DeleteCustomer(ctx context.Context, conn driver.Conn, ch pipeline.ClickHouseConfig, table, customer string) (uint64, string, error) {
	return deleteCustomer(ctx, conn, ch, table, ch.StoredTable(table), DeleteCustomerStatement(ch, table), "customer_id = ?", customer)
}

// DeletePublisherCustomer is DeleteCustomer for one of the digest publisher's own tables
// (its tracking crossings, say), which is one table on a single server and one replica
// set spanning every node on a cluster: the mutation is issued on the connected node and
// reaches every replica through the replication log.
func DeletePublisherCustomer(ctx context.Context, conn driver.Conn, ch pipeline.ClickHouseConfig, table, customer string) (uint64, string, error) {
	stmt := pipeline.Statement{Object: ch.Database + "." + table,
		SQL: "ALTER TABLE " + pipeline.QualifiedTable(ch.Database, table) + " DELETE WHERE customer_id = ?"}
	return deleteCustomer(ctx, conn, ch, table, table, stmt, "customer_id = ?", customer)
}

// DeleteDeadLettersStatement is the mutation that deletes a customer's dead letters of
// some streams from the dead_letters table (on a cluster from its local tables ON
// CLUSTER, as DeleteCustomerStatement). Its parameters are the customer, as the table
// stores it, and the streams' names, as an array.
func DeleteDeadLettersStatement(ch pipeline.ClickHouseConfig) pipeline.Statement {
	t := ch.StoredTable(pipeline.DeadLettersTable)
	return pipeline.Statement{Object: ch.Database + "." + t,
		SQL: "ALTER TABLE " + pipeline.QualifiedTable(ch.Database, t) + ch.OnCluster() + " DELETE WHERE " + deadLettersOf}
}

// deadLettersOf selects a customer's dead letters of some streams.
const deadLettersOf = "customer_id = ? AND has(?, stream)"

// DeleteDeadLetters deletes a customer's dead letters of the given streams, as
// DeleteCustomer deletes their rows of a raw table, and returns the rows deleted and the
// mutation's id. customer is as the table stores it (see pipeline.DeadLettersTable).
func DeleteDeadLetters(ctx context.Context, conn driver.Conn, ch pipeline.ClickHouseConfig, customer string, streams []string) (uint64, string, error) {
	return deleteCustomer(ctx, conn, ch, pipeline.DeadLettersTable, ch.StoredTable(pipeline.DeadLettersTable),
		DeleteDeadLettersStatement(ch), deadLettersOf, customer, pipeline.NonNil(streams))
}

// deleteCustomer deletes with stmt from table, whose rows live in stored on each node:
// the rows where matches, with args, which are stmt's parameters too.
func deleteCustomer(ctx context.Context, conn driver.Conn, ch pipeline.ClickHouseConfig, table, stored string, stmt pipeline.Statement, where string, args ...any) (uint64, string, error) {
	db := ch.Database
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(db, table)+" WHERE "+where, args...).Scan(&n); err != nil {
		return 0, "", fmt.Errorf("counting a customer's rows in %s: %w", table, err)
	}
	if n == 0 {
		return 0, "", nil
	}
	before, err := mutationIDs(ctx, conn, db, stored)
	if err != nil {
		return 0, "", err
	}
	// A replica that is down has the mutation in its replication log: not waiting for
	// its DDL answer is right (waitMutations waits for the replicas that answer).
	if _, err := connect.RunDDL(ctx, conn, stmt, connect.DDLTimeout, args...); err != nil {
		return 0, "", fmt.Errorf("deleting a customer's rows from %s: %w", table, err)
	}
	after, err := mutationIDs(ctx, conn, db, stored)
	if err != nil {
		return 0, "", err
	}
	var id string
	for m := range after {
		if _, ok := before[m]; !ok {
			id = m
		}
	}
	if !ch.Clustered() {
		if err := waitMutations(ctx, conn, db, stored); err != nil {
			return 0, id, err
		}
		return n, id, nil
	}
	// On a cluster each node's system.mutations knows only its own replica's progress:
	// wait on every node that answers, with at least one of every shard.
	nodes, closeAll, err := connect.ConnectNodes(ctx, conn, ch)
	if err != nil {
		return 0, id, fmt.Errorf("waiting for the deletion from %s: %w", table, err)
	}
	defer closeAll()
	for _, node := range nodes {
		if err := waitMutations(ctx, node.Conn, db, stored); err != nil {
			return 0, id, fmt.Errorf("%s: %w", node.Addr, err)
		}
	}
	return n, id, nil
}

func mutationIDs(ctx context.Context, conn driver.Conn, db, table string) (map[string]bool, error) {
	rows, err := conn.Query(ctx, "SELECT mutation_id, is_done FROM system.mutations WHERE database = ? AND table = ?", db, table)
	if err != nil {
		return nil, fmt.Errorf("reading the mutations of %s: %w", table, err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		var done uint8
		if err := rows.Scan(&id, &done); err != nil {
			return nil, err
		}
		out[id] = done == 1
	}
	return out, rows.Err()
}

// waitMutations waits until no mutation of the table is left to do. ClickHouse 18.16
// applies ALTER ... DELETE asynchronously and has no setting to wait for it (no
// mutations_sync).
func waitMutations(ctx context.Context, conn driver.Conn, db, table string) error {
	delay := 50 * time.Millisecond
	for {
		m, err := mutationIDs(ctx, conn, db, table)
		if err != nil {
			return err
		}
		pending := 0
		for _, done := range m {
			if !done {
				pending++
			}
		}
		if pending == 0 {
			return nil
		}
		if !connect.Sleep(ctx, delay) {
			return fmt.Errorf("waiting for %d mutation(s) of %s: %w", pending, table, ctx.Err())
		}
		delay = min(2*delay, 2*time.Second)
	}
}
