package controllers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
)

// rollupConfigs renders the spec's rollups for the pipeline.
func rollupConfigs(loop *loopsv1alpha1.CustomerLoop) []pipeline.RollupConfig {
	var out []pipeline.RollupConfig
	for _, r := range loop.Spec.Rollups {
		rc := pipeline.RollupConfig{
			Name: r.Name, Stream: r.Stream, Granularity: pipeline.RollupGranularity(r.Granularity),
			Dimensions: append([]string(nil), r.Dimensions...),
		}
		for _, m := range r.Measures {
			rc.Measures = append(rc.Measures, pipeline.MeasureConfig{
				Name: m.Name, Function: pipeline.RollupFunction(m.Function), Field: m.Field,
				Quantiles: append([]string(nil), m.Quantiles...),
			})
		}
		out = append(out, rc)
	}
	return out
}

// reconcileRollups brings the loop's rollups to the spec. Rollups already in place cost
// one read of system.tables. A new or changed rollup is built while the loop's workers
// are stopped, because its totals are exact only if no insert into the raw table
// overlaps the creation of its materialized view and its backfill (ClickHouse 18.16 has
// no transactions, and a materialized view sees only inserts that begin after it
// exists). It returns false while the workers are still stopping: the caller leaves
// them stopped and comes back.
func (r *CustomerLoopReconciler) reconcileRollups(ctx context.Context, loop *loopsv1alpha1.CustomerLoop, cfg pipeline.Config, obs *observation) (bool, error) {
	// A definition that does not fit its stream is reported whether or not ClickHouse
	// answers; what is built is planned for the server's features.
	if _, err := ddl.PlanRollups(cfg); err != nil {
		obs.schemaErr, obs.schemaReady = err, false
		return false, err
	}
	conn, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		obs.schemaErr, obs.schemaReady = err, false
		return false, err
	}
	defer conn.Close()
	if cfg.ClickHouse.Features, err = pipeline.ReadServerFeatures(ctx, conn); err != nil {
		obs.schemaErr, obs.schemaReady = err, false
		return false, err
	}
	plans, err := ddl.PlanRollups(cfg)
	if err != nil {
		obs.schemaErr, obs.schemaReady = err, false
		return false, err
	}
	key := types.NamespacedName{Namespace: loop.Namespace, Name: loop.Name}
	var waiting string
	quiesce := func(rebuild []string) (bool, error) {
		log.FromContext(ctx).Info("stopping the workers to build rollups", "rollups", rebuild)
		w, err := r.Runner.Quiesce(ctx, key)
		if err != nil {
			return false, fmt.Errorf("stopping the workers for the backfill of rollup %s: %w", strings.Join(rebuild, ", "), err)
		}
		if w != "" {
			waiting = fmt.Sprintf("rollup %s: workers are stopped until it is built and backfilled, so that its totals are exact; waiting for %s",
				strings.Join(rebuild, ", "), w)
		}
		return w == "", nil
	}
	rebuilt, done, err := ddl.ApplyRollups(ctx, conn, cfg.ClickHouse.Database, plans, quiesce)
	err = r.ddlPending(ctx, loop, err)
	for _, name := range rebuilt {
		log.FromContext(ctx).Info("rollup built and backfilled", "rollup", name)
		r.event(loop, "Normal", ReasonRollupBackfill, "Backfill", "rollup %s built from the raw table with the workers stopped; its read view switched", name)
	}
	if err != nil {
		obs.schemaErr, obs.schemaReady = err, false
		return false, err
	}
	if !done {
		obs.rollupWait, obs.schemaReady = waiting, false
		return false, nil
	}
	for _, p := range plans {
		obs.objects = append(obs.objects, p.Objects()...)
	}
	return true, nil
}

// dropRollupLeftovers drops every rollup object the loop's database holds, such as a
// version a crash left behind that PlanDrop does not know of.
func dropRollupLeftovers(ctx context.Context, conn driver.Conn, db string) error {
	existing, err := ddl.ReadRollups(ctx, conn, db)
	if err != nil {
		return err
	}
	_, stale := ddl.PlanRollupChanges(db, nil, existing)
	return ddl.ApplySchema(ctx, conn, stale)
}

// rollupPoll is how soon a loop waiting for its workers to stop is looked at again.
func rollupPoll() time.Duration {
	return 2*time.Second + time.Duration(rand.Int64N(int64(time.Second)))
}
