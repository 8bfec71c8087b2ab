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
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"customerloop.dev/customerloop/test/testkit"
)

// testAuthority is a throwaway CA that issues certificates for tests.
type testAuthority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// PEM is the CA certificate, for clients and servers to trust.
	PEM []byte
}

func newTestAuthority(t *testing.T) *testAuthority {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "customerloop test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testAuthority{cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue makes a certificate for 127.0.0.1 (a server's) or for a client, and returns it
// and its key as PEM.
func (a *testAuthority) issue(t *testing.T, cn string, client bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	if client {
		tmpl.ExtKeyUsage, tmpl.IPAddresses = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &key.PublicKey, a.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// testCA makes a CA and a certificate for 127.0.0.1 signed by it; it returns the CA as
// PEM and the server's TLS config.
func testCA(t *testing.T) ([]byte, *tls.Config) {
	t.Helper()
	ca := newTestAuthority(t)
	certPEM, keyPEM := ca.issue(t, "broker", false)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return ca.PEM, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
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

	sec, err := securityOf(cfg.Kafka)
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

// TestWorkerOverKafkaMTLS runs a worker against a broker that takes only TLS connections
// with a client certificate its client CA signs: the consumer (kafka-go's Dialer), the
// dead-letter writer and the lag client (its Transport) all present the configured
// certificate, and a client without one, or with one of another CA, is refused.
func TestWorkerOverKafkaMTLS(t *testing.T) {
	chAddr := clickhouseAddr(t)
	caPEM, serverTLS := testCA(t)
	clients := newTestAuthority(t)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(clients.PEM)
	serverTLS.ClientCAs, serverTLS.ClientAuth = pool, tls.RequireAndVerifyClientCert
	certPEM, keyPEM := clients.issue(t, "acme-loop", true)

	cfg := sampleConfig()
	usage := cfg.Streams[0]
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(2),
		kfake.SeedTopics(2, usage.Topic, cfg.Streams[1].Topic, usage.DeadLetterTopic), kfake.TLS(serverTLS))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	cfg.Kafka.Brokers = cluster.ListenAddrs()
	cfg.Kafka.Group = uniqueName("group")
	cfg.Kafka.TLS = &TLSConfig{CAPEM: caPEM, CertPEM: certPEM, KeyPEM: keyPEM}
	cfg.ClickHouse = ClickHouseConfig{Addr: chAddr, Database: uniqueName("test_mtls"),
		Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")}
	cfg.Batch = BatchConfig{MaxWait: Duration{100 * time.Millisecond}}
	ch := applySchema(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	sec, err := securityOf(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	pw := &kafka.Writer{Addr: kafka.TCP(cfg.Kafka.Brokers...), Topic: usage.Topic, Transport: sec.transport(),
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
	kc, err := KafkaClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the rows to land and the malformed message to be dead-lettered over mutual TLS", func() (bool, string) {
		st, err := StreamStats(ctx, ch, cfg.ClickHouse.Database, usage)
		dlq, derr := TopicOffsets(ctx, kc, usage.DeadLetterTopic)
		dead := dlq[0].End + dlq[1].End
		return err == nil && derr == nil && st.Rows == 50 && dead == 1, fmt.Sprint(st.Rows, err, " dead letters ", dead, derr)
	})
	stop()

	other := newTestAuthority(t)
	otherCert, otherKey := other.issue(t, "acme-loop", true)
	for name, tc := range map[string]*TLSConfig{
		"no client certificate":                  {CAPEM: caPEM},
		"a client certificate of another CA":     {CAPEM: caPEM, CertPEM: otherCert, KeyPEM: otherKey},
		"the right certificate with another key": {CAPEM: caPEM, CertPEM: certPEM, KeyPEM: otherKey},
	} {
		k := cfg.Kafka
		k.TLS = tc
		kc, err := KafkaClient(k)
		if err != nil {
			if name == "the right certificate with another key" {
				continue // refused before dialing, as it must be
			}
			t.Fatalf("%s: %v", name, err)
		}
		shortCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := TopicOffsets(shortCtx, kc, usage.Topic); err == nil {
			t.Errorf("%s: the broker answered", name)
		}
		cancel()
	}
}
