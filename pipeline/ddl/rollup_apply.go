package ddl

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// RebuildRollup rebuilds one rollup's version from the raw table: Rebuild over the raw
// table's partitions, run with BackfillContext. The caller stops the loop's workers
// first.
func RebuildRollup(ctx context.Context, conn driver.Conn, p RollupPlan) error {
	parts, err := sourcePartitions(ctx, conn, p)
	if err != nil {
		return fmt.Errorf("rollup %s: %w", p.Name, err)
	}
	if err := ApplySchema(p.BackfillContext(ctx), conn, p.Rebuild(parts)); err != nil {
		return fmt.Errorf("rollup %s: %w", p.Name, err)
	}
	return nil
}

// sourcePartitions lists the partitions of the plan's raw table: on a cluster, those of
// every node's local table. None (nil) when the table is not partitioned by month: it is
// backfilled at once.
func sourcePartitions(ctx context.Context, conn driver.Conn, p RollupPlan) ([]uint32, error) {
	table, cluster := p.Source, ""
	if p.ch.Clustered() {
		table, cluster = pipeline.LocalTable(p.Source), p.ch.Cluster
	}
	parts, monthly, err := monthPartitions(ctx, conn, cluster, p.db, table)
	if err != nil || !monthly {
		return nil, err
	}
	return parts, nil
}

// ExistingRollups is what the loop's database holds of rollups: the engine of every
// object named rollup_*, and the query of each view.
type ExistingRollups struct {
	engines map[string]string
	queries map[string]string
	// cluster is the cluster the rollups' Distributed tables were created on, if any:
	// their leftovers are dropped on it.
	cluster string
	// found is the read the rest was taken from, for Apply.
	found found
}

// ReadRollups reads the rollup objects of the database: the same read of system.tables
// as Apply's, on the connected node.
func ReadRollups(ctx context.Context, conn driver.Conn, db string) (ExistingRollups, error) {
	e := ExistingRollups{engines: map[string]string{}, queries: map[string]string{}}
	all := map[string]definition{}
	if err := readTables(ctx, conn, db, all); err != nil {
		return e, fmt.Errorf("reading the rollups of %s: %w", db, err)
	}
	e.found = found{all}
	for object, d := range all {
		name := strings.TrimPrefix(object, db+".")
		if strings.HasPrefix(name, "rollup_") {
			e.engines[name], e.queries[name] = d.engine, d.query
			if m := distributedCluster.FindStringSubmatch(d.query); d.engine == "Distributed" && m != nil {
				e.cluster = m[1]
			}
		}
	}
	return e, nil
}

// Current reports whether the plan's version is in place and complete: its table and
// materialized view exist and the read view reads that table. The read view is replaced
// only after a backfill finished, so a version it does not read may be partial.
// On a cluster the version is its local ReplicatedAggregatingMergeTree table and the
// Distributed table over it, which the read view reads. It reads the objects of the node
// the connection reaches: they are created and dropped ON CLUSTER, and a node that missed
// a statement runs it from the cluster's DDL queue when it is back.
func (e ExistingRollups) Current(p RollupPlan) bool {
	table := e.engines[p.Table] == "AggregatingMergeTree"
	if p.ch.Clustered() {
		table = e.engines[p.Table] == "Distributed" && e.engines[pipeline.LocalTable(p.Table)] == "ReplicatedAggregatingMergeTree"
	}
	return table && e.engines[p.MV] == "MaterializedView" &&
		e.engines[p.View] == "View" && readsTable(e.queries[p.View], p.Table)
}

func readsTable(query, table string) bool {
	return regexp.MustCompile(`(^|[^A-Za-z0-9_])` + regexp.QuoteMeta(table) + `($|[^A-Za-z0-9_])`).MatchString(query)
}

// PlanRollupChanges compares the plans with what exists. rebuild lists the rollups whose
// version is not in place (new, changed, or left half-built by a crash): each needs
// Rebuild with the loop's workers stopped. stale drops what no plan uses: other versions
// of planned rollups and every object of rollups no longer declared (read views, then
// materialized views, then tables). Dropping them is safe with workers running once no rebuild is pending; with a
// rebuild pending, run them after it, because the read view may still read an old
// version.
func PlanRollupChanges(db string, plans []RollupPlan, e ExistingRollups) (rebuild []RollupPlan, stale []pipeline.Statement) {
	want := map[string]RollupPlan{}
	for _, p := range plans {
		want[p.Name] = p
		if !e.Current(p) {
			rebuild = append(rebuild, p)
		}
	}
	names := make([]string, 0, len(e.engines))
	for n := range e.engines {
		names = append(names, n)
	}
	sort.Strings(names)
	on := pipeline.ClickHouseConfig{Cluster: e.cluster}.OnCluster()
	if len(plans) > 0 && plans[0].ch.Clustered() {
		on = plans[0].ch.OnCluster()
	}
	var mvs, tables, locals, views []pipeline.Statement
	drop := func(to *[]pipeline.Statement, name string) {
		*to = append(*to, pipeline.Statement{Object: db + "." + name, SQL: "DROP TABLE IF EXISTS " + pipeline.QualifiedTable(db, name) + on})
	}
	removed := map[string]bool{}
	for _, n := range names {
		m := versionObject.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		rollup, version, suffix := m[1], m[2], m[3]
		if !slices.Contains(versionEngines[suffix], e.engines[n]) {
			continue // not one of ours
		}
		if p, ok := want[rollup]; ok && p.Version == version {
			continue
		}
		if _, ok := want[rollup]; !ok {
			removed[rollup] = true
		}
		switch suffix {
		case "_mv":
			drop(&mvs, n)
		case "_local":
			drop(&locals, n)
		default:
			drop(&tables, n)
		}
	}
	for _, r := range slices.Sorted(maps.Keys(removed)) {
		v := RollupView(r)
		if e.engines[v] == "View" && strings.Contains(e.queries[v], v+"_v") {
			drop(&views, v)
		}
	}
	return rebuild, slices.Concat(views, mvs, tables, locals)
}

