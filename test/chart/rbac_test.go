package chart

import (
	"fmt"
	"os"
	"sort"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestRBACMatchesGenerated proves the manager's permissions cannot drift from the code:
// the chart's ClusterRole (every value set) and config/default's grant exactly the rules
// controller-gen generates from the controllers' +kubebuilder:rbac markers into
// config/rbac/role.yaml, and the chart's leader-election Role grants exactly what
// config/rbac/leader_election_role.yaml does. A stale charts/customerloop/files/role.yaml
// fails here too.
func TestRBACMatchesGenerated(t *testing.T) {
	generated := permissions(t, onlyOfKind(t, readObjects(t, "../../config/rbac/role.yaml"), "ClusterRole"))
	if len(generated) == 0 {
		t.Fatal("config/rbac/role.yaml grants nothing; run make manifests")
	}
	leaderElection := permissions(t, onlyOfKind(t, readObjects(t, "../../config/rbac/leader_election_role.yaml"), "Role"))

	rendered := map[string][]*unstructured.Unstructured{}
	for _, vs := range valueSets {
		rendered["chart "+vs.name] = decode(t, helmTemplate(t, vs.files))
	}
	if kubectlBin != "" || required {
		rendered["config/default"] = decode(t, kustomize(t, "../../config/default"))
	}
	for name, objs := range rendered {
		t.Run(name, func(t *testing.T) {
			samePermissions(t, "the ClusterRole", "config/rbac/role.yaml", generated, permissions(t, onlyOfKind(t, objs, "ClusterRole")))
			samePermissions(t, "the leader-election Role", "config/rbac/leader_election_role.yaml", leaderElection, permissions(t, onlyOfKind(t, objs, "Role")))
		})
	}
}

func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, data)
}

// onlyOfKind returns the one object of a kind, failing when there is not exactly one.
func onlyOfKind(t *testing.T, objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one %s, found %d", kind, len(found))
	}
	return found[0]
}

// permissions expands a role's rules into single grants ("verb group/resource"), so
// that rules compare whatever their grouping and order.
func permissions(t *testing.T, role *unstructured.Unstructured) map[string]bool {
	t.Helper()
	var r rbacv1.ClusterRole // a Role's rules have the same shape
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(role.Object, &r); err != nil {
		t.Fatalf("decoding %s: %v", key(role), err)
	}
	out := map[string]bool{}
	for _, rule := range r.Rules {
		for _, verb := range rule.Verbs {
			for _, url := range rule.NonResourceURLs {
				out[fmt.Sprintf("%s %s", verb, url)] = true
			}
			for _, g := range rule.APIGroups {
				for _, res := range rule.Resources {
					if len(rule.ResourceNames) == 0 {
						out[fmt.Sprintf("%s %s/%s", verb, g, res)] = true
					}
					for _, n := range rule.ResourceNames {
						out[fmt.Sprintf("%s %s/%s/%s", verb, g, res, n)] = true
					}
				}
			}
		}
	}
	return out
}

func samePermissions(t *testing.T, what, source string, want, got map[string]bool) {
	t.Helper()
	var extra, missing []string
	for p := range got {
		if !want[p] {
			extra = append(extra, p)
		}
	}
	for p := range want {
		if !got[p] {
			missing = append(missing, p)
		}
	}
	sort.Strings(extra)
	sort.Strings(missing)
	if len(extra) > 0 {
		t.Errorf("%s grants more than %s: %v", what, source, extra)
	}
	if len(missing) > 0 {
		t.Errorf("%s lacks permissions of %s: %v", what, source, missing)
	}
}
