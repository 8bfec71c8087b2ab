package ingest

import (
	"cmp"
	"context"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/prometheus/client_golang/prometheus"
)

// dedupWindow remembers the ids (event_id, plan_id) stored from one partition, so that a
// producer's retry, the same id sent again, is not stored twice. It holds when a
// producer's duplicates land in the same partition, which keyed partitioning (by
// customer) guarantees; duplicates across partitions are not caught.
//
// The window runs on produce time, never on the time a worker reads. A message's time is
// its Kafka timestamp, or the moment it is read if that is earlier (a producer's clock
// that runs ahead) or it has none; it is kept in the raw table as _produced_at_ms. The
// partition's clock is the latest time among the messages stored from it. A message is
// a duplicate when the latest message stored from the partition with its id
//
//   - is still in the window: the clock has moved on by at most the window since that
//     message was stored; and
//   - was produced at most the window before or after it.
//
// Whether a retry is stored so depends on the partition's messages alone: not on how
// far the consumer lags, nor on crashes, rebalances or a slow server. Comparing the two
// messages' own times, rather than the retry's time with the clock, keeps a producer
// whose clock is behind the others' (or one that sends old events with their event
// times) deduplicated. A window rebuilt from ClickHouse after a restart
// (loadDedupWindow) holds what the lost one held, and decides the same.
//
// Ids are kept as 128-bit hashes (two seeded maphash values), and the chance that two
// different ids collide is negligible (about n/2^127 per id for a window of n). The
// hashes sit in a ring in the order they were stored, which is the order they leave
// the window in, and a flat open-addressing table with linear probing, at most half
// full, finds them: each slot is 8 bytes, the low 32 bits of the id's hash (which also
// give its home slot) and the ring position of the id, whose full hash is compared when
// those 32 bits match. That is 48 to 96 bytes per id (as the window stands between its
// sizes, powers of two) in pointer-free slices, which the garbage collector does not
// scan. Small slots keep more of a large window's table in the CPU's caches, and a table
// slot is reached without the ring but to confirm a match, which a new id rarely needs.
// (A Go map of the same ids cost five times the time and allocated 250 bytes per id as
// it grew: BenchmarkDedupWindowBacklog.) An id stored again replaces its entry, which
// stays in the ring, marked dead, until it reaches the head.
//
// A large window's table is bigger than the caches, so a lookup waits for memory. check
// takes a chunk of ids at once and touches all their slots, and expiry those of the ids
// it drops, before looking any up, so that the waits overlap instead of adding up.
type dedupWindow struct {
	window int64    // milliseconds
	clock  int64    // the latest produce time of the messages stored, Unix milliseconds
	slots  []uint64 // dedupSlot values, 0 empty; len is a power of two
	// ring holds the ids in the window, oldest first, in the positions [head, tail),
	// which count up and wrap: position p is at ring[p&(len(ring)-1)]. len is a power
	// of two. dead counts the entries in it replaced by a later store of their id.
	ring       []dedupEntry
	head, tail uint32
	dead       int
	// max bounds the ids held, and so the memory: past it the oldest are dropped before
	// their time and counted in evicted (which may be nil). 0 is no bound (but for
	// maxDedupHeld).
	max     int
	evicted prometheus.Counter
	sink    uint64 // the sum of the slots check touches, so that the loads are made
}

type idHash struct{ a, b uint64 }

type dedupEntry struct {
	id idHash // the zero idHash, which hashID never returns, marks a dead entry
	at int64  // when its message was produced, Unix milliseconds
	// stored is the clock right after the message was stored; it never decreases along
	// the ring, so the window drops its ids from the head.
	stored int64
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
	return &dedupWindow{window: window.Milliseconds(), slots: make([]uint64, minDedupSlots), ring: make([]dedupEntry, minDedupRing)}
}

// check takes the ids hs in turn, of messages produced at ats (Unix milliseconds):
// dup[i] reports whether hs[i] is a duplicate (see dedupWindow), earlier ids of hs
// counting as stored when they are not duplicates themselves; those are recorded. dup
// must be as long as hs. The home slots of hs are read first, in a loop of independent
// loads, so that their cache misses overlap.
func (d *dedupWindow) check(hs []idHash, ats []int64, dup []bool) {
	mask := len(d.slots) - 1
	var sum uint64
	for _, h := range hs {
		sum += d.slots[int(uint32(h.a))&mask]
	}
	d.sink += sum
	for i, h := range hs {
		dup[i] = !d.offer(h, ats[i])
	}
}

