package ingest

import (
	"context"
	"fmt"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// span is the offsets of one partition in a batch.
type span struct {
	first, last int64
	// messages in the span, of which deadLettered went to the dead-letter topic,
	// duplicates were a producer's retries and withheld came from customers who withdrew
	// their consent; the rest are rows of the raw table.
	messages, deadLettered, duplicates, withheld uint64
}

type topicPartition struct {
	topic     string
	partition int
}

func writeLedger(ctx context.Context, conn driver.Conn, db, batchID, worker string, spans map[topicPartition]*span, at time.Time) error {
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+pipeline.QualifiedTable(db, pipeline.LedgerTable)+
		" (`topic`, `partition`, `first_offset`, `last_offset`, `messages`, `dead_lettered`, `duplicates`, `batch_id`, `worker`, `written_at`, `withheld`)")
	if err != nil {
		return fmt.Errorf("preparing ledger insert: %w", err)
	}
	for tp, s := range spans {
		if err := b.Append(tp.topic, int32(tp.partition), s.first, s.last, s.messages, s.deadLettered, s.duplicates, batchID, worker, at, s.withheld); err != nil {
			_ = b.Abort()
			return fmt.Errorf("appending to the ledger: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("writing the ledger: %w", err)
	}
	return nil
}

// resumePoint is where a newly assigned partition picks up.
type resumePoint struct {
	// offset to read from; negative means "the consumer group's committed offset".
	offset int64
	// landed holds the rows past the ledger that are already in the raw table, by offset.
	landed map[int64]landedRow
}

// landedRow is what the duplicate window needs of a row already in the raw table.
type landedRow struct {
	id idHash
	at int64 // produced, Unix milliseconds
}

// clockSlack bounds how far apart the clocks of two workers may be when one recovers a
// partition the other was writing; it only narrows the recovery scan.
const clockSlack = time.Hour

// ledgerEnd is what the ledger says of one partition: its last recorded offset, when
// that was written, and how many entries it has.
type ledgerEnd struct {
	last    int64
	written time.Time
	entries uint64
}

// merge adds what another shard's ledger says. A shard without entries has nothing to
// say: its max() of an empty set is a zero, not an offset.
func (e ledgerEnd) merge(o ledgerEnd) ledgerEnd {
	switch {
	case o.entries == 0:
		return e
	case e.entries == 0:
		return o
	}
	if o.written.After(e.written) {
		e.written = o.written
	}
	return ledgerEnd{last: max(e.last, o.last), written: e.written, entries: e.entries + o.entries}
}

// recoverPartition reads the ledger and the raw table to find where a partition resumes.
// shards come from Worker.readers for the raw table and the ledger.
func recoverPartition(ctx context.Context, shards []shardReader, db string, s *pipeline.StreamConfig, topic string, partition int) (resumePoint, error) {
	var end ledgerEnd
	for _, sh := range shards {
		var e ledgerEnd
		if err := sh.conn.QueryRow(ctx, "SELECT max(last_offset), max(written_at), count() FROM "+sh.table(db, pipeline.LedgerTable)+
			" WHERE topic = ? AND partition = ?", topic, int32(partition)).Scan(&e.last, &e.written, &e.entries); err != nil {
			return resumePoint{}, fmt.Errorf("reading the ledger for %s/%d: %w", topic, partition, err)
		}
		end = end.merge(e)
	}
	rp := resumePoint{offset: -1, landed: map[int64]landedRow{}}
	for _, sh := range shards {
		q := "SELECT _offset, " + pipeline.QuoteIdent(idColumn(s.Kind)) + ", " + producedSQL + " FROM " + sh.table(db, s.Table()) + " WHERE _topic = ? AND _partition = ?"
		args := []any{topic, int32(partition)}
		if end.entries > 0 {
			rp.offset = end.last + 1
			q += " AND _offset > ? AND _ingested_at >= ?"
			args = append(args, end.last, end.written.Add(-clockSlack))
		}
		if err := readLanded(ctx, sh.conn, q, args, rp.landed); err != nil {
			return resumePoint{}, fmt.Errorf("reading offsets past the ledger in %s: %w", s.Table(), err)
		}
	}
	return rp, nil
}

func readLanded(ctx context.Context, conn driver.Conn, q string, args []any, landed map[int64]landedRow) error {
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var off int64
		var id string
		var r landedRow
		if err := rows.Scan(&off, &id, &r.at); err != nil {
			return err
		}
		r.id = hashID(id)
		landed[off] = r
	}
	return rows.Err()
}

// withoutLanded drops from c the rows whose source offsets are already in the stream's
// raw table. It runs before an insert is retried: the failed attempt may have written
// some or all of its rows (an error can reach the client after the server committed).
// shards come from Worker.readers for the raw table.
func withoutLanded(ctx context.Context, shards []shardReader, db string, s *pipeline.StreamConfig, c *columns) error {
	if c.n == 0 {
		return nil
	}
	src := c.cols[c.decoded:]
	parts, offsets, ingested := src[srcPartition].i32, src[srcOffset].i64, src[srcIngestedAt].i64
	type bounds struct{ lo, hi int64 }
	spans := map[int32]*bounds{}
	since := ingested[0]
	for i := range c.n {
		p, off := parts[i], offsets[i]
		if b := spans[p]; b == nil {
			spans[p] = &bounds{off, off}
		} else {
			b.lo, b.hi = min(b.lo, off), max(b.hi, off)
		}
		since = min(since, ingested[i])
	}
	cond := " WHERE _topic = ? AND _ingested_at >= ? AND ("
	args := []any{s.Topic, time.Unix(since, 0).UTC()}
	first := true
	for p, b := range spans {
		if !first {
			cond += " OR "
		}
		first = false
		cond += "(_partition = ? AND _offset BETWEEN ? AND ?)"
		args = append(args, p, b.lo, b.hi)
	}
	cond += ")"
	type po struct {
		p   int32
		off int64
	}
	landed := map[po]struct{}{}
	for _, sh := range shards {
		if err := func() error {
			res, err := sh.conn.Query(ctx, "SELECT _partition, _offset FROM "+sh.table(db, s.Table())+cond, args...)
			if err != nil {
				return err
			}
			defer res.Close()
			for res.Next() {
				var k po
				if err := res.Scan(&k.p, &k.off); err != nil {
					return err
				}
				landed[k] = struct{}{}
			}
			return res.Err()
		}(); err != nil {
			return fmt.Errorf("checking what a failed insert into %s wrote: %w", s.Table(), err)
		}
	}
	if len(landed) == 0 {
		return nil
	}
	keep := make([]bool, c.n)
	for i := range c.n {
		_, done := landed[po{parts[i], offsets[i]}]
		keep[i] = !done
	}
	c.keep(keep)
	return nil
}

// ledgerRecorded returns the partitions whose span of a batch the ledger already holds,
// so that a retried ledger write records each span once. On a cluster the write is not
// atomic: it goes to the shard of each partition, and some shards may have taken it when
// the client saw an error. shards come from Worker.readers for the ledger.
func ledgerRecorded(ctx context.Context, shards []shardReader, db, batchID string) (map[topicPartition]bool, error) {
	done := map[topicPartition]bool{}
	for _, sh := range shards {
		if err := func() error {
			rows, err := sh.conn.Query(ctx, "SELECT topic, partition FROM "+sh.table(db, pipeline.LedgerTable)+" WHERE batch_id = ?", batchID)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var (
					topic string
					p     int32
				)
				if err := rows.Scan(&topic, &p); err != nil {
					return err
				}
				done[topicPartition{topic, int(p)}] = true
			}
			return rows.Err()
		}(); err != nil {
			return nil, fmt.Errorf("checking the ledger for batch %s: %w", batchID, err)
		}
	}
	return done, nil
}

