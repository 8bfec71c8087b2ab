package ingest

import (
	"context"
	"fmt"
	"math"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fastjson"
)

// deadRow is a dead letter's row of the dead_letters table (pipeline.DeadLettersTable).
type deadRow struct {
	customer  string // as the stream stores it; empty when not readable
	stream    string
	reason    pipeline.Reason
	topic     string
	partition int32
	offset    int64
	eventTime time.Time
	at        time.Time // dead-lettered, as the dead letter's header says
}

// deadLetterRow is m's row of the dead_letters table, dead-lettered for reason. Only
// dead letters come here: the happy path pays nothing for it. withheld reports whether
// the stream withholds a stored customer id (the customer withdrew their consent): such
// a row keeps no customer.
func (d *Decoder) deadLetterRow(s *pipeline.StreamConfig, m *kafka.Message, reason pipeline.Reason, now time.Time, withheld func(stream, customer string) bool) deadRow {
	r := deadRow{stream: s.Name, reason: reason, topic: m.Topic, partition: int32(m.Partition), offset: m.Offset,
		eventTime: storableTime(m.Time, now), at: now.UTC().Truncate(time.Second)}
	if d == nil {
		return r
	}
	customer, event, ok := d.readRefused(m.Value, ddl.EventTimeColumn(s.Kind))
	if ok {
		r.eventTime = event
	}
	if customer != "" && !withheld(s.Name, customer) {
		r.customer = customer
	}
	return r
}

// readRefused reads, best effort, what a refused message says of its customer and event
// time, by the stream's mapping: the customer id as the stream stores it (hashed under
// the loop's key when the stream hashes customer ids, so a clear id of a hashed stream
// is never returned), empty when the message has none that decodes; and the event time of
// field timeField, ok false when it has none that decodes. A message beyond the limits
// is not parsed (the limits are what keep a hostile message's parse cheap).
func (d *Decoder) readRefused(msg []byte, timeField int) (customer string, event time.Time, ok bool) {
	if d.limits.Check(msg) != nil {
		return "", time.Time{}, false
	}
	p := scrubParsers.Get()
	defer scrubParsers.Put(p)
	doc, err := p.ParseBytes(msg)
	if err != nil || doc.Type() != fastjson.TypeObject {
		return "", time.Time{}, false
	}
	if f := &d.fields[customerColumn]; f.path != nil {
		var v value
		if jv := doc.Get(f.path...); jv != nil && toID(jv, &v) == nil {
			if f.pii == pipeline.PIIHash {
				customer = string(d.macs.Sum(nil, v.str))
			} else {
				customer = string(v.str)
			}
		}
	}
	if f := &d.fields[timeField]; f.path != nil {
		var v value
		if jv := doc.Get(f.path...); jv != nil && toDateTime(jv, &v) == nil {
			event, ok = time.Unix(v.i, 0).UTC(), true
		}
	}
	return customer, event, ok
}

// storableTime is t when a DateTime holds it, else now: a message without a Kafka
// timestamp counts when it was dead-lettered.
func storableTime(t, now time.Time) time.Time {
	if t.IsZero() || t.Unix() < 0 || t.Unix() > math.MaxUint32 {
		return now.UTC().Truncate(time.Second)
	}
	return t.UTC().Truncate(time.Second)
}

// writeDeadRows inserts a batch's dead-letter rows in one insert.
func writeDeadRows(ctx context.Context, conn driver.Conn, db string, rows []deadRow) error {
	b, err := conn.PrepareBatch(ctx, ddl.DeadLetterInsertSQL(db))
	if err != nil {
		return fmt.Errorf("preparing the dead letters' insert: %w", err)
	}
	for _, r := range rows {
		if err := b.Append(r.customer, r.stream, string(r.reason), r.topic, r.partition, r.offset, r.eventTime, r.at); err != nil {
			_ = b.Abort()
			return fmt.Errorf("appending to %s: %w", pipeline.DeadLettersTable, err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("writing %s: %w", pipeline.DeadLettersTable, err)
	}
	return nil
}

// deadRowsNotLanded returns rows without those whose source positions dead_letters
// already holds. It runs before a retry of their insert: the failed attempt may have
// written them. shards come from Worker.readers for the table.
func deadRowsNotLanded(ctx context.Context, shards []shardReader, db string, rows []deadRow) ([]deadRow, error) {
	if len(rows) == 0 {
		return rows, nil
	}
	type tp struct {
		topic     string
		partition int32
	}
	type bounds struct{ lo, hi int64 }
	spans := map[tp]*bounds{}
	for _, r := range rows {
		k := tp{r.topic, r.partition}
		if b := spans[k]; b == nil {
			spans[k] = &bounds{r.offset, r.offset}
		} else {
			b.lo, b.hi = min(b.lo, r.offset), max(b.hi, r.offset)
		}
	}
	cond, args := " WHERE ", []any{}
	for k, b := range spans {
		if len(args) > 0 {
			cond += " OR "
		}
		cond += "(source_topic = ? AND source_partition = ? AND source_offset BETWEEN ? AND ?)"
		args = append(args, k.topic, k.partition, b.lo, b.hi)
	}
	type pos struct {
		tp
		offset int64
	}
	landed := map[pos]bool{}
	for _, sh := range shards {
		if err := func() error {
			res, err := sh.conn.Query(ctx, "SELECT source_topic, source_partition, source_offset FROM "+sh.table(db, pipeline.DeadLettersTable)+cond, args...)
			if err != nil {
				return err
			}
			defer res.Close()
			for res.Next() {
				var p pos
				if err := res.Scan(&p.topic, &p.partition, &p.offset); err != nil {
					return err
				}
				landed[p] = true
			}
			return res.Err()
		}(); err != nil {
			return nil, fmt.Errorf("checking what a failed insert into %s wrote: %w", pipeline.DeadLettersTable, err)
		}
	}
	out := rows[:0:0]
	for _, r := range rows {
		if !landed[pos{tp{r.topic, r.partition}, r.offset}] {
			out = append(out, r)
		}
	}
	return out, nil
}
