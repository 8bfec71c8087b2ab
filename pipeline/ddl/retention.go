package ddl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// retentionColumn is the time a stream's rows are kept by: the raw table's partition
// key's column.
func retentionColumn(kind pipeline.Kind) string {
	if kind == pipeline.KindPlan {
		return "period"
	}
	return "ts"
}

// RetentionTTL is the TTL expression of a stream kept for days.
func RetentionTTL(kind pipeline.Kind, days int) string {
	return fmt.Sprintf("%s + toIntervalDay(%d)", pipeline.QuoteIdent(retentionColumn(kind)), days)
}

// ExpiredPartitions returns the month partitions (YYYYMM) all of whose rows are older
// than days before now: those whose month ended at or before the cutoff. A month that
// is only partly expired is kept whole.
func ExpiredPartitions(parts []uint32, now time.Time, days int) []uint32 {
	cutoff := now.UTC().AddDate(0, 0, -days)
	var out []uint32
	for _, p := range parts {
		y, m := int(p/100), time.Month(p%100)
		if m < 1 || m > 12 {
			continue
		}
		if end := time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC); !end.After(cutoff) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// RetentionTTLStatement sets a stream's TTL: on the raw table, or on a cluster on its
// local tables ON CLUSTER (each shard's replicated table runs it once and replicates it).
func RetentionTTLStatement(ch pipeline.ClickHouseConfig, s pipeline.StreamConfig, days int) pipeline.Statement {
	t := ch.StoredTable(s.Table())
	return pipeline.Statement{Object: ch.Database + "." + t,
		SQL: "ALTER TABLE " + pipeline.QualifiedTable(ch.Database, t) + ch.OnCluster() + " MODIFY TTL " + RetentionTTL(s.Kind, days)}
}

// DropPartitionStatement drops one month partition of a stream's raw table, or on a
// cluster of its local tables ON CLUSTER: every shard drops it (a shard without it has
// nothing to drop), once per shard, and its other replicas follow through replication.
func DropPartitionStatement(ch pipeline.ClickHouseConfig, s pipeline.StreamConfig, partition uint32) pipeline.Statement {
	t := ch.StoredTable(s.Table())
	return pipeline.Statement{Object: ch.Database + "." + t,
		SQL: fmt.Sprintf("ALTER TABLE %s%s DROP PARTITION %d", pipeline.QualifiedTable(ch.Database, t), ch.OnCluster(), partition)}
}

// ApplyRetention keeps a stream's raw table to days. A server with table TTL gets one
// (set again only when it differs, because newer servers rewrite the table's parts on
// every MODIFY TTL); an older server, such as 18.16, has the table's expired month
// partitions dropped, which the caller repeats (on every reconcile). It returns the
// partitions it dropped.
//
// On a cluster the rows are in the local tables. The connected node's system.parts only
// knows its own shard, so the partitions are read from system.parts of a node of every
// shard, each through its own connection (18.16 has no clusterAllReplicas; a query
// through the Distributed table would have to read every row's time instead of the
// parts list). A shard none of whose nodes answers is an error: its old months would
// be missed.
func ApplyRetention(ctx context.Context, conn driver.Conn, v pipeline.ServerVersion, ch pipeline.ClickHouseConfig, s pipeline.StreamConfig, days int, now time.Time) ([]uint32, error) {
	db, table := ch.Database, ch.StoredTable(s.Table())
	if v.HasTTL() {
		// The TTL is an Apply object whose fingerprint is its clause: set again only
		// when the table's definition lacks it.
		ttl := Object{Name: db + "." + table, Fingerprint: "TTL " + RetentionTTL(s.Kind, days),
			Alter: []pipeline.Statement{RetentionTTLStatement(ch, s, days)}}
		if _, err := Apply(ctx, conn, nil, []Object{ttl}); err != nil {
			return nil, fmt.Errorf("setting the TTL of %s: %w", table, err)
		}
		return nil, nil
	}
	// Dropping expired partitions stays here: what to drop is read from the parts of
	// every shard and changes with time, not an object's definition that Apply compares.
	var parts []uint32
	if ch.Clustered() {
		nodes, closeAll, err := connect.ConnectNodes(ctx, conn, ch)
		if err != nil {
			return nil, fmt.Errorf("reading the partitions of %s: %w", table, err)
		}
		defer closeAll()
		for _, n := range nodes {
			p, _, err := monthPartitions(ctx, n.Conn, "", db, table)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", n.Addr, err)
			}
			for _, x := range p {
				if !slices.Contains(parts, x) {
					parts = append(parts, x)
				}
			}
		}
	} else {
		var err error
		if parts, _, err = monthPartitions(ctx, conn, "", db, table); err != nil {
			return nil, err
		}
	}
	expired := ExpiredPartitions(parts, now, days)
	// A replica that is down drops the partitions when back, from its replication log.
	var pending error
	for _, p := range expired {
		if err := ApplySchema(ctx, conn, []pipeline.Statement{DropPartitionStatement(ch, s, p)}); err != nil {
			if !errors.Is(err, connect.ErrDDLPending) {
				return nil, fmt.Errorf("dropping partition %d of %s: %w", p, table, err)
			}
			pending = err
		}
	}
	return expired, pending
}

// monthPartitions lists the partitions that hold active parts of a table partitioned by
// month (toYYYYMM), sorted, read from system.parts, or, with a cluster, from every
// node's. monthly is false when a partition is not a month: a table partitioned some
// other way.
func monthPartitions(ctx context.Context, conn driver.Conn, cluster, db, table string) (parts []uint32, monthly bool, err error) {
	from := "system.parts"
	if cluster != "" {
		// The names are bound as parameters; only the validated cluster name is quoted.
		from = "cluster('" + cluster + "', system, parts)"
	}
	rows, err := conn.Query(ctx, "SELECT DISTINCT partition FROM "+from+" WHERE database = ? AND table = ? AND active", db, table)
	if err != nil {
		return nil, false, fmt.Errorf("reading the partitions of %s.%s: %w", db, table, err)
	}
	defer rows.Close()
	monthly = true
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, false, err
		}
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			monthly = false
			continue
		}
		parts = append(parts, uint32(n))
	}
	slices.Sort(parts)
	return parts, monthly, rows.Err()
}
