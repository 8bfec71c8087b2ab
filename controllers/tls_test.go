package controllers

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/twmb/franz-go/pkg/kfake"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/test/testkit"
)

// tlsFixture is a Kafka broker that takes only TLS connections with a client certificate
// and SCRAM-SHA-512, and the stack's ClickHouse server with a secure native port
// (hack/clickhouse-tls.sh). Both use that server's throwaway CA: the broker's certificate
// is the server's, and one client certificate serves both.
type tlsFixture struct {
	brokers            []string
	chAddr, certs      string
	saslUser, saslPass string
	conn               *pipeline.ClickHouseConfig // to the TLS server, for checks and cleanup
}

func newTLSFixture(t *testing.T) *tlsFixture {
	t.Helper()
	addr, certs := os.Getenv("CLICKHOUSE_TLS_ADDR"), os.Getenv("CLICKHOUSE_TLS_CERTS")
	if addr == "" || certs == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CLICKHOUSE_TLS_ADDR and CLICKHOUSE_TLS_CERTS are not set; run the tests with make test")
		}
		t.Skip("CLICKHOUSE_TLS_ADDR is not set; make test provisions a TLS server (hack/clickhouse-tls.sh)")
	}
	f := &tlsFixture{chAddr: addr, certs: certs, saslUser: "acme-loop", saslPass: randomSecret("scram-pass")}
	serverCert, err := tls.LoadX509KeyPair(filepath.Join(certs, "server.crt"), filepath.Join(certs, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.file(t, "ca.crt"))
	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(2),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", f.saslUser, f.saslPass))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)
	f.brokers = broker.ListenAddrs()
	f.conn = &pipeline.ClickHouseConfig{Addr: addr, Username: chUser, Password: chPass, TLS: &pipeline.TLSConfig{CAPEM: f.file(t, "ca.crt")}}
	return f
}

func (f *tlsFixture) file(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.certs, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// closedPort is an address nothing listens on: a ClickHouse node that is down.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// loop makes a loop in ns whose Secrets are shaped as their makers write them:
//   - Strimzi's cluster CA Secret (ca.crt) and a KafkaUser's: a SCRAM user's holds only
//     password and sasl.jaas.config, a tls user's user.crt and user.key. A listener of a
//     real Strimzi cluster takes one of the two; the broker here takes both, so that one
//     loop shows both shapes work as they are.
//   - a kubernetes.io/tls Secret as cert-manager writes it (tls.crt, tls.key, ca.crt) for
//     ClickHouse's CA and client certificate.
//
// ClickHouse's addresses list a node that is down first. chKey is the ClickHouse client
// key to store (nil: the right one).
func (f *tlsFixture) loop(t *testing.T, ns string, chKey []byte) *loopsv1alpha1.CustomerLoop {
	t.Helper()
	ctx := context.Background()
	loop := newLoop(t)
	loop.Namespace = ns
	useClickHouseSecret(t, loop)
	if chKey == nil {
		chKey = f.file(t, "client.key")
	}
	jaas := fmt.Sprintf(`org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";`, f.saslUser, f.saslPass)
	for _, s := range []*corev1.Secret{
		{ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-cluster-ca-cert"},
			Data: map[string][]byte{"ca.crt": f.file(t, "ca.crt"), "ca.p12": []byte("unused"), "ca.password": []byte("unused")}},
		{ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-scram"},
			Data: map[string][]byte{"password": []byte(f.saslPass), "sasl.jaas.config": []byte(jaas)}},
		{ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-tls-user"},
			Data: map[string][]byte{"ca.crt": f.file(t, "ca.crt"), "user.crt": f.file(t, "client.crt"), "user.key": f.file(t, "client.key"),
				"user.p12": []byte("unused"), "user.password": []byte("unused")}},
		{ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-clickhouse-cert"}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{"tls.crt": f.file(t, "client.crt"), "tls.key": chKey, "ca.crt": f.file(t, "ca.crt")}},
	} {
		s.Namespace = ns
		if err := k8s.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), s) })
	}
	loop.Spec.Kafka.Brokers = f.brokers
	loop.Spec.Kafka.TLS = &loopsv1alpha1.KafkaTLS{
		CASecretRef:         &loopsv1alpha1.SecretKeyRef{Name: loop.Name + "-cluster-ca-cert"},
		ClientCertSecretRef: &loopsv1alpha1.ClientCertSecretRef{Name: loop.Name + "-tls-user", CertKey: "user.crt", KeyKey: "user.key"},
	}
	loop.Spec.Kafka.SASL = &loopsv1alpha1.KafkaSASL{Mechanism: "SCRAM-SHA-512", Username: f.saslUser,
		CredentialsSecretRef: loopsv1alpha1.CredentialsSecretRef{Name: loop.Name + "-scram"}}
	loop.Spec.ClickHouse.Address = ""
	loop.Spec.ClickHouse.Addresses = []string{closedPort(t), f.chAddr}
	loop.Spec.ClickHouse.TLS = &loopsv1alpha1.ClickHouseTLS{
		CASecretRef:         &loopsv1alpha1.SecretKeyRef{Name: loop.Name + "-clickhouse-cert"},
		ClientCertSecretRef: &loopsv1alpha1.ClientCertSecretRef{Name: loop.Name + "-clickhouse-cert"},
	}
	db := loop.Spec.ClickHouse.Database
	t.Cleanup(func() {
		// newLoop's cleanup (registered first, so run after this) drops the database on
		// the plain server; this loop's is on the TLS server. Wait for the loop to go so
		// that no reconcile recreates it.
		ctx := context.Background()
		_ = k8s.Delete(ctx, loop)
		deadline := time.Now().Add(30 * time.Second)
		for k8s.Get(ctx, client.ObjectKeyFromObject(loop), &loopsv1alpha1.CustomerLoop{}) == nil && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if conn, err := connect.OpenClickHouse(ctx, *f.conn); err == nil {
			_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db))
			conn.Close()
		}
	})
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	return loop
}

