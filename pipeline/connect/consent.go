package connect

import (
	"context"
	"fmt"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// PullConsent reads the consent topic from where the ConsentTable ends to the topic's
// end as of the call, and records every message, invalid ones with their error. It
// returns how many it recorded. Recording is the commit: a message is read again only
// if its insert failed.
func PullConsent(ctx context.Context, conn driver.Conn, cfg pipeline.Config) (int, error) {
	db, topic := cfg.ClickHouse.Database, cfg.Consent.Topic
	kc, err := KafkaClient(cfg.Kafka)
	if err != nil {
		return 0, err
	}
	ends, err := TopicOffsets(ctx, kc, topic)
	if err != nil {
		return 0, err
	}
	next := map[int]int64{}
	rows, err := conn.Query(ctx, "SELECT _partition, max(_offset) FROM "+pipeline.QualifiedTable(db, pipeline.ConsentTable)+" WHERE _topic = ? GROUP BY _partition", topic)
	if err != nil {
		return 0, fmt.Errorf("reading where the consent topic stands: %w", err)
	}
	for rows.Next() {
		var p int32
		var off int64
		if err := rows.Scan(&p, &off); err != nil {
			rows.Close()
			return 0, err
		}
		next[int(p)] = off + 1
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	sec, err := SecurityOf(cfg.Kafka)
	if err != nil {
		return 0, err
	}
	streams := make([]string, len(cfg.Streams))
	for i, s := range cfg.Streams {
		streams[i] = s.Name
	}
	var events []pipeline.ConsentEvent
	now := time.Now().UTC().Truncate(time.Second)
	for p, r := range ends {
		from := max(next[p], r.First)
		if from >= r.End {
			continue
		}
		msgs, err := ReadRange(ctx, sec, cfg.Kafka.Brokers, topic, p, from, r.End)
		if err != nil {
			return 0, err
		}
		for _, m := range msgs {
			ev, err := pipeline.ParseConsent(m.Value, streams)
			if err != nil {
				ev.Err = err.Error()
			}
			if cfg.ConsentHashed() && ev.Customer != "" {
				ev.Customer = pipeline.HashPII(cfg.HMACKey, []byte(ev.Customer))
			}
			ev.Received, ev.Topic, ev.Partition, ev.Offset = now, topic, m.Partition, m.Offset
			events = append(events, ev)
		}
	}
	if len(events) == 0 {
		return 0, nil
	}
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+pipeline.QualifiedTable(db, pipeline.ConsentTable))
	if err != nil {
		return 0, fmt.Errorf("preparing the consent insert: %w", err)
	}
	for _, e := range events {
		if err := b.Append(e.ID, e.Customer, e.Action, pipeline.NonNil(e.Scope), e.At, e.Received, e.Err, e.Topic, int32(e.Partition), e.Offset); err != nil {
			_ = b.Abort()
			return 0, fmt.Errorf("appending consent: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return 0, fmt.Errorf("recording consent: %w", err)
	}
	return len(events), nil
}

const ConsentSelect = "SELECT id, customer_id, action, scope, ts, received_at, error, _topic, _partition, _offset FROM "

func ScanConsent(rows driver.Rows) ([]pipeline.ConsentEvent, error) {
	defer rows.Close()
	var out []pipeline.ConsentEvent
	for rows.Next() {
		var e pipeline.ConsentEvent
		var p int32
		if err := rows.Scan(&e.ID, &e.Customer, &e.Action, &e.Scope, &e.At, &e.Received, &e.Err, &e.Topic, &p, &e.Offset); err != nil {
			return nil, err
		}
		e.Partition = int(p)
		out = append(out, e)
	}
	return out, rows.Err()
}

// PendingConsent returns the recorded consent messages not yet applied (without an
// audit row), in the order they are applied.
func PendingConsent(ctx context.Context, conn driver.Conn, db string) ([]pipeline.ConsentEvent, error) {
	rows, err := conn.Query(ctx, ConsentSelect+pipeline.QualifiedTable(db, pipeline.ConsentTable)+
		" WHERE (_topic, _partition, _offset) NOT IN (SELECT _topic, _partition, _offset FROM "+pipeline.QualifiedTable(db, pipeline.ConsentAuditTable)+
		") ORDER BY ts, _partition, _offset")
	if err != nil {
		return nil, fmt.Errorf("reading pending consent: %w", err)
	}
	return ScanConsent(rows)
}

// LoadConsent reads the consent state of a loop's streams: every recorded message,
// applied or still pending, because a worker that starts after a withdrawal was recorded
// must withhold at once.
func LoadConsent(ctx context.Context, conn driver.Conn, db string, streams []string) (*pipeline.ConsentState, error) {
	rows, err := conn.Query(ctx, ConsentSelect+pipeline.QualifiedTable(db, pipeline.ConsentTable)+" WHERE error = ''")
	if err != nil {
		return nil, fmt.Errorf("reading the consent state: %w", err)
	}
	events, err := ScanConsent(rows)
	if err != nil {
		return nil, fmt.Errorf("reading the consent state: %w", err)
	}
	return pipeline.ResolveConsent(events, streams), nil
}
