package controllers

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/twmb/franz-go/pkg/kfake"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/test/testkit"
)

func randomSecret(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// TestSecretsNeverShown runs loops on the real stack with known secret values — the
// ClickHouse password, a SASL/SCRAM password on a broker that requires it, an HMAC key
// — and with wrong ones (a ClickHouse password and a SASL password that are refused,
// so that the failures are logged, evented and put in status), plus loops over TLS with
// client certificates and Strimzi's SCRAM Secret (a key that does not match its
// certificate among them), then scans everything a
// person or a scraper can read for each value, as it is and base64-encoded: every log
// line of the managers and in-process workers at every level, every Event, every
// loop's status, the worker ConfigMap and Deployment the Deployment runner applied, and
// both metrics registries.
func TestSecretsNeverShown(t *testing.T) {
	ctx := context.Background()
	saslUser, saslPass, saslWrong := "loop-user", randomSecret("sasl-pass"), randomSecret("sasl-wrong")
	chWrong, hmacKey := randomSecret("ch-wrong"), randomSecret("hmac-key")
	secrets := map[string]string{"SASL password": saslPass, "wrong SASL password": saslWrong,
		"wrong ClickHouse password": chWrong, "HMAC key": hmacKey}
	if chPass != "" {
		secrets["ClickHouse password"] = chPass
	}

	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", saslUser, saslPass))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)
	saslBrokers := broker.ListenAddrs()

	user := chUser
	if user == "" {
		user = "default"
	}
	// newSecretLoop is a loop on the SASL broker with PII hashed under the key, in
	// namespace ns, whose Secrets hold the given passwords.
	newSecretLoop := func(ns, chPassword, saslPassword string) *loopsv1alpha1.CustomerLoop {
		loop := newLoop(t)
		loop.Namespace = ns
		loop.Spec.Kafka.Brokers = saslBrokers
		for name, data := range map[string]map[string][]byte{
			"ch":   {"username": []byte(user), "password": []byte(chPassword)},
			"sasl": {"username": []byte(saslUser), "password": []byte(saslPassword)},
			"pii":  {"hmac-key": []byte(hmacKey)},
		} {
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-" + name, Namespace: ns}, Data: data}
			if err := k8s.Create(ctx, s); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = k8s.Delete(context.Background(), s) })
		}
		loop.Spec.ClickHouse.CredentialsSecretRef = &loopsv1alpha1.CredentialsSecretRef{Name: loop.Name + "-ch"}
		loop.Spec.Kafka.SASL = &loopsv1alpha1.KafkaSASL{Mechanism: "SCRAM-SHA-256",
			CredentialsSecretRef: loopsv1alpha1.CredentialsSecretRef{Name: loop.Name + "-sasl"}}
		loop.Spec.Privacy = &loopsv1alpha1.PrivacySpec{HMACKeySecretRef: loopsv1alpha1.HMACKeySecretRef{Name: loop.Name + "-pii"}}
		loop.Spec.Streams[0].PII = &loopsv1alpha1.StreamPII{CustomerID: "Hash"}
		loop.Spec.Streams[1].PII = &loopsv1alpha1.StreamPII{CustomerID: "Hash"}
		if err := k8s.Create(ctx, loop); err != nil {
			t.Fatal(err)
		}
		return loop
	}

	good := newSecretLoop("default", chPass, saslPass)
	badCH := newSecretLoop("default", chWrong, saslPass)
	badSASL := newSecretLoop("default", chPass, saslWrong)
	deployed := newSecretLoop(deploymentNamespace, chPass, saslPass)
	workerObjects := []*loopsv1alpha1.CustomerLoop{deployed}

	// Loops over TLS with client certificates and Strimzi's SCRAM Secret (tls_test.go):
	// one that ingests, one whose ClickHouse client key does not match its certificate
	// (it stalls, and says why), and one whose workers are Deployments.
	var tlsGood, tlsBadKey *loopsv1alpha1.CustomerLoop
	if os.Getenv("CLICKHOUSE_TLS_ADDR") != "" || os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
		f := newTLSFixture(t)
		wrongKey := otherKey(t)
		secrets["SCRAM password"] = f.saslPass
		for what, key := range map[string][]byte{"client key": f.file(t, "client.key"), "mismatched client key": wrongKey} {
			for i, line := range pemBodyLines(key) {
				secrets[fmt.Sprintf("%s (PEM line %d)", what, i+1)] = line
			}
		}
		tlsGood, tlsBadKey = f.loop(t, "default", nil), f.loop(t, "default", wrongKey)
		workerObjects = append(workerObjects, f.loop(t, deploymentNamespace, nil))
		f.produce(t, tlsGood, 20)
	}

	mech, err := scram.Mechanism(scram.SHA256, saslUser, saslPass)
	if err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(saslBrokers...), Topic: good.Spec.Streams[0].Topic, RequiredAcks: kafka.RequireAll,
		AllowAutoTopicCreation: true, BatchTimeout: 5 * time.Millisecond, Transport: &kafka.Transport{SASL: mech}}
	var msgs []kafka.Message
	for i := range 20 {
		msgs = append(msgs, kafka.Message{Value: []byte(fmt.Sprintf(`{"id":"e%d","customer":"c%d","product":"p","ts":%d,"region":"eu"}`, i, i%3, 1793449815+i))})
	}
	msgs = append(msgs, kafka.Message{Value: []byte(`{"id":"broken"`)})
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()

	// The good loop ingests over SASL; the others fail where their wrong password is
	// used, and say so.
	testkit.Eventually(t, 90*time.Second, "the good loop's rows counted", func() (bool, string) {
		l := get(t, good)
		return l.Status.RowsIngested == 20, fmt.Sprintf("Ready=%s rows=%d", condition(l, "Ready"), l.Status.RowsIngested)
	})
	testkit.Eventually(t, 60*time.Second, "the loop with a wrong ClickHouse password not Ready, with a reason", func() (bool, string) {
		a := get(t, badCH)
		return strings.HasPrefix(condition(a, "Ready"), "False"), "Ready=" + condition(a, "Ready")
	})
	// A worker refused by the broker keeps retrying and logs each refusal; the loop's
	// status does not show it (the in-process runner reports only a worker that exits).
	testkit.Eventually(t, 60*time.Second, "the worker with a wrong SASL password logging its failures", func() (bool, string) {
		n := 0
		for _, line := range strings.Split(suiteLogs.String(), "\n") {
			if strings.Contains(line, "level=ERROR") && strings.Contains(line, "loop=default/"+badSASL.Name+" ") {
				n++
			}
		}
		return n >= 2, fmt.Sprintf("%d error lines", n)
	})
	for _, l := range workerObjects {
		testkit.Eventually(t, 60*time.Second, "the worker of the deployed loop rendered", func() (bool, string) {
			var dep appsv1.Deployment
			err := k8s.Get(ctx, types.NamespacedName{Namespace: deploymentNamespace, Name: workerName(l)}, &dep)
			return err == nil, fmt.Sprint(err)
		})
	}
	if tlsGood != nil {
		testkit.Eventually(t, 90*time.Second, "the TLS loop's rows counted", func() (bool, string) {
			l := get(t, tlsGood)
			return l.Status.RowsIngested == 20, fmt.Sprintf("Ready=%s rows=%d", condition(l, "Ready"), l.Status.RowsIngested)
		})
		testkit.Eventually(t, 30*time.Second, "the loop with a mismatched client key stalled", func() (bool, string) {
			a := get(t, tlsBadKey)
			return condition(a, "Ready") == "False/"+ReasonInvalidSpec, "Ready=" + condition(a, "Ready")
		})
	}
	// Let the failing workers retry, and log, a few times.
	time.Sleep(3 * time.Second)

	// What is scanned, by where it was read.
	sources := map[string]string{"logs": suiteLogs.String()}
	if !strings.Contains(sources["logs"], "error") {
		t.Fatalf("the captured logs show no error; the failure paths were not exercised")
	}
	for _, ns := range []string{"default", deploymentNamespace} {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		var cevs corev1.EventList
		if err := k8s.List(ctx, &cevs, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		sources["events in "+ns] = mustJSON(t, evs) + mustJSON(t, cevs)
		var loops loopsv1alpha1.CustomerLoopList
		if err := k8s.List(ctx, &loops, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for _, l := range loops.Items {
			sources["status of "+ns+"/"+l.Name] = mustJSON(t, l.Status)
		}
	}
	if !strings.Contains(sources["status of default/"+badCH.Name], "message") {
		t.Errorf("the loop with a wrong ClickHouse password has no condition message: %s", sources["status of default/"+badCH.Name])
	}
	for _, l := range workerObjects {
		for _, obj := range []client.Object{&corev1.ConfigMap{}, &appsv1.Deployment{}} {
			if err := k8s.Get(ctx, types.NamespacedName{Namespace: deploymentNamespace, Name: workerName(l)}, obj); err != nil {
				t.Fatal(err)
			}
			sources[fmt.Sprintf("worker %T of %s", obj, l.Name)] = mustJSON(t, obj)
		}
	}
	if len(workerObjects) > 1 && !strings.Contains(sources["worker *v1.Deployment of "+workerObjects[1].Name], workerClickHouseCertDir) {
		t.Errorf("the TLS loop's worker Deployment does not mount the ClickHouse client certificate")
	}
	if !strings.Contains(sources["worker *v1.Deployment of "+deployed.Name], envHMACKey) {
		t.Errorf("the worker Deployment does not take the HMAC key from its Secret")
	}
	for name, reg := range map[string]prometheus.Gatherer{"manager metrics": ctrlmetrics.Registry, "worker metrics": workerMetrics} {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, mf := range mfs {
			if err := enc.Encode(mf); err != nil {
				t.Fatal(err)
			}
		}
		sources[name] = b.String()
	}
	if !strings.Contains(sources["worker metrics"], good.Namespace+"/"+good.Name) {
		t.Errorf("the worker metrics lack the good loop; the scan would miss them")
	}

	for what, value := range secrets {
		forms := []string{value, base64.StdEncoding.EncodeToString([]byte(value))}
		for where, text := range sources {
			for _, f := range forms {
				if i := strings.Index(text, f); i >= 0 {
					start := strings.LastIndexByte(text[:i], '\n') + 1
					t.Errorf("the %s appears in %s: %.300s ... %s ...", what, where, text[start:], text[max(start, i-100):min(len(text), i+len(f)+50)])
				}
			}
		}
	}
}

// pemBodyLines are the base64 lines of a PEM block: a leak of part of it, or of the
// whole with escaped newlines, shows in one of them.
func pemBodyLines(b []byte) []string {
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if line != "" && !strings.HasPrefix(line, "-----") {
			out = append(out, line)
		}
	}
	return out
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
