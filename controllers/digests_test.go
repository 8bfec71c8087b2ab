package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/dashboard"
	"customerloop.dev/customerloop/pipeline/feedback"
	"customerloop.dev/customerloop/test/testkit"
)

// TestFeedbackDigests runs a loop that publishes digests with a 20% gap threshold, over
// two products and two months whose figures are known: the digests on the topic, the
// Warning events of the flagged ones, the status figures, and the manager's dashboard
// source reading the loop with its Secret's credentials.
func TestFeedbackDigests(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	useClickHouseSecret(t, loop)
	loop.Spec.Streams[1].Mapping.SubmittedAt = "submitted"
	topic := loop.Name + ".feedback"
	loop.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{
		UsageStream: "usage", PlanStream: "plans",
		Publish:             &loopsv1alpha1.PublishSpec{Topic: topic, Interval: "10s", TopCustomers: ptr(int32(3))},
		GapThresholdPercent: ptr(int32(20)),
	}

	// Planned and used per product, previous month and this month (one customer each):
	//   over:  100 → 110 used (+10%, complete: not flagged);  100 → 150 so far (+50%: flagged)
	//   under: 100 →  50 used (-50%, complete: flagged);      100 →  40 so far (under way: flagged by its run rate, see below)
	now := time.Now().UTC()
	thisMonth := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	lastMonth := thisMonth.AddDate(0, -1, 0)
	type cell struct {
		product       string
		period        time.Time
		planned, used float64
		flagged       bool
	}
	// The under-run so far is flagged by its run rate once a quarter of the month is gone
	// and 40 at that rate misses the plan by more than 20% (computed here for today).
	share := now.Sub(thisMonth).Seconds() / thisMonth.AddDate(0, 1, 0).Sub(thisMonth).Seconds()
	underRunFlagged := share >= 0.25 && math.Abs(40/share-100)/100 > 0.2
	cells := []cell{
		{"over", lastMonth, 100, 110, false}, {"over", thisMonth, 100, 150, true},
		{"under", lastMonth, 100, 50, true}, {"under", thisMonth, 100, 40, underRunFlagged},
	}
	var usage, plans []string
	for i, c := range cells {
		customer := "c-" + c.product
		// The plan was made a month ahead (horizon 1); the usage in units of 10 within the
		// period.
		plans = append(plans, fmt.Sprintf(`{"id":"plan-%d","customer":%q,"product":%q,"period":%q,"qty":%v,"submitted":%d}`,
			i, customer, c.product, c.period.Format(time.DateOnly), c.planned, c.period.AddDate(0, -1, 1).Unix()))
		at := c.period.Add(time.Hour)
		if c.period.Equal(thisMonth) && now.Sub(thisMonth) < 2*time.Hour {
			at = thisMonth // the first hours of a month
		}
		for j := 0; j < int(c.used/10); j++ {
			usage = append(usage, fmt.Sprintf(`{"id":"e-%d-%d","customer":%q,"product":%q,"ts":%d,"qty":10}`, i, j, customer, c.product, at.Unix()+int64(j)))
		}
	}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	produceJSON(t, loop.Spec.Streams[1].Topic, plans)
	produceJSON(t, loop.Spec.Streams[0].Topic, usage)

	// The first round may run before every row landed; the publisher republishes what
	// changed, so wait for the figures, not for a count of rounds.
	want := map[string]cell{}
	for _, c := range cells {
		want[c.product+"/"+c.period.Format(time.DateOnly)] = c
	}
	var latest map[string]feedback.Digest
	testkit.Eventually(t, 2*time.Minute, "the digests of every product and month, with the produced figures", func() (bool, string) {
		latest = map[string]feedback.Digest{}
		for _, m := range testkit.ReadTopic(t, brokers, topic) {
			var d feedback.Digest
			if err := json.Unmarshal(m.Value, &d); err != nil {
				t.Fatalf("digest %s is not JSON: %v", m.Value, err)
			}
			if string(m.Key) != d.Product {
				t.Fatalf("digest of %s keyed %q", d.Product, m.Key)
			}
			k := d.Product + "/" + d.Period.Format(time.DateOnly)
			if d.Version > latest[k].Version {
				latest[k] = d
			}
		}
		var wrong []string
		for k, c := range want {
			d, ok := latest[k]
			if !ok || d.PlannedLatest == nil || *d.PlannedLatest != c.planned || d.Actual != c.used || d.Flagged != c.flagged {
				wrong = append(wrong, fmt.Sprintf("%s: %+v", k, d))
			}
		}
		return len(wrong) == 0 && len(latest) == len(want), strings.Join(wrong, "; ")
	})

	// One Warning event per flagged product and month.
	testkit.Eventually(t, 30*time.Second, "a GapThresholdExceeded event for each flagged digest", func() (bool, string) {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs, client.InNamespace("default")); err != nil {
			t.Fatal(err)
		}
		var notes []string
		for _, e := range evs.Items {
			if e.Regarding.Name == loop.Name && e.Reason == ReasonGapThresholdExceeded && e.Type == "Warning" {
				notes = append(notes, e.Note)
			}

		}
		slices.Sort(notes)
		wantNotes := []string{"Product over, period " + thisMonth.Format(time.DateOnly) + ":", "Product under, period " + lastMonth.Format(time.DateOnly) + ":"}
		if underRunFlagged {
			wantNotes = append(wantNotes, "Product under, period "+thisMonth.Format(time.DateOnly)+" (under way): at the rate so far")
		}
		ok := len(notes) == len(wantNotes)
		for i := 0; ok && i < len(notes); i++ {
			ok = strings.Contains(notes[i], wantNotes[i])
		}
		return ok, strings.Join(notes, " | ")
	})

	// Status: what was published, the customers with plans this month, and WAPE over the
	// completed month: (|100-110| + |100-50|) / (110+50).
	testkit.Eventually(t, 30*time.Second, "status.feedback", func() (bool, string) {
		l := get(t, loop)
		f := l.Status.Feedback
		if f == nil {
			return false, "no status.feedback"
		}
		return f.LastPublishedPeriod == thisMonth.Format(time.DateOnly) && f.LastPublishedTime != nil &&
			f.CustomersWithPlans == 2 && f.WAPE == "0.3750" && f.DigestsPublished >= 4 && f.Message == "" &&
			slices.Contains(l.Status.Objects, loop.Spec.ClickHouse.Database+"."+pipeline.DigestTable), fmt.Sprintf("%+v", *f)
	})

	// The rounds are counted for alerts: some succeeded (the digests are there), none failed.
	if got := testutil.ToFloat64(digestRounds.WithLabelValues(loop.Namespace, loop.Name, digestSuccess)); got < 1 {
		t.Errorf("%s rounds counted as succeeded: %v, want at least 1", loop.Name, got)
	}
	if got := testutil.ToFloat64(digestRounds.WithLabelValues(loop.Namespace, loop.Name, digestFailure)); got != 0 {
		t.Errorf("%s rounds counted as failed: %v, want 0", loop.Name, got)
	}

	// The manager's dashboard lists the loop and reads its figures with the Secret's
	// credentials.
	src := DashboardSource{Client: k8s}
	refs, err := src.Loops(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ref := dashboard.LoopRef{Namespace: loop.Namespace, Name: loop.Name}
	if !slices.Contains(refs, ref) {
		t.Fatalf("dashboard loops %v lack %v", refs, ref)
	}
	dl, err := src.Open(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	figs, err := dashboard.Load(ctx, ref, dl)
	dl.Release()
	if err != nil {
		t.Fatal(err)
	}
	var products []string
	for _, p := range figs.Products {
		products = append(products, p.Product)
	}
	if !slices.Equal(products, []string{"over", "under"}) {
		t.Errorf("dashboard products %v, want [over under]", products)
	}
	if _, err := src.Open(ctx, dashboard.LoopRef{Namespace: "default", Name: "no-such-loop"}); err == nil {
		t.Error("opening an unknown loop succeeded")
	}

	// Without publish, the threshold is refused by the API server.
	bad := loop.DeepCopy()
	bad.ResourceVersion = ""
	bad.Name += "-bad"
	bad.Spec.Feedback.Publish = nil
	if err := k8s.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "gapThresholdPercent needs publish") {
		_ = k8s.Delete(ctx, bad)
		t.Errorf("a threshold without publish: %v, want refused", err)
	}
}
