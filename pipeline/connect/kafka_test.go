package connect

import (
	"testing"
)

func TestLag(t *testing.T) {
	offsets := map[int]OffsetRange{0: {First: 0, End: 100}, 1: {First: 50, End: 80}, 2: {First: 10, End: 10}}
	for _, tc := range []struct {
		name string
		next map[int]int64
		want int64
	}{
		{"nothing ingested", nil, 100 + 30},
		{"partly ingested", map[int]int64{0: 90, 1: 60}, 10 + 20},
		{"all ingested", map[int]int64{0: 100, 1: 80, 2: 10}, 0},
		{"ledger behind retention", map[int]int64{1: 20}, 100 + 30},
		{"ledger past the end (topic recreated)", map[int]int64{0: 150}, 30},
	} {
		if got := Lag(offsets, tc.next); got != tc.want {
			t.Errorf("%s: lag = %d, want %d", tc.name, got, tc.want)
		}
	}
}
