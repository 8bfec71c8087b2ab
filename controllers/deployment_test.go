package controllers

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/test/testkit"
)

var update = flag.Bool("update", false, "rewrite golden files")

// goldenLoop is a loop using every feature that reaches a worker pod.
func goldenLoop(paused bool) *loopsv1alpha1.CustomerLoop {
	replicas := int32(3)
	return &loopsv1alpha1.CustomerLoop{
		ObjectMeta: metav1.ObjectMeta{Name: "acme", Namespace: "billing", UID: "0b5d6a1e-7c7e-4c1a-9d47-0d0c2b9b4f11"},
		Spec: loopsv1alpha1.CustomerLoopSpec{
			Kafka: loopsv1alpha1.KafkaSpec{
				Brokers: []string{"kafka-0.kafka:9093"},
				TLS: &loopsv1alpha1.KafkaTLS{CASecretRef: &loopsv1alpha1.SecretKeyRef{Name: "kafka-ca"},
					ClientCertSecretRef: &loopsv1alpha1.ClientCertSecretRef{Name: "acme-loop", CertKey: "user.crt", KeyKey: "user.key"}},
				SASL: &loopsv1alpha1.KafkaSASL{Mechanism: "SCRAM-SHA-512",
					CredentialsSecretRef: loopsv1alpha1.CredentialsSecretRef{Name: "kafka-user", UsernameKey: "user"}},
			},
			ClickHouse: loopsv1alpha1.ClickHouseSpec{Addresses: []string{"clickhouse-0:9440", "clickhouse-1:9440"}, Database: "acme",
				CredentialsSecretRef: &loopsv1alpha1.CredentialsSecretRef{Name: "clickhouse"},
				TLS: &loopsv1alpha1.ClickHouseTLS{CASecretRef: &loopsv1alpha1.SecretKeyRef{Name: "clickhouse-ca"}, ServerName: "clickhouse.acme.internal",
					ClientCertSecretRef: &loopsv1alpha1.ClientCertSecretRef{Name: "clickhouse-client"}}},
			Streams: []loopsv1alpha1.StreamSpec{{
				Name: "usage", Kind: loopsv1alpha1.StreamUsage, Topic: "acme.usage",
				Mapping:    loopsv1alpha1.FieldMapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts"},
				PII:        &loopsv1alpha1.StreamPII{CustomerID: "Hash"},
				Dimensions: []loopsv1alpha1.Dimension{{Name: "email", Type: "String", PII: loopsv1alpha1.PIIHash}},
			}},
			Privacy: &loopsv1alpha1.PrivacySpec{HMACKeySecretRef: loopsv1alpha1.HMACKeySecretRef{Name: "pii"}},
			Limits:  &loopsv1alpha1.MessageLimits{MaxDepth: 16},
			Workers: loopsv1alpha1.WorkersSpec{Replicas: &replicas, Resources: &corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
			}},
			Paused: paused,
		},
	}
}

// goldenConfig is the pipeline config the reconciler renders for goldenLoop, with the
// secret values it read.
func goldenConfig() pipeline.Config {
	return pipeline.Config{
		Loop: "billing/acme",
		Kafka: pipeline.KafkaConfig{Brokers: []string{"kafka-0.kafka:9093"}, Group: "customerloop.billing.acme",
			TLS: &pipeline.TLSConfig{CAPEM: []byte("-----BEGIN CERTIFICATE-----ca-secret"),
				CertPEM: []byte("kafka-cert-secret"), KeyPEM: []byte("kafka-key-secret")},
			SASL: &pipeline.SASLConfig{Mechanism: "SCRAM-SHA-512", Username: "kafka-user-secret", Password: "kafka-pass-secret"}},
		ClickHouse: pipeline.ClickHouseConfig{Addr: "clickhouse-0:9440", Failover: []string{"clickhouse-1:9440"}, Database: "acme",
			Username: "ch-user-secret", Password: "ch-pass-secret",
			TLS: &pipeline.TLSConfig{ServerName: "clickhouse.acme.internal", CAPEM: []byte("ch-ca-secret"),
				CertPEM: []byte("ch-cert-secret"), KeyPEM: []byte("ch-key-secret")}},
		Streams: []pipeline.StreamConfig{{Name: "usage", Kind: pipeline.KindUsage, Topic: "acme.usage", DeadLetterTopic: "acme.usage.dlq",
			Mapping:    pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts"},
			PII:        &pipeline.CorePII{CustomerID: pipeline.PIIHash},
			Dimensions: []pipeline.Dimension{{Name: "email", Field: "email", Type: "String", PII: pipeline.PIIHash}}}},
		Limits:  pipeline.Limits{MaxDepth: 16},
		HMACKey: []byte("hmac-key-secret-0123456789"),
	}
}

