package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/test/testkit"
)

// TestWorkerSurvivesSIGKILL kills the worker process with SIGKILL at random moments,
// 20 times, while 200k messages (some malformed) are produced; then lets a last worker
// finish. Every offset must land exactly once: raw rows = distinct offsets = messages
// minus dead letters, and a materialized-view rollup equals the sums computed from what
// was produced.
func TestWorkerSurvivesSIGKILL(t *testing.T) {
	requireStack(t)
	const (
		total     = 200_000
		kills     = 20
		badEvery  = 997
		customers = 50
	)
	bin := buildBinary(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(6),
		kfake.SeedTopics(6, "crash.usage"), kfake.AllowAutoTopicCreation(),
		kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	cfg := pipeline.Config{
		Loop: "e2e/crash",
		Kafka: pipeline.KafkaConfig{Brokers: brokers, Group: "crash",
			// Short timeouts, so that the group gets over each kill in seconds.
			SessionTimeout: pipeline.Duration{Duration: 2 * time.Second}, RebalanceTimeout: pipeline.Duration{Duration: 6 * time.Second}},
		ClickHouse: pipeline.ClickHouseConfig{Addr: os.Getenv("CLICKHOUSE_ADDR"), Database: fmt.Sprintf("e2e_crash_%d", time.Now().UnixNano())},
		Streams: []pipeline.StreamConfig{{
			Name: "usage", Kind: pipeline.KindUsage, Topic: "crash.usage", DeadLetterTopic: "crash.usage.dlq",
			Mapping: pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts", Quantity: "qty"},
		}},
		Batch: pipeline.BatchConfig{MaxRows: 5000, MaxWait: pipeline.Duration{Duration: 200 * time.Millisecond}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ch := createSchema(t, cfg)
	db := pipeline.QuoteIdent(cfg.ClickHouse.Database)
	t.Cleanup(func() {
		_ = ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
		_ = ch.Close()
	})
	// A rollup fed by a materialized view, as spec.rollups makes it: it counts every
	// insert, so a duplicate insert would show here even if the raw table were
	// deduplicated later.
	cfg.Rollups = []pipeline.RollupConfig{{Name: "totals", Stream: "usage", Granularity: pipeline.RollupMonth,
		Dimensions: []string{"customer_id", "product"}, Measures: []pipeline.MeasureConfig{
			{Name: "qty", Function: pipeline.FuncSum, Field: "quantity"}, {Name: "events", Function: pipeline.FuncCount}}}}
	plans, err := pipeline.PlanRollups(cfg)
	if err != nil {
		t.Fatal(err)
	}
	noWorkerYet := func([]string) (bool, error) { return true, nil }
	if _, _, err := pipeline.ApplyRollups(ctx, ch, cfg.ClickHouse.Database, plans, noWorkerYet); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "worker.json")
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	wantQty, wantBad := 0.0, 0
	var msgs []kafka.Message
	for i := range total {
		c := "c" + strconv.Itoa(i%customers)
		if i%badEvery == 0 {
			msgs = append(msgs, kafka.Message{Key: []byte(c), Value: []byte(`{"id":"broken-` + strconv.Itoa(i) + `"`)})
			wantBad++
			continue
		}
		qty := i%13 + 1
		wantQty += float64(qty)
		msgs = append(msgs, kafka.Message{Key: []byte(c), Value: []byte(fmt.Sprintf(
			`{"id":"e%d","customer":%q,"product":"p%d","ts":%d,"qty":%d,"note":"padding to make a realistic message of a couple hundred bytes"}`,
			i, c, i%4, 1793449815+i, qty))})
	}
	// A slice of the messages arrives with each worker started, so that every kill lands
	// while there is fresh data to ingest, however fast the workers drain it.
	produced, next := make(chan error, 1), make(chan struct{}, kills)
	go func() {
		w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: "crash.usage", Balancer: &kafka.Hash{},
			RequiredAcks: kafka.RequireAll, BatchSize: 500, BatchTimeout: 2 * time.Millisecond}
		defer w.Close()
		per := (len(msgs) + kills - 1) / kills
		for i := 0; i < len(msgs); i += per {
			<-next
			for j := i; j < min(i+per, len(msgs)); j += 2000 {
				if err := w.WriteMessages(ctx, msgs[j:min(j+2000, i+per, len(msgs))]...); err != nil {
					produced <- err
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		produced <- nil
	}()

	logs := os.Getenv("CRASH_LOGS")
	if logs == "" {
		logs = t.TempDir()
	}
	metricsAddr := freeAddr(t)
	start := func(i int) *exec.Cmd {
		f, err := os.Create(filepath.Join(logs, fmt.Sprintf("worker-%02d.log", i)))
		if err != nil {
			t.Fatal(err)
		}
		addr := "127.0.0.1:0"
		if i == kills {
			addr = metricsAddr // the last worker's metrics are scraped
		}
		cmd := exec.Command(bin, "worker", "--config", cfgPath, "--metrics-bind-address", addr)
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for i := range kills {
		w := start(i)
		next <- struct{}{}
		if i%2 == 0 {
			// Any moment: joining, rebalancing, recovering, reading or writing.
			time.Sleep(time.Duration(200+rng.IntN(3000)) * time.Millisecond)
		} else {
			// A moment of ingestion: after the worker got its partitions.
			waitForLine(t, filepath.Join(logs, fmt.Sprintf("worker-%02d.log", i)), "partitions assigned", time.Minute)
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		}
		_ = w.Process.Signal(syscall.SIGKILL)
		_ = w.Wait()
		t.Logf("kill %d: %d rows, ledger at %d messages", i+1, count(t, ch, "SELECT count() FROM "+db+".usage_raw"),
			count(t, ch, "SELECT sum(messages) FROM "+db+".customerloop_ledger"))
	}
	if err := <-produced; err != nil {
		t.Fatal(err)
	}

	last, lastStart := start(kills), time.Now()
	waitForLine(t, filepath.Join(logs, fmt.Sprintf("worker-%02d.log", kills)), "partitions assigned", time.Minute)
	deadline := time.Now().Add(3 * time.Minute)
	for count(t, ch, "SELECT sum(messages) FROM "+db+".customerloop_ledger") < total {
		if time.Now().After(deadline) {
			_ = last.Process.Kill()
			out, _ := os.ReadFile(filepath.Join(logs, fmt.Sprintf("worker-%02d.log", kills)))
			t.Fatalf("the ledger did not cover all %d messages in time; last worker log:\n%s", total, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("the last worker finished the backlog in %s", time.Since(lastStart).Round(time.Millisecond))
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`customerloop_received_events_total{loop="e2e/crash",stream="usage"}`, "process_resident_memory_bytes"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("the worker's /metrics lacks %s", want)
		}
	}
	_ = last.Process.Signal(syscall.SIGTERM)
	if err := last.Wait(); err != nil {
		t.Errorf("the last worker did not stop cleanly on SIGTERM: %v", err)
	}

	good := uint64(total - wantBad)
	if n := count(t, ch, "SELECT count() FROM "+db+".usage_raw"); n != good {
		t.Errorf("raw rows = %d, want %d", n, good)
	}
	if n := count(t, ch, "SELECT uniqExact(_partition, _offset) FROM "+db+".usage_raw"); n != good {
		t.Errorf("distinct offsets = %d, want %d", n, good)
	}
	if n := count(t, ch, "SELECT count() FROM (SELECT _partition, _offset FROM "+db+".usage_raw GROUP BY _partition, _offset HAVING count() > 1)"); n != 0 {
		t.Errorf("%d offsets are in the raw table more than once", n)
	}
	if n := count(t, ch, "SELECT sum(messages) FROM "+db+".customerloop_ledger"); n != total {
		t.Errorf("the ledger covers %d messages, want exactly %d (no span recorded twice)", n, total)
	}
	var qty float64
	var events uint64
	if err := ch.QueryRow(ctx, "SELECT sum(qty), sum(events) FROM "+db+".rollup_totals").Scan(&qty, &events); err != nil {
		t.Fatal(err)
	}
	if qty != wantQty || events != good {
		t.Errorf("rollup: quantity %v over %d events, want %v over %d", qty, events, wantQty, good)
	}
	// Dead letters may repeat after a crash (the dead-letter topic is at-least-once), but
	// every malformed message is there, and nothing else.
	sources := map[string]bool{}
	for _, m := range testkit.ReadTopic(t, brokers, "crash.usage.dlq") {
		var p, o string
		for _, h := range m.Headers {
			switch h.Key {
			case "customerloop.source.partition":
				p = string(h.Value)
			case "customerloop.source.offset":
				o = string(h.Value)
			}
		}
		sources[p+"/"+o] = true
	}
	if len(sources) != wantBad {
		t.Errorf("dead letters come from %d distinct messages, want %d", len(sources), wantBad)
	}
}

func count(t *testing.T, ch driver.Conn, q string) uint64 {
	t.Helper()
	var n uint64
	if err := ch.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitForLine waits until a log file contains a line with substr.
func waitForLine(t *testing.T, path, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), substr) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s has no %q after %s", path, substr, timeout)
}
