package feedback

import (
	"context"
	"fmt"
	"slices"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ConsentAudit is the audit record of one applied consent message.
type ConsentAudit struct {
	Event       pipeline.ConsentEvent
	Tables      []string
	RowsDeleted []uint64
	MutationIDs []string
	CompletedAt time.Time
}

// RebuildRollups rebuilds, from their raw tables, the rollups that read any of the
// tables: AggregatingMergeTree states cannot subtract a customer's rows, and a rebuild
// is exact for every function (uniq and quantiles included). It is the rollups' own
// Rebuild, so the caller stops the loop's workers first.
func RebuildRollups(ctx context.Context, conn driver.Conn, plans []ddl.RollupPlan, tables []string) ([]string, error) {
	var rebuilt []string
	for _, p := range plans {
		if !slices.Contains(tables, p.Source) {
			continue
		}
		if err := ddl.RebuildRollup(ctx, conn, p); err != nil {
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
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+pipeline.QualifiedTable(db, pipeline.ConsentAuditTable))
	if err != nil {
		return fmt.Errorf("preparing the consent audit: %w", err)
	}
	for _, a := range audits {
		e := a.Event
		if err := b.Append(e.ID, e.Customer, e.Action, pipeline.NonNil(e.Scope), e.Received, pipeline.NonNil(a.Tables), nonNilU(a.RowsDeleted),
			pipeline.NonNil(a.MutationIDs), a.CompletedAt, e.Err, e.Topic, int32(e.Partition), e.Offset); err != nil {
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
// withdrawal deletes the customer's rows from the raw tables of its scope, their dead
// letters of those streams (pipeline.DeadLettersTable) and the customer's groups from
// the rollups of those tables that group by customer_id; the other rollups of those
// tables are rebuilt; only then is each message audited as complete.
// A grant needs no change of data: the workers started next ingest the customer again.
// Every step is idempotent; a crash before the audit applies the messages again.
//
// A withdrawal deletes only from the streams the resolved state withholds: a grant with
// a later timestamp, applied before, wins over it.
func ApplyConsent(ctx context.Context, conn driver.Conn, cfg pipeline.Config, plans []ddl.RollupPlan, pending []pipeline.ConsentEvent) ([]ConsentAudit, []string, error) {
	db := cfg.ClickHouse.Database
	streams := make([]string, len(cfg.Streams))
	for i, s := range cfg.Streams {
		streams[i] = s.Name
	}
	state, err := connect.LoadConsent(ctx, conn, db, streams)
	if err != nil {
		return nil, nil, err
	}
	var audits []ConsentAudit
	var touched []string
	for _, e := range pending {
		a := ConsentAudit{Event: e}
		if e.Err == "" && e.Action == pipeline.ConsentWithdraw {
			var stored []string // the customer's ids as the withheld streams store them
			// the withheld streams by the customer's id there, whose dead letters go too
			deadStreams := map[string][]string{}
			for _, s := range cfg.Streams {
				if len(e.Scope) > 0 && !slices.Contains(e.Scope, s.Name) || !state.Withheld(s.Name, e.Customer) {
					continue
				}
				customer := cfg.StoredCustomer(s, e.Customer)
				if !slices.Contains(stored, customer) {
					stored = append(stored, customer)
				}
				deadStreams[customer] = append(deadStreams[customer], s.Name)
				n, id, err := ddl.DeleteCustomer(ctx, conn, cfg.ClickHouse, s.Table(), customer)
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
					n, id, err := ddl.DeleteCustomer(ctx, conn, cfg.ClickHouse, p.Table, customer)
					if err != nil {
						return nil, nil, fmt.Errorf("rollup %s: %w", p.Name, err)
					}
					a.Tables, a.RowsDeleted = append(a.Tables, p.Table), append(a.RowsDeleted, n)
					if id != "" {
						a.MutationIDs = append(a.MutationIDs, id)
					}
				}
			}
			if err := deleteDeadLetters(ctx, conn, cfg, stored, deadStreams, &a); err != nil {
				return nil, nil, err
			}
			// The digest publisher remembers on which side of the tracking band each
			// customer was: that goes too.
			if err := deletePublisherRows(ctx, conn, cfg, stored, &a); err != nil {
				return nil, nil, err
			}
		}
		audits = append(audits, a)
	}
	var ungrouped []ddl.RollupPlan
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

// ConsentRecord is one consent message of a customer and, once applied, its audit.
type ConsentRecord struct {
	Event pipeline.ConsentEvent
	// Audit is nil while the message waits to be applied.
	Audit *ConsentAudit
	// AuditError is the error the audit recorded, if any.
	AuditError string
}

// ConsentTrail returns a customer's consent messages, in the order they apply, each with
// its audit record. customer is as the consent tables record it: see ConsentCustomer.
func ConsentTrail(ctx context.Context, conn driver.Conn, db, customer string) ([]ConsentRecord, error) {
	trails, err := consentTrails(ctx, conn, db, "customer_id = ?", []any{customer})
	return trails[customer], err
}

// consentTrails returns the consent trails of the customers that meet cond, by customer.
func consentTrails(ctx context.Context, conn driver.Conn, db, cond string, args []any) (map[string][]ConsentRecord, error) {
	rows, err := conn.Query(ctx, connect.ConsentSelect+pipeline.QualifiedTable(db, pipeline.ConsentTable)+" WHERE "+cond+" ORDER BY ts, _partition, _offset", args...)
	if err != nil {
		return nil, fmt.Errorf("reading the consent messages: %w", err)
	}
	events, err := connect.ScanConsent(rows)
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
		pipeline.QualifiedTable(db, pipeline.ConsentAuditTable)+" WHERE "+cond, args...)
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
	out := map[string][]ConsentRecord{}
	for _, e := range events {
		r := audits[key{e.Topic, int32(e.Partition), e.Offset}]
		r.Event = e
		if r.Audit != nil {
			a := *r.Audit
			a.Event = e
			r.Audit = &a
		}
		out[e.Customer] = append(out[e.Customer], r)
	}
	return out, nil
}

// deletePublisherRows deletes the customer's rows, under each of its stored ids, from
// the publishers' tables that hold their figures (the digest publisher's tracking
// crossings), where the loop has them, and adds what it deleted to the audit. The channel
// publisher's table (pipeline.ChannelTable) is kept, as the consent audit is: it holds
// the customer's id with hashes and versions only, no figure, and is what sends the
// withdrawal's receipt once and keeps the versions of a later statement increasing.
func deletePublisherRows(ctx context.Context, conn driver.Conn, cfg pipeline.Config, stored []string, a *ConsentAudit) error {
	if len(stored) == 0 {
		return nil
	}
	db := cfg.ClickHouse.Database
	for _, table := range []string{pipeline.TrackingTable} {
		var exists uint8
		if err := conn.QueryRow(ctx, "SELECT count() > 0 FROM system.tables WHERE database = ? AND name = ?", db, table).Scan(&exists); err != nil {
			return fmt.Errorf("looking for %s.%s: %w", db, table, err)
		}
		if exists == 0 {
			continue
		}
		for _, customer := range stored {
			n, id, err := ddl.DeletePublisherCustomer(ctx, conn, cfg.ClickHouse, table, customer)
			if err != nil {
				return err
			}
			if n == 0 {
				continue
			}
			a.Tables, a.RowsDeleted = append(a.Tables, table), append(a.RowsDeleted, n)
			if id != "" {
				a.MutationIDs = append(a.MutationIDs, id)
			}
		}
	}
	return nil
}

// deleteDeadLetters deletes the customer's dead letters of the withheld streams, under
// each of its stored ids (in stored's order), and adds what it deleted to the audit.
func deleteDeadLetters(ctx context.Context, conn driver.Conn, cfg pipeline.Config, stored []string, streams map[string][]string, a *ConsentAudit) error {
	for _, customer := range stored {
		n, id, err := ddl.DeleteDeadLetters(ctx, conn, cfg.ClickHouse, customer, streams[customer])
		if err != nil {
			return err
		}
		if n == 0 {
			continue
		}
		a.Tables, a.RowsDeleted = append(a.Tables, pipeline.DeadLettersTable), append(a.RowsDeleted, n)
		if id != "" {
			a.MutationIDs = append(a.MutationIDs, id)
		}
	}
	return nil
}