var secretValues = []string{"ca-secret", "kafka-user-secret", "kafka-pass-secret", "ch-user-secret", "ch-pass-secret", "hmac-key-secret",
	"kafka-cert-secret", "kafka-key-secret", "ch-ca-secret", "ch-cert-secret", "ch-key-secret"}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./controllers -run Golden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what is rendered now; got:\n%s", path, got)
	}
}

// TestWorkerObjectsGolden pins down the ConfigMap and Deployment of a loop's workers, and
// checks that no credential reaches them. The running loop's workers have secure metrics
// (with their ServiceAccount and its binding), the paused one's plain ones.
func TestWorkerObjectsGolden(t *testing.T) {
	for _, paused := range []bool{false, true} {
		secure := !paused
		loop := goldenLoop(paused)
		config, err := renderWorkerConfig(loop, goldenConfig())
		if err != nil {
			t.Fatal(err)
		}
		sum := workerChecksum(config, map[string]map[string][]byte{"clickhouse": {"password": []byte("ch-pass-secret")}})
		var out []byte
		objs := []any{buildWorkerConfigMap(loop, config)}
		if secure {
			objs = append(objs, buildWorkerServiceAccount(loop), buildWorkerAuthBinding(loop))
		}
		for _, obj := range append(objs, buildWorkerDeployment(loop, "customerloop:1.0", sum, corev1.ResourceRequirements{}, secure)) {
			b, err := yaml.Marshal(obj)
			if err != nil {
				t.Fatal(err)
			}
			out = append(append(out, "---\n"...), b...)
		}
		for _, v := range secretValues {
			if strings.Contains(string(out), v) {
				t.Errorf("rendered worker objects contain the secret value %q", v)
			}
		}
		name := "worker.golden.yaml"
		if paused {
			name = "worker-paused.golden.yaml"
		}
		checkGolden(t, name, out)
	}
}

// TestWorkerSASLUsername: a SASL user name given in the spec (a Strimzi KafkaUser's
// name) reaches the worker as a plain value, the password still from the Secret.
func TestWorkerSASLUsername(t *testing.T) {
	loop := goldenLoop(false)
	loop.Spec.Kafka.SASL = &loopsv1alpha1.KafkaSASL{Mechanism: "SCRAM-SHA-512", Username: "acme-loop",
		CredentialsSecretRef: loopsv1alpha1.CredentialsSecretRef{Name: "acme-loop"}}
	env := map[string]corev1.EnvVar{}
	for _, e := range buildWorkerDeployment(loop, "customerloop:1.0", "sum", corev1.ResourceRequirements{}, true).Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e
	}
	if u := env[envSASLUser]; u.Value != "acme-loop" || u.ValueFrom != nil {
		t.Errorf("%s = %+v, want the value acme-loop", envSASLUser, u)
	}
	if p := env[envSASLPass]; p.ValueFrom == nil || p.ValueFrom.SecretKeyRef == nil ||
		p.ValueFrom.SecretKeyRef.Name != "acme-loop" || p.ValueFrom.SecretKeyRef.Key != "password" {
		t.Errorf("%s = %+v, want key password of Secret acme-loop", envSASLPass, p)
	}
}

