// Package stacktest holds what the pipeline's tests share: the test servers' addresses
// and brokers, sample configs, golden files and a test certificate authority. Only tests
// import it.
package stacktest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// ClickhouseAddr returns the real ClickHouse server the tests use. make test provisions it
// (hack/clickhouse.sh) and sets CUSTOMERLOOP_REQUIRE_STACK, so that a missing server fails
// there instead of skipping.
func ClickhouseAddr(t *testing.T) string {
	t.Helper()
	addr := os.Getenv("CLICKHOUSE_ADDR")
	if addr == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CLICKHOUSE_ADDR is not set; run the tests with make test")
		}
		t.Skip("CLICKHOUSE_ADDR is not set; make test provisions a server")
	}
	return addr
}

// StartBroker runs a real Kafka-protocol broker (kfake) in the test process.
func StartBroker(t *testing.T, partitions int32, topics ...string) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(int(partitions)), kfake.SeedTopics(partitions, topics...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

func Produce(t *testing.T, brokers []string, topic string, msgs []kafka.Message) {
	t.Helper()
	w := &kafka.Writer{
		Addr: kafka.TCP(brokers...), Topic: topic, Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, BatchSize: 1000, BatchTimeout: 5 * time.Millisecond,
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("producing to %s: %v", topic, err)
	}
}

func UniqueName(prefix string) string {
	return fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano())
}

// Database connects to the config's server and, when the test ends, drops the config's
// database (ON CLUSTER for a clustered config) and closes the connection.
func Database(t testing.TB, ch pipeline.ClickHouseConfig) driver.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := connect.OpenClickHouse(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(ch.Database)+ch.OnCluster())
		_ = conn.Close()
	})
	return conn
}