// ApplyRollups brings the database's rollups to the plans and returns the names of those
// it rebuilt. Rollups already in place cost one read of system.tables: quiesce is not
// called. Before the first rebuild it calls quiesce with the names of the rollups to
// rebuild; quiesce must stop every writer of the
// loop's raw tables and report whether none is left; if it reports false, ApplyRollups
// changes nothing and returns done false, to be called again later. Every step is
// idempotent, and a crash at any point leaves a version that the read view does not
// read, which the next call rebuilds. On a cluster with a host down it completes on the
// hosts that answer and returns done with an error matching ErrDDLPending.
func ApplyRollups(ctx context.Context, conn driver.Conn, db string, plans []RollupPlan, quiesce func(rebuild []string) (bool, error)) (rebuilt []string, done bool, err error) {
	changes, done, err := ApplyRollupChanges(ctx, conn, db, plans, quiesce)
	for _, p := range plans {
		if slices.Contains(changes, Change{Object: p.db + "." + p.View, Action: Replaced}) ||
			slices.Contains(changes, Change{Object: p.db + "." + p.View, Action: Created}) {
			rebuilt = append(rebuilt, p.Name)
		}
	}
	return rebuilt, done, err
}

// ApplyRollupChanges is ApplyRollups, reporting what it changed: the objects of each
// rollup it rebuilt (created, or replaced where they existed), those of each rollup in
// place (unchanged), and the leftovers it dropped.
//
// It reads what exists once, through ReadRollups. The leftovers, objects no plan
// declares, are Absent objects of Apply, dropped against that read. A rebuild does not go
// through Apply: the version's table and materialized view are dropped and created
// again as a unit even where some of them exist (a crash may have left them partial),
// the table is filled from the raw table between creating it and switching the read
// view, and the loop's workers are stopped first. Whether a rollup needs one is the
// same read's diff (Current); how is RebuildRollup, which erasures share.
func ApplyRollupChanges(ctx context.Context, conn driver.Conn, db string, plans []RollupPlan, quiesce func(rebuild []string) (bool, error)) ([]Change, bool, error) {
	var pending error
	existing, err := ReadRollups(ctx, conn, db)
	if err != nil {
		return nil, false, err
	}
	rebuild, stale := PlanRollupChanges(db, plans, existing)
	var changes []Change
	for _, p := range plans {
		if !slices.ContainsFunc(rebuild, func(r RollupPlan) bool { return r.Name == p.Name }) {
			for _, o := range p.Objects() {
				changes = append(changes, Change{Object: o, Action: Unchanged})
			}
		}
	}
	if len(rebuild) > 0 {
		names := make([]string, len(rebuild))
		for i, p := range rebuild {
			names[i] = p.Name
		}
		quiet, err := quiesce(names)
		if err != nil || !quiet {
			return nil, false, err
		}
		for _, p := range rebuild {
			if err := RebuildRollup(ctx, conn, p); pendingOnly(err, &pending) != nil {
				return changes, false, err
			}
			for _, o := range p.Objects() {
				a := Created
				if _, ok := existing.found[0][o]; ok {
					a = Replaced
				}
				changes = append(changes, Change{Object: o, Action: a})
			}
		}
	}
	leftovers := make([]Object, len(stale))
	for i, s := range stale {
		leftovers[i] = Object{Name: s.Object, Drop: []pipeline.Statement{s}, Absent: true}
	}
	dropped, err := applyFound(ctx, conn, leftovers, existing.found)
	changes = append(changes, dropped...)
	if pendingOnly(err, &pending) != nil {
		return changes, false, err
	}
	// Done on every host that answered; a host that is down runs the same statements
	// from the DDL queue and fetches the backfilled parts from its replica when back.
	return changes, true, pending
}

// pendingOnly returns err unless it only says that some hosts have ON CLUSTER
// statements still queued (ErrDDLPending), which it adds to pending instead.
func pendingOnly(err error, pending *error) error {
	if errors.Is(err, connect.ErrDDLPending) {
		*pending = errors.Join(*pending, err)
		return nil
	}
	return err
}