// TestWorkerChecksum: the checksum follows the config and the Secrets' data, and nothing
// else.
func TestWorkerChecksum(t *testing.T) {
	cfg := []byte(`{"loop":"a"}`)
	secrets := func(pass string) map[string]map[string][]byte {
		return map[string]map[string][]byte{"ch": {"username": []byte("u"), "password": []byte(pass)}, "kafka": {"ca.crt": []byte("x")}}
	}
	base := workerChecksum(cfg, secrets("p1"))
	if workerChecksum(cfg, secrets("p1")) != base {
		t.Error("the checksum of the same inputs changed")
	}
	if workerChecksum(cfg, secrets("p2")) == base {
		t.Error("a rotated password did not change the checksum")
	}
	if workerChecksum([]byte(`{"loop":"b"}`), secrets("p1")) == base {
		t.Error("a changed config did not change the checksum")
	}
	if strings.Contains(base, "p1") {
		t.Error("the checksum shows the password")
	}
}

// TestDeploymentRunner runs a loop's workers as a Deployment on the real API server: the
// ConfigMap and Deployment appear, roll on config and Secret changes, follow the scale
// subresource and pause, report availability in status, and go with the loop.
func TestDeploymentRunner(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Namespace = deploymentNamespace
	secret := useClickHouseSecret(t, loop)
	loop.Spec.Workers.Replicas = ptr(int32(2))
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: deploymentNamespace, Name: loop.Name + "-worker"}
	deployment := func() *appsv1.Deployment {
		var d appsv1.Deployment
		if err := k8s.Get(ctx, key, &d); err != nil {
			return nil
		}
		return &d
	}
	checksum := func() string {
		if d := deployment(); d != nil {
			return d.Spec.Template.Annotations[ChecksumAnnotation]
		}
		return ""
	}

	testkit.Eventually(t, 30*time.Second, "the worker Deployment with 2 replicas", func() (bool, string) {
		d := deployment()
		if d == nil {
			return false, "no Deployment"
		}
		l := get(t, loop)
		return *d.Spec.Replicas == 2 && condition(l, "WorkersReady") == "False/WorkersFailing" && l.Status.Selector != "",
			fmt.Sprintf("replicas=%d WorkersReady=%s selector=%q", *d.Spec.Replicas, condition(l, "WorkersReady"), l.Status.Selector)
	})
	d := deployment()
	c := d.Spec.Template.Spec.Containers[0]
	if c.Image != "customerloop:test" || d.Spec.Template.Spec.SecurityContext.RunAsNonRoot == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("worker container: image %q, pod security %+v, container security %+v", c.Image, d.Spec.Template.Spec.SecurityContext, c.SecurityContext)
	}
	var passwordFromSecret bool
	for _, e := range c.Env {
		if e.Name == envClickHousePass && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == secret.Name {
			passwordFromSecret = true
		}
	}
	if !passwordFromSecret {
		t.Errorf("the ClickHouse password does not come from Secret %s: %+v", secret.Name, c.Env)
	}
	var cm corev1.ConfigMap
	if err := k8s.Get(ctx, key, &cm); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cm.Data["config.json"], loop.Spec.ClickHouse.Database) || strings.Contains(cm.Data["config.json"], `"username"`) {
		t.Errorf("worker config:\n%s", cm.Data["config.json"])
	}
	if len(d.OwnerReferences) != 1 || d.OwnerReferences[0].Name != loop.Name {
		t.Errorf("Deployment owners = %+v", d.OwnerReferences)
	}
	// Secure metrics: the pods run as the loop's own ServiceAccount, with its token, bound
	// to system:auth-delegator to review their scrapers' tokens.
	pod := d.Spec.Template.Spec
	if pod.ServiceAccountName != key.Name || pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken {
		t.Errorf("worker pods run as %q with automountServiceAccountToken %v, want %s with its token", pod.ServiceAccountName, pod.AutomountServiceAccountToken, key.Name)
	}
	if err := k8s.Get(ctx, key, &corev1.ServiceAccount{}); err != nil {
		t.Errorf("the worker ServiceAccount: %v", err)
	}
	bindingKey := types.NamespacedName{Name: workerAuthBindingName(loop.Namespace, loop.Name)}
	var binding rbacv1.ClusterRoleBinding
	if err := k8s.Get(ctx, bindingKey, &binding); err != nil {
		t.Errorf("the worker ServiceAccount's ClusterRoleBinding: %v", err)
	} else if binding.RoleRef.Name != "system:auth-delegator" || len(binding.Subjects) != 1 ||
		binding.Subjects[0].Name != key.Name || binding.Subjects[0].Namespace != key.Namespace {
		t.Errorf("ClusterRoleBinding %s binds %+v to %s", binding.Name, binding.Subjects, binding.RoleRef.Name)
	}

	// The pods become available (envtest runs no Deployment controller: play its part).
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2}
	if err := k8s.Status().Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the loop Ready with 2 workers", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Ready") == "True/Succeeded" && l.Status.Replicas == 2, fmt.Sprintf("Ready=%s replicas=%d", condition(l, "Ready"), l.Status.Replicas)
	})

	// A spec change and a Secret change each roll the pods.
	sum0 := checksum()
	updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Workers.Batch = &loopsv1alpha1.BatchSpec{MaxRows: 1234} })
	testkit.Eventually(t, 30*time.Second, "a new checksum after a spec change", func() (bool, string) {
		return checksum() != sum0, checksum()
	})
	sum1 := checksum()
	secret.Data["rotated-at"] = []byte(time.Now().String())
	if err := k8s.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "a new checksum after the Secret changed", func() (bool, string) {
		return checksum() != sum1, checksum()
	})

	// kubectl scale goes through the scale subresource to spec.workers.replicas.
	scale := &autoscalingv1.Scale{}
	if err := k8s.SubResource("scale").Get(ctx, get(t, loop), scale); err != nil {
		t.Fatal(err)
	}
	scale.Spec.Replicas = 3
	if err := k8s.SubResource("scale").Update(ctx, get(t, loop), client.WithSubResourceBody(scale)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "3 replicas after scaling", func() (bool, string) {
		d := deployment()
		return d != nil && *d.Spec.Replicas == 3, fmt.Sprint(d.Spec.Replicas)
	})

	// Pausing scales the workers to zero and says so.
	updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Paused = true })
	testkit.Eventually(t, 30*time.Second, "a paused loop scaled to zero", func() (bool, string) {
		d, l := deployment(), get(t, loop)
		return d != nil && *d.Spec.Replicas == 0 && condition(l, "Ready") == "True/Paused" && condition(l, "WorkersReady") == "False/Paused",
			fmt.Sprintf("replicas=%d Ready=%s", *d.Spec.Replicas, condition(l, "Ready"))
	})

	// Deleting the loop removes its workers.
	if err := k8s.Delete(ctx, loop); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the workers gone with the loop", func() (bool, string) {
		err1 := k8s.Get(ctx, key, &appsv1.Deployment{})
		err2 := k8s.Get(ctx, key, &corev1.ConfigMap{})
		err3 := k8s.Get(ctx, key, &corev1.ServiceAccount{})
		err4 := k8s.Get(ctx, bindingKey, &rbacv1.ClusterRoleBinding{})
		return apierrors.IsNotFound(err1) && apierrors.IsNotFound(err2) && apierrors.IsNotFound(err3) && apierrors.IsNotFound(err4),
			fmt.Sprint(err1, err2, err3, err4)
	})
}

// TestWorkerDefaultResources: a loop without spec.workers.resources gets the manager's
// defaults; one with its own keeps them.
func TestWorkerDefaultResources(t *testing.T) {
	defaults := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
	}
	loop := goldenLoop(false)
	loop.Spec.Workers.Resources = nil
	got := buildWorkerDeployment(loop, "customerloop:1.0", "sum", defaults, true).Spec.Template.Spec.Containers[0].Resources
	if !equality.Semantic.DeepEqual(got, defaults) {
		t.Errorf("resources without spec.workers.resources = %v, want the defaults %v", got, defaults)
	}
	own := corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}
	loop.Spec.Workers.Resources = &own
	got = buildWorkerDeployment(loop, "customerloop:1.0", "sum", defaults, true).Spec.Template.Spec.Containers[0].Resources
	if !equality.Semantic.DeepEqual(got, own) {
		t.Errorf("resources with spec.workers.resources = %v, want the loop's %v", got, own)
	}
}
