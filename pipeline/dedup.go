package pipeline

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// dedupWindow remembers the ids (event_id, plan_id) ingested from one partition for a
// while, so that a producer's retry, the same id sent again, is not stored twice. It holds
// when a producer's duplicates land in the same partition, which keyed partitioning
// (by customer) guarantees; duplicates across partitions are not caught.
type dedupWindow struct {
	window time.Duration
	seen   map[string]time.Time // id -> when it was ingested
	order  []dedupEntry         // oldest first, for expiry
	head   int
}

type dedupEntry struct {
	id string
	at time.Time
}

func newDedupWindow(window time.Duration) *dedupWindow {
	return &dedupWindow{window: window, seen: map[string]time.Time{}}
}

// duplicate reports whether id was ingested within the window before now; if not, it
// records id as ingested at now.
func (d *dedupWindow) duplicate(id string, now time.Time) bool {
	d.expire(now)
	if _, ok := d.seen[id]; ok {
		return true
	}
	d.add(id, now)
	return false
}

func (d *dedupWindow) add(id string, at time.Time) {
	d.seen[id] = at
	d.order = append(d.order, dedupEntry{id, at})
}

func (d *dedupWindow) expire(now time.Time) {
	for d.head < len(d.order) && now.Sub(d.order[d.head].at) > d.window {
		e := d.order[d.head]
		if d.seen[e.id].Equal(e.at) {
			delete(d.seen, e.id)
		}
		d.order[d.head] = dedupEntry{}
		d.head++
	}
	if d.head > 1024 && d.head > len(d.order)/2 {
		d.order = append(d.order[:0:0], d.order[d.head:]...)
		d.head = 0
	}
}

// idColumn is the column holding a stream's message id.
func idColumn(kind Kind) string {
	if kind == KindPlan {
		return "plan_id"
	}
	return "event_id"
}

// loadDedupWindow fills a partition's window with the ids its raw table received within
// the window, so that the window survives restarts and rebalances.
func loadDedupWindow(ctx context.Context, conn driver.Conn, db string, s *StreamConfig, partition int, window time.Duration, now time.Time) (*dedupWindow, error) {
	d := newDedupWindow(window)
	rows, err := conn.Query(ctx, "SELECT "+QuoteIdent(idColumn(s.Kind))+", _ingested_at FROM "+QualifiedTable(db, s.Table())+
		" WHERE _topic = ? AND _partition = ? AND _ingested_at >= ? ORDER BY _ingested_at", s.Topic, int32(partition), now.Add(-window).Truncate(time.Second))
	if err != nil {
		return nil, fmt.Errorf("loading the duplicate window of %s/%d: %w", s.Topic, partition, err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			return nil, err
		}
		d.add(id, at)
	}
	return d, rows.Err()
}
