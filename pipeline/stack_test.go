package pipeline

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// clickhouseAddr returns the real ClickHouse server the tests use. make test provisions it
// (hack/clickhouse.sh) and sets CUSTOMERLOOP_REQUIRE_STACK, so that a missing server fails
// there instead of skipping.
func clickhouseAddr(t *testing.T) string {
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

// startBroker runs a real Kafka-protocol broker (kfake) in the test process.
func startBroker(t *testing.T, partitions int32, topics ...string) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(int(partitions)), kfake.SeedTopics(partitions, topics...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

func produce(t *testing.T, brokers []string, topic string, msgs []kafka.Message) {
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

func uniqueName(prefix string) string {
	return fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano())
}

// applySchema creates the config's database and tables on the test server; the database
// is dropped, and the connection closed, when the test ends.
func applySchema(t *testing.T, cfg Config) driver.Conn {
	t.Helper()
	ctx := context.Background()
	ch, err := OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ch.Exec(ctx, "DROP DATABASE IF EXISTS "+QuoteIdent(cfg.ClickHouse.Database))
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
