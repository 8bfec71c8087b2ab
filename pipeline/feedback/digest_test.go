package feedback

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/go-logr/logr/testr"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// readDigests returns every message of the topic, in offset order per partition.
func readDigests(t *testing.T, k pipeline.KafkaConfig, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kc, err := connect.KafkaClient(k)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := connect.SecurityOf(k)
	if err != nil {
		t.Fatal(err)
	}
	offsets, err := connect.TopicOffsets(ctx, kc, topic)
	if err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for p, r := range offsets {
		if r.End <= r.First {
			continue
		}
		rd := kafka.NewReader(kafka.ReaderConfig{Brokers: k.Brokers, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond, Dialer: sec.Dialer()})
		if err := rd.SetOffset(r.First); err != nil {
			t.Fatal(err)
		}
		for {
			m, err := rd.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("reading %s/%d: %v", topic, p, err)
			}
			out = append(out, m)
			if m.Offset+1 >= r.End {
				break
			}
		}
		_ = rd.Close()
	}
	return out
}

func checkDigest(t *testing.T, stage string, got, want Digest) {
	t.Helper()
	at := fmt.Sprintf("%s: digest %s %s", stage, got.Product, got.Period.Format(time.DateOnly))
	if got.Schema != want.Schema || got.Loop != want.Loop || got.Granularity != want.Granularity || got.Complete != want.Complete {
		t.Errorf("%s: schema %d loop %q granularity %s complete %t; want %d %q %s %t", at, got.Schema, got.Loop, got.Granularity, got.Complete,
			want.Schema, want.Loop, want.Granularity, want.Complete)
	}
	if !eqPtr(got.PlannedLatest, want.PlannedLatest) || !eqPtr(got.PlannedAtStart, want.PlannedAtStart) ||
		!near(got.Actual, want.Actual) || !near(got.UnplannedActual, want.UnplannedActual) ||
		!eqPtr(got.Gap, want.Gap) || !eqPtr(got.GapRatio, want.GapRatio) || got.CustomersWithPlans != want.CustomersWithPlans {
		t.Errorf("%s: planned %v at start %v actual %v unplanned %v gap %v ratio %v customers %d; want %v %v %v %v %v %v %d", at,
			nullable64(got.PlannedLatest), nullable64(got.PlannedAtStart), got.Actual, got.UnplannedActual, nullable64(got.Gap), nullable64(got.GapRatio), got.CustomersWithPlans,
			nullable64(want.PlannedLatest), nullable64(want.PlannedAtStart), want.Actual, want.UnplannedActual, nullable64(want.Gap), nullable64(want.GapRatio), want.CustomersWithPlans)
	}
	// The run rate moves with the clock between the expectation and the digest: close,
	// not equal, and not compared in a period's first hour, when it moves fastest.
	if (got.Projected == nil) != (want.Projected == nil) || got.Projected != nil && got.Period.Add(time.Hour).Before(time.Now()) &&
		math.Abs(*got.Projected-*want.Projected) > 1e-3*math.Max(math.Abs(*want.Projected), 1) {
		t.Errorf("%s: projected %v, want %v", at, nullable64(got.Projected), nullable64(want.Projected))
	}
	if (got.Tracking != nil) != got.Complete {
		t.Errorf("%s: complete %t, tracking %+v: want tracking for complete periods only", at, got.Complete, got.Tracking)
	}
	if got.Flagged != want.Flagged {
		t.Errorf("%s: flagged %t, want %t (gap ratio %v)", at, got.Flagged, want.Flagged, nullable64(got.GapRatio))
	}
	if len(got.TopGaps) != len(want.TopGaps) {
		t.Errorf("%s: %d top gaps, want %d", at, len(got.TopGaps), len(want.TopGaps))
	} else {
		for i, g := range got.TopGaps {
			w := want.TopGaps[i]
			if g.Customer != w.Customer || !near(g.PlannedLatest, w.PlannedLatest) || !near(g.Actual, w.Actual) || !near(g.Gap, w.Gap) || !eqPtr(g.GapRatio, w.GapRatio) {
				t.Errorf("%s: top gap %d = %+v, want %+v", at, i, g, w)
			}
		}
	}
	switch ga, wa := got.Accuracy, want.Accuracy; {
	case ga == nil || wa == nil:
		if ga != wa {
			t.Errorf("%s: accuracy %+v, want %+v", at, ga, wa)
		}
	case !eqPtr(ga.WAPE, wa.WAPE) || !eqPtr(ga.Bias, wa.Bias) || ga.Points != wa.Points:
		t.Errorf("%s: accuracy wape %v bias %v points %d; want %v %v %d", at, nullable64(ga.WAPE), nullable64(ga.Bias), ga.Points,
			nullable64(wa.WAPE), nullable64(wa.Bias), wa.Points)
	}
}

