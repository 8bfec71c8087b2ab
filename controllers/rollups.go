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

	"customerloop.dev/customerloop/pipeline/ddl"
)

// reconcileRollups brings the loop's rollups to the spec. Rollups already in place cost
// one read of system.tables. A new or changed rollup is built while the loop's workers
// are stopped, because its totals are exact only if no insert into the raw table
// overlaps the creation of its materialized view and its backfill (ClickHouse 18.16 has
// no transactions, and a materialized view sees only inserts that begin after it
// exists). While the workers are still stopping it stops the reconcile, which leaves
// them stopped and comes back.
func (r *CustomerLoopReconciler) reconcileRollups(ctx context.Context, s *reconcileScope) (outcome, error) {
	loop, cfg := s.loop, s.cfg
	// A definition that does not fit its stream is reported whether or not ClickHouse
	// answers; what is built is planned for the server's features.
	if _, err := ddl.PlanRollups(cfg); err != nil {
		return outcome{}, err
	}
	conn, err := s.clickhouse(ctx)
	if err != nil {
		return outcome{}, err
	}
	if cfg.ClickHouse.Features, err = s.serverFeatures(ctx); err != nil {
		return outcome{}, err
	}
	plans, err := ddl.PlanRollups(cfg)
	if err != nil {
		return outcome{}, err
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
		return outcome{}, err
	}
	if !done {
		// The workers are still stopping; they stay stopped until the rollups are built.
		s.obs.rollupWait, s.obs.schemaReady = waiting, false
		return waitFor(rollupPoll()), nil
	}
	for _, p := range plans {
		s.obs.objects = append(s.obs.objects, p.Objects()...)
	}
	return outcome{}, nil
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
