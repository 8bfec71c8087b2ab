package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// Event reasons of the digest publisher.
const (
	ReasonGapThresholdExceeded = "GapThresholdExceeded"
	ReasonDigestPublishFailed  = "DigestPublishFailed"
)

const defaultPublishInterval = 5 * time.Minute

// digestPublishers holds the publisher of each loop that publishes digests. Reconciles
// run only on the elected manager, so one publisher runs per loop however many replicas
// there are.
type digestPublishers struct {
	mu sync.Mutex
	m  map[types.NamespacedName]*digestEntry
}

type digestEntry struct {
	hash      string // of the publisher's config and credentials
	conn      driver.Conn
	pub       *feedback.Publisher
	next      time.Time // the next round is due
	published int64
	status    loopsv1alpha1.FeedbackStatus
}

func (d *digestPublishers) get(key types.NamespacedName) *digestEntry {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m[key]
}

func (d *digestPublishers) put(key types.NamespacedName, e *digestEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[types.NamespacedName]*digestEntry{}
	}
	d.m[key] = e
}

// stop closes the loop's publisher, if it has one.
func (d *digestPublishers) stop(key types.NamespacedName) {
	d.mu.Lock()
	e := d.m[key]
	delete(d.m, key)
	d.mu.Unlock()
	if e != nil {
		_ = e.pub.Close()
		_ = e.conn.Close()
	}
}

// digestConfig builds the publisher's config from the spec, or returns nil when the loop
// publishes no digests.
func digestConfig(loop *loopsv1alpha1.CustomerLoop, cfg pipeline.Config) (*feedback.DigestConfig, time.Duration, error) {
	f := loop.Spec.Feedback
	if f == nil || f.Publish == nil {
		return nil, 0, nil
	}
	interval := defaultPublishInterval
	if f.Publish.Interval != "" {
		d, err := time.ParseDuration(f.Publish.Interval)
		if err != nil {
			return nil, 0, &specError{msg: fmt.Sprintf("spec.feedback.publish.interval: %v", err)}
		}
		interval = d
	}
	kafka := cfg.Kafka
	kafka.Group = ""
	dc := &feedback.DigestConfig{
		Loop:      cfg.Loop,
		Kafka:     kafka,
		Topic:     f.Publish.Topic,
		Feedback:  *feedbackConfig(loop),
		Publisher: publisherName(),
		Cluster:   cfg.ClickHouse.Cluster,
	}
	if f.Publish.TopCustomers != nil {
		dc.TopCustomers = int(*f.Publish.TopCustomers)
	}
	if p := f.GapThresholdPercent; p != nil {
		t := float64(*p) / 100
		dc.Threshold = &t
	}
	if err := dc.Validate(); err != nil {
		return nil, 0, &specError{msg: "spec.feedback.publish: " + err.Error()}
	}
	return dc, interval, nil
}

// publisherName identifies this manager replica in the digest table.
func publisherName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}

func digestHash(dc *feedback.DigestConfig, cfg pipeline.Config) string {
	b, _ := json.Marshal(dc)
	h := sha256.New()
	h.Write(b)
	h.Write([]byte(configHash(pipeline.Config{ClickHouse: cfg.ClickHouse, Kafka: cfg.Kafka})))
	return hex.EncodeToString(h.Sum(nil))
}

// reconcileDigests runs a publication round of the loop's digests when one is due, raises
// a Warning event for every flagged product and period it publishes, and reports the
// figures in status. It returns when the next round is due (0: never). A failed round
// does not stop ingestion: it is reported, and retried at the next interval.
func (r *CustomerLoopReconciler) reconcileDigests(ctx context.Context, loop *loopsv1alpha1.CustomerLoop, cfg pipeline.Config, obs *observation) (time.Duration, error) {
	key := types.NamespacedName{Namespace: loop.Namespace, Name: loop.Name}
	dc, interval, err := digestConfig(loop, cfg)
	if err != nil || dc == nil {
		r.digests.stop(key)
		return 0, err
	}
	hash := digestHash(dc, cfg)
	e := r.digests.get(key)
	if e != nil && e.hash != hash {
		r.digests.stop(key)
		e = nil
	}
	if e == nil {
		conn, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
		if err != nil {
			return 0, err
		}
		pub, err := feedback.NewPublisher(*dc, conn, log.FromContext(ctx).WithName("digests"))
		if err != nil {
			_ = conn.Close()
			return 0, &specError{msg: err.Error()}
		}
		e = &digestEntry{hash: hash, conn: conn, pub: pub}
		if before := loop.Status.Feedback; before != nil {
			e.status = *before.DeepCopy()
		}
		r.digests.put(key, e)
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
				r.event(loop, "Warning", ReasonGapThresholdExceeded, "Publish",
					"Product %s, period %s: actual differs from plan by %+.1f%%, beyond %d%% (digest version %d)",
					f.Product, f.Period.Format(time.DateOnly), 100*f.GapRatio, *loop.Spec.Feedback.GapThresholdPercent, f.Version)
			}
		}
	}
	obs.objects = append(obs.objects, cfg.ClickHouse.Database+"."+pipeline.DigestTable)
	st := e.status
	obs.feedback = &st
	return time.Until(e.next), nil
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
