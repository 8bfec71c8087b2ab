package connect_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

func TestCheckClusterOnASingleServer(t *testing.T) {
	ctx := context.Background()
	ch := pipeline.ClickHouseConfig{Addr: stacktest.ClickhouseAddr(t), Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")}
	conn, err := connect.OpenClickHouse(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := connect.CheckCluster(ctx, conn, ch); err != nil {
		t.Fatalf("without a cluster: %v", err)
	}
	ch.Cluster = "analytics"
	err = connect.CheckCluster(ctx, conn, ch)
	var ce *connect.ClusterError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `cluster "analytics" is not in the <remote_servers>`) {
		t.Fatalf("a server without the cluster: err = %v, want a connect.ClusterError naming it", err)
	}
}

func TestCheckClusterOnTheCluster(t *testing.T) {
	ctx := context.Background()
	ch := stacktest.ClusterClickHouse(t, "", 2)
	conn, err := connect.OpenClickHouse(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := connect.CheckCluster(ctx, conn, ch); err != nil {
		t.Fatalf("the test cluster: %v", err)
	}
	want := ch.Cluster
	ch.Cluster = "elsewhere"
	err = connect.CheckCluster(ctx, conn, ch)
	var ce *connect.ClusterError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), want) {
		t.Fatalf("an unknown cluster: err = %v, want a connect.ClusterError listing %q", err, want)
	}
}
