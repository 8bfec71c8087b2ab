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
// different ids collide is negligible (about n/2^127 per id for a window of n). The
// hashes sit in a ring in the order they arrived, for expiry, and a flat open-addressing
// table with linear probing, at most half full, finds them: each slot is 8 bytes, the
// low 32 bits of the id's hash (which also give its home slot) and the ring position of
// the id, whose full hash is compared when those 32 bits match. That is 40 to 80 bytes
// per id (as the window stands between its sizes, powers of two) in pointer-free slices, which the garbage collector does not scan. Small slots
// keep more of a large window's table in the CPU's caches, and a table slot is reached
// without the ring but to confirm a match, which a new id rarely needs. (A Go map of the
// same ids cost five times the time and allocated 250 bytes per id as it grew:
// BenchmarkDedupWindowBacklog.)
//
// A large window's table is bigger than the caches, so a lookup waits for memory. check
// takes a chunk of ids at once and touches all their slots, and those of the ids about to
// expire, before it looks any up, so that the waits overlap instead of adding up.
type dedupWindow struct {
	window time.Duration
	slots  []uint64 // dedupSlot values, 0 empty; len is a power of two
	// ring holds the ids in the window, oldest first, in the positions [head, tail),
	// which count up and wrap: position p is at ring[p&(len(ring)-1)]. len is a power
	// of two.
	ring       []dedupEntry
	head, tail uint32
	// max bounds the ids held, and so the memory: past it the oldest are dropped before
	// their time and counted in evicted (which may be nil). 0 is no bound (but for
	// maxDedupHeld).
	max     int
	evicted prometheus.Counter
	sink    uint64 // the sum of the slots check touches, so that the loads are made
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
	if uint32(h.a) == 0 { // a slot of 0 is empty
		h.a |= 1
	}
	return h
}

// dedupSlot is the table's slot for the id h at ring position pos: the low 32 bits of
// h.a, never 0, and pos above them.
func dedupSlot(h idHash, pos uint32) uint64 { return uint64(pos)<<32 | uint64(uint32(h.a)) }

const (
	minDedupSlots = 1 << 10
	minDedupRing  = 1 << 9
	// maxDedupHeld bounds every window, whatever its max: the slots hold 32 bits of
	// the ring position and of the home slot. A billion ids would take 40 GB.
	maxDedupHeld = 1 << 30
)

func newDedupWindow(window time.Duration) *dedupWindow {
	return &dedupWindow{window: window, slots: make([]uint64, minDedupSlots), ring: make([]dedupEntry, minDedupRing)}
}

// check takes the ids hs in turn, all at time at: dup[i] reports whether hs[i] was
// ingested within the window before at, or earlier in hs, and the new ones are recorded
// as ingested at at. dup must be as long as hs. The home slots of hs are read first, in a
// loop of independent loads, so that their cache misses overlap.
func (d *dedupWindow) check(hs []idHash, at int64, dup []bool) {
	d.expire(at)
	mask := len(d.slots) - 1
	var sum uint64
	for _, h := range hs {
		sum += d.slots[int(uint32(h.a))&mask]
	}
	d.sink += sum
	for i, h := range hs {
		dup[i] = !d.add(h, at)
	}
}

// len is the number of ids in the window.
func (d *dedupWindow) len() int { return int(d.tail - d.head) }

// find returns the slot holding h, or the empty slot where it would go.
func (d *dedupWindow) find(h idHash) (int, bool) {
	mask, rmask := len(d.slots)-1, uint32(len(d.ring)-1)
	tag := uint32(h.a)
	for i := int(tag) & mask; ; i = (i + 1) & mask {
		s := d.slots[i]
		if s == 0 {
			return i, false
		}
		if uint32(s) == tag && d.ring[uint32(s>>32)&rmask].id == h {
			return i, true
		}
	}
}

