package pipeline

import (
	"testing"
	"time"
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
	if len(d.seen) != 3 {
		t.Errorf("the window holds %d ids, want 3", len(d.seen))
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
