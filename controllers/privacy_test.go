package controllers

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
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
	dep := buildWorkerDeployment(loop, "customerloop:1.0", "sum", corev1.ResourceRequirements{})
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
