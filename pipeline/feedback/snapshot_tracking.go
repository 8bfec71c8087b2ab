package feedback

import (
	"math"
	"sort"
	"time"
)

// outsideRows picks and orders the rows outside the band of limit (Outside).
func outsideRows(rows []TrackingRow, limit float64) []TrackingRow {
	var idx []int
	for i, r := range rows {
		if r.TrackingSignal != nil && math.Abs(*r.TrackingSignal) > limit {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(i, j int) bool {
		x, y := &rows[idx[i]], &rows[idx[j]]
		a, b := math.Abs(*x.TrackingSignal), math.Abs(*y.TrackingSignal)
		if a != b {
			return a > b
		}
		if x.Customer != y.Customer {
			return x.Customer < y.Customer
		}
		return x.Product < y.Product
	})
	out := make([]TrackingRow, len(idx))
	for i, j := range idx {
		out[i] = rows[j]
	}
	return out
}

// trackingPaths builds each customer's tracking path per product, and feedback_tracking's
// rows, from the complete periods' errors.
func (c *Cache) trackingPaths(periods []time.Time, current time.Time) ([]trackingPath, []TrackingRow) {
	type series struct {
		periods []time.Time
		errors  []float64
	}
	by := map[int32]*series{}
	for _, p := range periods {
		if !p.Before(current) {
			continue
		}
		for _, e := range c.periods[p].errors {
			s := by[e.pair]
			if s == nil {
				s = &series{}
				by[e.pair] = s
			}
			s.periods = append(s.periods, p)
			s.errors = append(s.errors, e.e)
		}
	}
	ids := make([]int32, 0, len(by))
	for id := range by {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		a, b := c.names[ids[i]], c.names[ids[j]]
		if a.product != b.product {
			return a.product < b.product
		}
		return a.customer < b.customer
	})
	paths := make([]trackingPath, 0, len(ids))
	rows := make([]TrackingRow, 0, len(ids))
	for _, id := range ids {
		s, name := by[id], c.names[id]
		paths = append(paths, newTrackingPath(name.product, name.customer, s.periods, s.errors))
		r := TrackingRow{Customer: name.customer, Product: name.product, N: uint64(len(s.errors))}
		var abs float64
		for _, e := range s.errors {
			r.CumulativeError += e
			abs += math.Abs(e)
		}
		r.MAD = abs / float64(len(s.errors))
		if r.MAD > 0 {
			ts := r.CumulativeError / r.MAD
			r.TrackingSignal = &ts
		}
		rows = append(rows, r)
	}
	// feedback_tracking's order.
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Customer != rows[j].Customer {
			return rows[i].Customer < rows[j].Customer
		}
		return rows[i].Product < rows[j].Product
	})
	return paths, rows
}

// outsideAsOf works out trackingAsOf for every product and complete period at once: per
// product and period, the customers (in the paths' order) whose signal after their last
// period up to it is outside the band of limit.
func outsideAsOf(paths []trackingPath, periods []time.Time, current time.Time, limit float64) map[string]map[time.Time][]string {
	var past []time.Time
	for _, p := range periods {
		if p.Before(current) {
			past = append(past, p)
		}
	}
	out := map[string]map[time.Time][]string{}
	for _, path := range paths {
		i := -1
		for _, p := range past {
			for i+1 < len(path.periods) && !path.periods[i+1].After(p) {
				i++
			}
			if i >= 0 && outsideBand(path.ts[i], limit) {
				if out[path.product] == nil {
					out[path.product] = map[time.Time][]string{}
				}
				out[path.product][p] = append(out[path.product][p], path.customer)
			}
		}
	}
	return out
}
