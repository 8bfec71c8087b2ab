package feedback

import (
	"context"
	"encoding/json"
	"math"
	"reflect"
	"sort"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/go-logr/logr/testr"
)

// expectedTrackingAsOf returns, per product and complete period, the customers whose
// tracking signal over their periods up to it is beyond limit, sorted; and the
// crossings to announce from a blank record: the pairs outside after their last period,
// with the first period of that stretch outside.
func (d *figData) expectedTrackingAsOf(limit float64) (func(product string, period time.Time) []string, []TrackingCrossing) {
	rows := d.expectedTracking()
	side := func(r *trackRow, i int) (*float64, int8) {
		_, _, _, ts := trackingOf(r.errors[:i+1])
		switch {
		case ts == nil || math.Abs(*ts) <= limit:
			return ts, 0
		case *ts > 0:
			return ts, 1
		}
		return ts, -1
	}
	asOf := func(product string, period time.Time) []string {
		out := []string{}
		for k, r := range rows {
			last := -1
			for i, p := range r.periods {
				if !p.After(period) {
					last = i
				}
			}
			if k.product != product || last < 0 {
				continue
			}
			if _, s := side(r, last); s != 0 {
				out = append(out, k.customer)
			}
		}
		sort.Strings(out)
		return out
	}
	var crossings []TrackingCrossing
	for k, r := range rows {
		last := len(r.errors) - 1
		ts, s := side(r, last)
		if s == 0 {
			continue
		}
		first := last
		for first > 0 {
			if _, before := side(r, first-1); before != s {
				break
			}
			first--
		}
		crossings = append(crossings, TrackingCrossing{Product: k.product, Customer: k.customer, TrackingSignal: ts, Periods: len(r.errors),
			Since: r.periods[first], Limit: limit, Side: s})
	}
	sort.Slice(crossings, func(i, j int) bool {
		a, b := crossings[i], crossings[j]
		return a.Product < b.Product || a.Product == b.Product && a.Customer < b.Customer
	})
	return asOf, crossings
}