// offer records h, of a message produced at at, as stored unless it is a duplicate; it
// reports whether it recorded it.
func (d *dedupWindow) offer(h idHash, at int64) bool {
	i, ok := d.find(h)
	if ok {
		if gap := at - d.ring[uint32(d.slots[i]>>32)&uint32(len(d.ring)-1)].at; gap <= d.window && gap >= -d.window {
			return false
		}
	}
	if d.advance(at) {
		i, ok = d.find(h)
	}
	d.insert(i, ok, h, at)
	return true
}

// store records h, of a message produced at at, as stored whatever the window holds: it
// is for rows already in ClickHouse, which the window is rebuilt from.
func (d *dedupWindow) store(h idHash, at int64) {
	d.advance(at)
	i, ok := d.find(h)
	d.insert(i, ok, h, at)
}

// advance moves the clock to now, if later, and drops the ids it leaves more than the
// window behind; it reports whether the table changed.
func (d *dedupWindow) advance(now int64) bool {
	if now <= d.clock {
		return false
	}
	d.clock = now
	// Most messages move the clock without taking the oldest id out of the window.
	if e := &d.ring[d.head&uint32(len(d.ring)-1)]; d.head == d.tail || (e.id != (idHash{}) && now-e.stored <= d.window) {
		return false
	}
	return d.expire()
}

// insert records h at at, in the slot i that find returned for it (found: an entry of
// h, which it replaces, marking the old one dead).
func (d *dedupWindow) insert(i int, found bool, h idHash, at int64) {
	if found {
		s := d.slots[i]
		d.ring[uint32(s>>32)&uint32(len(d.ring)-1)].id = idHash{}
		d.dead++
		d.remove(s)
		i, _ = d.find(h)
	}
	d.put(i, h, at)
}

// len is the number of ids in the window.
func (d *dedupWindow) len() int { return int(d.tail-d.head) - d.dead }

// held is the number of entries in the ring, dead ones included.
func (d *dedupWindow) held() int { return int(d.tail - d.head) }

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

