package connect

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ClusterError says why the server a loop connects to cannot hold the loop's tables on
// the cluster its spec names. It is fixed on the ClickHouse side, not in the spec, so the
// loop retries until the servers are set up.
type ClusterError struct{ msg string }

func (e *ClusterError) Error() string { return e.msg }

// CheckCluster verifies, on the node conn is connected to, what the cluster's DDL needs:
// the cluster in <remote_servers>, the {shard} and {replica} macros of the Replicated
// tables, and a ZooKeeper (or Keeper) connection for them and for ON CLUSTER queries.
// Without a cluster it does nothing.
func CheckCluster(ctx context.Context, conn driver.Conn, ch pipeline.ClickHouseConfig) error {
	if !ch.Clustered() {
		return nil
	}
	rows, err := conn.Query(ctx, "SELECT DISTINCT cluster FROM system.clusters")
	if err != nil {
		return fmt.Errorf("reading system.clusters: %w", err)
	}
	var known []string
	found := false
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			rows.Close()
			return err
		}
		known = append(known, c)
		found = found || c == ch.Cluster
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if !found {
		sort.Strings(known)
		have := "none"
		if len(known) > 0 {
			have = strings.Join(known, ", ")
		}
		return &ClusterError{fmt.Sprintf("cluster %q is not in the <remote_servers> of the server at %s (it has: %s)", ch.Cluster, ch.Addr, have)}
	}
	var macros []string
	mrows, err := conn.Query(ctx, "SELECT macro FROM system.macros WHERE macro IN ('shard', 'replica')")
	if err != nil {
		return fmt.Errorf("reading system.macros: %w", err)
	}
	for mrows.Next() {
		var m string
		if err := mrows.Scan(&m); err != nil {
			mrows.Close()
			return err
		}
		macros = append(macros, m)
	}
	mrows.Close()
	if err := mrows.Err(); err != nil {
		return err
	}
	if len(macros) < 2 {
		return &ClusterError{fmt.Sprintf("the server at %s defines the macros %v; Replicated tables need both {shard} and {replica} in <macros>", ch.Addr, macros)}
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.zookeeper WHERE path = '/'").Scan(&n); err != nil {
		return &ClusterError{fmt.Sprintf("the server at %s cannot reach ZooKeeper or Keeper, which Replicated tables and ON CLUSTER queries need: %v", ch.Addr, err)}
	}
	return nil
}
