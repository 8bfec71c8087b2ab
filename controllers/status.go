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
	// failed is the phase that failed, with its error; nil when none did.
	failed *phaseFailure
	// reconciled: every phase ran, so the loop's generation is reconciled.
	reconciled  bool
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
	// customerChannel is what the channel publisher reports; nil when it publishes none.
	customerChannel *loopsv1alpha1.CustomerChannelStatus
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

// phaseFailure is a phase that failed, and its error.
type phaseFailure struct {
	phase phaseName
	err   error
}

// phaseConditions say which condition, besides Ready, a failure of the phase sets False:
// the config and the ClickHouse objects are the schema's; consent is applied before the
// workers (re)start. Retention, digests and statements fail with Ready only.
var phaseConditions = map[phaseName]string{
	phaseConfig:   loopsv1alpha1.ConditionSchemaReady,
	phaseSchema:   loopsv1alpha1.ConditionSchemaReady,
	phaseFeedback: loopsv1alpha1.ConditionSchemaReady,
	phaseRollups:  loopsv1alpha1.ConditionSchemaReady,
	phaseConsent:  loopsv1alpha1.ConditionWorkersReady,
	phaseWorkers:  loopsv1alpha1.ConditionWorkersReady,
}

// condition is the condition of a failed phase: its reason is the kind of the error when
// that says more than the phase (InvalidSpec, MissingInput, ...), else the phase's
// (phaseReasons); its message is the error's. A spec that retrying cannot fix stalls.
func (f *phaseFailure) condition() (c cond, stalls bool) {
	var se *specError
	var me *missingInputError
	var ue *ddl.UnsafeChangeError
	var re *ddl.RollupError
	var ce *connect.ClusterError
	switch {
	case errors.As(f.err, &ue):
		return cond{metav1.ConditionFalse, ReasonUnsafeSchemaChange, ue.Error()}, true
	case errors.As(f.err, &re):
		return cond{metav1.ConditionFalse, ReasonInvalidRollup, re.Error()}, true
	case errors.As(f.err, &se):
		return cond{metav1.ConditionFalse, ReasonInvalidSpec, se.msg}, true
	case errors.As(f.err, &me):
		return cond{metav1.ConditionFalse, ReasonMissingInput, me.msg}, false
	case errors.As(f.err, &ce):
		return cond{metav1.ConditionFalse, ReasonClusterNotReady, ce.Error()}, false
	}
	reason := phaseReasons[f.phase]
	if reason == "" {
		reason = ReasonProgressing
	}
	return cond{metav1.ConditionFalse, reason, f.err.Error()}, false
}

// failedCondition is the condition type a failure set False besides Ready, or "".
func (o *observation) failedCondition() string {
	if o.failed == nil {
		return ""
	}
	return phaseConditions[o.failed.phase]
}

// schemaInPlace: the schema phases went through and no rollup or consent waits.
func (o *observation) schemaInPlace() bool {
	return o.schemaReady && o.failedCondition() != loopsv1alpha1.ConditionSchemaReady
}

type cond struct {
	status          metav1.ConditionStatus
	reason, message string
}

// computeConditions derives every condition from the observation.
func computeConditions(obs *observation) map[string]cond {
	c := map[string]cond{}
	stalled := cond{metav1.ConditionFalse, ReasonSucceeded, ""}
	var failed *cond
	if obs.failed != nil {
		fc, stalls := obs.failed.condition()
		failed = &fc
		if stalls {
			stalled = cond{metav1.ConditionTrue, fc.reason, fc.message}
		}
	}
	failedType := obs.failedCondition()
	schemaReady := obs.schemaInPlace()

	switch {
	case failedType == loopsv1alpha1.ConditionSchemaReady:
		c[loopsv1alpha1.ConditionSchemaReady] = *failed
	case obs.rollupWait != "":
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionFalse, obs.waitReason(), obs.rollupWait}
	case schemaReady:
		c[loopsv1alpha1.ConditionSchemaReady] = cond{metav1.ConditionTrue, ReasonSchemaApplied,
			fmt.Sprintf("%d ClickHouse objects in place", len(obs.objects))}
	}

	switch {
	case obs.rollupWait != "":
		c[loopsv1alpha1.ConditionWorkersReady] = cond{metav1.ConditionFalse, obs.waitReason(), "workers are stopped for a rollup backfill or to apply consent"}
	case !schemaReady:
		c[loopsv1alpha1.ConditionWorkersReady] = cond{metav1.ConditionFalse, ReasonNotReached, "waiting for the schema"}
	case failedType == loopsv1alpha1.ConditionWorkersReady:
		c[loopsv1alpha1.ConditionWorkersReady] = *failed
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
	case failed != nil:
		// The failed phase is retried: Ready says which one failed and how.
		c[loopsv1alpha1.ConditionReady] = *failed
		c[loopsv1alpha1.ConditionReconciling] = cond{metav1.ConditionTrue, ReasonProgressing, failed.message}
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
//
// Generations are recorded as kstatus and Flux read them. Every condition written carries
// the generation it was computed for, failures included. status.observedGeneration moves
// to a generation only once its reconcile came to an end: every phase ran, or a phase
// stalled (Stalled=True: retrying cannot help until the spec changes, so the conditions
// are the generation's final word; kstatus then reports Failed rather than waiting). A
// reconcile that fails and is retried, or waits for the workers to stop, leaves it at
// the last generation that got that far, so tools waiting on observedGeneration keep
// waiting.
func (r *CustomerLoopReconciler) patchStatus(ctx context.Context, before, loop *loopsv1alpha1.CustomerLoop, obs *observation) error {
	st := &loop.Status
	st.StreamCount = int32(len(loop.Spec.Streams))
	st.Replicas, st.Selector = obs.workers.Replicas, obs.workers.Selector
	conds := computeConditions(obs)
	for t, c := range conds {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: t, Status: c.status, Reason: c.reason, Message: truncate(c.message, 1024),
			ObservedGeneration: loop.Generation,
		})
	}
	if obs.reconciled || conds[loopsv1alpha1.ConditionStalled].status == metav1.ConditionTrue {
		st.ObservedGeneration = loop.Generation
	}
	if obs.schemaInPlace() {
		st.Objects = obs.objects
	}
	if obs.feedback != nil || loop.Spec.Feedback == nil || loop.Spec.Feedback.Publish == nil {
		st.Feedback = obs.feedback
	}
	if c := loop.Spec.CustomerChannel; obs.customerChannel != nil || c == nil || c.Statements == nil {
		st.CustomerChannel = obs.customerChannel
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