// unrecorded is spans without those already recorded.
func unrecorded(spans map[topicPartition]*span, done map[topicPartition]bool) map[topicPartition]*span {
	out := make(map[topicPartition]*span, len(spans))
	for tp, s := range spans {
		if !done[tp] {
			out[tp] = s
		}
	}
	return out
}

// LedgerTotals is what the ledger records of one topic: where each partition stands and
// how its messages were disposed of.
type LedgerTotals struct {
	// Next is the next offset to ingest per partition.
	Next                                         map[int]int64
	Messages, DeadLettered, Duplicates, Withheld int64
}

// ReadLedgerTotals sums the ledger's entries for a topic.
func ReadLedgerTotals(ctx context.Context, conn driver.Conn, db, topic string) (LedgerTotals, error) {
	t := LedgerTotals{Next: map[int]int64{}}
	rows, err := conn.Query(ctx, "SELECT partition, max(last_offset), sum(messages), sum(dead_lettered), sum(duplicates), sum(withheld) FROM "+
		pipeline.QualifiedTable(db, pipeline.LedgerTable)+" WHERE topic = ? GROUP BY partition", topic)
	if err != nil {
		return t, fmt.Errorf("reading the ledger for %s: %w", topic, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			p                     int32
			last                  int64
			msgs, dead, dup, held uint64
		)
		if err := rows.Scan(&p, &last, &msgs, &dead, &dup, &held); err != nil {
			return t, fmt.Errorf("reading the ledger for %s: %w", topic, err)
		}
		t.Next[int(p)] = last + 1
		t.Messages += int64(msgs)
		t.DeadLettered += int64(dead)
		t.Duplicates += int64(dup)
		t.Withheld += int64(held)
	}
	return t, rows.Err()
}

// LedgerPartition is what the ledger records of one partition.
type LedgerPartition struct {
	Partition int
	// Next is the next offset to ingest.
	Next                                         int64
	Messages, DeadLettered, Duplicates, Withheld int64
	// LastWritten is when the partition's latest batch was recorded.
	LastWritten time.Time
}

// ReadLedgerPartitions returns the ledger's entries for a topic summed per partition, in
// partition order.
func ReadLedgerPartitions(ctx context.Context, conn driver.Conn, db, topic string) ([]LedgerPartition, error) {
	rows, err := conn.Query(ctx, "SELECT partition, max(last_offset), sum(messages), sum(dead_lettered), sum(duplicates), sum(withheld), max(written_at) FROM "+
		pipeline.QualifiedTable(db, pipeline.LedgerTable)+" WHERE topic = ? GROUP BY partition ORDER BY partition", topic)
	if err != nil {
		return nil, fmt.Errorf("reading the ledger for %s: %w", topic, err)
	}
	defer rows.Close()
	var out []LedgerPartition
	for rows.Next() {
		var (
			p                     int32
			last                  int64
			msgs, dead, dup, held uint64
			at                    time.Time
		)
		if err := rows.Scan(&p, &last, &msgs, &dead, &dup, &held, &at); err != nil {
			return nil, fmt.Errorf("reading the ledger for %s: %w", topic, err)
		}
		out = append(out, LedgerPartition{Partition: int(p), Next: last + 1, Messages: int64(msgs), DeadLettered: int64(dead),
			Duplicates: int64(dup), Withheld: int64(held), LastWritten: at.UTC()})
	}
	return out, rows.Err()
}