// put records h, which is not held, produced at at and stored at the clock, in the empty
// slot i that find returned. A
// window at its bound first drops its oldest entries, so that its ring and table do not
// grow past the bound.
func (d *dedupWindow) put(i int, h idHash, at int64) {
	limit := d.max
	if limit <= 0 || limit > maxDedupHeld {
		limit = maxDedupHeld
	}
	if d.len() >= limit || d.held() >= maxDedupHeld {
		for d.len() >= limit || d.held() >= maxDedupHeld {
			if d.removeOldest() && d.evicted != nil {
				d.evicted.Inc()
			}
		}
		// The removal may have shifted entries back into h's run.
		i, _ = d.find(h)
	}
	if d.held() == len(d.ring) {
		d.resizeRing(2 * len(d.ring))
	}
	pos := d.tail
	d.ring[pos&uint32(len(d.ring)-1)] = dedupEntry{h, at, d.clock}
	d.tail++
	d.slots[i] = dedupSlot(h, pos)
	if 2*d.held() > len(d.slots) {
		d.resize(2 * len(d.slots))
	}
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

// removeOldest drops the oldest entry from the ring; it reports whether that was a live
// id rather than a dead entry.
func (d *dedupWindow) removeOldest() bool {
	pos := d.head
	d.head++
	id := d.ring[pos&uint32(len(d.ring)-1)].id
	if id == (idHash{}) {
		d.dead--
		return false
	}
	d.remove(dedupSlot(id, pos))
	return true
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

// expire drops the oldest entries while they are dead or the clock has moved on by more
// than the window since they were stored; it reports whether the table changed. It
// first touches the slots of the ids it drops, so that their cache misses overlap.
func (d *dedupWindow) expire() bool {
	rmask, mask := uint32(len(d.ring)-1), len(d.slots)-1
	var sum uint64
	end := d.head
	for ; end != d.tail; end++ {
		e := &d.ring[end&rmask]
		if e.id != (idHash{}) && d.clock-e.stored <= d.window {
			break
		}
		sum += d.slots[int(uint32(e.id.a))&mask]
	}
	d.sink += sum
	changed := d.head != end
	for d.head != end {
		d.removeOldest()
	}
	if len(d.slots) > minDedupSlots && 8*d.held() < len(d.slots) {
		d.resize(len(d.slots) / 2)
		changed = true
	}
	if len(d.ring) > minDedupRing && 8*d.held() < len(d.ring) {
		d.resizeRing(len(d.ring) / 2)
	}
	return changed
}

// idColumn is the column holding a stream's message id.
func idColumn(kind pipeline.Kind) string {
	if kind == pipeline.KindPlan {
		return "plan_id"
	}
	return "event_id"
}

// producedSQL is a raw row's produce time in Unix milliseconds. Rows written before the
// raw tables had _produced_at_ms read 0 there, and count as produced when ingested.
const producedSQL = "if(_produced_at_ms = 0, toInt64(_ingested_at) * 1000, _produced_at_ms)"

// loadDedupWindow rebuilds a partition's window as it stood before the offset next, so
// that the window survives restarts and rebalances. The clock there is the latest
// produce time of the rows stored from offsets below next. Along the offsets the clock
// only rises, so the rows still in the window are those from the first row produced at
// most the window before the clock on: they are stored again in offset order, which
// gives each the clock it was stored at. Rows past next that are already in ClickHouse
// (an unrecorded batch's) are stored when their offsets are read again (see
// partitionReader.take), in order with the messages around them. next < 0 (the ledger
// has nothing of the partition) starts an empty window.
//
// shards come from Worker.readers for the raw table; on a cluster a partition's rows are
// spread over the shards by customer, read from a synced replica of each, and put in
// offset order together. At most maxIDs ids are held (0: no bound); evicted counts those
// dropped early.
func loadDedupWindow(ctx context.Context, shards []shardReader, db string, s *pipeline.StreamConfig, partition int, next int64, window time.Duration, maxIDs int, evicted prometheus.Counter) (*dedupWindow, error) {
	d := newDedupWindow(window)
	d.max, d.evicted = maxIDs, evicted
	if next < 0 {
		return d, nil
	}
	where := " WHERE _topic = ? AND _partition = ? AND _offset < ?"
	args := []any{s.Topic, int32(partition), next}
	// Produce times are positive, so the clock of no rows is 0: the window starts empty.
	var clock int64
	for _, sh := range shards {
		var c int64
		var n uint64
		if err := sh.conn.QueryRow(ctx, "SELECT max("+producedSQL+"), count() FROM "+sh.table(db, s.Table())+where, args...).Scan(&c, &n); err != nil {
			return nil, fmt.Errorf("reading the duplicate window's clock of %s/%d: %w", s.Topic, partition, err)
		}
		if n > 0 { // the max of no rows is a zero, not a time
			clock = max(clock, c)
		}
	}
	if clock == 0 {
		return d, nil
	}
	// The row at the clock has a time of at least clock-window: first is one of them.
	first := int64(math.MaxInt64)
	for _, sh := range shards {
		var o int64
		var n uint64
		if err := sh.conn.QueryRow(ctx, "SELECT min(_offset), count() FROM "+sh.table(db, s.Table())+where+" AND "+producedSQL+" >= ?",
			append(args, clock-d.window)...).Scan(&o, &n); err != nil {
			return nil, fmt.Errorf("reading where the duplicate window of %s/%d begins: %w", s.Topic, partition, err)
		}
		if n > 0 {
			first = min(first, o)
		}
	}
	type row struct {
		offset int64
		id     idHash
		at     int64
	}
	var rows []row
	for _, sh := range shards {
		if err := func() error {
			res, err := sh.conn.Query(ctx, "SELECT "+pipeline.QuoteIdent(idColumn(s.Kind))+", "+producedSQL+", _offset FROM "+sh.table(db, s.Table())+
				where+" AND _offset >= ? ORDER BY _offset", append(args, first)...)
			if err != nil {
				return err
			}
			defer res.Close()
			for res.Next() {
				var id string
				var r row
				if err := res.Scan(&id, &r.at, &r.offset); err != nil {
					return err
				}
				r.id = hashID(id)
				rows = append(rows, r)
			}
			return res.Err()
		}(); err != nil {
			return nil, fmt.Errorf("loading the duplicate window of %s/%d: %w", s.Topic, partition, err)
		}
	}
	if len(shards) > 1 {
		slices.SortStableFunc(rows, func(a, b row) int { return cmp.Compare(a.offset, b.offset) })
	}
	for _, r := range rows {
		d.store(r.id, r.at)
	}
	return d, nil
}
