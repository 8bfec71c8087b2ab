package pipeline

import (
	"context"
	"os"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/test/testkit"
)

// The three-node cluster the tests use: make test provisions it with
// hack/clickhouse-cluster.sh (ZooKeeper and three ClickHouse servers: shard 1 has the
// replicas node1 and node2, shard 2 has node3) and exports its coordinates.
//
//	CLICKHOUSE_CLUSTER        the cluster's name in <remote_servers>
//	CLICKHOUSE_CLUSTER_ADDRS  the nodes' native addresses, node1 first, comma separated

// testCluster returns the cluster's name and node addresses, skipping (or failing under
// make test) without them.
func testCluster(t testing.TB) (string, []string) {
	t.Helper()
	return testkit.Cluster(t)
}

// clusterClickHouse is a loop's ClickHouse config on the test cluster, connected through
// node (0-based).
func clusterClickHouse(t testing.TB, db string, node int) ClickHouseConfig {
	t.Helper()
	name, addrs := testCluster(t)
	return ClickHouseConfig{Addr: addrs[node], Database: db, Username: os.Getenv("CLICKHOUSE_USER"),
		Password: os.Getenv("CLICKHOUSE_PASSWORD"), Cluster: name}
}

// nodeConns opens one connection to every node of the test cluster, closed at the end.
func nodeConns(t testing.TB) []driver.Conn {
	t.Helper()
	_, addrs := testCluster(t)
	conns := make([]driver.Conn, len(addrs))
	for i, a := range addrs {
		c, err := OpenClickHouse(context.Background(), ClickHouseConfig{Addr: a,
			Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		conns[i] = c
	}
	return conns
}

// applyClusterSchema creates cfg's schema ON CLUSTER and drops the database on every
// node when the test ends.
func applyClusterSchema(t testing.TB, cfg Config) driver.Conn {
	t.Helper()
	ctx := context.Background()
	ch, err := OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ch.Exec(ctx, "DROP DATABASE IF EXISTS "+QuoteIdent(cfg.ClickHouse.Database)+cfg.ClickHouse.OnCluster())
		_ = ch.Close()
	})
	stmts, err := PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplySchema(ctx, ch, stmts); err != nil {
		t.Fatal(err)
	}
	return ch
}
