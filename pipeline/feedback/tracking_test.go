package feedback

import (
	"fmt"
	"reflect"
	"testing"
	"time"
)

func monthsFrom(start time.Time, n int) []time.Time {
	out := make([]time.Time, n)
	for i := range out {
		out[i] = start.AddDate(0, i, 0)
	}
	return out
}

// TestTrackingPath: the signal after each period is sum(e) / (sum(|e|) / n) over the
// periods so far, nil while every error is 0; a period reads the signal of the customer's
// last period up to it; the crossing is the first period of the stretch outside.
func TestTrackingPath(t *testing.T) {
	jan := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := newTrackingPath("p", "c", monthsFrom(jan, 6), []float64{0, -10, -10, -10, 60, -20})
	want := []*float64{nil, ptrTo(-2), ptrTo(-3), ptrTo(-4), ptrTo(30.0 / 18), ptrTo(10.0 / 110 * 6)}
	for i, w := range want {
		if !eqPtr(p.ts[i], w) {
			t.Errorf("after period %d: %v, want %v", i, nullable64(p.ts[i]), nullable64(w))
		}
	}
	for k, w := range map[time.Time]int{jan.AddDate(0, -1, 0): -1, jan: 0, jan.AddDate(0, 2, 0): 2, jan.AddDate(0, 9, 0): 5} {
		if got := p.at(k); got != w {
			t.Errorf("at %s: %d, want %d", k.Format(time.DateOnly), got, w)
		}
	}
	if _, side := p.since(2.5); side != 0 {
		t.Error("back inside the band at the end, yet a crossing")
	}
	p = newTrackingPath("p", "c", monthsFrom(jan, 4), []float64{0, -10, -10, -10})
	if since, side := p.since(2.5); side != -1 || !since.Equal(jan.AddDate(0, 2, 0)) {
		t.Errorf("crossing %v on side %d, want the third period, below", since, side)
	}
	if _, side := p.since(4); side != 0 {
		t.Error("|-4| is not beyond 4: inside the band")
	}
	// From above the band to below it in one period: the stretch below starts there.
	p = newTrackingPath("p", "c", monthsFrom(jan, 3), []float64{50, 50, -350})
	if since, side := p.since(1.5); side != -1 || !since.Equal(jan.AddDate(0, 2, 0)) {
		t.Errorf("crossing %v on side %d, want the third period, below", since, side)
	}
}

// TestTrackingCrossings plays publication rounds over a customer's growing periods, the
// recorded state carried from round to round as the crossings table holds it: a crossing
// is announced once, not again while the customer stays out (a restart reads the same
// records), again after it came back in and crossed again, and again when it goes from
// one side of the band to the other; a pair whose periods are gone counts as back inside.
func TestTrackingCrossings(t *testing.T) {
	jan := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const limit = 2.5
	type round struct {
		name      string
		errors    map[string][]float64 // per customer of product p, its periods from January
		announced []string             // "customer since"
		back      []string
	}
	rounds := []round{
		{"inside", map[string][]float64{"a": {-10}, "b": {5, -5}}, nil, nil},
		{"at the band, not beyond", map[string][]float64{"a": {-10, -10}, "b": {5, -5}}, nil, nil},
		{"a crosses out", map[string][]float64{"a": {-10, -10, -10}, "b": {5, -5, 0}}, []string{"a 2026-03-01"}, nil},
		{"a stays out", map[string][]float64{"a": {-10, -10, -10, -20}, "b": {5, -5, 0}}, nil, nil},
		{"a restart reads the same records", map[string][]float64{"a": {-10, -10, -10, -20}, "b": {5, -5, 0}}, nil, nil},
		{"a comes back in", map[string][]float64{"a": {-10, -10, -10, -20, 100}, "b": {5, -5, 0}}, nil, []string{"a 2026-05-01"}},
		{"a stays in", map[string][]float64{"a": {-10, -10, -10, -20, 100, -5}, "b": {5, -5, 0}}, nil, nil},
		{"a crosses again, b too", map[string][]float64{"a": {-10, -10, -10, -20, 100, -5, -300, -300}, "b": {5, 30, 30, 30}},
			[]string{"a 2026-07-01", "b 2026-03-01"}, nil},
		{"a jumps above the band", map[string][]float64{"a": {-10, -10, -10, -20, 100, -5, -300, -300, 2000}, "b": {5, 30, 30, 30}},
			[]string{"a 2026-09-01"}, nil},
		{"b's periods are gone", map[string][]float64{"a": {-10, -10, -10, -20, 100, -5, -300, -300, 2000}}, nil, []string{"b 1970-01-01"}},
		{"b gone stays recorded inside", map[string][]float64{"a": {-10, -10, -10, -20, 100, -5, -300, -300, 2000}}, nil, nil},
	}
	recorded := map[pairKey]int8{}
	for _, r := range rounds {
		var paths []trackingPath
		for _, c := range []string{"a", "b"} {
			if es, ok := r.errors[c]; ok {
				paths = append(paths, newTrackingPath("p", c, monthsFrom(jan, len(es)), es))
			}
		}
		crossed, back := trackingChanges(paths, recorded, limit)
		list := func(cs []TrackingCrossing, out bool) []string {
			t.Helper()
			var s []string
			for _, c := range cs {
				since := c.Since
				if since.IsZero() {
					since = time.Unix(0, 0).UTC()
				}
				s = append(s, c.Customer+" "+since.Format(time.DateOnly))
				recorded[pairKey{c.Product, c.Customer}] = c.Side
				if out != (c.Side != 0) || out && (c.TrackingSignal == nil || sideOf(c.TrackingSignal, limit) != c.Side || c.Limit != limit) {
					t.Errorf("%s: %s listed with signal %v, side %d, limit %v", r.name, c.Customer, nullable64(c.TrackingSignal), c.Side, c.Limit)
				}
			}
			return s
		}
		if got := list(crossed, true); !reflect.DeepEqual(got, r.announced) {
			t.Errorf("%s: announced %v, want %v", r.name, got, r.announced)
		}
		if got := list(back, false); !reflect.DeepEqual(got, r.back) {
			t.Errorf("%s: back inside %v, want %v", r.name, got, r.back)
		}
	}
}