// TestDigestPublisher publishes a loop's digests to a real broker from the real
// ClickHouse and checks them against figures computed here; then that nothing is
// republished without a change, that a late event republishes only its product and
// period under a higher version, that another replica continues the versions (also
// after a crash between publishing and recording), and that the threshold flags the
// product whose usage ran over its plans.
func TestDigestPublisher(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_digest"))
	cfg.ClickHouse.Addr = chAddr
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	const topic = "acme.feedback"
	brokers := stacktest.StartBroker(t, 3, topic)

	now := time.Now().UTC().Truncate(time.Second)
	data := generateDigestData(now, 42)
	var offset int64
	data.insertPlans(t, ctx, ch, fc.Database, cfg.Streams[1], &offset)
	rng := rand.New(rand.NewPCG(5, 8))
	data.insertUsage(t, ctx, ch, fc.Database, cfg.Streams[0], data.usageEvents(rng), &offset)

	threshold := 0.3
	dc := pipeline.DigestConfig{Loop: "default/acme", Kafka: pipeline.KafkaConfig{Brokers: brokers}, Topic: topic, Feedback: fc,
		Threshold: &threshold, TopCustomers: 3, Publisher: "replica-a"}
	pub, err := NewPublisher(dc, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	// 1. Everything is published once, at version 1, keyed by product.
	res, err := pub.PublishOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := data.expected(dc.Loop, 3, &threshold)
	if len(res.Published) != len(want) || res.Unchanged != 0 {
		t.Fatalf("first round: %d published, %d unchanged; want %d and 0", len(res.Published), res.Unchanged, len(want))
	}
	msgs := readDigests(t, dc.Kafka, topic)
	if len(msgs) != len(want) {
		t.Fatalf("topic holds %d messages, want %d", len(msgs), len(want))
	}
	latest := map[gapKey]Digest{}
	for _, m := range msgs {
		var d Digest
		if err := json.Unmarshal(m.Value, &d); err != nil {
			t.Fatalf("message %s: %v", m.Value, err)
		}
		if string(m.Key) != d.Product {
			t.Errorf("message keyed %q carries product %q", m.Key, d.Product)
		}
		if d.Version != 1 || d.PublishedAt.IsZero() || d.Threshold == nil || *d.Threshold != threshold {
			t.Errorf("digest %s %v: version %d published at %v threshold %v; want version 1, a time, %v", d.Product, d.Period, d.Version, d.PublishedAt, nullable64(d.Threshold), threshold)
		}
		k := gapKey{product: d.Product, period: d.Period.Time}
		w, ok := want[k]
		if !ok {
			t.Errorf("unexpected digest %s %v", d.Product, d.Period)
			continue
		}
		checkDigest(t, "first round", d, w)
		latest[k] = d
	}

	// The threshold flags exactly p2 in month -2, where usage ran 60% over the plans.
	hot := gapKey{product: "p2", period: data.month(-2)}
	if len(res.Flagged) != 1 || res.Flagged[0].Product != "p2" || !res.Flagged[0].Period.Equal(hot.period) {
		t.Errorf("flagged = %+v, want only p2 %s", res.Flagged, hot.period.Format(time.DateOnly))
	}
	if !latest[hot].Flagged {
		t.Errorf("the digest of p2 %s is not flagged", hot.period.Format(time.DateOnly))
	}

	// Status figures.
	if !res.LastPublishedPeriod.Equal(data.month(1)) || res.LastPublishedAt.IsZero() {
		t.Errorf("last published period %v at %v, want %v and a time", res.LastPublishedPeriod, res.LastPublishedAt, data.month(1))
	}
	planners := map[string]bool{}
	for _, v := range data.versions {
		if v.period.Equal(data.month(0)) {
			planners[v.customer] = true
		}
	}
	if res.CustomersWithPlans != uint64(len(planners)) {
		t.Errorf("customers with plans this period = %d, want %d", res.CustomersWithPlans, len(planners))
	}
	for p, pa := range data.accuracy() {
		if !eqPtr(res.ProductWAPE[p], pa.WAPE) {
			t.Errorf("WAPE of %s = %v, want %v", p, nullable64(res.ProductWAPE[p]), nullable64(pa.WAPE))
		}
	}
	if res.WAPE == nil {
		t.Error("no overall WAPE")
	}

	// 2. Nothing changed: nothing is published.
	res, err = pub.PublishOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Published) != 0 || res.Unchanged != len(want) {
		t.Errorf("second round: %d published, %d unchanged; want 0 and %d", len(res.Published), res.Unchanged, len(want))
	}
	if n := len(readDigests(t, dc.Kafka, topic)); n != len(msgs) {
		t.Errorf("topic holds %d messages after an idle round, want %d", n, len(msgs))
	}

	// 3. A late usage event for a completed period republishes only its product and
	// period, under version 2, with the new figures.
	late := gapKey{"c1", "p0", data.month(-3)}
	data.insertUsage(t, ctx, ch, fc.Database, cfg.Streams[0], []usageEvent{{late.customer, late.product, late.period.Add(50 * time.Hour), 17.5}}, &offset)
	lateKey := gapKey{product: late.product, period: late.period}
	total := len(msgs)
	republished := func(stage string, p *Publisher, version int64, sent int) {
		t.Helper()
		res, err := p.PublishOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Published) != 1 || res.Unchanged != len(want)-1 {
			t.Fatalf("%s: %d published, %d unchanged; want 1 and %d", stage, len(res.Published), res.Unchanged, len(want)-1)
		}
		total++
		all := readDigests(t, dc.Kafka, topic)
		if len(all) != total {
			t.Errorf("%s: topic holds %d messages, want %d", stage, len(all), total)
		}
		// Messages come per partition; what matters is the newest version of the key.
		var newest Digest
		n := 0
		for _, m := range all {
			var d Digest
			if err := json.Unmarshal(m.Value, &d); err != nil {
				t.Fatal(err)
			}
			if (gapKey{product: d.Product, period: d.Period.Time}) != lateKey {
				continue
			}
			n++
			if d.Version > newest.Version {
				newest = d
			}
		}
		if n != sent || newest.Version != version {
			t.Errorf("%s: %d messages for %s %v, newest version %d; want %d and version %d", stage, n, late.product,
				late.period.Format(time.DateOnly), newest.Version, sent, version)
		}
		checkDigest(t, stage, newest, data.expected(dc.Loop, 3, &threshold)[lateKey])
	}
	republished("after a late event", pub, 2, 2)

	// 4. Another replica (a new publisher, as after a restart or a leader change)
	// continues the sequence.
	other := dc
	other.Publisher = "replica-b"
	pub2, err := NewPublisher(other, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub2.Close()
	if res, err := pub2.PublishOnce(ctx); err != nil || len(res.Published) != 0 {
		t.Fatalf("a new replica republished %d digests (err %v), want none", len(res.Published), err)
	}
	data.insertUsage(t, ctx, ch, fc.Database, cfg.Streams[0], []usageEvent{{late.customer, late.product, late.period.Add(70 * time.Hour), 2.25}}, &offset)
	republished("on another replica", pub2, 3, 3)

	// 5. A crash after a version was reserved (and maybe sent) but before it was recorded
	// as sent: the content is sent again, under a higher version.
	data.insertUsage(t, ctx, ch, fc.Database, cfg.Streams[0], []usageEvent{{late.customer, late.product, late.period.Add(90 * time.Hour), 1}}, &offset)
	d := latest[lateKey]
	d.Version = 4
	if err := pub2.record(ctx, []Digest{d}, []string{"crashed"}, nil, 0, now); err != nil {
		t.Fatal(err)
	}
	republished("after a crash between publishing and recording", pub2, 5, 4)
}

