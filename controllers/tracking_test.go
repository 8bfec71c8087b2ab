package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/test/testkit"
)

// TestTrackingSignalEvents runs a loop that publishes digests with a tracking band of
// 1.5 over three completed months whose figures are known. One customer plans 100 and
// uses 50 each month: its tracking signal is -2 after two months, -3 after three,
// outside the band since the second month, which raises one Warning event; it is not
// raised again in later rounds, nor by a new publisher (as after a restart), which reads
// what was announced from ClickHouse. Late usage brings the customer back inside, new
// plans take it out again: a second event. The customers whose plans miss both ways, or
// never, stay inside and raise none. A band of 0 or below is refused by the API server.
func TestTrackingSignalEvents(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Spec.Streams[1].Mapping.SubmittedAt = "submitted"
	topic := loop.Name + ".feedback"
	// Publication starts once every row landed, so that no round sees a part of them.
	loop.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "plans", TrackingSignalLimit: "1.5"}
	now := time.Now().UTC()
	month := func(i int) time.Time {
		return time.Date(now.Year(), now.Month()+time.Month(i), 1, 0, 0, 0, 0, time.UTC)
	}
	seq := 0
	plan := func(customer, product string, m int, qty float64, submitted time.Time) string {
		seq++
		return fmt.Sprintf(`{"id":"plan-%d","customer":%q,"product":%q,"period":%q,"qty":%v,"submitted":%d}`,
			seq, customer, product, month(m).Format(time.DateOnly), qty, submitted.Unix())
	}
	use := func(customer, product string, m int, qty float64) string {
		seq++
		return fmt.Sprintf(`{"id":"e-%d","customer":%q,"product":%q,"ts":%d,"qty":%v}`, seq, customer, product, month(m).Add(time.Hour).Unix(), qty)
	}
	var plans, usage []string
	for m := -3; m <= -1; m++ {
		// Made a month ahead (horizon 1): the plans made before the periods began.
		at := month(m - 1).Add(24 * time.Hour)
		plans = append(plans, plan("c-over", "compute", m, 100, at), plan("c-exact", "compute", m, 100, at), plan("c-mixed", "storage", m, 100, at))
		mixed := 150.0
		if m == -2 {
			mixed = 50
		}
		usage = append(usage, use("c-over", "compute", m, 50), use("c-exact", "compute", m, 100), use("c-mixed", "storage", m, mixed))
	}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	produceJSON(t, loop.Spec.Streams[1].Topic, plans)
	produceJSON(t, loop.Spec.Streams[0].Topic, usage)
	gaps := pipeline.QualifiedTable(loop.Spec.ClickHouse.Database, pipeline.ViewGaps)
	testkit.Eventually(t, 2*time.Minute, "every plan and usage event in feedback_gaps", func() (bool, string) {
		var n uint64
		var used float64
		err := ch.QueryRow(ctx, "SELECT countIf(planned_at_start IS NOT NULL), sum(actual) FROM "+gaps).Scan(&n, &used)
		return err == nil && n == 9 && used == 800, fmt.Sprintf("%d plans made before their month, %v used (%v)", n, used, err)
	})
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		l := get(t, loop)
		l.Spec.Feedback.Publish = &loopsv1alpha1.PublishSpec{Topic: topic, Interval: "10s"}
		return k8s.Update(ctx, l)
	}); err != nil {
		t.Fatal(err)
	}

	notes := func() []string {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs, client.InNamespace("default")); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range evs.Items {
			if e.Regarding.Name == loop.Name && e.Reason == ReasonTrackingSignalOutsideBand && e.Type == "Warning" {
				out = append(out, e.Note)
			}
		}
		slices.Sort(out)
		return out
	}
	// announced counts the crossings the publisher recorded for c-over: one per event.
	announced := func() uint64 {
		var n uint64
		if err := ch.QueryRow(ctx, "SELECT countIf(side != 0) FROM "+pipeline.QualifiedTable(loop.Spec.ClickHouse.Database, pipeline.TrackingTable)+
			" WHERE customer_id = 'c-over'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	first := "Customer c-over, product compute: tracking signal -3.00 is outside ±1.5 over 3 completed periods, since period " +
		month(-2).Format(time.DateOnly) + ": usage keeps falling short of the plans"
	testkit.Eventually(t, 2*time.Minute, "one TrackingSignalOutsideBand event, for c-over", func() (bool, string) {
		n := notes()
		return slices.Equal(n, []string{first}), strings.Join(n, " | ")
	})

	// Later rounds, and a new publisher, announce nothing more.
	rounds := func() float64 { return digestRoundCount(t, loop) }
	waitRounds := func(what string, n float64) {
		t.Helper()
		from := rounds()
		testkit.Eventually(t, time.Minute, what, func() (bool, string) {
			return rounds() >= from+n, fmt.Sprintf("%v rounds", rounds()-from)
		})
	}
	waitRounds("two more publication rounds", 2)
	reconciler.digests.stop(types.NamespacedName{Namespace: loop.Namespace, Name: loop.Name})
	waitRounds("a round of a new publisher", 1)
	if n, a := notes(), announced(); !slices.Equal(n, []string{first}) || a != 1 {
		t.Errorf("after more rounds and a new publisher: %d crossings recorded, events %v; want 1, [%s]", a, n, first)
	}

	// Late usage: c-over used 150 in months -3 and -2, errors +50, +50, -50: back inside.
	produceJSON(t, loop.Spec.Streams[0].Topic, []string{use("c-over", "compute", -3, 100), use("c-over", "compute", -2, 100)})
	testkit.Eventually(t, time.Minute, "c-over recorded back inside", func() (bool, string) {
		var out int8
		err := ch.QueryRow(ctx, "SELECT argMax(side, version) FROM "+pipeline.QualifiedTable(loop.Spec.ClickHouse.Database, pipeline.TrackingTable)+
			" WHERE customer_id = 'c-over'").Scan(&out)
		return err == nil && out == 0, fmt.Sprintf("side %d, %v", out, err)
	})
	// A new plan of 400 for month -1, made later before it: errors +50, +50, -350, a
	// tracking signal of -250 / 150: out again.
	produceJSON(t, loop.Spec.Streams[1].Topic, []string{plan("c-over", "compute", -1, 400, month(-2).Add(10*24*time.Hour))})
	second := "Customer c-over, product compute: tracking signal -1.67 is outside ±1.5 over 3 completed periods, since period " +
		month(-1).Format(time.DateOnly) + ": usage keeps falling short of the plans"
	testkit.Eventually(t, time.Minute, "a second event, for the second crossing", func() (bool, string) {
		n := notes()
		return slices.Equal(n, []string{second, first}) && announced() == 2, strings.Join(n, " | ") // sorted
	})
	if f := get(t, loop).Status.Objects; !slices.Contains(f, loop.Spec.ClickHouse.Database+"."+pipeline.TrackingTable) {
		t.Errorf("status.objects %v lack the crossings table", f)
	}

	// A band of 0 or below, or not a decimal, is refused.
	for _, limit := range []string{"0", "0.0", "-1", "four", "1e3"} {
		bad := loop.DeepCopy()
		bad.ResourceVersion = ""
		bad.Name += "-bad"
		bad.Spec.Feedback.TrackingSignalLimit = limit
		if err := k8s.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "trackingSignalLimit") {
			_ = k8s.Delete(ctx, bad)
			t.Errorf("trackingSignalLimit %q: %v, want refused", limit, err)
		}
	}
}

// digestRoundCount is how many publication rounds of the loop succeeded.
func digestRoundCount(t *testing.T, loop *loopsv1alpha1.CustomerLoop) float64 {
	t.Helper()
	return testutil.ToFloat64(digestRounds.WithLabelValues(loop.Namespace, loop.Name, digestSuccess))
}
