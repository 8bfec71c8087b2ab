package main

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/segmentio/kafka-go"
)

// workload is a synthetic set of customer messages and what should come of them.
type workload struct {
	usage, plans []kafka.Message
	expected     map[cell]*tally
	bad          int // messages that must be dead-lettered
}

type cell struct{ customer, product string }

type tally struct {
	events   int
	quantity float64
	plans    int
}

// newWorkload makes usage events since the start of last month and two plan revisions for each
// of four months (last, this and the next two), for every customer and product, plus a
// few malformed messages.
// Messages are keyed by customer, as customers should send them.
func newWorkload(customers, products int, now time.Time, seed uint64) *workload {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	w := &workload{expected: map[cell]*tally{}}
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	// Usage from the start of last month to now, so that last month is complete.
	since := month.AddDate(0, -1, 0)
	span := now.Sub(since)
	tiers := []string{"free", "team", "enterprise"}
	regions := []string{"eu-west", "us-east", "ap-south"}
	for c := 1; c <= customers; c++ {
		customer := fmt.Sprintf("acme-%02d", c)
		for p := 1; p <= products; p++ {
			product := []string{"compute", "storage", "api-calls", "seats", "support", "analytics"}[(p-1)%6]
			if p > 6 {
				product = fmt.Sprintf("%s-%d", product, p)
			}
			t := &tally{}
			w.expected[cell{customer, product}] = t
			for range 20 + rng.IntN(100) {
				qty := float64(1 + rng.IntN(40))
				ts := since.Add(time.Duration(rng.Int64N(int64(span))))
				msg := map[string]any{
					"event_id":    fmt.Sprintf("%s-%s-%d", customer, product, t.events),
					"customer_id": customer,
					"product":     product,
					"ts":          ts.Format(time.RFC3339),
					"quantity":    qty,
					"region":      regions[rng.IntN(len(regions))],
					"account":     map[string]any{"tier": tiers[c%len(tiers)]},
				}
				if t.events%3 == 0 {
					msg["ts"] = ts.UnixMilli() // customers send epoch milliseconds too
				}
				w.usage = append(w.usage, message(customer, msg))
				t.events++
				t.quantity += qty
			}
			// Plans for last month, this month and the next two: a first one 20 days
			// before the month, a revision 3 days into it (or now, if that is later),
			// around what the customer uses in a month on average.
			for m := -1; m <= 2; m++ {
				period := month.AddDate(0, m, 0)
				base := t.quantity * float64(30*24*time.Hour) / float64(span) * (0.6 + 0.8*rng.Float64())
				for rev, at := range []time.Time{period.AddDate(0, 0, -20), minTime(period.AddDate(0, 0, 3), now)} {
					w.plans = append(w.plans, message(customer, map[string]any{
						"plan_id":      fmt.Sprintf("%s-%s-%s-r%d", customer, product, period.Format("2006-01"), rev+1),
						"customer_id":  customer,
						"product":      product,
						"period":       period.Format(time.DateOnly),
						"quantity":     math.Round(base * (1 + 0.1*float64(rev))),
						"submitted_at": at.Format(time.RFC3339),
						"confidence":   0.6 + 0.2*float64(rev),
					}))
					t.plans++
				}
			}
		}
	}
	// Malformed messages: they must reach the dead-letter topics, not the tables.
	w.usage = append(w.usage,
		kafka.Message{Key: []byte("acme-01"), Value: []byte(`{"event_id":"broken",`)},
		kafka.Message{Key: []byte("acme-01"), Value: []byte(`{"event_id":"no-customer","product":"compute","ts":1,"region":"eu-west"}`)},
	)
	w.plans = append(w.plans,
		kafka.Message{Key: []byte("acme-02"), Value: []byte(`{"plan_id":"negative","customer_id":"acme-02","product":"compute","period":"2027-01-01","quantity":-5}`)},
	)
	w.bad = 3
	rng.Shuffle(len(w.usage), func(i, j int) { w.usage[i], w.usage[j] = w.usage[j], w.usage[i] })
	return w
}

func message(key string, v map[string]any) kafka.Message {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // maps of strings and numbers always marshal
	}
	return kafka.Message{Key: []byte(key), Value: b}
}

func (w *workload) totals() (events, plans int) {
	for _, t := range w.expected {
		events += t.events
		plans += t.plans
	}
	return events, plans
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
