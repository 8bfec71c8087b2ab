package main

// What the demo checks and prints: the landed figures against what it produced, the
// rollups, the gap report and the digests the manager publishes.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"k8s.io/apimachinery/pkg/types"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/cmd/internal/cli"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// report prints what ClickHouse holds next to what was produced, and fails on any
// difference.
func (d *devStack) report(ctx context.Context, w *workload) error {
	conn, err := connect.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: d.o.clickhouseAddr})
	if err != nil {
		return err
	}
	defer conn.Close()
	db := d.loop.Spec.ClickHouse.Database
	got := map[cell]*tally{}
	at := func(c, p string) *tally {
		k := cell{c, p}
		if got[k] == nil {
			got[k] = &tally{}
		}
		return got[k]
	}
	rows, err := conn.Query(ctx, "SELECT customer_id, product, count(), sum(quantity) FROM "+
		pipeline.QualifiedTable(db, "usage_raw")+" GROUP BY customer_id, product")
	if err != nil {
		return err
	}
	for rows.Next() {
		var c, p string
		var n uint64
		var q float64
		if err := rows.Scan(&c, &p, &n, &q); err != nil {
			return err
		}
		t := at(c, p)
		t.events, t.quantity = int(n), q
	}
	rows.Close()
	rows, err = conn.Query(ctx, "SELECT customer_id, product, count() FROM "+
		pipeline.QualifiedTable(db, "plans_raw")+" GROUP BY customer_id, product")
	if err != nil {
		return err
	}
	for rows.Next() {
		var c, p string
		var n uint64
		if err := rows.Scan(&c, &p, &n); err != nil {
			return err
		}
		at(c, p).plans = int(n)
	}
	rows.Close()

	keys := make([]cell, 0, len(w.expected))
	for k := range w.expected {
		keys = append(keys, k)
	}
	for k := range got {
		if w.expected[k] == nil {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].customer != keys[j].customer {
			return keys[i].customer < keys[j].customer
		}
		return keys[i].product < keys[j].product
	})
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "customer\tproduct\tevents sent\tevents stored\tquantity sent\tquantity stored\tplans sent\tplans stored\t")
	mismatches := 0
	for _, k := range keys {
		want, have := w.expected[k], got[k]
		if want == nil {
			want = &tally{}
		}
		if have == nil {
			have = &tally{}
		}
		mark := ""
		if *want != *have {
			mismatches++
			mark = "  <- differs"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.0f\t%.0f\t%d\t%d\t%s\n", k.customer, k.product,
			want.events, have.events, want.quantity, have.quantity, want.plans, have.plans, mark)
	}
	_ = tw.Flush()
	fmt.Println()

	dead := 0
	for _, s := range d.loop.Spec.Streams {
		n, err := topicEnd(d.brokers, s.GetDeadLetterTopic())
		if err != nil {
			return err
		}
		dead += int(n)
	}
	step("Dead-letter topics hold %d messages (%d malformed were sent)", dead, w.bad)
	if mismatches > 0 || dead != w.bad {
		return fmt.Errorf("%d customer/product cells differ and %d of %d malformed messages were dead-lettered", mismatches, dead, w.bad)
	}
	if err := d.checkRollups(ctx, conn, w); err != nil {
		return err
	}
	step("Every count matches what was produced")
	return nil
}

