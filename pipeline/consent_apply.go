package pipeline

// Applying consent: a withdrawal deletes the customer's rows from the raw tables and
// rollups (or rebuilds the rollups that cannot delete by customer), each application is
// audited, and the audit trail is read back per customer.

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ConsentAudit is the audit record of one applied consent message.
type ConsentAudit struct {
	Event       ConsentEvent
	Tables      []string
	RowsDeleted []uint64
	MutationIDs []string
	CompletedAt time.Time
}

// DeleteCustomerStatement is the mutation that deletes a customer's rows from a table:
// on a cluster from its local tables ON CLUSTER (each shard's replicated table runs it
// once; its replicas apply it from the replication log). The customer is its one
// parameter.
func DeleteCustomerStatement(ch ClickHouseConfig, table string) Statement {
	t := ch.storedTable(table)
	return Statement{Object: ch.Database + "." + t,
		SQL: "ALTER TABLE " + QualifiedTable(ch.Database, t) + ch.OnCluster() + " DELETE WHERE customer_id = ?"}
}

// DeleteCustomer deletes a customer's rows from a raw table with a mutation and waits
// until ClickHouse reports it done. It returns the rows the table held of the customer
// before, and the mutation's id (on a cluster, its id on the connected node's shard).
// The caller stops every writer of the table first, so that no row of the customer is
// inserted behind the mutation.
func DeleteCustomer(ctx context.Context, conn driver.Conn, ch ClickHouseConfig, table, customer string) (uint64, string, error) {
	db, stored := ch.Database, ch.storedTable(table)
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+QualifiedTable(db, table)+" WHERE customer_id = ?", customer).Scan(&n); err != nil {
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
	if _, err := runDDL(ctx, conn, DeleteCustomerStatement(ch, table), ddlTimeout, customer); err != nil {
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
	nodes, closeAll, err := connectNodes(ctx, conn, ch)
	if err != nil {
		return 0, id, fmt.Errorf("waiting for the deletion from %s: %w", table, err)
	}
	defer closeAll()
	for _, node := range nodes {
		if err := waitMutations(ctx, node.conn, db, stored); err != nil {
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
		if !sleep(ctx, delay) {
			return fmt.Errorf("waiting for %d mutation(s) of %s: %w", pending, table, ctx.Err())
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// RebuildRollups rebuilds, from their raw tables, the rollups that read any of the
// tables: AggregatingMergeTree states cannot subtract a customer's rows, and a rebuild
// is exact for every function (uniq and quantiles included). It is the rollups' own
// Rebuild, so the caller stops the loop's workers first.
func RebuildRollups(ctx context.Context, conn driver.Conn, plans []RollupPlan, tables []string) ([]string, error) {
	var rebuilt []string
	for _, p := range plans {
		if !slices.Contains(tables, p.Source) {
			continue
		}
		if err := RebuildRollup(ctx, conn, p); err != nil {
			return rebuilt, err
		}
		rebuilt = append(rebuilt, p.Name)
	}
	return rebuilt, nil
}

// WriteConsentAudit records applied consent messages.
func WriteConsentAudit(ctx context.Context, conn driver.Conn, db string, audits []ConsentAudit) error {
	if len(audits) == 0 {
		return nil
	}
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+QualifiedTable(db, ConsentAuditTable))
	if err != nil {
		return fmt.Errorf("preparing the consent audit: %w", err)
	}
	for _, a := range audits {
		e := a.Event
		if err := b.Append(e.ID, e.Customer, e.Action, nonNil(e.Scope), e.Received, nonNil(a.Tables), nonNilU(a.RowsDeleted),
			nonNil(a.MutationIDs), a.CompletedAt, e.Err, e.Topic, int32(e.Partition), e.Offset); err != nil {
			_ = b.Abort()
			return fmt.Errorf("appending to the consent audit: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("writing the consent audit: %w", err)
	}
	return nil
}

func nonNilU(s []uint64) []uint64 {
	if s == nil {
		return []uint64{}
	}
	return s
}

// ApplyConsent applies pending consent messages with the loop's workers stopped: a
// withdrawal deletes the customer's rows from the raw tables of its scope and the
// customer's groups from the rollups of those tables that group by customer_id; the
// other rollups of those tables are rebuilt; only then is each message audited as
// complete.
// A grant needs no change of data: the workers started next ingest the customer again.
// Every step is idempotent; a crash before the audit applies the messages again.
//
// A withdrawal deletes only from the streams the resolved state withholds: a grant with
// a later timestamp, applied before, wins over it.
func ApplyConsent(ctx context.Context, conn driver.Conn, cfg Config, plans []RollupPlan, pending []ConsentEvent) ([]ConsentAudit, []string, error) {
	db := cfg.ClickHouse.Database
	streams := make([]string, len(cfg.Streams))
	for i, s := range cfg.Streams {
		streams[i] = s.Name
	}
	state, err := LoadConsent(ctx, conn, db, streams)
	if err != nil {
		return nil, nil, err
	}
	var audits []ConsentAudit
	var touched []string
	for _, e := range pending {
		a := ConsentAudit{Event: e}
		if e.Err == "" && e.Action == ConsentWithdraw {
			for _, s := range cfg.Streams {
				if len(e.Scope) > 0 && !slices.Contains(e.Scope, s.Name) || !state.Withheld(s.Name, e.Customer) {
					continue
				}
				customer := cfg.storedCustomer(s, e.Customer)
				n, id, err := DeleteCustomer(ctx, conn, cfg.ClickHouse, s.Table(), customer)
				if err != nil {
					return nil, nil, err
				}
				a.Tables, a.RowsDeleted = append(a.Tables, s.Table()), append(a.RowsDeleted, n)
				if id != "" {
					a.MutationIDs = append(a.MutationIDs, id)
				}
				if n == 0 {
					continue
				}
				if !slices.Contains(touched, s.Table()) {
					touched = append(touched, s.Table())
				}
				// A rollup grouped by customer holds the customer's rows in groups of
				// their own: deleting those groups is exact for every function and
				// keeps the rollup readable. Other rollups of the table are rebuilt.
				for _, p := range plans {
					if p.Source != s.Table() || !slices.Contains(p.Columns, "customer_id") {
						continue
					}
					n, id, err := DeleteCustomer(ctx, conn, cfg.ClickHouse, p.Table, customer)
					if err != nil {
						return nil, nil, fmt.Errorf("rollup %s: %w", p.Name, err)
					}
					a.Tables, a.RowsDeleted = append(a.Tables, p.Table), append(a.RowsDeleted, n)
					if id != "" {
						a.MutationIDs = append(a.MutationIDs, id)
					}
				}
			}
		}
		audits = append(audits, a)
	}
	var ungrouped []RollupPlan
	for _, p := range plans {
		if !slices.Contains(p.Columns, "customer_id") {
			ungrouped = append(ungrouped, p)
		}
	}
	rebuilt, err := RebuildRollups(ctx, conn, ungrouped, touched)
	if err != nil {
		return nil, rebuilt, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	for i := range audits {
		audits[i].CompletedAt = now
	}
	return audits, rebuilt, WriteConsentAudit(ctx, conn, db, audits)
}

// ConsentCustomer is how the consent tables record a customer: its hash under the
// loop's key when every stream hashes customer ids, else the id itself.
func (c Config) ConsentCustomer(customer string) string {
	if c.consentHashed() {
		return HashPII(c.HMACKey, []byte(customer))
	}
	return customer
}

// ConsentRecord is one consent message of a customer and, once applied, its audit.
type ConsentRecord struct {
	Event ConsentEvent
	// Audit is nil while the message waits to be applied.
	Audit *ConsentAudit
	// AuditError is the error the audit recorded, if any.
	AuditError string
}

// ConsentTrail returns a customer's consent messages, in the order they apply, each with
// its audit record. customer is as the consent tables record it: see ConsentCustomer.
func ConsentTrail(ctx context.Context, conn driver.Conn, db, customer string) ([]ConsentRecord, error) {
	rows, err := conn.Query(ctx, consentSelect+QualifiedTable(db, ConsentTable)+" WHERE customer_id = ? ORDER BY ts, _partition, _offset", customer)
	if err != nil {
		return nil, fmt.Errorf("reading the consent messages: %w", err)
	}
	events, err := scanConsent(rows)
	if err != nil {
		return nil, err
	}
	type key struct {
		topic     string
		partition int32
		offset    int64
	}
	audits := map[key]ConsentRecord{}
	rows, err = conn.Query(ctx, "SELECT tables, rows_deleted, mutation_ids, completed_at, error, _topic, _partition, _offset FROM "+
		QualifiedTable(db, ConsentAuditTable)+" WHERE customer_id = ?", customer)
	if err != nil {
		return nil, fmt.Errorf("reading the consent audit: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			a   ConsentAudit
			rec ConsentRecord
			k   key
		)
		if err := rows.Scan(&a.Tables, &a.RowsDeleted, &a.MutationIDs, &a.CompletedAt, &rec.AuditError, &k.topic, &k.partition, &k.offset); err != nil {
			return nil, fmt.Errorf("reading the consent audit: %w", err)
		}
		rec.Audit = &a
		audits[k] = rec
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]ConsentRecord, len(events))
	for i, e := range events {
		out[i] = audits[key{e.Topic, int32(e.Partition), e.Offset}]
		out[i].Event = e
		if out[i].Audit != nil {
			out[i].Audit.Event = e
		}
	}
	return out, nil
}
