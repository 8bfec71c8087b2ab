package ingest

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
)

// duplicate is check for one id of a message produced at now: it reports whether the
// message is a duplicate; if not, it records id as stored at now.
func (d *dedupWindow) duplicate(id string, now time.Time) bool {
	dup := []bool{false}
	d.check([]idHash{hashID(id)}, []int64{now.UnixMilli()}, dup)
	return dup[0]
}

func TestDedupWindow(t *testing.T) {
	d := newDedupWindow(time.Minute)
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	steps := []struct {
		id   string
		at   time.Duration
		want bool
	}{
		{"e1", 0, false},
		{"e2", time.Second, false},
		{"e1", 30 * time.Second, true}, // a retry within the window
		{"e3", 59 * time.Second, false},
		{"e1", 61 * time.Second, false}, // the window has passed: stored again
		{"e2", 62 * time.Second, false},
		{"e1", 62 * time.Second, true},
		{"e3", 90 * time.Second, true},
	}
	for i, s := range steps {
		if got := d.duplicate(s.id, t0.Add(s.at)); got != s.want {
			t.Errorf("step %d: duplicate(%s at +%s) = %v, want %v", i, s.id, s.at, got, s.want)
		}
	}
	if d.len() != 3 {
		t.Errorf("the window holds %d ids, want 3", d.len())
	}
}

func BenchmarkDedupWindow(b *testing.B) {
	d := newDedupWindow(time.Minute)
	ids := make([]string, 1<<16)
	for i := range ids {
		ids[i] = "evt-" + time.Duration(i).String()
	}
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d.duplicate(ids[i&(len(ids)-1)], now.Add(time.Duration(i)*time.Millisecond))
		i++
	}
}

// BenchmarkDedupWindowBacklog is the benchmark backlog's shape: a million distinct ids
// within one window, every one new.
func BenchmarkDedupWindowBacklog(b *testing.B) {
	ids := make([]string, 1_000_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("evt-%012d", i)
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		d := newDedupWindow(time.Minute)
		for i, id := range ids {
			if d.duplicate(id, now.Add(time.Duration(i)*time.Microsecond)) {
				b.Fatal("a new id reported as a duplicate")
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ids)), "ns/id")
}

// TestDedupWindowMatchesModel checks the open-addressing table, its growth, shrinking and
// deletions against a plain map with the same expiry rule, over a random sequence in
// which ids come back before and after the window.
func TestDedupWindowMatchesModel(t *testing.T) {
	const window = time.Second
	rng := rand.New(rand.NewPCG(7, 11))
	d := newDedupWindow(window)
	model := map[string]int64{}
	now := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	ms := window.Milliseconds()
	for step := range 300_000 {
		// Bursts of traffic with pauses, so that the window fills, grows, drains and shrinks.
		if step%20_000 < 15_000 {
			now = now.Add(time.Duration(rng.IntN(200)) * time.Microsecond)
		} else {
			now = now.Add(time.Duration(rng.IntN(2000)) * time.Microsecond)
		}
		id := fmt.Sprintf("evt-%d", rng.IntN(20_000))
		at := now.UnixMilli()
		v, ok := model[id]
		want := ok && at-v <= ms
		if !want { // stored: the clock moves to at, and what it passed leaves
			for k, v := range model {
				if at-v > ms {
					delete(model, k)
				}
			}
			model[id] = at
		}
		if got := d.duplicate(id, now); got != want {
			t.Fatalf("step %d: duplicate(%s) = %v, want %v", step, id, got, want)
		}
		if d.len() != len(model) {
			t.Fatalf("step %d: the window holds %d ids, want %d", step, d.len(), len(model))
		}
	}
}