// TestTrackingAsOf: a complete period's digest lists the customers outside the band after
// their last period up to it, sorted and capped; a customer whose periods start later is
// not in earlier digests.
func TestTrackingAsOf(t *testing.T) {
	jan := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	paths := []trackingPath{
		newTrackingPath("p", "z", monthsFrom(jan, 3), []float64{-10, -10, -10}),
		newTrackingPath("p", "y", monthsFrom(jan.AddDate(0, 1, 0), 3), []float64{8, 8, 8}),
		newTrackingPath("p", "x", []time.Time{jan, jan.AddDate(0, 3, 0)}, []float64{-5, -5}),
		newTrackingPath("q", "w", monthsFrom(jan, 3), []float64{-10, -10, -10}),
	}
	for _, c := range []struct {
		period    time.Time
		top       int
		outside   uint64
		customers []string
	}{
		{jan, 5, 0, []string{}},
		{jan.AddDate(0, 2, 0), 5, 1, []string{"z"}},
		{jan.AddDate(0, 3, 0), 5, 2, []string{"y", "z"}},
		{jan.AddDate(0, 3, 0), 1, 2, []string{"y"}},
		{jan.AddDate(0, 9, 0), 5, 2, []string{"y", "z"}},
	} {
		got := trackingAsOf(paths, "p", c.period, 2.5, c.top)
		if got.Limit != 2.5 || got.Outside != c.outside || !reflect.DeepEqual(got.Customers, c.customers) {
			t.Errorf("as of %s, top %d: %+v, want %d outside %v", c.period.Format(time.DateOnly), c.top, *got, c.outside, c.customers)
		}
	}
}

// TestDigestContentHashTracking: who is outside the band is a digest's content; the band
// in force, like the threshold, is not.
func TestDigestContentHashTracking(t *testing.T) {
	d := Digest{Product: "p", Period: Date{time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)}, Complete: true,
		Tracking: &ProductTracking{Limit: 4, Outside: 1, Customers: []string{"a"}}}
	base := d.contentHash()
	e := d
	e.Tracking = &ProductTracking{Limit: 3, Outside: 1, Customers: []string{"a"}}
	if e.contentHash() != base {
		t.Error("another band changed the content hash")
	}
	for i, tr := range []*ProductTracking{{Limit: 4, Outside: 2, Customers: []string{"a"}}, {Limit: 4, Outside: 1, Customers: []string{"b"}}, nil} {
		e.Tracking = tr
		if e.contentHash() == base {
			t.Errorf("case %d: a changed tracking kept the content hash", i)
		}
	}
	if d.Tracking.Limit != 4 {
		t.Errorf("hashing changed the digest's band to %v", d.Tracking.Limit)
	}
}

func (c TrackingCrossing) String() string {
	return fmt.Sprintf("%s/%s %v since %s", c.Product, c.Customer, nullable64(c.TrackingSignal), c.Since.Format(time.DateOnly))
}
