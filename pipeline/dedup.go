package pipeline

import (
	"context"
	"fmt"
	"hash/maphash"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// dedupWindow remembers the ids (event_id, plan_id) ingested from one partition for a
// while, so that a producer's retry, the same id sent again, is not stored twice. It holds
// when a producer's duplicates land in the same partition, which keyed partitioning
// (by customer) guarantees; duplicates across partitions are not caught.
//
// Ids are kept as 128-bit hashes (two seeded maphash values): the structures then hold no
// pointers, so a window of millions of ids costs the garbage collector nothing to scan,
// and the chance that two different ids collide is negligible (about n/2^128 per id for
// a window of n).
type dedupWindow struct {
	window time.Duration
	seen   map[idHash]int64 // id -> when it was ingested, unix nanoseconds
	order  []dedupEntry     // oldest first, for expiry
	head   int
}

type idHash struct{ a, b uint64 }

type dedupEntry struct {
	id idHash
	at int64
}

// The seeds live as long as the process; a window is rebuilt from ClickHouse with them.
var dedupSeedA, dedupSeedB = maphash.MakeSeed(), maphash.MakeSeed()

func hashID(id string) idHash {
	return idHash{maphash.String(dedupSeedA, id), maphash.String(dedupSeedB, id)}
}

func newDedupWindow(window time.Duration) *dedupWindow {
	return &dedupWindow{window: window, seen: map[idHash]int64{}}
}

// duplicate reports whether id was ingested within the window before now; if not, it
// records id as ingested at now.
func (d *dedupWindow) duplicate(id string, now time.Time) bool {
	at := now.UnixNano()
	d.expire(at)
	h := hashID(id)
	if _, ok := d.seen[h]; ok {
		return true
	}
	d.add(h, at)
	return false
}

func (d *dedupWindow) add(h idHash, at int64) {
	d.seen[h] = at
	d.order = append(d.order, dedupEntry{h, at})
}

func (d *dedupWindow) expire(now int64) {
	for d.head < len(d.order) && now-d.order[d.head].at > int64(d.window) {
		e := d.order[d.head]
		if d.seen[e.id] == e.at {
			delete(d.seen, e.id)
		}
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
		d.add(hashID(id), at.UnixNano())
	}
	return d, rows.Err()
}