// TestDedupWindowBounded: a full window forgets its oldest ids first, counts them, and
// still recognises the newer ones.
func TestDedupWindowBounded(t *testing.T) {
	d := newDedupWindow(time.Hour)
	evicted := prometheus.NewCounter(prometheus.CounterOpts{Name: "evicted"})
	d.max, d.evicted = 1000, evicted
	now := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	for i := range 1500 {
		if d.duplicate(fmt.Sprintf("e%d", i), now) {
			t.Fatalf("new id e%d reported as a duplicate", i)
		}
	}
	if d.len() != 1000 || testutil.ToFloat64(evicted) != 500 {
		t.Fatalf("window holds %d ids after evicting %v, want 1000 and 500", d.len(), testutil.ToFloat64(evicted))
	}
	if !d.duplicate("e1499", now) || !d.duplicate("e500", now) {
		t.Error("a retained id was not recognised")
	}
	if d.duplicate("e0", now) {
		t.Error("an evicted id was still recognised")
	}
	// A full window makes room before it takes an id: at a bound of a power of two its
	// ring holds exactly the bound, and its table twice as many slots.
	d = newDedupWindow(time.Hour)
	d.max = 1 << 12
	for i := range 3 << 12 {
		d.duplicate(fmt.Sprintf("e%d", i), now)
	}
	if d.len() != 1<<12 || len(d.ring) != 1<<12 || len(d.slots) != 1<<13 {
		t.Errorf("a window bounded at %d ids holds %d in a ring of %d and a table of %d slots", 1<<12, d.len(), len(d.ring), len(d.slots))
	}
}

// BenchmarkDedupWindowPartitions is the windows of the cluster benchmark's worker: 6
// partitions of about 170k ids each, all within the window, checked in chunks of 256 ids
// of one partition at a time, every id new, and as many ids leaving the window as enter
// it. One op is one id; timing starts once the windows are full.
func BenchmarkDedupWindowPartitions(b *testing.B) {
	const partitions, perPartition = 6, 1 << 20 / 6
	ids := make([][]string, partitions)
	for p := range ids {
		ids[p] = make([]string, perPartition)
		for i := range ids[p] {
			ids[p][i] = fmt.Sprintf("evt-%012d", i*partitions+p)
		}
	}
	windows := make([]*dedupWindow, partitions)
	for p := range windows {
		windows[p] = newDedupWindow(time.Minute)
		windows[p].max = pipeline.DefaultMaxDedupIDs
	}
	// The clock moves a little over a window per pass over the ids.
	tick := time.Minute * 101 / 100 / (partitions * perPartition)
	now := time.Now()
	next := make([]int, partitions)
	run := func(n int) {
		for i := 0; i < n; {
			p := (i / chunkItems) % partitions
			k := min(chunkItems, n-i)
			now = now.Add(tick * time.Duration(k))
			if dups := benchDedupChunk(windows[p], ids[p], next[p], k, now); dups != 0 {
				b.Fatalf("%d new ids reported as duplicates", dups)
			}
			next[p] = (next[p] + k) % perPartition
			i += k
		}
	}
	run(partitions * perPartition)
	b.ReportAllocs()
	b.ResetTimer()
	run(b.N)
}

// benchDedupChunk checks k ids of ids from from on (wrapping) against d, as one chunk,
// and returns how many were duplicates.
func benchDedupChunk(d *dedupWindow, ids []string, from, k int, now time.Time) int {
	var hs [chunkItems]idHash
	var ats [chunkItems]int64
	var dup [chunkItems]bool
	for j := range k {
		hs[j] = hashID(ids[(from+j)%len(ids)])
		ats[j] = now.UnixMilli()
	}
	d.check(hs[:k], ats[:k], dup[:k])
	dups := 0
	for _, x := range dup[:k] {
		if x {
			dups++
		}
	}
	return dups
}

// dedupModel is the duplicate window, plainly, for produce times that do not go back:
// the ids stored, oldest first, each kept until the clock (the latest time stored) is
// more than the window past it or max newer ones have come.
type dedupModel struct {
	window  int64
	max     int
	clock   int64
	order   []string
	at      map[string]int64
	evicted int
}

func (m *dedupModel) duplicate(id string, at int64) bool {
	now := max(m.clock, at)
	if a, ok := m.at[id]; ok && now-a <= m.window {
		return true
	}
	m.clock = now
	for len(m.order) > 0 && m.clock-m.at[m.order[0]] > m.window {
		delete(m.at, m.order[0])
		m.order = m.order[1:]
	}
	m.at[id] = at
	m.order = append(m.order, id)
	if m.max > 0 && len(m.order) > m.max {
		delete(m.at, m.order[0])
		m.order = m.order[1:]
		m.evicted++
	}
	return false
}

