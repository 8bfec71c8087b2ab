package controllers

import (
	"context"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	ctrl "sigs.k8s.io/controller-runtime"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
)

// reconcileScope is what one reconcile of a loop works with: the loop, its config as the
// config phase rendered it, one ClickHouse connection for every phase, and the
// observation that status is computed from.
type reconcileScope struct {
	loop *loopsv1alpha1.CustomerLoop
	cfg  pipeline.Config
	obs  *observation
	// requeue is when the loop is looked at again after a reconcile that ran every phase.
	requeue time.Duration

	conn     driver.Conn
	features *pipeline.ServerFeatures
}

// clickhouse returns the reconcile's connection to the loop's ClickHouse, opening it on
// first use; close closes it.
func (s *reconcileScope) clickhouse(ctx context.Context) (driver.Conn, error) {
	if s.conn == nil {
		conn, err := connect.OpenClickHouse(ctx, s.cfg.ClickHouse)
		if err != nil {
			return nil, err
		}
		s.conn = conn
	}
	return s.conn, nil
}

// serverFeatures reads, once a reconcile, what the loop's server supports beyond 18.16.
func (s *reconcileScope) serverFeatures(ctx context.Context) (pipeline.ServerFeatures, error) {
	if s.features == nil {
		conn, err := s.clickhouse(ctx)
		if err != nil {
			return pipeline.ServerFeatures{}, err
		}
		f, err := pipeline.ReadServerFeatures(ctx, conn)
		if err != nil {
			return pipeline.ServerFeatures{}, err
		}
		s.features = &f
	}
	return *s.features, nil
}

func (s *reconcileScope) close() {
	if s.conn != nil {
		_ = s.conn.Close()
	}
}

// phaseName names a phase; a failure's reason names its phase (phaseReasons).
type phaseName string

const (
	phaseConfig     phaseName = "config"
	phaseSchema     phaseName = "schema"
	phaseFeedback   phaseName = "feedback"
	phaseRollups    phaseName = "rollups"
	phaseConsent    phaseName = "consent"
	phaseWorkers    phaseName = "workers"
	phaseRetention  phaseName = "retention"
	phaseObserve    phaseName = "observe"
	phaseDigests    phaseName = "digests"
	phaseStatements phaseName = "statements"
)

// outcome is what a phase tells the runner besides its error: go on (the zero value), or
// stop here and look at the loop again after requeueAfter. With observe, the streams are
// read before the reconcile ends (after an error too), so that status stays current while
// the loop waits.
type outcome struct {
	stop         bool
	requeueAfter time.Duration
	observe      bool
}

// waitFor stops the reconcile while the workers stop, reading the streams first.
func waitFor(d time.Duration) outcome { return outcome{stop: true, requeueAfter: d, observe: true} }

type phase struct {
	name phaseName
	run  func(context.Context, *reconcileScope) (outcome, error)
}

// phases are the steps of a reconcile, in order. A phase that fails or stops ends the
// reconcile; the ones after it do not run.
func (r *CustomerLoopReconciler) phases() []phase {
	return []phase{
		{phaseConfig, r.reconcileConfig},
		{phaseSchema, r.reconcileSchema},
		// Rollups before feedback: the feedback_actuals view reads the loop's feedback
		// rollup, which must exist and be backfilled first.
		{phaseRollups, r.reconcileRollups},
		{phaseFeedback, r.reconcileFeedback},
		{phaseConsent, r.reconcileConsent},
		{phaseWorkers, r.reconcileWorkers},
		{phaseRetention, r.reconcileRetention},
		{phaseObserve, r.observeStreams},
		{phaseDigests, r.reconcileDigests},
		{phaseStatements, r.reconcileStatements},
	}
}

// runPhases runs the phases in order. A phase's error is recorded here, and only here, in
// the observation, with the phase: the conditions name the phase and carry the error
// (computeConditions). Once every phase ran, the loop's generation is reconciled.
func (r *CustomerLoopReconciler) runPhases(ctx context.Context, s *reconcileScope) (ctrl.Result, error) {
	for _, p := range r.phases() {
		out, err := p.run(ctx, s)
		if err != nil {
			s.obs.failed = &phaseFailure{phase: p.name, err: err}
		}
		if out.observe {
			_, _ = r.observeStreams(ctx, s)
		}
		if err != nil {
			return r.resultFor(err)
		}
		if out.stop {
			return ctrl.Result{RequeueAfter: out.requeueAfter}, nil
		}
	}
	s.obs.reconciled = true
	return ctrl.Result{RequeueAfter: s.requeue}, nil
}

// reconcileConfig renders the loop's config: everything the later phases need.
func (r *CustomerLoopReconciler) reconcileConfig(ctx context.Context, s *reconcileScope) (outcome, error) {
	cfg, err := r.pipelineConfig(ctx, s.loop)
	if err != nil {
		return outcome{}, err
	}
	s.cfg = cfg
	return outcome{}, nil
}
