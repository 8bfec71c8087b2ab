package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/feedback"
)

const defaultPublishInterval = 5 * time.Minute

// publisherName identifies this manager replica in the digest table.
func publisherName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}

// digestHash identifies a publisher's config, credentials included. The interval is left
// out: a new one applies from the next round, without a new publisher.
func digestHash(dc *pipeline.DigestConfig, cfg pipeline.Config) string {
	c := *dc
	c.Interval = pipeline.Duration{}
	return publisherHash(c, cfg)
}

// publisherHash is the hash of a publisher's config (c, as JSON), of what it leaves out
// of its JSON (extra: keys) and of the loop's connections with their credentials.
func publisherHash(c any, cfg pipeline.Config, extra ...[]byte) string {
	b, _ := json.Marshal(c)
	h := sha256.New()
	h.Write(b)
	for _, e := range extra {
		h.Write(e)
	}
	h.Write([]byte(configHash(pipeline.Config{ClickHouse: cfg.ClickHouse, Kafka: cfg.Kafka})))
	return hex.EncodeToString(h.Sum(nil))
}

// reconcileDigests runs a publication round of the loop's digests when one is due, raises
// a Warning event for every flagged product and period it publishes, and reports the
// figures in status. The loop is looked at again when the next round is due. A failed round
// does not stop ingestion: it is reported, and retried at the next interval.
func (r *CustomerLoopReconciler) reconcileDigests(ctx context.Context, s *reconcileScope) (outcome, error) {
	loop, cfg := s.loop, s.cfg
	key := types.NamespacedName{Namespace: loop.Namespace, Name: loop.Name}
	dc := cfg.Digests
	if dc == nil {
		r.digests.stop(key)
		return outcome{}, nil
	}
	interval := dc.Interval.Duration
	e, created, err := r.digests.ensure(ctx, key, digestHash(dc, cfg), cfg.ClickHouse, func(conn driver.Conn) (*feedback.Publisher, error) {
		return feedback.NewPublisher(*dc, conn, log.FromContext(ctx).WithName("digests"))
	}, loop.Status.Feedback.DeepCopy())
	if err != nil {
		return outcome{}, err
	}
	if created {
		startDigestMetrics(loop.Namespace, loop.Name)
	}
	now := time.Now()
	if !now.Before(e.next) {
		e.next = now.Add(interval)
		res, err := e.pub.PublishOnce(ctx)
		recordDigestRound(loop.Namespace, loop.Name, err)
		if err != nil {
			e.status.Message = err.Error()
			log.FromContext(ctx).Error(err, "publishing digests", "topic", dc.Topic)
			r.event(loop, "Warning", ReasonDigestPublishFailed, "Publish", "Publishing digests to %s failed, retrying in %s: %v", dc.Topic, interval, err)
		} else {
			e.published += int64(len(res.Published))
			e.status = feedbackStatus(res, e.published)
			for _, f := range res.Flagged {
				if p := f.ProjectedGapRatio; p != nil {
					r.event(loop, "Warning", ReasonGapThresholdExceeded, "Publish",
						"Product %s, period %s (under way): at the rate so far, actual will differ from plan by %+.1f%%, beyond %d%% (digest version %d)",
						f.Product, f.Period.Format(time.DateOnly), 100**p, int(math.Round(100**dc.Threshold)), f.Version)
					continue
				}
				r.event(loop, "Warning", ReasonGapThresholdExceeded, "Publish",
					"Product %s, period %s: actual differs from plan by %+.1f%%, beyond %d%% (digest version %d)",
					f.Product, f.Period.Format(time.DateOnly), 100*f.GapRatio, int(math.Round(100**dc.Threshold)), f.Version)
			}
			for _, c := range res.Crossings {
				r.event(loop, "Warning", ReasonTrackingSignalOutsideBand, "Publish", "%s", crossingNote(c))
			}
		}
	}
	s.obs.objects = append(s.obs.objects, cfg.ClickHouse.Database+"."+pipeline.DigestTable, cfg.ClickHouse.Database+"."+pipeline.TrackingTable)
	st := e.status
	s.obs.feedback = &st
	if next := time.Until(e.next); next > 0 && next < s.requeue {
		s.requeue = next
	}
	return outcome{}, nil
}

func feedbackStatus(res feedback.PublishResult, published int64) loopsv1alpha1.FeedbackStatus {
	st := loopsv1alpha1.FeedbackStatus{
		CustomersWithPlans: int64(res.CustomersWithPlans),
		DigestsPublished:   published,
	}
	if !res.LastPublishedPeriod.IsZero() {
		st.LastPublishedPeriod = res.LastPublishedPeriod.Format(time.DateOnly)
	}
	if !res.LastPublishedAt.IsZero() {
		t := metav1.NewTime(res.LastPublishedAt)
		st.LastPublishedTime = &t
	}
	if res.WAPE != nil {
		st.WAPE = strconv.FormatFloat(*res.WAPE, 'f', 4, 64)
	}
	return st
}

// crossingNote is the Warning event of a customer and product whose tracking signal
// crossed out of the band.
func crossingNote(c feedback.TrackingCrossing) string {
	ts, way := 0.0, "usage keeps exceeding the plans"
	if c.TrackingSignal != nil {
		ts = *c.TrackingSignal
	}
	if ts < 0 {
		way = "usage keeps falling short of the plans"
	}
	return fmt.Sprintf("Customer %s, product %s: tracking signal %+.2f is outside ±%s over %d completed periods, since period %s: %s",
		c.Customer, c.Product, ts, strconv.FormatFloat(c.Limit, 'f', -1, 64), c.Periods, c.Since.Format(time.DateOnly), way)
}