// TestDedupWindowCheckMatchesModel checks check, which takes a chunk of ids at once,
// against the model: chunks holding the same id twice, ids coming back before and after
// the window, chunks at the same time and ids interleaved with duplicate, with and
// without a bound that evicts, over windows that grow, drain and shrink.
func TestDedupWindowCheckMatchesModel(t *testing.T) {
	for _, max := range []int{0, 700, 5000} {
		t.Run(fmt.Sprintf("max=%d", max), func(t *testing.T) {
			const window = time.Second
			rng := rand.New(rand.NewPCG(3, uint64(max)))
			d := newDedupWindow(window)
			evicted := prometheus.NewCounter(prometheus.CounterOpts{Name: "evicted"})
			d.max, d.evicted = max, evicted
			m := &dedupModel{window: window.Milliseconds(), max: max, at: map[string]int64{}}
			now := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
			var ids []string
			var hs []idHash
			var ats []int64
			var dup []bool
			var grew, shrank, ringShrank bool
			for step := range 3000 {
				slots, ring := len(d.slots), len(d.ring)
				// Bursts of traffic with pauses, now and then longer than the window; now and
				// then two chunks at the same time.
				switch {
				case step%400 == 399:
					now = now.Add(2 * window)
				case step%10 == 9:
				case step%400 < 300:
					now = now.Add(time.Duration(rng.IntN(4)) * time.Millisecond)
				default:
					now = now.Add(time.Duration(rng.IntN(40)) * time.Millisecond)
				}
				at := now.UnixMilli()
				ids, hs, ats = ids[:0], hs[:0], ats[:0]
				for range 1 + rng.IntN(300) {
					var id string
					if len(ids) > 0 && rng.IntN(20) == 0 { // a retry within the chunk
						id = ids[rng.IntN(len(ids))]
					} else {
						id = fmt.Sprintf("evt-%d", rng.IntN(20_000))
					}
					ids = append(ids, id)
					hs = append(hs, hashID(id))
					ats = append(ats, at)
				}
				if step%7 == 0 { // one at a time
					for _, id := range ids {
						if got, want := d.duplicate(id, now), m.duplicate(id, at); got != want {
							t.Fatalf("step %d: duplicate(%s) = %v, want %v", step, id, got, want)
						}
					}
				} else {
					dup = append(dup[:0], make([]bool, len(hs))...)
					d.check(hs, ats, dup)
					for i, id := range ids {
						if want := m.duplicate(id, at); dup[i] != want {
							t.Fatalf("step %d: id %d of the chunk, %s, duplicate = %v, want %v", step, i, id, dup[i], want)
						}
					}
				}
				if d.len() != len(m.order) || int(testutil.ToFloat64(evicted)) != m.evicted {
					t.Fatalf("step %d: the window holds %d ids and evicted %v, want %d and %d",
						step, d.len(), testutil.ToFloat64(evicted), len(m.order), m.evicted)
				}
				grew, shrank, ringShrank = grew || len(d.slots) > slots, shrank || len(d.slots) < slots, ringShrank || len(d.ring) < ring
			}
			if !grew || !shrank || !ringShrank {
				t.Errorf("the table grew %v and shrank %v, the ring shrank %v: the test does not exercise them", grew, shrank, ringShrank)
			}
			if max > 0 && m.evicted == 0 {
				t.Error("the bound never evicted: the test does not exercise it")
			}
		})
	}
}

