package controllers

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// observation is what one reconcile found; status and conditions are computed from it in
// one place.
type observation struct {
	configErr   error
	schemaErr   error
	schemaReady bool
	objects     []string
	paused      bool
	// scaledToZero: the spec asks for no workers (paused, or replicas 0).
	scaledToZero bool
	workers      WorkerState
	statsErr     error
	// kafkaErr: the loop's brokers did not answer the controller with the loop's
	// settings and credentials, so its workers cannot consume either.
	kafkaErr error
	streams  []streamObservation
	// feedback is what the digest publisher reports; nil when the loop publishes none.
	feedback *loopsv1alpha1.FeedbackStatus
	// rollupWait says what a rollup's backfill waits for while the workers stop.
	rollupWait string
	// consentWait, set instead of rollupWait, says the workers are stopped to apply
	// consent messages.
	consentWait bool
}

type streamObservation struct {
	stream   pipeline.StreamConfig
	stats    ingest.TableStats
	ledger   ingest.LedgerTotals
	lag      int64
	lagKnown bool
}

// Condition reasons.
const (
	ReasonSucceeded          = "Succeeded"
	ReasonProgressing        = "Progressing"
	ReasonInvalidSpec        = "InvalidSpec"
	ReasonMissingInput       = "MissingInput"
	ReasonClickHouseError    = "ClickHouseError"
	ReasonSchemaApplied      = "SchemaApplied"
	ReasonWorkersRunning     = "WorkersRunning"
	ReasonWorkersFailing     = "WorkersFailing"
	ReasonPaused             = "Paused"
	ReasonUnsafeSchemaChange = "UnsafeSchemaChange"
	ReasonScaledToZero       = "ScaledToZero"
	ReasonNotReached         = "NotReached"
	ReasonInvalidRollup      = "InvalidRollup"
	ReasonRollupBackfill     = "RollupBackfill"
	ReasonClusterNotReady    = "ClusterNotReady"
	ReasonKafkaUnavailable   = "KafkaUnavailable"
)

type cond struct {
	status          metav1.ConditionStatus
	reason, message string
}

// computeConditions derives every condition from the observation.
func computeConditions(obs *observation) map[string]cond {
	c := map[string]cond{}
	var se *specError
	var me *missingInputError
	var ue *ddl.UnsafeChangeError
	var re *ddl.RollupError
	var ce *connect.ClusterError
	stalled := cond{metav1.ConditionFalse, ReasonSucceeded, ""}

	switch {
	case obs.configErr != nil && errors.As(obs.configErr, &se):
		stalled = cond{metav1.ConditionTrue, ReasonInvalidSpec, se.msg}
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionFalse, ReasonInvalidSpec, se.msg}
	case obs.configErr != nil && errors.As(obs.configErr, &me):
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionFalse, ReasonMissingInput, me.msg}
	case obs.configErr != nil:
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionFalse, ReasonProgressing, obs.configErr.Error()}
	case obs.schemaErr != nil && errors.As(obs.schemaErr, &ue):
		stalled = cond{metav1.ConditionTrue, ReasonUnsafeSchemaChange, ue.Error()}
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionFalse, ReasonUnsafeSchemaChange, ue.Error()}
	case obs.schemaErr != nil && errors.As(obs.schemaErr, &re):
		stalled = cond{metav1.ConditionTrue, ReasonInvalidRollup, re.Error()}
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionFalse, ReasonInvalidRollup, re.Error()}
	case obs.schemaErr != nil && errors.As(obs.schemaErr, &se):
		stalled = cond{metav1.ConditionTrue, ReasonInvalidSpec, se.msg}
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionFalse, ReasonInvalidSpec, se.msg}
	case obs.schemaErr != nil && errors.As(obs.schemaErr, &ce):
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionFalse, ReasonClusterNotReady, ce.Error()}
	case obs.schemaErr != nil:
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionFalse, ReasonClickHouseError, obs.schemaErr.Error()}
	case obs.rollupWait != "":
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionFalse, obs.waitReason(), obs.rollupWait}
	case obs.schemaReady:
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionTrue, ReasonSchemaApplied,
			fmt.Sprintf("%d ClickHouse objects in place", len(obs.objects))}
	}

	switch {
	case obs.rollupWait != "":
		c[loopsv1alpha1.ConditionWorkersReady] = cond{metav1.ConditionFalse, obs.waitReason(), "workers are stopped for a rollup backfill or to apply consent"}
	case !obs.schemaReady:
		c[loopsv1alpha1.ConditionWorkersReady] = cond{metav1.ConditionFalse, ReasonNotReached, "waiting for the schema"}
	case obs.paused:
		c[loopsv1alpha1.ConditionWorkersReady] = cond{metav1.ConditionFalse, ReasonPaused, "spec.paused is true: no workers run"}
	case obs.scaledToZero:
		c[loopsv1alpha1.ConditionWorkersReady] = cond{metav1.ConditionFalse, ReasonScaledToZero, "spec.workers.replicas is 0: no workers run"}
	case obs.kafkaErr != nil:
		// The workers may be running, but they only log and retry: say why nothing flows.
		c[loopsv1alpha1.ConditionWorkersReady] = cond{metav1.ConditionFalse, ReasonKafkaUnavailable,
			"Kafka does not answer with the loop's brokers and credentials (spec.kafka), so the workers cannot consume: " + obs.kafkaErr.Error()}
	case obs.workers.Running:
		c[loopsv1alpha1.ConditionWorkersReady] = cond{metav1.ConditionTrue, ReasonWorkersRunning, "workers are consuming"}
	default:
		c[loopsv1alpha1.ConditionWorkersReady] = cond{metav1.ConditionFalse, ReasonWorkersFailing, obs.workers.Message}
	}

	schema, workers := c[loopsv1alpha1.ConditionSchemaReady], c[loopsv1alpha1.ConditionWorkersReady]
	switch {
	case stalled.status == metav1.ConditionTrue:
		c[loopsv1alpha1.ConditionReady] = cond{metav1.ConditionFalse, stalled.reason, stalled.message}
		c[loopsv1alpha1.ConditionReconciling] = cond{metav1.ConditionFalse, stalled.reason, ""}
	case schema.status == metav1.ConditionTrue && (obs.paused || obs.scaledToZero):
		// A paused loop is as its spec asks: Ready, so GitOps tools do not wait on it.
		c[loopsv1alpha1.ConditionReady] = cond{metav1.ConditionTrue, workers.reason, "schema in place; " + workers.message}
		c[loopsv1alpha1.ConditionReconciling] = cond{metav1.ConditionFalse, ReasonSucceeded, ""}
	case schema.status == metav1.ConditionTrue && workers.status == metav1.ConditionTrue:
		c[loopsv1alpha1.ConditionReady] = cond{metav1.ConditionTrue, ReasonSucceeded, "schema in place and workers consuming"}
		c[loopsv1alpha1.ConditionReconciling] = cond{metav1.ConditionFalse, ReasonSucceeded, ""}
	default:
		notReady := schema
		if schema.status == metav1.ConditionTrue {
			notReady = workers
		}
		c[loopsv1alpha1.ConditionReady] = cond{metav1.ConditionFalse, notReady.reason, notReady.message}
		reconciling := ReasonProgressing
		if obs.rollupWait != "" {
			reconciling = obs.waitReason()
		}
		c[loopsv1alpha1.ConditionReconciling] = cond{metav1.ConditionTrue, reconciling, notReady.message}
	}
	c[loopsv1alpha1.ConditionStalled] = stalled
	return c
}

