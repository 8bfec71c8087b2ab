package controllers

import (
	"context"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// statementHash identifies a channel publisher's config, credentials and HMAC key
// included; the interval is left out, as the digests' is.
func statementHash(sc *pipeline.StatementConfig, cfg pipeline.Config) string {
	c := *sc
	c.Interval = pipeline.Duration{}
	return publisherHash(c, cfg, c.HMACKey)
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
	e, _, err := r.statements.ensure(ctx, key, statementHash(sc, cfg), cfg.ClickHouse, func(conn driver.Conn) (*feedback.ChannelPublisher, error) {
		return feedback.NewChannelPublisher(*sc, conn, log.FromContext(ctx).WithName("statements"))
	}, loop.Status.CustomerChannel.DeepCopy())
	if err != nil {
		return outcome{}, err
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