// TestBatchDropsDuplicates follows messages through the batch as the batch loop adds
// them, ids checked against the windows when a chunk ends or the batch is handed over:
// a duplicate within one chunk, across chunks and across batches (the batch full in the
// middle of a chunk) is dropped and counted, the same id in another partition is not, and
// the rows kept, dead letters and landed messages around them stay as they were.
func TestBatchDropsDuplicates(t *testing.T) {
	w, s := hotPathWorker(t)
	windows := map[int]*dedupWindow{0: newDedupWindow(time.Minute), 1: newDedupWindow(time.Minute)}
	offsets := map[int]int64{}
	type in struct {
		partition int
		id        string // "" is a message that is not JSON; "landed:x" one already landed
	}
	chunk := func(msgs ...in) []item {
		var out []item
		for _, m := range msgs {
			v := fmt.Sprintf(`{"event_id":%q,"customer_id":"c1","product":"p","ts":1790000000,"quantity":1,"region":"eu","note":"%s"}`,
				m.id, strings.Repeat("n", len(m.id)))
			if m.id == "" {
				v = "not json"
			}
			it := item{stream: s, seen: windows[m.partition],
				msg: kafka.Message{Topic: s.Topic, Partition: m.partition, Offset: offsets[m.partition], Value: []byte(v)}}
			it.landed = strings.HasPrefix(m.id, "landed:")
			offsets[m.partition]++
			out = append(out, it)
		}
		return out
	}
	now := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	b := newBatch(w)
	// add is the batch loop's per-chunk work, the batch handed over (and checked) after
	// its first full messages of the chunk when full > 0.
	add := func(chunk []item, full int, check func()) {
		for i := range chunk {
			b.add(&chunk[i], now)
			if i+1 == full {
				b.settle()
				check()
				b.reset()
			}
		}
		b.settle()
	}
	type want struct {
		dead    int
		rows    []string // event ids, in the order added
		offsets []int64
		dups    map[int]int // by partition
		bytes   int
	}
	expect := func(name string, wt want) func() {
		return func() {
			c := b.cols[s]
			var ids []string
			var offs []int64
			var bytes int
			if c != nil {
				ids, offs = c.cols[0].str, c.cols[c.decoded+srcOffset].i64
				bytes = c.bytes
				if c.n != len(ids) || len(c.received) != c.n || len(c.cols[c.decoded+srcTopic].str) != c.n {
					t.Errorf("%s: %d rows, but columns of %d, %d and %d", name, c.n, len(ids), len(c.received), len(c.cols[c.decoded+srcTopic].str))
				}
			}
			if fmt.Sprint(ids) != fmt.Sprint(wt.rows) || fmt.Sprint(offs) != fmt.Sprint(wt.offsets) {
				t.Errorf("%s: rows %v at offsets %v, want %v at %v", name, ids, offs, wt.rows, wt.offsets)
			}
			wantBytes := 0
			for _, id := range wt.rows {
				wantBytes += len(fmt.Sprintf(`{"event_id":%q,"customer_id":"c1","product":"p","ts":1790000000,"quantity":1,"region":"eu","note":"%s"}`, id, strings.Repeat("n", len(id))))
			}
			if bytes != wantBytes {
				t.Errorf("%s: the columns count %d bytes of messages, want %d", name, bytes, wantBytes)
			}
			for p, n := range wt.dups {
				sp := b.spans[topicPartition{s.Topic, p}]
				got := 0
				if sp != nil {
					got = int(sp.duplicates)
				}
				if got != n {
					t.Errorf("%s: partition %d's span counts %d duplicates, want %d", name, p, got, n)
				}
			}
			if len(b.dead) != wt.dead {
				t.Errorf("%s: %d dead letters, want %d", name, len(b.dead), wt.dead)
			}
		}
	}
	discarded := func() int {
		return int(testutil.ToFloat64(w.metrics.Discarded.WithLabelValues(w.cfg.Loop, s.Name, "duplicate")))
	}
	// One chunk: a and b come back within it, around a dead letter and a landed message.
	add(chunk(in{0, "a"}, in{0, "b"}, in{0, "a"}, in{0, ""}, in{0, "c"}, in{0, "landed:x"}, in{0, "b"}), 0, nil)
	// The same id in another partition is no duplicate; within it, it is.
	add(chunk(in{1, "a"}, in{1, "a"}, in{1, "z"}), 0, nil)
	expect("first chunks", want{rows: []string{"a", "b", "c", "a", "z"}, offsets: []int64{0, 1, 4, 0, 2},
		dups: map[int]int{0: 2, 1: 1}, dead: 1})()
	if discarded() != 3 {
		t.Errorf("%d duplicates discarded, want 3", discarded())
	}
	// The batch is full after the chunk's third message: c and d are checked in it, and
	// the rest in the next batch, where c and a, still in the window, are duplicates
	// across batches, and d one across the hand-over.
	add(chunk(in{0, "d"}, in{0, "c"}, in{0, "d"}, in{0, "e"}, in{0, "d"}, in{0, "a"}, in{0, "e"}), 3,
		expect("the full batch", want{rows: []string{"a", "b", "c", "a", "z", "d"}, offsets: []int64{0, 1, 4, 0, 2, 7},
			dups: map[int]int{0: 4, 1: 1}, dead: 1}))
	expect("the next batch", want{rows: []string{"e"}, offsets: []int64{10}, dups: map[int]int{0: 3}})()
	if discarded() != 8 {
		t.Errorf("%d duplicates discarded, want 8", discarded())
	}
	// Past the window every id is new again.
	now = now.Add(2 * time.Minute)
	add(chunk(in{0, "a"}, in{0, "e"}, in{0, "a"}), 0, nil)
	expect("after the window", want{rows: []string{"e", "a", "e"}, offsets: []int64{10, 14, 15}, dups: map[int]int{0: 4}})()
}