// produce writes usage events to the loop's usage topic over the broker's mutual TLS
// and SCRAM.
func (f *tlsFixture) produce(t *testing.T, loop *loopsv1alpha1.CustomerLoop, n int) {
	t.Helper()
	mech, err := scram.Mechanism(scram.SHA512, f.saslUser, f.saslPass)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(f.file(t, "client.crt"), f.file(t, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.file(t, "ca.crt"))
	w := &kafka.Writer{Addr: kafka.TCP(f.brokers...), Topic: loop.Spec.Streams[0].Topic, RequiredAcks: kafka.RequireAll,
		AllowAutoTopicCreation: true, BatchTimeout: 5 * time.Millisecond,
		Transport: &kafka.Transport{SASL: mech, TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}}
	defer w.Close()
	var msgs []kafka.Message
	for i := range n {
		msgs = append(msgs, kafka.Message{Value: fmt.Appendf(nil, `{"id":"e%d","customer":"c%d","product":"p","ts":%d,"region":"eu"}`, i, i%3, 1793449815+i)})
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
}

// otherKey is a private key no certificate here belongs to, as PEM.
func otherKey(t *testing.T) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// TestLoopOverTLSWithStrimziSecrets runs a loop whose Kafka takes only mutual TLS and
// SCRAM, with Strimzi's Secrets as they are (the SCRAM user name from the spec, the tls
// user's keys user.crt/user.key), and whose ClickHouse is reached over TLS with a
// cert-manager Secret, after a first address that is down. The loop becomes Ready and its
// status counts every row, which the controller reads over TLS too. A client key that
// does not match its certificate then stalls the loop with a message that names the
// Secret and what is wrong.
func TestLoopOverTLSWithStrimziSecrets(t *testing.T) {
	f := newTLSFixture(t)
	loop := f.loop(t, "default", nil)

	cfg, err := LoopConfig(context.Background(), k8s, get(t, loop))
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Kafka.SASL; s == nil || s.Username != f.saslUser || s.Password != f.saslPass {
		t.Errorf("the SASL credentials are not the spec's user name and the Strimzi Secret's password")
	}
	if tc := cfg.Kafka.TLS; tc == nil || len(tc.CertPEM) == 0 || len(tc.KeyPEM) == 0 || len(tc.CAPEM) == 0 {
		t.Errorf("the Kafka TLS config lacks the Strimzi user's certificate, key or the cluster CA")
	}
	if got := cfg.ClickHouse.Addresses(); len(got) != 2 || got[1] != f.chAddr {
		t.Errorf("ClickHouse addresses = %v, want the down node then %s", got, f.chAddr)
	}

	f.produce(t, loop, 30)
	testkit.Eventually(t, 90*time.Second, "the loop Ready with every row counted", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Ready") == "True/Succeeded" && l.Status.RowsIngested == 30,
			fmt.Sprintf("Ready=%s rows=%d", condition(l, "Ready"), l.Status.RowsIngested)
	})

	var s corev1.Secret
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: loop.Name + "-clickhouse-cert"}, &s); err != nil {
		t.Fatal(err)
	}
	s.Data["tls.key"] = otherKey(t)
	if err := k8s.Update(context.Background(), &s); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the loop stalled on the mismatched key", func() (bool, string) {
		l := get(t, loop)
		c := meta.FindStatusCondition(l.Status.Conditions, "Ready")
		if c == nil {
			return false, "no Ready condition"
		}
		return c.Reason == ReasonInvalidSpec && strings.Contains(c.Message, "clickhouse.tls") &&
				strings.Contains(c.Message, loop.Name+"-clickhouse-cert") && strings.Contains(c.Message, "private key does not match"),
			c.Reason + ": " + c.Message
	})
}
