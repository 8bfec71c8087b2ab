package chart

import (
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// samplesNamespace holds the samples, which name no namespace, as kubectl apply would
// put them in the current one.
const samplesNamespace = "samples"

// sampleDirs are the kustomizations of config/samples: the loops that run standalone,
// and those that need Secrets or a ClickHouse cluster.
var sampleDirs = []string{"samples", "samples/secure", "samples/cluster"}

// TestServerSideDryRun proves every manifest is accepted by a real kube-apiserver: each
// object the chart renders (CRDs included, for each value set), the kustomize output of
// config/default and of each kustomization under config/samples, and each sample file,
// applied with a server-side dry run. Apply validates strictly, so a misspelt or
// misplaced field fails as well as an invalid value; CustomerLoops go through the CRD's
// OpenAPI schema and CEL rules. The ServiceMonitor, PodMonitor and PrometheusRule go
// through stand-in CRDs (testdata/crds) that check their kind and metadata, not the
// Prometheus Operator's schema.
func TestServerSideDryRun(t *testing.T) {
	c := newClient(t)
	ensureNamespace(t, c, namespace)
	ensureNamespace(t, c, samplesNamespace)

	sets := map[string][]*unstructured.Unstructured{}
	for _, vs := range valueSets {
		sets["chart "+vs.name] = decode(t, helmTemplate(t, vs.files, "--include-crds"))
	}
	sets["kustomize config-default"] = decode(t, kustomize(t, "../../config/default"))
	for _, dir := range sampleDirs {
		sets["kustomize config-"+strings.ReplaceAll(dir, "/", "-")] = decode(t, kustomize(t, "../../config/"+dir))
	}
	samples, err := filepath.Glob("../../config/samples/loops_*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob("../../config/samples/*/loops_*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(samples, more...) {
		sets["sample "+filepath.Base(f)] = readObjects(t, f)
	}

	for name, objs := range sets {
		t.Run(name, func(t *testing.T) {
			if len(objs) == 0 {
				t.Fatal("nothing to apply")
			}
			for _, o := range objs {
				namespaced, err := c.IsObjectNamespaced(o)
				if err != nil {
					t.Errorf("%s: %v", key(o), err)
					continue
				}
				if namespaced && o.GetNamespace() == "" {
					o.SetNamespace(samplesNamespace)
				}
				if err := dryRunApply(t.Context(), c, o); err != nil {
					t.Errorf("%s: %v", key(o), err)
				}
			}
		})
	}
}

// TestDryRunRefusesInvalid proves the dry run can fail: the API server refuses an
// unknown field in the manager's pod spec and a sample that breaks a CEL rule.
func TestDryRunRefusesInvalid(t *testing.T) {
	c := newClient(t)
	ensureNamespace(t, c, namespace)
	ensureNamespace(t, c, samplesNamespace)

	t.Run("unknown field", func(t *testing.T) {
		d := onlyOfKind(t, decode(t, helmTemplate(t, nil)), "Deployment")
		if err := unstructured.SetNestedField(d.Object, true, "spec", "template", "spec", "hostNetworking"); err != nil {
			t.Fatal(err)
		}
		wantRefused(t, dryRunApply(t.Context(), c, d), "hostNetworking")
	})
	t.Run("usage stream without eventId", func(t *testing.T) {
		loop := onlyOfKind(t, readObjects(t, "../../config/samples/loops_v1alpha1_customerloop_usage.yaml"), "CustomerLoop")
		loop.SetNamespace(samplesNamespace)
		streams, _, err := unstructured.NestedSlice(loop.Object, "spec", "streams")
		if err != nil || len(streams) == 0 {
			t.Fatalf("sample has no streams: %v", err)
		}
		unstructured.RemoveNestedField(streams[0].(map[string]any), "mapping", "eventId")
		if err := unstructured.SetNestedSlice(loop.Object, streams, "spec", "streams"); err != nil {
			t.Fatal(err)
		}
		wantRefused(t, dryRunApply(t.Context(), c, loop), "a Usage stream needs mapping.eventId")
	})
}

// TestManagerPodIsRestricted proves the manager pod, as the chart and config/default
// template it, is admitted in a namespace that enforces the "restricted" Pod Security
// Standard (non-root, no privilege escalation, all capabilities dropped, RuntimeDefault
// seccomp), and that the namespace does enforce it.
func TestManagerPodIsRestricted(t *testing.T) {
	c := newClient(t)
	const restricted = "restricted"
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: restricted, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce":         "restricted",
		"pod-security.kubernetes.io/enforce-version": "latest",
	}}}
	if err := c.Create(t.Context(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	templates := map[string]*unstructured.Unstructured{}
	for _, vs := range valueSets {
		templates["chart "+vs.name] = onlyOfKind(t, decode(t, helmTemplate(t, vs.files)), "Deployment")
	}
	templates["config/default"] = onlyOfKind(t, decode(t, kustomize(t, "../../config/default")), "Deployment")
	for name, d := range templates {
		t.Run(name, func(t *testing.T) {
			pod := podOf(t, d, restricted)
			if err := c.Create(t.Context(), pod, client.DryRunAll); err != nil {
				t.Errorf("the manager pod is not admitted as restricted: %v", err)
			}
		})
	}
	t.Run("enforced", func(t *testing.T) {
		pod := podOf(t, templates["chart default"], restricted)
		pod.Spec.Containers[0].SecurityContext = nil
		wantRefused(t, c.Create(t.Context(), pod, client.DryRunAll), "PodSecurity")
	})
}

// podOf is a Pod with a Deployment's pod template, in namespace ns.
func podOf(t *testing.T, d *unstructured.Unstructured, ns string) *corev1.Pod {
	t.Helper()
	tmpl, found, err := unstructured.NestedMap(d.Object, "spec", "template")
	if err != nil || !found {
		t.Fatalf("%s has no pod template: %v", key(d), err)
	}
	var spec corev1.PodTemplateSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, &spec); err != nil {
		t.Fatal(err)
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "manager", Namespace: ns, Labels: spec.Labels},
		Spec:       spec.Spec,
	}
}

func wantRefused(t *testing.T, err error, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("the API server accepted it; want a refusal mentioning %q", reason)
	}
	if !strings.Contains(err.Error(), reason) {
		t.Fatalf("refused, but not for %q: %v", reason, err)
	}
}