// checkRollups compares each Count/Sum-of-quantity rollup of the usage stream with the
// workload's totals: the materialized views counted every event once.
func (d *devStack) checkRollups(ctx context.Context, conn driver.Conn, w *workload) error {
	var events int
	var quantity float64
	for _, t := range w.expected {
		events += t.events
		quantity += t.quantity
	}
	db := d.loop.Spec.ClickHouse.Database
	for _, r := range d.loop.Spec.Rollups {
		var count, sum string
		for _, m := range r.Measures {
			switch {
			case m.Function == "Count":
				count = m.Name
			case m.Function == "Sum" && m.Field == "quantity":
				sum = m.Name
			}
		}
		if r.Stream != "usage" || count == "" || sum == "" {
			continue
		}
		var n uint64
		var q float64
		view := pipeline.QualifiedTable(db, "rollup_"+r.Name)
		if err := conn.QueryRow(ctx, "SELECT toUInt64(sum("+pipeline.QuoteIdent(count)+")), sum("+pipeline.QuoteIdent(sum)+") FROM "+view).Scan(&n, &q); err != nil {
			return fmt.Errorf("reading rollup %s: %w", r.Name, err)
		}
		step("Rollup %s (read view %s): %d events, quantity %.0f; produced %d events, quantity %.0f", r.Name, view, n, q, events, quantity)
		if int(n) != events || math.Abs(q-quantity) > 1e-6*math.Max(1, quantity) {
			return fmt.Errorf("rollup %s holds %d events and quantity %v, want %d and %v", r.Name, n, q, events, quantity)
		}
	}
	return nil
}

// topicEnd returns the number of messages ever written to a topic (the sum of its
// partitions' end offsets); 0 when it does not exist.
func topicEnd(brokers []string, topic string) (int64, error) {
	conn, err := kafka.Dial("tcp", brokers[0])
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		if errors.Is(err, kafka.UnknownTopicOrPartition) {
			return 0, nil
		}
		return 0, err
	}
	var total int64
	for _, p := range parts {
		pc, err := kafka.DialLeader(context.Background(), "tcp", brokers[0], topic, p.ID)
		if err != nil {
			return 0, err
		}
		end, err := pc.ReadLastOffset()
		_ = pc.Close()
		if err != nil {
			return 0, err
		}
		total += end
	}
	return total, nil
}

// gapReport prints what product teams get back: plan against actual for the workload,
// as `customerloop report` shows it.
func (d *devStack) gapReport(ctx context.Context) error {
	conn, err := connect.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: d.o.clickhouseAddr})
	if err != nil {
		return err
	}
	defer conn.Close()
	step("Plan against actual, as product teams see it (customerloop report %s):", d.loop.Name)
	fmt.Println()
	if err := cli.PrintReport(ctx, os.Stdout, conn, d.loop.Spec.ClickHouse.Database, cli.ReportOptions{Format: "table", View: "all"}); err != nil {
		return err
	}
	fmt.Println()
	return nil
}

// digestTopic is where the demo loop's digests go: its spec.feedback.publish topic.
func (d *devStack) digestTopic() string {
	if f := d.loop.Spec.Feedback; f != nil && f.Publish != nil {
		return f.Publish.Topic
	}
	return ""
}