// TestDigestPublisherOverTLSAndSASL publishes through a broker that takes only TLS
// connections authenticated with SCRAM-SHA-512, as the workers do. A round whose sending
// fails (a wrong password) publishes nothing and loses nothing: the next round sends the
// digests under a higher version. Run publishes at once and then every interval.
func TestDigestPublisherOverTLSAndSASL(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_digest_tls"))
	cfg.ClickHouse.Addr = chAddr
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	caPEM, serverTLS := stacktest.TestCA(t)
	const topic = "acme.feedback"
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.SeedTopics(2, topic),
		kfake.TLS(serverTLS), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "loop", "s3cret-pass"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	good := pipeline.KafkaConfig{Brokers: cluster.ListenAddrs(), TLS: &pipeline.TLSConfig{CAPEM: caPEM},
		SASL: &pipeline.SASLConfig{Mechanism: "SCRAM-SHA-512", Username: "loop", Password: "s3cret-pass"}}

	data := generateDigestData(time.Now().UTC().Truncate(time.Second), 9)
	data.versions = data.versions[:12]
	var offset int64
	data.insertPlans(t, ctx, ch, fc.Database, cfg.Streams[1], &offset)
	data.insertUsage(t, ctx, ch, fc.Database, cfg.Streams[0], data.usageEvents(rand.New(rand.NewPCG(1, 1)))[:40], &offset)
	want := data.expected("default/acme", 5, nil)

	bad := good
	bad.SASL = &pipeline.SASLConfig{Mechanism: "SCRAM-SHA-512", Username: "loop", Password: "guess"}
	dc := pipeline.DigestConfig{Loop: "default/acme", Kafka: bad, Topic: topic, Feedback: fc}
	failing, err := NewPublisher(dc, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer failing.Close()
	shortCtx, cancelShort := context.WithTimeout(ctx, 15*time.Second)
	res, err := failing.PublishOnce(shortCtx)
	cancelShort()
	if err == nil || len(res.Published) != 0 {
		t.Fatalf("with a wrong password: %d published, err %v; want an error and none", len(res.Published), err)
	}

	dc.Kafka = good
	pub, err := NewPublisher(dc, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	results := make(chan PublishResult, 4)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- pub.Run(rctx, 200*time.Millisecond, func(r PublishResult, err error) {
			if err != nil {
				t.Errorf("round failed: %v", err)
			}
			results <- r
		})
	}()
	first, second := <-results, <-results
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(first.Published) != len(want) || len(second.Published) != 0 || second.Unchanged != len(want) {
		t.Fatalf("rounds published %d then %d (%d unchanged); want %d then 0", len(first.Published), len(second.Published), second.Unchanged, len(want))
	}
	msgs := readDigests(t, good, topic)
	if len(msgs) != len(want) {
		t.Fatalf("topic holds %d messages, want %d", len(msgs), len(want))
	}
	for _, m := range msgs {
		var d Digest
		if err := json.Unmarshal(m.Value, &d); err != nil {
			t.Fatal(err)
		}
		if d.Version != 2 {
			t.Errorf("%s %v: version %d, want 2 (1 was reserved by the round that could not send)", d.Product, d.Period, d.Version)
		}
		checkDigest(t, "over TLS and SASL", d, want[gapKey{product: d.Product, period: d.Period.Time}])
	}
}