// TestDigestTracking publishes the digests of generated data with a band of 2.5 and one
// top customer, and checks against figures computed here: each complete period's digest
// lists the customers outside the band as of its end and is flagged for it (no threshold
// is set), other periods carry none; each crossing is announced once, not again in the
// next round nor by a new publisher (a restart), and again after the customer came back
// inside (late usage) and crossed out again (new plan versions).
func TestDigestTracking(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_tracking"))
	cfg.ClickHouse.Addr = chAddr
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	const topic, limit, top = "acme.feedback", 2.5, 1
	brokers := stacktest.StartBroker(t, 2, topic)
	now := time.Now().UTC().Truncate(time.Second)
	data := generateFigData(pipeline.GrainMonth, now, 5)
	data.insert(t, ctx, ch, cfg)

	fc.TrackingSignalLimit = limit
	dc := pipeline.DigestConfig{Loop: "default/acme", Kafka: pipeline.KafkaConfig{Brokers: brokers}, Topic: topic, Feedback: fc,
		TopCustomers: top, Publisher: "replica-a"}
	pub, err := NewPublisher(dc, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	round := func(stage string, p *Publisher, want []TrackingCrossing) {
		t.Helper()
		res, err := p.PublishOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Flagged) != 0 {
			t.Errorf("%s: %d digests flagged by their gap without a threshold", stage, len(res.Flagged))
		}
		if len(res.Crossings) != len(want) {
			t.Errorf("%s: crossings %v, want %v", stage, res.Crossings, want)
			return
		}
		for i, c := range res.Crossings {
			w := want[i]
			if c.Product != w.Product || c.Customer != w.Customer || c.Periods != w.Periods || !c.Since.Equal(w.Since) || c.Side != w.Side ||
				!eqPtr(c.TrackingSignal, w.TrackingSignal) || c.Limit != limit {
				t.Errorf("%s: crossing %v (%d periods, limit %v), want %v (%d periods)", stage, c, c.Periods, c.Limit, w, w.Periods)
			}
		}
	}
	checkDigests := func(stage string) {
		t.Helper()
		asOf, _ := data.expectedTrackingAsOf(limit)
		digests, err := BuildDigests(ctx, ch, dc, time.Now().UTC())
		if err != nil {
			t.Fatal(err)
		}
		flagged := 0
		for _, d := range digests {
			at := stage + ": " + d.Product + " " + d.Period.Format(time.DateOnly)
			if !d.Complete {
				if d.Tracking != nil || d.Flagged {
					t.Errorf("%s is not complete, yet tracking %+v, flagged %t", at, d.Tracking, d.Flagged)
				}
				continue
			}
			want := asOf(d.Product, d.Period.Time)
			if d.Tracking == nil {
				t.Errorf("%s: no tracking", at)
				continue
			}
			if d.Tracking.Limit != limit || d.Tracking.Outside != uint64(len(want)) || !reflect.DeepEqual(d.Tracking.Customers, want[:min(top, len(want))]) {
				t.Errorf("%s: tracking %+v, want %d outside: %v", at, *d.Tracking, len(want), want)
			}
			if d.Flagged != (len(want) > 0) {
				t.Errorf("%s: flagged %t with %d customers outside the band", at, d.Flagged, len(want))
			}
			if len(want) > top {
				flagged++ // a capped list
			}
		}
		if flagged == 0 {
			t.Errorf("%s: no digest lists more customers outside the band than it shows: the cap is not tested", stage)
		}
	}

	_, first := data.expectedTrackingAsOf(limit)
	if len(first) < 3 {
		t.Fatalf("the generated data has %d customers outside the band; the test wants several", len(first))
	}
	checkDigests("first round")
	round("first round", pub, first)
	var onTopic int
	for _, m := range readDigests(t, dc.Kafka, topic) {
		var d Digest
		if err := json.Unmarshal(m.Value, &d); err != nil {
			t.Fatal(err)
		}
		if d.Schema != 2 || d.Complete != (d.Tracking != nil) {
			t.Errorf("digest %s %s on the topic: schema %d, complete %t, tracking %+v", d.Product, d.Period.Format(time.DateOnly), d.Schema, d.Complete, d.Tracking)
		}
		if d.Tracking != nil && d.Tracking.Outside > 0 {
			onTopic++
		}
	}
	if onTopic == 0 {
		t.Error("no digest on the topic lists a customer outside the band")
	}
	round("second round", pub, nil)
	pub2, err := NewPublisher(dc, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub2.Close()
	round("a new publisher", pub2, nil)

	// "over" planned 100 and used 60 in periods -6..-1; 80 more in -6..-4 bring its
	// errors to +40, +40, +40, -40, -40, -40: back inside, announced nothing.
	var late []usageEvent
	for i := -6; i <= -4; i++ {
		late = append(late, usageEvent{"over", "p0", data.period(i).Add(48 * time.Hour), 80})
		data.actual[gapKey{"over", "p0", data.period(i)}] += 80
	}
	data.usage = append(data.usage, late...)
	data.insertRows(t, ctx, ch, cfg, late, nil)
	round("over back inside", pub2, nil)
	var state int8
	if err := ch.QueryRow(ctx, "SELECT argMax(side, version) FROM "+pipeline.QualifiedTable(fc.Database, pipeline.TrackingTable)+
		" WHERE loop = ? AND product = 'p0' AND customer_id = 'over'", dc.Loop).Scan(&state); err != nil || state != 0 {
		t.Errorf("over's latest record: side %d (%v), want 0", state, err)
	}
	checkDigests("over back inside")

	// New plans of 300 made later before periods -3..-1: errors -240 there, and over
	// crosses out again.
	var plans []planVersion
	for i := -3; i <= -1; i++ {
		plans = append(plans, planVersion{"over-again-" + data.period(i).Format("0601"), "over", "p0", data.period(i),
			data.period(i - 1).Add(20 * 24 * time.Hour), 300})
	}
	data.plans = append(data.plans, plans...)
	data.insertRows(t, ctx, ch, cfg, nil, plans)
	_, again := data.expectedTrackingAsOf(limit)
	var overAgain []TrackingCrossing
	for _, c := range again {
		if c.Customer == "over" {
			overAgain = append(overAgain, c)
		}
	}
	if len(overAgain) != 1 || !overAgain[0].Since.Equal(data.period(-2)) {
		t.Fatalf("the new plans make %v, want over outside since %s", overAgain, data.period(-2).Format(time.DateOnly))
	}
	round("over crosses again", pub2, overAgain)
	checkDigests("over crosses again")
	round("over stays out", pub, nil)
}