// publishDigests waits until the manager's digest publisher has published, for every
// product and period, a digest with the figures the views hold now (its first rounds may
// have run before every row landed), prints them, and checks the loop's status.
func (d *devStack) publishDigests(ctx context.Context) error {
	topic := d.digestTopic()
	if topic == "" {
		return nil
	}
	conn, err := connect.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: d.o.clickhouseAddr})
	if err != nil {
		return err
	}
	defer conn.Close()
	// The loop's feedback as the manager renders it from the spec.
	cfg, err := controllers.LoopConfig(ctx, d.k8s, d.loop)
	if err != nil {
		return err
	}
	if cfg.Feedback == nil {
		return fmt.Errorf("the loop %s/%s renders no feedback", d.loop.Namespace, d.loop.Name)
	}
	want, err := feedback.BuildDigests(ctx, conn, pipeline.DigestConfig{
		Loop: d.loop.Namespace + "/" + d.loop.Name, Kafka: pipeline.KafkaConfig{Brokers: d.brokers}, Topic: topic,
		Feedback: *cfg.Feedback,
	}, time.Now())
	if err != nil {
		return err
	}
	key := func(product string, period time.Time) string { return product + "/" + period.Format(time.DateOnly) }
	ctx, cancel := context.WithTimeout(ctx, d.o.timeout)
	defer cancel()
	var latest map[string]feedback.Digest
	for {
		latest, err = readDigests(ctx, d.brokers, topic)
		if err != nil {
			return err
		}
		missing := 0
		for _, g := range want {
			got, ok := latest[key(g.Product, g.Period.Time)]
			if !ok || !sameFigure(got.PlannedLatest, g.PlannedLatest) || !sameFigure(&got.Actual, &g.Actual) {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not hold the current figures of %d of %d products and periods within %s", topic, missing, len(want), d.o.timeout)
		case <-time.After(time.Second):
		}
	}
	// The status records a round at the loop's next reconcile, which can come a moment
	// after the digests reach the topic.
	var fs *loopsv1alpha1.FeedbackStatus
	for {
		loop := &loopsv1alpha1.CustomerLoop{}
		if err := d.k8s.Get(ctx, types.NamespacedName{Namespace: d.loop.Namespace, Name: d.loop.Name}, loop); err != nil {
			return err
		}
		if fs = loop.Status.Feedback; fs != nil && fs.DigestsPublished > 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the loop's status reports no digests published within %s, though %s holds them", d.o.timeout, topic)
		case <-time.After(time.Second):
		}
	}
	step("The manager published %d digests to %s (every product and period current); status: last period %s, %d customers with plans, WAPE %s",
		fs.DigestsPublished, topic, fs.LastPublishedPeriod, fs.CustomersWithPlans, fs.WAPE)
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "product\tperiod\tplanned\tactual\tgap %\tcustomers\tWAPE\tflagged\tversion\t")
	for _, w := range want {
		g := latest[key(w.Product, w.Period.Time)]
		var wape *float64
		if g.Accuracy != nil {
			wape = g.Accuracy.WAPE
		}
		flag := ""
		if g.Flagged {
			flag = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t\n", g.Product, g.Period.Format(time.DateOnly), cli.Round(g.PlannedLatest),
			cli.Round(&g.Actual), cli.Percent(g.GapRatio), g.CustomersWithPlans, cli.Percent(wape), flag, g.Version)
	}
	_ = tw.Flush()
	fmt.Println()
	return nil
}

// readDigests returns the highest version of each product and period on the topic.
func readDigests(ctx context.Context, brokers []string, topic string) (map[string]feedback.Digest, error) {
	out := map[string]feedback.Digest{}
	msgs, err := readTopic(ctx, brokers, topic)
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		var g feedback.Digest
		if err := json.Unmarshal(m.Value, &g); err != nil {
			return nil, fmt.Errorf("a digest on %s is not JSON: %w", topic, err)
		}
		k := g.Product + "/" + g.Period.Format(time.DateOnly)
		if g.Version > out[k].Version {
			out[k] = g
		}
	}
	return out, nil
}

// readTopic reads every message of a topic, partition by partition, up to its end as of
// the call; nothing when the topic does not exist yet.
func readTopic(ctx context.Context, brokers []string, topic string) ([]kafka.Message, error) {
	end, err := topicEnd(brokers, topic)
	if err != nil || end == 0 {
		return nil, err
	}
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		return nil, err
	}
	var out []kafka.Message
	for _, p := range parts {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		last, err := partitionEnd(ctx, brokers[0], topic, p.ID)
		if err != nil {
			r.Close()
			return nil, err
		}
		for off := int64(0); off < last; off++ {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				return nil, err
			}
			out = append(out, m)
		}
		r.Close()
	}
	return out, nil
}

func partitionEnd(ctx context.Context, broker, topic string, partition int) (int64, error) {
	c, err := kafka.DialLeader(ctx, "tcp", broker, topic, partition)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.ReadLastOffset()
}

// sameFigure compares two figures as the digest's rounding leaves them.
func sameFigure(a, b *float64) bool {
	if a == nil || b == nil {
		return a == b
	}
	return math.Abs(*a-*b) <= 1e-9*math.Max(1, math.Abs(*b))
}
