// Package controllers reconciles CustomerLoops into ClickHouse schema and running workers.
package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/feedback"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// CustomerLoopReconciler turns a CustomerLoop into ClickHouse tables and running workers,
// and reports what the systems of record say about it.
type CustomerLoopReconciler struct {
	client.Client
	Runner   Runner
	Recorder recorder.EventRecorder
	// Batch bounds the workers' batches; zero values take the pipeline's defaults.
	Batch pipeline.BatchConfig
	// RefreshInterval is how often status is refreshed from ClickHouse while nothing
	// changes (jittered by up to 20%).
	RefreshInterval time.Duration

	digests    publishers[*feedback.Publisher, loopsv1alpha1.FeedbackStatus]
	statements publishers[*feedback.ChannelPublisher, loopsv1alpha1.CustomerChannelStatus]
}

// +kubebuilder:rbac:groups=loops.customerloop.dev,resources=customerloops,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=loops.customerloop.dev,resources=customerloops/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=loops.customerloop.dev,resources=customerloops/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one CustomerLoop to its desired state.
func (r *CustomerLoopReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	loop := &loopsv1alpha1.CustomerLoop{}
	if err := r.Get(ctx, req.NamespacedName, loop); err != nil {
		if apierrors.IsNotFound(err) {
			forgetLoopMetrics(req.Namespace, req.Name)
			r.digests.stop(req.NamespacedName)
			r.statements.stop(req.NamespacedName)
			return ctrl.Result{}, r.Runner.Stop(ctx, req.NamespacedName)
		}
		return ctrl.Result{}, err
	}
	if !loop.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.finalize(ctx, loop)
	}
	if !controllerutil.ContainsFinalizer(loop, loopsv1alpha1.Finalizer) {
		patch := client.MergeFromWithOptions(loop.DeepCopy(), client.MergeFromWithOptimisticLock{})
		controllerutil.AddFinalizer(loop, loopsv1alpha1.Finalizer)
		if err := r.Patch(ctx, loop, patch); err != nil {
			return ctrl.Result{}, err
		}
	}

	s := &reconcileScope{loop: loop, obs: &observation{}, requeue: r.jittered()}
	defer s.close()
	before := loop.DeepCopy()
	defer func() {
		retErr = errors.Join(retErr, r.patchStatus(ctx, before, loop, s.obs))
	}()
	return r.runPhases(ctx, s)
}

// reconcileSchema creates the loop's database, ledger and raw tables, and adds the
// columns new dimensions need. A change the tables cannot follow stalls the loop; the
// workers keep running the config they have.
func (r *CustomerLoopReconciler) reconcileSchema(ctx context.Context, s *reconcileScope) (outcome, error) {
	conn, err := s.clickhouse(ctx)
	if err != nil {
		return outcome{}, err
	}
	if err := connect.CheckCluster(ctx, conn, s.cfg.ClickHouse); err != nil {
		return outcome{}, err
	}
	stmts, changes, err := ddl.MigrateChanges(ctx, conn, s.cfg)
	logChanges(ctx, changes)
	if err = r.ddlPending(ctx, s.loop, err); err != nil {
		return outcome{}, err
	}
	for _, st := range stmts {
		if !strings.HasPrefix(st.SQL, "ALTER") {
			s.obs.objects = append(s.obs.objects, st.Object)
		}
	}
	s.obs.schemaReady = true
	return outcome{}, nil
}

// reconcileFeedback creates the plan-against-actual views of a loop with feedback.
func (r *CustomerLoopReconciler) reconcileFeedback(ctx context.Context, s *reconcileScope) (outcome, error) {
	if s.cfg.Feedback == nil {
		return outcome{}, nil
	}
	fc := *s.cfg.Feedback
	if _, err := ddl.PlanFeedback(fc); err != nil {
		return outcome{}, &specError{msg: err.Error()}
	}
	conn, err := s.clickhouse(ctx)
	if err != nil {
		return outcome{}, err
	}
	// Modern servers need the views' joined subqueries named; 18.16's views stay as they were.
	if fc.Features, err = s.serverFeatures(ctx); err != nil {
		return outcome{}, err
	}
	stmts, err := ddl.PlanFeedback(fc)
	if err != nil {
		return outcome{}, &specError{msg: err.Error()}
	}
	var changes []ddl.Change
	if fc.Cluster == "" {
		changes, err = ddl.ApplyFeedbackChanges(ctx, conn, nil, fc.Database, stmts)
	} else {
		// Each node's views are checked: a Distributed read reaches one replica per shard.
		var nodes []driver.Conn
		if nodes, err = connect.ClusterNodes(ctx, conn, s.cfg.ClickHouse); err == nil {
			changes, err = ddl.ApplyFeedbackChanges(ctx, conn, nodes, fc.Database, stmts)
			for _, n := range nodes {
				_ = n.Close()
			}
		}
	}
	logChanges(ctx, changes)
	if err = r.ddlPending(ctx, s.loop, err); err != nil {
		return outcome{}, err
	}
	for _, st := range stmts {
		s.obs.objects = append(s.obs.objects, st.Object)
	}
	return outcome{}, nil
}

