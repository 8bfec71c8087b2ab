package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// statementHash identifies a channel publisher's config, credentials included; the
// interval is left out, as the digests' is.
func statementHash(sc *pipeline.StatementConfig, cfg pipeline.Config) string {
	c := *sc
	c.Interval = pipeline.Duration{}
	b, _ := json.Marshal(c)
	h := sha256.New()
	h.Write(b)
	h.Write(c.HMACKey)
	h.Write([]byte(configHash(pipeline.Config{ClickHouse: cfg.ClickHouse, Kafka: cfg.Kafka})))
	return hex.EncodeToString(h.Sum(nil))
}

// reconcileStatements runs a publication round of the customers' statements and consent
// receipts when one is due, and reports it in status. As with digests, a failed round
// does not stop ingestion: it is reported with a Warning event and retried at the next
// interval.
func (r *CustomerLoopReconciler) reconcileStatements(ctx context.Context, s *reconcileScope) (outcome, error) {
	loop, cfg := s.loop, s.cfg
	key := types.NamespacedName{Namespace: loop.Namespace, Name: loop.Name}
	sc := cfg.Statements
	if sc == nil {
		r.statements.stop(key)
		return outcome{}, nil
	}
	hash := statementHash(sc, cfg)
	e := r.statements.get(key)
	if e != nil && e.hash != hash {
		r.statements.stop(key)
		e = nil
	}
	if e == nil {
		conn, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
		if err != nil {
			return outcome{}, err
		}
		pub, err := feedback.NewChannelPublisher(*sc, conn, log.FromContext(ctx).WithName("statements"))
		if err != nil {
			_ = conn.Close()
			return outcome{}, &specError{msg: err.Error()}
		}
		e = &publisherEntry[*feedback.ChannelPublisher, loopsv1alpha1.CustomerChannelStatus]{hash: hash, conn: conn, pub: pub}
		if before := loop.Status.CustomerChannel; before != nil {
			e.status = *before.DeepCopy()
		}
		r.statements.put(key, e)
	}
	now := time.Now()
	if !now.Before(e.next) {
		e.next = now.Add(sc.Interval.Duration)
		res, err := e.pub.PublishOnce(ctx)
		e.status.StatementsPublished += int64(res.Statements)
		e.status.ReceiptsPublished += int64(res.Receipts)
		if err != nil {
			e.status.Message = err.Error()
			log.FromContext(ctx).Error(err, "publishing customer statements", "topic", sc.Topic)
			r.event(loop, "Warning", ReasonStatementPublishFailed, "Publish", "Publishing customer statements to %s failed, retrying in %s: %v", sc.Topic, sc.Interval.Duration, err)
		} else {
			e.status.Message = ""
			t := metav1.NewTime(time.Now().Truncate(time.Second))
			e.status.LastRoundTime = &t
			if res.Statements+res.Receipts > 0 {
				log.FromContext(ctx).Info("published customer statements", "topic", sc.Topic, "statements", res.Statements,
					"receipts", res.Receipts, "unchanged", res.Unchanged, "withheld", res.Withheld, "full", res.Full)
			}
		}
	}
	s.obs.objects = append(s.obs.objects, cfg.ClickHouse.Database+"."+pipeline.ChannelTable)
	st := e.status
	s.obs.customerChannel = &st
	if next := time.Until(e.next); next > 0 && next < s.requeue {
		s.requeue = next
	}
	return outcome{}, nil
}