// TestDedupWindowRuleAndRebuild holds the window to its documented rule, computed plainly
// (a message is a duplicate when the latest message stored with its id was stored at most
// the window of clock ago, the clock being the latest produce time stored, and was
// produced within the window of it), over produce times that jump back and forth as
// producers' clocks do. Every few thousand
// messages the window is thrown away, as a crash or a rebalance does, and rebuilt as
// loadDedupWindow does from the rows stored before the cut; some of the stored messages
// after the cut are already in ClickHouse (an unrecorded batch, partly landed) and are
// stored as the worker stores them when it reads them again. The decisions never differ.
func TestDedupWindowRuleAndRebuild(t *testing.T) {
	const window = 5 * time.Second
	ms := window.Milliseconds()
	rng := rand.New(rand.NewPCG(5, 17))
	type msg struct {
		id string
		at int64
	}
	var msgs []msg
	base := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC).UnixMilli()
	for i := range 60_000 {
		at := base + int64(i)*20
		switch r := rng.IntN(100); {
		case r < 5: // a producer whose clock is behind
			at -= int64(rng.IntN(30_000))
		case r < 8: // or ahead
			at += int64(rng.IntN(10_000))
		}
		msgs = append(msgs, msg{fmt.Sprintf("evt-%d", rng.IntN(4000)), at})
		if rng.IntN(30) == 0 { // a producer's retry, right behind or a while later
			msgs = append(msgs, msg{msgs[len(msgs)-1].id, at + int64(rng.IntN(int(2*ms)))})
		}
	}
	// The rule, plainly.
	want := make([]bool, len(msgs))
	var clock int64
	type entry struct{ at, stored int64 }
	latest := map[string]entry{}
	dups, again := 0, 0
	for i, m := range msgs {
		e, ok := latest[m.id]
		if ok && clock-e.stored <= ms && m.at-e.at <= ms && e.at-m.at <= ms {
			want[i] = true
			dups++
			continue
		}
		if ok {
			again++
		}
		clock = max(clock, m.at)
		latest[m.id] = entry{m.at, clock}
	}
	if dups < 1000 || again < 1000 {
		t.Fatalf("%d duplicates and %d ids stored again: the data does not exercise the rule", dups, again)
	}

	rebuild := func(cut int) *dedupWindow {
		d := newDedupWindow(window)
		var clock int64 // the times are positive: 0 is none stored
		for i := range cut {
			if !want[i] {
				clock = max(clock, msgs[i].at)
			}
		}
		if clock == 0 {
			return d
		}
		first := 0
		for want[first] || msgs[first].at < clock-ms {
			first++
		}
		for i := first; i < cut; i++ {
			if !want[i] {
				d.store(hashID(msgs[i].id), msgs[i].at)
			}
		}
		return d
	}
	d := newDedupWindow(window)
	rebuilds := 0
	for i := 0; i < len(msgs); {
		if i > 0 && rng.IntN(8) == 0 {
			d = rebuild(i)
			rebuilds++
			// Up to a batch of what follows is already in ClickHouse, some of it.
			for end := min(i+rng.IntN(600), len(msgs)); i < end; i++ {
				if !want[i] && rng.IntN(2) == 0 {
					d.store(hashID(msgs[i].id), msgs[i].at)
					continue
				}
				if got := d.duplicate(msgs[i].id, time.UnixMilli(msgs[i].at)); got != want[i] {
					t.Fatalf("message %d (%s at %d), right after rebuild %d: duplicate = %v, want %v", i, msgs[i].id, msgs[i].at, rebuilds, got, want[i])
				}
			}
		}
		k := min(1+rng.IntN(2*chunkItems), len(msgs)-i)
		hs, ats, dup := make([]idHash, k), make([]int64, k), make([]bool, k)
		for j := range k {
			hs[j], ats[j] = hashID(msgs[i+j].id), msgs[i+j].at
		}
		d.check(hs, ats, dup)
		for j := range k {
			if dup[j] != want[i+j] {
				t.Fatalf("message %d (%s at %d): duplicate = %v, want %v", i+j, msgs[i+j].id, msgs[i+j].at, dup[j], want[i+j])
			}
		}
		i += k
	}
	if rebuilds < 10 {
		t.Fatalf("only %d rebuilds", rebuilds)
	}
	// What the window holds stays near what the rule needs, dead entries and all.
	if d.held() > 4*d.len()+minDedupRing {
		t.Errorf("the window holds %d entries for %d ids", d.held(), d.len())
	}
}
