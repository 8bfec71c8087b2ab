// Package chart tests how CustomerLoop is installed: the Helm chart and the kustomize
// config. The chart is linted and rendered by a real helm (golden files pin the output),
// and every rendered manifest, the kustomize output and every sample is applied with a
// server-side dry run to a real kube-apiserver (envtest), which validates it fully
// against the API's schemas, the CRD's OpenAPI and CEL rules included.
//
// HELM names the helm binary and KUBEBUILDER_ASSETS the control plane; make test sets
// both. Golden files are rewritten with: go test ./test/chart -update
package chart

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

const (
	chartDir = "../../charts/customerloop"
	// The chart is rendered as `make deploy` installs config/default, so that the two
	// can be compared object by object.
	release   = "customerloop"
	namespace = "customerloop-system"
)

// valueSets are the configurations rendered, linted, golden-tested and dry-run applied.
var valueSets = []struct {
	name  string
	files []string
}{
	{name: "default"},
	// Deployment runner, two replicas, ServiceMonitor and PodMonitor on.
	{name: "deployment-runner", files: []string{chartDir + "/ci/deployment-runner-values.yaml"}},
	// Three replicas with a PodDisruptionBudget, a NetworkPolicy, monitors and alerts.
	{name: "production", files: []string{chartDir + "/ci/production-values.yaml"}},
}

var (
	helmBin    string
	kubectlBin string
	restConfig *rest.Config // nil without KUBEBUILDER_ASSETS
	testEnv    *envtest.Environment
	required   = os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != ""
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	helmBin = os.Getenv("HELM")
	if helmBin == "" {
		if required {
			fmt.Fprintln(os.Stderr, "test/chart: HELM must name a helm binary; run the tests with make test")
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping test/chart: HELM is not set (make test sets it to bin/helm-<version>)")
		return 0
	}
	kubectlBin = findKubectl()

	if os.Getenv("KUBEBUILDER_ASSETS") != "" {
		env := &envtest.Environment{
			// The real CRD, and stand-ins for the Prometheus Operator's so that the
			// ServiceMonitor and PodMonitor can be applied.
			CRDDirectoryPaths:     []string{"../../config/crd/bases", "testdata/crds"},
			ErrorIfCRDPathMissing: true,
		}
		cfg, err := env.Start()
		if err != nil {
			fmt.Fprintln(os.Stderr, "starting envtest:", err)
			return 1
		}
		defer func() { _ = env.Stop() }()
		restConfig, testEnv = cfg, env
	}
	return m.Run()
}

// findKubectl prefers KUBECTL, then the kubectl built beside kube-apiserver for envtest
// (hack/envtest.sh), then the one on PATH.
func findKubectl() string {
	if k := os.Getenv("KUBECTL"); k != "" {
		return k
	}
	if a := os.Getenv("KUBEBUILDER_ASSETS"); a != "" {
		if _, err := os.Stat(filepath.Join(a, "kubectl")); err == nil {
			return filepath.Join(a, "kubectl")
		}
	}
	k, _ := exec.LookPath("kubectl")
	return k
}

// needAPIServer skips (or, under make test, fails) a test that needs the control plane.
func needAPIServer(t *testing.T) *rest.Config {
	t.Helper()
	if restConfig == nil {
		if required {
			t.Fatal("KUBEBUILDER_ASSETS must be set; run the tests with make test")
		}
		t.Skip("KUBEBUILDER_ASSETS is not set (make test sets it)")
	}
	return restConfig
}

func needKubectl(t *testing.T) string {
	t.Helper()
	if kubectlBin == "" {
		if required {
			t.Fatal("kubectl not found: set KUBECTL, or put it in KUBEBUILDER_ASSETS or on PATH")
		}
		t.Skip("kubectl not found (KUBECTL, KUBEBUILDER_ASSETS or PATH)")
	}
	return kubectlBin
}

// command runs a tool and returns its stdout, failing the test with stderr.
func command(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := tryCommand(t, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tryCommand(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	// helm keeps no state between runs and reads no configuration of the user's.
	home := t.TempDir()
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %v: %w\n%s%s", filepath.Base(name), args, err, stdout.String(), stderr.String())
	}
	return stdout.Bytes(), nil
}

// helmTemplate renders the chart as release "customerloop" in customerloop-system.
func helmTemplate(t *testing.T, valueFiles []string, extra ...string) []byte {
	t.Helper()
	args := []string{"template", release, chartDir, "--namespace", namespace}
	for _, f := range valueFiles {
		args = append(args, "--values", f)
	}
	return command(t, helmBin, append(args, extra...)...)
}

func kustomize(t *testing.T, dir string) []byte {
	t.Helper()
	return command(t, needKubectl(t), "kustomize", dir)
}

// decode splits a multi-document YAML stream into objects, leaving out empty documents.
func decode(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("reading YAML: %v", err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatalf("decoding YAML: %v\n%s", err, doc)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

func key(o *unstructured.Unstructured) string {
	if o.GetNamespace() == "" {
		return o.GetKind() + "/" + o.GetName()
	}
	return o.GetKind() + "/" + o.GetNamespace() + "/" + o.GetName()
}

// dryRunApply applies obj with a server-side dry run: the API server defaults and
// validates it as it would for a real apply (strictly: unknown fields are errors) and
// stores nothing.
func dryRunApply(ctx context.Context, c client.Client, obj *unstructured.Unstructured) error {
	return c.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj),
		client.DryRunAll, client.ForceOwnership, client.FieldOwner("customerloop-chart-test"))
}

func newClient(t *testing.T) client.Client {
	t.Helper()
	c, err := client.New(needAPIServer(t), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ensureNamespace creates a namespace for real: a dry run cannot place objects in a
// namespace that is itself only a dry run.
func ensureNamespace(t *testing.T, c client.Client, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := c.Create(t.Context(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}
