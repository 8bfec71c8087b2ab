package pipeline

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestCheckClusterOnASingleServer(t *testing.T) {
	ctx := context.Background()
	ch := ClickHouseConfig{Addr: clickhouseAddr(t), Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")}
	conn, err := OpenClickHouse(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := CheckCluster(ctx, conn, ch); err != nil {
		t.Fatalf("without a cluster: %v", err)
	}
	ch.Cluster = "analytics"
	err = CheckCluster(ctx, conn, ch)
	var ce *ClusterError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `cluster "analytics" is not in the <remote_servers>`) {
		t.Fatalf("a server without the cluster: err = %v, want a ClusterError naming it", err)
	}
}

func TestCheckClusterOnTheCluster(t *testing.T) {
	ctx := context.Background()
	ch := clusterClickHouse(t, "", 2)
	conn, err := OpenClickHouse(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := CheckCluster(ctx, conn, ch); err != nil {
		t.Fatalf("the test cluster: %v", err)
	}
	want := ch.Cluster
	ch.Cluster = "elsewhere"
	err = CheckCluster(ctx, conn, ch)
	var ce *ClusterError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), want) {
		t.Fatalf("an unknown cluster: err = %v, want a ClusterError listing %q", err, want)
	}
}
