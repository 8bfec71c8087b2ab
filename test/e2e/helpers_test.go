package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ingest"
	"customerloop.dev/customerloop/test/testkit"
)

func requireStack(t *testing.T) {
	t.Helper()
	if os.Getenv("CLICKHOUSE_ADDR") == "" || os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CLICKHOUSE_ADDR and KUBEBUILDER_ASSETS must be set; run the tests with make test")
		}
		t.Skip("CLICKHOUSE_ADDR and KUBEBUILDER_ASSETS are not set; make test sets them")
	}
}

// buildBinary builds the customerloop binary as users get it.
func buildBinary(t *testing.T) string {
	t.Helper()
	return buildCommand(t, "customerloop")
}

// buildCommand builds the command cmd/<name>.
func buildCommand(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/"+name).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// createSchema creates a pipeline config's database and tables and returns the connection
// it used; the caller closes it.
func createSchema(t *testing.T, cfg pipeline.Config) driver.Conn {
	t.Helper()
	ctx := context.Background()
	ch, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	stmts, err := ddl.PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
		t.Fatal(err)
	}
	return ch
}

// deadLetterSources reads a dead-letter topic whole and returns the distinct messages its
// dead letters come from, as "partition/offset" of the source topic: a message
// dead-lettered twice (after a crash) counts once.
func deadLetterSources(t *testing.T, brokers []string, topic string) map[string]bool {
	t.Helper()
	sources := map[string]bool{}
	for _, m := range testkit.ReadTopic(t, brokers, topic) {
		var p, o string
		for _, h := range m.Headers {
			switch h.Key {
			case ingest.HeaderSourcePartition:
				p = string(h.Value)
			case ingest.HeaderSourceOffset:
				o = string(h.Value)
			}
		}
		sources[p+"/"+o] = true
	}
	return sources
}

// planMessages are plans of quantity 1000 for customers c0 to c<customers-1>, one for
// each period (a date such as 2026-11-01), of product; their fields are id, customer,
// product, period and qty.
func planMessages(customers int, product string, periods ...string) []kafka.Message {
	var out []kafka.Message
	for c := range customers {
		for _, p := range periods {
			out = append(out, kafka.Message{Key: []byte("c" + strconv.Itoa(c)), Value: []byte(fmt.Sprintf(
				`{"id":"pl-c%d-%s-%s","customer":"c%d","product":%q,"period":%q,"qty":1000}`, c, product, p, c, product, p))})
		}
	}
	return out
}

// produce writes msgs to topic, keyed to partitions by their keys.
func produce(t *testing.T, ctx context.Context, brokers []string, topic string, msgs []kafka.Message) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic, Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: 2 * time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("producing to %s: %v", topic, err)
	}
}
