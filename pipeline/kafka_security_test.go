package pipeline

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"customerloop.dev/customerloop/test/testkit"
)

// testCA makes a CA and a certificate for 127.0.0.1 signed by it; it returns the CA as
// PEM and the server's TLS config.
func testCA(t *testing.T) ([]byte, *tls.Config) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "customerloop test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		&tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
}

// TestWorkerOverTLSAndSASL runs a worker against a broker that takes only TLS connections
// authenticated with SCRAM-SHA-256: the rows land, and wrong credentials or an unknown CA
// are refused.
func TestWorkerOverTLSAndSASL(t *testing.T) {
	chAddr := clickhouseAddr(t)
	caPEM, serverTLS := testCA(t)
	cfg := sampleConfig()
	usage := cfg.Streams[0]
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(2),
		kfake.SeedTopics(2, usage.Topic, cfg.Streams[1].Topic), kfake.TLS(serverTLS),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "loop", "s3cret-pass"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	cfg.Kafka.Brokers = cluster.ListenAddrs()
	cfg.Kafka.Group = uniqueName("group")
	cfg.Kafka.TLS = &TLSConfig{CAPEM: caPEM}
	cfg.Kafka.SASL = &SASLConfig{Mechanism: "SCRAM-SHA-256", Username: "loop", Password: "s3cret-pass"}
	cfg.ClickHouse = ClickHouseConfig{Addr: chAddr, Database: uniqueName("test_tls")}
	cfg.Batch = BatchConfig{MaxWait: Duration{100 * time.Millisecond}}
	ch := applySchema(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	sec, err := cfg.Kafka.security()
	if err != nil {
		t.Fatal(err)
	}
	pw := &kafka.Writer{Addr: kafka.TCP(cfg.Kafka.Brokers...), Topic: usage.Topic, Transport: sec.transport(),
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
	kc, err := KafkaClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	if offs, err := TopicOffsets(ctx, kc, usage.Topic); err != nil || offs[0].End+offs[1].End != 100 {
		t.Errorf("offsets over TLS and SASL: %v, %v", offs, err)
	}
	for name, mutate := range map[string]func(*KafkaConfig){
		"wrong password": func(k *KafkaConfig) {
			k.SASL = &SASLConfig{Mechanism: "SCRAM-SHA-256", Username: "loop", Password: "guess"}
		},
		"unknown CA": func(k *KafkaConfig) { k.TLS = &TLSConfig{} },
	} {
		k := cfg.Kafka
		mutate(&k)
		kc, err := KafkaClient(k)
		if err != nil {
			t.Fatal(err)
		}
		shortCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := TopicOffsets(shortCtx, kc, usage.Topic); err == nil {
			t.Errorf("%s: the broker answered", name)
		}
		cancel()
	}
}
