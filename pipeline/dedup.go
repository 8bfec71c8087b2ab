package pipeline

import (
	"cmp"
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// dedupWindow remembers the ids (event_id, plan_id) ingested from one partition for a
// while, so that a producer's retry, the same id sent again, is not stored twice. It holds
// when a producer's duplicates land in the same partition, which keyed partitioning
// (by customer) guarantees; duplicates across partitions are not caught.
//
// Ids are kept as 128-bit hashes (two seeded maphash values), and the chance that two
// different ids collide is negligible (about n/2^128 per id for a window of n). They sit
// in a flat open-addressing table with linear probing, at most half full, next to a ring
// of the same hashes in the order they arrived, for expiry: 48 to 56 bytes per id in two
// pointer-free slices, which the garbage collector does not scan, and one or two cache
// misses per lookup. (A Go map of the same ids cost five times the time and allocated
// 250 bytes per id as it grew: BenchmarkDedupWindowBacklog.)
type dedupWindow struct {
	window time.Duration
	slots  []idHash // a zero idHash marks an empty slot; len is a power of two
	used   int
	order  []dedupEntry // oldest first, for expiry
	head   int
	// max bounds the ids held, and so the memory: past it the oldest are dropped before
	// their time and counted in evicted (which may be nil). 0 is no bound.
	max     int
	evicted prometheus.Counter
}

type idHash struct{ a, b uint64 }

type dedupEntry struct {
	id idHash
	at int64 // when it was ingested, Unix nanoseconds
}

// The seeds live as long as the process; a window is rebuilt from ClickHouse with them.
var dedupSeedA, dedupSeedB = maphash.MakeSeed(), maphash.MakeSeed()

func hashID(id string) idHash {
	h := idHash{maphash.String(dedupSeedA, id), maphash.String(dedupSeedB, id)}
	if h == (idHash{}) { // the empty slot's marker
		h.b = 1
	}
	return h
}

const minDedupSlots = 1 << 10

func newDedupWindow(window time.Duration) *dedupWindow {
	return &dedupWindow{window: window, slots: make([]idHash, minDedupSlots)}
}

// duplicate reports whether id was ingested within the window before now; if not, it
// records id as ingested at now.
func (d *dedupWindow) duplicate(id string, now time.Time) bool {
	at := now.UnixNano()
	d.expire(at)
	return !d.add(hashID(id), at)
}

// len is the number of ids in the window.
func (d *dedupWindow) len() int { return d.used }

// find returns the slot holding h, or the empty slot where it would go.
func (d *dedupWindow) find(h idHash) (int, bool) {
	mask := len(d.slots) - 1
	for i := int(h.a) & mask; ; i = (i + 1) & mask {
		switch d.slots[i] {
		case h:
			return i, true
		case idHash{}:
			return i, false
		}
	}
}

// add records h as ingested at at, unless it is already in the window; it reports
// whether it added it.
func (d *dedupWindow) add(h idHash, at int64) bool {
	i, ok := d.find(h)
	if ok {
		return false
	}
	d.slots[i] = h
	d.used++
	d.order = append(d.order, dedupEntry{h, at})
	if 2*d.used > len(d.slots) {
		d.resize(2 * len(d.slots))
	}
	for d.max > 0 && d.used > d.max {
		d.remove(d.order[d.head].id)
		d.head++
		if d.evicted != nil {
			d.evicted.Inc()
		}
	}
	return true
}

func (d *dedupWindow) resize(n int) {
	old := d.slots
	d.slots = make([]idHash, n)
	for _, h := range old {
		if h != (idHash{}) {
			i, _ := d.find(h)
			d.slots[i] = h
		}
	}
}

// remove deletes h, shifting back the entries of its probe run so that lookups stay
// correct without tombstones.
func (d *dedupWindow) remove(h idHash) {
	i, ok := d.find(h)
	if !ok {
		return
	}
	mask := len(d.slots) - 1
	for j := (i + 1) & mask; d.slots[j] != (idHash{}); j = (j + 1) & mask {
		home := int(d.slots[j].a) & mask
		// The entry at j may move to the hole at i when its home is not in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			d.slots[i] = d.slots[j]
			i = j
		}
	}
	d.slots[i] = idHash{}
	d.used--
}

func (d *dedupWindow) expire(now int64) {
	for d.head < len(d.order) && now-d.order[d.head].at > int64(d.window) {
		d.remove(d.order[d.head].id)
		d.head++
	}
	if d.head > 1024 && d.head > len(d.order)/2 {
		d.order = d.order[:copy(d.order, d.order[d.head:])]
		d.head = 0
	}
	if len(d.slots) > minDedupSlots && 8*d.used < len(d.slots) {
		d.resize(len(d.slots) / 2)
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
// the window, so that the window survives restarts and rebalances. shards come from
// Worker.readers for the raw table; on a cluster each shard's ids are read from a synced
// replica and put in ingestion order together.
//
// At most max ids are held (0: no bound); evicted counts those dropped early.
func loadDedupWindow(ctx context.Context, shards []shardReader, db string, s *StreamConfig, partition int, window time.Duration, max int, evicted prometheus.Counter, now time.Time) (*dedupWindow, error) {
	d := newDedupWindow(window)
	d.max, d.evicted = max, evicted
	add := func(h idHash, at int64) { d.add(h, at) }
	var merged []dedupEntry
	if len(shards) > 1 {
		add = func(h idHash, at int64) { merged = append(merged, dedupEntry{h, at}) }
	}
	for _, sh := range shards {
		if err := func() error {
			rows, err := sh.conn.Query(ctx, "SELECT "+QuoteIdent(idColumn(s.Kind))+", _ingested_at FROM "+sh.table(db, s.Table())+
				" WHERE _topic = ? AND _partition = ? AND _ingested_at >= ? ORDER BY _ingested_at", s.Topic, int32(partition), now.Add(-window).Truncate(time.Second))
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var id string
				var at time.Time
				if err := rows.Scan(&id, &at); err != nil {
					return err
				}
				add(hashID(id), at.UnixNano())
			}
			return rows.Err()
		}(); err != nil {
			return nil, fmt.Errorf("loading the duplicate window of %s/%d: %w", s.Topic, partition, err)
		}
	}
	slices.SortStableFunc(merged, func(a, b dedupEntry) int { return cmp.Compare(a.at, b.at) })
	for _, e := range merged {
		d.add(e.id, e.at)
	}
	return d, nil
}
