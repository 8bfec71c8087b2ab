package chart

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// TestHelmInstallUpgradeUninstall proves the chart's life cycle works against a real
// kube-apiserver with helm's own client: install (the CRD from crds/ is already there
// and is left alone), NOTES that name the next step, an upgrade to the deployment runner
// with monitors, and an uninstall that removes what the release made.
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	c := newClient(t)
	user, err := testEnv.ControlPlane.AddUser(envtest.User{Name: "helm", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	const ns = "helm-install"
	helm := func(args ...string) string {
		t.Helper()
		return string(command(t, helmBin, append(args, "--kubeconfig", kc, "--namespace", ns)...))
	}
	manager := func() *appsv1.Deployment {
		t.Helper()
		var d appsv1.Deployment
		if err := c.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: release + "-manager"}, &d); err != nil {
			t.Fatalf("getting the manager Deployment: %v", err)
		}
		return &d
	}

	out := helm("install", release, chartDir, "--create-namespace")
	for _, want := range []string{"kubectl apply -f config/samples/", "kubectl get customerloops", "kubectl customerloop status acme",
		"create token", "https://127.0.0.1:",
		"rollout status deployment/" + release + "-manager"} {
		if !strings.Contains(out, want) {
			t.Errorf("install notes lack %q:\n%s", want, out)
		}
	}
	if args := manager().Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--runner=inprocess") {
		t.Errorf("installed manager args %v, want --runner=inprocess", args)
	}

	out = helm("upgrade", release, chartDir, "--values", valueSets[1].files[0])
	if !strings.Contains(out, "kubectl apply --server-side -f charts/customerloop/crds/") {
		t.Errorf("upgrade notes do not say how to upgrade the CRD:\n%s", out)
	}
	d := manager()
	if args := d.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--runner=deployment") {
		t.Errorf("upgraded manager args %v, want --runner=deployment", args)
	}
	if *d.Spec.Replicas != 2 {
		t.Errorf("upgraded manager replicas %d, want 2", *d.Spec.Replicas)
	}

	helm("uninstall", release, "--wait")
	var list appsv1.DeploymentList
	if err := c.List(t.Context(), &list); err != nil {
		t.Fatal(err)
	}
	for _, d := range list.Items {
		if d.Namespace == ns {
			t.Errorf("Deployment %s is left after uninstall", d.Name)
		}
	}
}
