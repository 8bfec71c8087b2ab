package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/test/testkit"
)

// TestWorkerBinaryPII runs the worker binary as a pod runs it: the config file holds no
// secret, the ClickHouse password and the HMAC key come from the environment variables
// the Deployment sets from Secrets. The stored customer is the keyed hash, and neither
// the key nor the password shows in the worker's debug log or its metrics. Without the
// key the worker refuses to start instead of storing clear values.
func TestWorkerBinaryPII(t *testing.T) {
	requireStack(t)
	bin := buildBinary(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(1), kfake.SeedTopics(1, "pii.usage"), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	key := fmt.Sprintf("e2e-hmac-key-%d", time.Now().UnixNano())
	cfg := pipeline.Config{
		Loop:  "e2e/pii",
		Kafka: pipeline.KafkaConfig{Brokers: brokers, Group: "pii"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: os.Getenv("CLICKHOUSE_ADDR"), Database: fmt.Sprintf("e2e_pii_%d", time.Now().UnixNano()),
			Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")},
		Streams: []pipeline.StreamConfig{{
			Name: "usage", Kind: pipeline.KindUsage, Topic: "pii.usage", DeadLetterTopic: "pii.usage.dlq",
			Mapping: pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts"},
			PII:     &pipeline.CorePII{CustomerID: pipeline.PIIHash},
		}},
		Batch: pipeline.BatchConfig{MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}},
	}
	ch := createSchema(t, cfg)
	db := pipeline.QuoteIdent(cfg.ClickHouse.Database)
	t.Cleanup(func() {
		_ = ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
		_ = ch.Close()
	})
	raw, _ := json.Marshal(cfg)
	if strings.Contains(string(raw), key) || (cfg.ClickHouse.Password != "" && strings.Contains(string(raw), cfg.ClickHouse.Password)) {
		t.Fatalf("the config file holds a secret: %s", raw)
	}
	cfgPath := filepath.Join(t.TempDir(), "worker.json")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "CUSTOMERLOOP_CLICKHOUSE_USERNAME="+cfg.ClickHouse.Username,
		"CUSTOMERLOOP_CLICKHOUSE_PASSWORD="+cfg.ClickHouse.Password)

	// Without the key: refused, not started.
	cmd := exec.Command(bin, "worker", "--config", cfgPath, "--metrics-bind-address", "0")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "HMAC key") {
		t.Fatalf("a worker without the HMAC key: err %v, output %s; want it refused naming the key", err, out)
	}

	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: "pii.usage", RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond}
	if err := w.WriteMessages(context.Background(), kafka.Message{Value: []byte(`{"id":"e1","customer":"dave@example.com","product":"p","ts":1793449815}`)}); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	metricsAddr := testkit.FreeAddr(t)
	var log bytes.Buffer
	cmd = exec.Command(bin, "worker", "--config", cfgPath, "--metrics-bind-address", metricsAddr, "--metrics-secure=false", "--log-level", "debug")
	cmd.Env = append(env, "CUSTOMERLOOP_PII_HMAC_KEY="+key)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	testkit.Eventually(t, time.Minute, "the row stored", func() (bool, string) {
		n := count(t, ch, "SELECT count() FROM "+db+".usage_raw")
		return n == 1, fmt.Sprintf("%d rows", n)
	})
	var customer string
	if err := ch.QueryRow(context.Background(), "SELECT customer_id FROM "+db+".usage_raw").Scan(&customer); err != nil {
		t.Fatal(err)
	}
	if want := pipeline.HashPII([]byte(key), []byte("dave@example.com")); customer != want {
		t.Errorf("customer_id = %q, want the keyed hash %q", customer, want)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait()
	for where, text := range map[string]string{"log": log.String(), "metrics": string(metrics)} {
		for what, secret := range map[string]string{"HMAC key": key, "ClickHouse password": cfg.ClickHouse.Password, "customer": "dave@example.com"} {
			if secret != "" && strings.Contains(text, secret) {
				t.Errorf("the worker's %s shows the %s", where, what)
			}
		}
	}
	if !strings.Contains(log.String(), "partitions assigned") || !strings.Contains(string(metrics), "customerloop_") {
		t.Errorf("the scanned log or metrics are not the worker's:\n%s", log.String())
	}
}
