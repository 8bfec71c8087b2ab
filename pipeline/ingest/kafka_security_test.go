package ingest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/go-logr/logr/testr"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// TestWorkerOverTLSAndSASL runs a worker against a broker that takes only TLS connections
// authenticated with SCRAM-SHA-256: the rows land, and wrong credentials or an unknown CA
// are refused.
func TestWorkerOverTLSAndSASL(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	caPEM, serverTLS := stacktest.TestCA(t)
	cfg := stacktest.SampleConfig()
	usage := cfg.Streams[0]
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(2),
		kfake.SeedTopics(2, usage.Topic, cfg.Streams[1].Topic), kfake.TLS(serverTLS),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "loop", "s3cret-pass"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	cfg.Kafka.Brokers = cluster.ListenAddrs()
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.Kafka.TLS = &pipeline.TLSConfig{CAPEM: caPEM}
	cfg.Kafka.SASL = &pipeline.SASLConfig{Mechanism: "SCRAM-SHA-256", Username: "loop", Password: "s3cret-pass"}
	cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: chAddr, Database: stacktest.UniqueName("test_tls")}
	cfg.Batch = pipeline.BatchConfig{MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}
	ch := ddltest.ApplySchema(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	sec, err := connect.SecurityOf(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	pw := &kafka.Writer{Addr: kafka.TCP(cfg.Kafka.Brokers...), Topic: usage.Topic, Transport: sec.Transport(),
		RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond}
	var msgs []kafka.Message
	for i := range 100 {
		msgs = append(msgs, kafka.Message{Value: fmt.Appendf(nil,
			`{"id":"e%d","customer":{"id":"c"},"product":"p","ts":1793449815,"region":"eu","bytes":1,"trial":true}`, i)})
	}
	if err := pw.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	_ = pw.Close()

	w, err := NewWorker(ctx, cfg, testr.New(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	testkit.Eventually(t, 30*time.Second, "the rows to land over TLS and SASL", func() (bool, string) {
		st, err := StreamStats(ctx, ch, cfg.ClickHouse.Database, usage)
		return err == nil && st.Rows == 100, fmt.Sprint(st.Rows, err)
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// The lag client speaks the same security; with a wrong password or without the CA
	// the broker refuses it.
	kc, err := connect.KafkaClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	if offs, err := connect.TopicOffsets(ctx, kc, usage.Topic); err != nil || offs[0].End+offs[1].End != 100 {
		t.Errorf("offsets over TLS and SASL: %v, %v", offs, err)
	}
	for name, mutate := range map[string]func(*pipeline.KafkaConfig){
		"wrong password": func(k *pipeline.KafkaConfig) {
			k.SASL = &pipeline.SASLConfig{Mechanism: "SCRAM-SHA-256", Username: "loop", Password: "guess"}
		},
		"unknown CA": func(k *pipeline.KafkaConfig) { k.TLS = &pipeline.TLSConfig{} },
	} {
		k := cfg.Kafka
		mutate(&k)
		kc, err := connect.KafkaClient(k)
		if err != nil {
			t.Fatal(err)
		}
		shortCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := connect.TopicOffsets(shortCtx, kc, usage.Topic); err == nil {
			t.Errorf("%s: the broker answered", name)
		}
		cancel()
	}
}

// TestWorkerOverKafkaMTLS runs a worker against a broker that takes only TLS connections
// with a client certificate its client CA signs: the consumer (kafka-go's Dialer), the
// dead-letter writer and the lag client (its Transport) all present the configured
// certificate, and a client without one, or with one of another CA, is refused.
func TestWorkerOverKafkaMTLS(t *testing.T) {
	chAddr := stacktest.ClickhouseAddr(t)
	caPEM, serverTLS := stacktest.TestCA(t)
	clients := stacktest.NewTestAuthority(t)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(clients.PEM)
	serverTLS.ClientCAs, serverTLS.ClientAuth = pool, tls.RequireAndVerifyClientCert
	certPEM, keyPEM := clients.Issue(t, "acme-loop", true)

	cfg := stacktest.SampleConfig()
	usage := cfg.Streams[0]
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(2),
		kfake.SeedTopics(2, usage.Topic, cfg.Streams[1].Topic, usage.DeadLetterTopic), kfake.TLS(serverTLS))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	cfg.Kafka.Brokers = cluster.ListenAddrs()
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.Kafka.TLS = &pipeline.TLSConfig{CAPEM: caPEM, CertPEM: certPEM, KeyPEM: keyPEM}
	cfg.ClickHouse = pipeline.ClickHouseConfig{Addr: chAddr, Database: stacktest.UniqueName("test_mtls"),
		Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")}
	cfg.Batch = pipeline.BatchConfig{MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}
	ch := ddltest.ApplySchema(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	sec, err := connect.SecurityOf(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	pw := &kafka.Writer{Addr: kafka.TCP(cfg.Kafka.Brokers...), Topic: usage.Topic, Transport: sec.Transport(),
		RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond}
	var msgs []kafka.Message
	for i := range 50 {
		msgs = append(msgs, kafka.Message{Value: fmt.Appendf(nil,
			`{"id":"e%d","customer":{"id":"c"},"product":"p","ts":1793449815,"region":"eu","bytes":1,"trial":true}`, i)})
	}
	msgs = append(msgs, kafka.Message{Value: []byte(`{"id":"broken"`)})
	if err := pw.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	_ = pw.Close()

	stop := runWorker(t, ctx, cfg, nil)
	kc, err := connect.KafkaClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the rows to land and the malformed message to be dead-lettered over mutual TLS", func() (bool, string) {
		st, err := StreamStats(ctx, ch, cfg.ClickHouse.Database, usage)
		dlq, derr := connect.TopicOffsets(ctx, kc, usage.DeadLetterTopic)
		dead := dlq[0].End + dlq[1].End
		return err == nil && derr == nil && st.Rows == 50 && dead == 1, fmt.Sprint(st.Rows, err, " dead letters ", dead, derr)
	})
	stop()

	other := stacktest.NewTestAuthority(t)
	otherCert, otherKey := other.Issue(t, "acme-loop", true)
	for name, tc := range map[string]*pipeline.TLSConfig{
		"no client certificate":                  {CAPEM: caPEM},
		"a client certificate of another CA":     {CAPEM: caPEM, CertPEM: otherCert, KeyPEM: otherKey},
		"the right certificate with another key": {CAPEM: caPEM, CertPEM: certPEM, KeyPEM: otherKey},
	} {
		k := cfg.Kafka
		k.TLS = tc
		kc, err := connect.KafkaClient(k)
		if err != nil {
			if name == "the right certificate with another key" {
				continue // refused before dialing, as it must be
			}
			t.Fatalf("%s: %v", name, err)
		}
		shortCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := connect.TopicOffsets(shortCtx, kc, usage.Topic); err == nil {
			t.Errorf("%s: the broker answered", name)
		}
		cancel()
	}
}
