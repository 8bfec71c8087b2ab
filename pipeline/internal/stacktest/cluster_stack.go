package stacktest

import (
	"context"
	"os"
	"testing"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// The three-node cluster the tests use: make test provisions it with
// hack/clickhouse-cluster.sh (ZooKeeper and three ClickHouse servers: shard 1 has the
// replicas node1 and node2, shard 2 has node3) and exports its coordinates.
//
//	CLICKHOUSE_CLUSTER        the cluster's name in <remote_servers>
//	CLICKHOUSE_CLUSTER_ADDRS  the nodes' native addresses, node1 first, comma separated

// TestCluster returns the cluster's name and node addresses, skipping (or failing under
// make test) without them.
func TestCluster(t testing.TB) (string, []string) {
	t.Helper()
	return testkit.Cluster(t)
}

// ClusterClickHouse is a loop's ClickHouse config on the test cluster, connected through
// node (0-based).
func ClusterClickHouse(t testing.TB, db string, node int) pipeline.ClickHouseConfig {
	t.Helper()
	name, addrs := TestCluster(t)
	return pipeline.ClickHouseConfig{Addr: addrs[node], Database: db, Username: os.Getenv("CLICKHOUSE_USER"),
		Password: os.Getenv("CLICKHOUSE_PASSWORD"), Cluster: name}
}

// NodeConns opens one connection to every node of the test cluster, closed at the end.
func NodeConns(t testing.TB) []driver.Conn {
	t.Helper()
	_, addrs := TestCluster(t)
	conns := make([]driver.Conn, len(addrs))
	for i, a := range addrs {
		c, err := connect.OpenClickHouse(context.Background(), pipeline.ClickHouseConfig{Addr: a,
			Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		conns[i] = c
	}
	return conns
}
