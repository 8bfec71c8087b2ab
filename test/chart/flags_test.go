package chart

import (
	"os/exec"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestManagerArgsAreFlags proves the manager's args in the chart (each value set) and in
// config/default are a command and flags the customerloop binary of this checkout
// accepts, so renaming a flag in cmd/ cannot leave the install broken: the binary parses
// them followed by -h, which stops it after parsing.
func TestManagerArgsAreFlags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "customerloop")
	command(t, "go", "build", "-o", bin, "customerloop.dev/customerloop/cmd/customerloop")

	deployments := map[string]*unstructured.Unstructured{}
	for _, vs := range valueSets {
		deployments["chart "+vs.name] = onlyOfKind(t, decode(t, helmTemplate(t, vs.files)), "Deployment")
	}
	if kubectlBin != "" || required {
		deployments["config/default"] = onlyOfKind(t, decode(t, kustomize(t, "../../config/default")), "Deployment")
	}
	for name, d := range deployments {
		t.Run(name, func(t *testing.T) {
			containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
			if len(containers) != 1 {
				t.Fatalf("want one container, got %d", len(containers))
			}
			args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
			if len(args) == 0 || args[0] != "manager" {
				t.Fatalf("args %v do not start with the manager command", args)
			}
			out, err := exec.Command(bin, append(args, "-h")...).CombinedOutput()
			if err != nil {
				t.Errorf("customerloop %v refused its args: %v\n%s", args, err, out)
			}
		})
	}
}