// add records h as ingested at at, unless it is already in the window; it reports
// whether it added it. A window at its bound first drops its oldest id, so that its ring
// and table do not grow past the bound.
func (d *dedupWindow) add(h idHash, at int64) bool {
	i, ok := d.find(h)
	if ok {
		return false
	}
	limit := d.max
	if limit <= 0 || limit > maxDedupHeld {
		limit = maxDedupHeld
	}
	if d.len() >= limit {
		for d.len() >= limit {
			d.removeOldest()
			if d.evicted != nil {
				d.evicted.Inc()
			}
		}
		// The removal may have shifted entries back into h's run.
		i, _ = d.find(h)
	}
	if d.len() == len(d.ring) {
		d.resizeRing(2 * len(d.ring))
	}
	pos := d.tail
	d.ring[pos&uint32(len(d.ring)-1)] = dedupEntry{h, at}
	d.tail++
	d.slots[i] = dedupSlot(h, pos)
	if 2*d.len() > len(d.slots) {
		d.resize(2 * len(d.slots))
	}
	return true
}

// resize moves the table to n slots. It reads the old table in order and writes the new
// one nearly in order, since an entry's home slot is its hash's low bits.
func (d *dedupWindow) resize(n int) {
	old := d.slots
	d.slots = make([]uint64, n)
	mask := n - 1
	for _, s := range old {
		if s != 0 {
			i := int(uint32(s)) & mask
			for d.slots[i] != 0 {
				i = (i + 1) & mask
			}
			d.slots[i] = s
		}
	}
}

// resizeRing moves the ring to n entries, which must hold the window's ids; their
// positions stay the same, and so the table.
func (d *dedupWindow) resizeRing(n int) {
	old, omask, nmask := d.ring, uint32(len(d.ring)-1), uint32(n-1)
	d.ring = make([]dedupEntry, n)
	// In runs that wrap around neither ring.
	for p := d.head; p != d.tail; {
		o, i := p&omask, p&nmask
		k := min(uint32(len(old))-o, uint32(n)-i, d.tail-p)
		copy(d.ring[i:i+k], old[o:o+k])
		p += k
	}
}

// removeOldest drops the oldest id from the window.
func (d *dedupWindow) removeOldest() {
	pos := d.head
	d.remove(dedupSlot(d.ring[pos&uint32(len(d.ring)-1)].id, pos))
	d.head++
}

// remove deletes the slot s, shifting back the entries of its probe run so that lookups
// stay correct without tombstones.
func (d *dedupWindow) remove(s uint64) {
	mask := len(d.slots) - 1
	i := int(uint32(s)) & mask
	for d.slots[i] != s {
		if d.slots[i] == 0 { // not held: cannot be, but no reason to loop forever
			return
		}
		i = (i + 1) & mask
	}
	for j := (i + 1) & mask; d.slots[j] != 0; j = (j + 1) & mask {
		home := int(uint32(d.slots[j])) & mask
		// The entry at j may move to the hole at i when its home is not in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			d.slots[i] = d.slots[j]
			i = j
		}
	}
	d.slots[i] = 0
}

// expire drops the ids ingested more than the window before now. It first touches the
// slots of the ids it drops, so that their cache misses overlap.
func (d *dedupWindow) expire(now int64) {
	rmask, mask := uint32(len(d.ring)-1), len(d.slots)-1
	var sum uint64
	end := d.head
	for ; end != d.tail && now-d.ring[end&rmask].at > int64(d.window); end++ {
		sum += d.slots[int(uint32(d.ring[end&rmask].id.a))&mask]
	}
	d.sink += sum
	for d.head != end {
		d.removeOldest()
	}
	if len(d.slots) > minDedupSlots && 8*d.len() < len(d.slots) {
		d.resize(len(d.slots) / 2)
	}
	if len(d.ring) > minDedupRing && 8*d.len() < len(d.ring) {
		d.resizeRing(len(d.ring) / 2)
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
