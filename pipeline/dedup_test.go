package pipeline

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

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
	for step := range 300_000 {
		// Bursts of traffic with pauses, so that the window fills, grows, drains and shrinks.
		if step%20_000 < 15_000 {
			now = now.Add(time.Duration(rng.IntN(200)) * time.Microsecond)
		} else {
			now = now.Add(time.Duration(rng.IntN(2000)) * time.Microsecond)
		}
		id := fmt.Sprintf("evt-%d", rng.IntN(20_000))
		at := now.UnixNano()
		for k, v := range model {
			if at-v > int64(window) {
				delete(model, k)
			}
		}
		_, want := model[id]
		if !want {
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
		windows[p].max = defaultMaxDedupIDs
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
	var dup [chunkItems]bool
	for j := range k {
		hs[j] = hashID(ids[(from+j)%len(ids)])
	}
	d.check(hs[:k], now.UnixNano(), dup[:k])
	dups := 0
	for _, x := range dup[:k] {
		if x {
			dups++
		}
	}
	return dups
}