// ddlPending passes err on, except when ON CLUSTER statements ran on every host that
// answered and wait in the cluster's DDL queue for the others (a replica that is down):
// that is a warning, not a failure. The hosts that are up have the schema, ingestion goes
// on through them, and the others catch up from the queue when they are back.
func (r *CustomerLoopReconciler) ddlPending(ctx context.Context, loop *loopsv1alpha1.CustomerLoop, err error) error {
	if !errors.Is(err, connect.ErrDDLPending) {
		return err
	}
	log.FromContext(ctx).Info("schema applied on the hosts that answered; the others run it from the DDL queue", "pending", err.Error())
	r.event(loop, "Warning", ReasonDDLPending, "Schema", "%v", err)
	return nil
}

// reconcileWorkers runs the loop's workers, as many as it asks for: none when paused.
func (r *CustomerLoopReconciler) reconcileWorkers(ctx context.Context, s *reconcileScope) (outcome, error) {
	s.obs.paused, s.obs.scaledToZero = s.loop.Spec.Paused, s.loop.GetReplicas() == 0
	st, err := r.Runner.Ensure(ctx, s.loop, workerConfig(s.cfg))
	if err != nil {
		s.obs.workers = WorkerState{Message: err.Error()}
		return outcome{}, err
	}
	s.obs.workers = st
	return outcome{}, nil
}

// workerConfig is the part of the loop's config the workers run. Rollups, feedback,
// digests and retention are the controller's: a change of one of them alone must not
// restart the workers.
func workerConfig(cfg pipeline.Config) pipeline.Config {
	cfg.Rollups, cfg.Feedback, cfg.Digests, cfg.Statements = nil, nil, nil, nil
	streams := make([]pipeline.StreamConfig, len(cfg.Streams))
	for i, sc := range cfg.Streams {
		sc.RetentionDays = 0
		streams[i] = sc
	}
	cfg.Streams = streams
	return cfg
}

// observeStreams reads each stream's ingestion from the systems of record: its raw table
// and the ledger in ClickHouse, and its topic's end offsets in Kafka for the lag.
func (r *CustomerLoopReconciler) observeStreams(ctx context.Context, s *reconcileScope) (outcome, error) {
	obs := s.obs
	conn, err := s.clickhouse(ctx)
	if err != nil {
		obs.statsErr = err
		return outcome{}, nil
	}
	kc, kerr := connect.KafkaClient(s.cfg.Kafka)
	db := s.cfg.ClickHouse.Database
	for _, sc := range s.cfg.Streams {
		so := streamObservation{stream: sc}
		if so.stats, err = ingest.StreamStats(ctx, conn, db, sc); err != nil {
			obs.statsErr = err
			return outcome{}, nil
		}
		if so.ledger, err = ingest.ReadLedgerTotals(ctx, conn, db, sc.Topic); err != nil {
			obs.statsErr = err
			return outcome{}, nil
		}
		// Lag needs Kafka; without it the rest of the status is still true.
		if kerr == nil {
			var offsets map[int]connect.OffsetRange
			if offsets, kerr = connect.TopicOffsets(ctx, kc, sc.Topic); kerr == nil {
				so.lag, so.lagKnown = connect.Lag(offsets, so.ledger.Next), true
			}
		}
		obs.streams = append(obs.streams, so)
	}
	if kerr != nil {
		obs.kafkaErr = kerr
		log.FromContext(ctx).Info("consumer lag unknown", "error", kerr.Error())
	}
	return outcome{}, nil
}