// patchStatus writes the status computed from the observation in one merge patch, and
// records an event when Ready changes.
func (r *CustomerLoopReconciler) patchStatus(ctx context.Context, before, loop *loopsv1alpha1.CustomerLoop, obs *observation) error {
	st := &loop.Status
	st.ObservedGeneration = loop.Generation
	st.StreamCount = int32(len(loop.Spec.Streams))
	st.Replicas, st.Selector = obs.workers.Replicas, obs.workers.Selector
	for t, c := range computeConditions(obs) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: t, Status: c.status, Reason: c.reason, Message: truncate(c.message, 1024),
			ObservedGeneration: loop.Generation,
		})
	}
	if obs.schemaReady {
		st.Objects = obs.objects
	}
	if obs.feedback != nil || loop.Spec.Feedback == nil || loop.Spec.Feedback.Publish == nil {
		st.Feedback = obs.feedback
	}
	if obs.statsErr == nil && len(obs.streams) > 0 {
		prev := map[string]loopsv1alpha1.StreamStatus{}
		for _, ss := range before.Status.Streams {
			prev[ss.Name] = ss
		}
		st.Streams = nil
		st.RowsIngested, st.Lag = 0, 0
		for _, so := range obs.streams {
			ss := loopsv1alpha1.StreamStatus{
				Name:              so.stream.Name,
				Table:             loop.Spec.ClickHouse.Database + "." + so.stream.Table(),
				RowsIngested:      so.stats.Rows,
				RowsDeadLettered:  so.ledger.DeadLettered,
				DuplicatesDropped: so.ledger.Duplicates,
				MessagesWithheld:  so.ledger.Withheld,
				Lag:               so.lag,
			}
			if !so.lagKnown {
				// Kafka did not answer: keep the last lag seen rather than report none.
				ss.Lag = prev[so.stream.Name].Lag
			}
			if !so.stats.LastIngested.IsZero() {
				t := metav1.NewTime(so.stats.LastIngested)
				ss.LastIngestTime = &t
			}
			st.Streams = append(st.Streams, ss)
			st.RowsIngested += so.stats.Rows
			st.Lag += ss.Lag
		}
	}

	wasReady := meta.FindStatusCondition(before.Status.Conditions, loopsv1alpha1.ConditionReady)
	nowReady := meta.FindStatusCondition(st.Conditions, loopsv1alpha1.ConditionReady)
	if nowReady != nil && (wasReady == nil || wasReady.Status != nowReady.Status || wasReady.Reason != nowReady.Reason) {
		kind := "Normal"
		if nowReady.Status != metav1.ConditionTrue {
			kind = "Warning"
		}
		r.event(loop, kind, nowReady.Reason, "Reconcile", "%s", nowReady.Message)
	}
	recordLoopMetrics(loop)
	return client.IgnoreNotFound(r.Status().Patch(ctx, loop, client.MergeFrom(before)))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// waitReason is the reason of the conditions while the workers are stopped for the
// schema: a rollup backfill, or consent being applied.
func (o *observation) waitReason() string {
	if o.consentWait {
		return ReasonConsent
	}
	return ReasonRollupBackfill
}
