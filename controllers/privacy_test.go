package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/test/testkit"
)

// TestHMACKeyReachesWorkers: the HMAC key goes to worker pods only as a secretKeyRef
// environment variable, never in the ConfigMap, and a rotated key restarts the workers
// of either runner.
func TestHMACKeyReachesWorkers(t *testing.T) {
	loop, cfg := goldenLoop(false), goldenConfig()
	config, err := renderWorkerConfig(loop, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(config), string(cfg.HMACKey)) {
		t.Fatalf("the worker config holds the HMAC key:\n%s", config)
	}
	dep := buildWorkerDeployment(loop, "customerloop:1.0", "sum", corev1.ResourceRequirements{}, true)
	found := false
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		if e.Name != envHMACKey {
			continue
		}
		found = true
		if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
			e.ValueFrom.SecretKeyRef.Name != "pii" || e.ValueFrom.SecretKeyRef.Key != "hmac-key" {
			t.Errorf("%s = %+v, want a secretKeyRef to pii/hmac-key", envHMACKey, e)
		}
	}
	if !found {
		t.Errorf("the worker has no %s", envHMACKey)
	}
	if got := loop.SecretNames(); !strings.Contains(strings.Join(got, ","), "pii") {
		t.Errorf("SecretNames() = %v: the HMAC key's Secret is not watched nor in the checksum", got)
	}
	rotated := cfg
	rotated.HMACKey = []byte("another-hmac-key-0123456789")
	if configHash(cfg) == configHash(rotated) {
		t.Error("a rotated HMAC key did not change the in-process runner's config hash")
	}
	if strings.Contains(configHash(cfg), string(cfg.HMACKey)) {
		t.Error("the config hash shows the key")
	}
}

// TestShortHMACKeyStalls: a key shorter than 16 bytes stalls the loop with a message
// naming the Secret and the key's length, never its value; a longer key in the same
// Secret un-stalls it.
func TestShortHMACKeyStalls(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-pii", Namespace: "default"},
		Data: map[string][]byte{"hmac-key": []byte("short-k3y")}}
	if err := k8s.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), secret) })
	loop.Spec.Privacy = &loopsv1alpha1.PrivacySpec{HMACKeySecretRef: loopsv1alpha1.HMACKeySecretRef{Name: secret.Name}}
	loop.Spec.Streams[0].PII = &loopsv1alpha1.StreamPII{CustomerID: "Hash"}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "Stalled with reason InvalidSpec naming the key's length", func() (bool, string) {
		l := get(t, loop)
		c := meta.FindStatusCondition(l.Status.Conditions, loopsv1alpha1.ConditionStalled)
		if c == nil {
			return false, "no Stalled condition"
		}
		return c.Status == metav1.ConditionTrue && c.Reason == ReasonInvalidSpec && strings.Contains(c.Message, "holds 9 bytes") &&
			!strings.Contains(c.Message, "short-k3y"), c.Reason + ": " + c.Message
	})
	secret.Data["hmac-key"] = []byte("a-long-enough-key-0123456789")
	if err := k8s.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "not Stalled once the key is long enough", func() (bool, string) {
		l := get(t, loop)
		return condition(l, loopsv1alpha1.ConditionStalled) != "True/"+ReasonInvalidSpec, condition(l, loopsv1alpha1.ConditionStalled)
	})
}