// finalize stops the loop's workers, then honours its deletion policy: Retain keeps the
// tables, Delete drops them (never the database). Until both are done the finalizer
// holds the loop; if the operator is gone for good, remove it by hand with
//
//	kubectl patch customerloop NAME --type=merge -p '{"metadata":{"finalizers":null}}'
//
// which leaves the tables and any worker Deployment for the user to remove.
func (r *CustomerLoopReconciler) finalize(ctx context.Context, loop *loopsv1alpha1.CustomerLoop) error {
	if !controllerutil.ContainsFinalizer(loop, loopsv1alpha1.Finalizer) {
		return nil
	}
	key := types.NamespacedName{Namespace: loop.Namespace, Name: loop.Name}
	r.digests.stop(key)
	r.statements.stop(key)
	if err := r.Runner.Stop(ctx, key); err != nil {
		return err
	}
	if loop.GetDeletionPolicy() == loopsv1alpha1.DeletionDelete {
		if err := r.dropTables(ctx, loop); err != nil {
			r.event(loop, "Warning", ReasonDeleteFailed, "Delete", "dropping the loop's tables (deletionPolicy Delete): %v; retrying", err)
			return err
		}
	}
	log.FromContext(ctx).Info("workers stopped; releasing the loop", "deletionPolicy", loop.GetDeletionPolicy())
	patch := client.MergeFromWithOptions(loop.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(loop, loopsv1alpha1.Finalizer)
	return r.Patch(ctx, loop, patch)
}

// dropTables drops the loop's rollups, feedback views, ledger and raw tables.
func (r *CustomerLoopReconciler) dropTables(ctx context.Context, loop *loopsv1alpha1.CustomerLoop) error {
	cfg, err := r.pipelineConfig(ctx, loop)
	if err != nil {
		return err
	}
	conn, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	if cfg.ClickHouse.Features, err = pipeline.ReadServerFeatures(ctx, conn); err != nil {
		return err
	}
	if err := ddl.ApplySchema(ctx, conn, ddl.PlanDrop(cfg)); err != nil {
		return err
	}
	return dropRollupLeftovers(ctx, conn, cfg.ClickHouse.Database)
}

// resultFor maps an error to the controller's reaction: a spec problem stalls the loop
// (no retry until the spec changes), a missing input waits for its watch event, anything
// else is retried with backoff.
func (r *CustomerLoopReconciler) resultFor(err error) (ctrl.Result, error) {
	var se *specError
	var ue *ddl.UnsafeChangeError
	var re *ddl.RollupError
	if errors.As(err, &se) || errors.As(err, &ue) || errors.As(err, &re) {
		return ctrl.Result{}, reconcile.TerminalError(err)
	}
	var me *missingInputError
	if errors.As(err, &me) {
		return ctrl.Result{RequeueAfter: r.jittered()}, nil
	}
	return ctrl.Result{}, err
}

func (r *CustomerLoopReconciler) jittered() time.Duration {
	d := r.RefreshInterval
	if d <= 0 {
		d = 30 * time.Second
	}
	return d + time.Duration(rand.Int64N(int64(d)/5+1))
}

// secretRefIndex indexes loops by every Secret they reference (ClickHouse credentials,
// Kafka CA and SASL credentials).
const secretRefIndex = ".spec.secretRefs"

// SetupWithManager registers the reconciler, the Secret index and the runner.
func (r *CustomerLoopReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &loopsv1alpha1.CustomerLoop{}, secretRefIndex,
		func(o client.Object) []string {
			return o.(*loopsv1alpha1.CustomerLoop).SecretNames()
		}); err != nil {
		return err
	}
	if runnable, ok := r.Runner.(interface{ Start(context.Context) error }); ok {
		if err := mgr.Add(runnableFunc(runnable.Start)); err != nil {
			return err
		}
	}
	b := ctrl.NewControllerManagedBy(mgr).
		For(&loopsv1alpha1.CustomerLoop{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.loopsForSecret))
	if _, ok := r.Runner.(*DeploymentRunner); ok {
		// Worker pods becoming available, or someone editing what the runner applied,
		// re-reconciles the loop.
		b = b.Owns(&appsv1.Deployment{}).Owns(&corev1.ConfigMap{})
	}
	return b.Named("customerloop").Complete(r)
}

// loopsForSecret maps a Secret to the loops in its namespace that reference it.
func (r *CustomerLoopReconciler) loopsForSecret(ctx context.Context, o client.Object) []reconcile.Request {
	var loops loopsv1alpha1.CustomerLoopList
	if err := r.List(ctx, &loops, client.InNamespace(o.GetNamespace()),
		client.MatchingFields{secretRefIndex: o.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "listing loops for Secret", "secret", o.GetName())
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(loops.Items))
	for _, l := range loops.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: l.Namespace, Name: l.Name}})
	}
	return reqs
}

type runnableFunc func(context.Context) error

func (f runnableFunc) Start(ctx context.Context) error { return f(ctx) }

// event records an event on the loop when the reconciler has a recorder. The events API
// folds events that share type, reason, action and object into one series whatever
// their notes, so a second, different event of a kind (another flagged product, another
// refused consent message) would never show: the action carries a short digest of the
// note, which keeps distinct events apart while a repeated one still counts up its series.
func (r *CustomerLoopReconciler) event(loop *loopsv1alpha1.CustomerLoop, kind, reason, action, note string, args ...any) {
	if r.Recorder == nil {
		return
	}
	msg := fmt.Sprintf(note, args...)
	sum := sha256.Sum256([]byte(msg))
	r.Recorder.Eventf(loop, nil, kind, reason, action+" "+hex.EncodeToString(sum[:4]), "%s", msg)
}

// logChanges logs what applying the loop's ClickHouse objects changed; objects already
// as declared are not logged.
func logChanges(ctx context.Context, changes []ddl.Change) {
	for _, c := range changes {
		if c.Action != ddl.Unchanged {
			log.FromContext(ctx).Info("schema "+string(c.Action), "object", c.Object)
		}
	}
}
