package chart

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
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

// TestWatchNamespacesNarrowSecrets: with watchNamespaces the ClusterRole grants nothing on
// Secrets, a Role in each watched namespace grants exactly the generated rules on Secrets
// to the manager's ServiceAccount, the manager is told to watch those namespaces, and
// together the roles still grant all that the code needs. Without it, the ClusterRole
// keeps reading Secrets cluster-wide.
func TestWatchNamespacesNarrowSecrets(t *testing.T) {
	generated := permissions(t, onlyOfKind(t, readObjects(t, "../../config/rbac/role.yaml"), "ClusterRole"))
	onSecrets := map[string]bool{}
	for p := range generated {
		if strings.HasSuffix(p, " /secrets") {
			onSecrets[p] = true
		}
	}
	if len(onSecrets) == 0 {
		t.Fatal("the generated rules grant nothing on Secrets: the test checks nothing")
	}
	bySecrets := func(perms map[string]bool) (secrets, others map[string]bool) {
		secrets, others = map[string]bool{}, map[string]bool{}
		for p := range perms {
			if onSecrets[p] {
				secrets[p] = true
			} else {
				others[p] = true
			}
		}
		return secrets, others
	}

	objs := decode(t, helmTemplate(t, nil, "--set", "watchNamespaces={team-a,team-b}"))
	secrets, _ := bySecrets(permissions(t, onlyOfKind(t, objs, "ClusterRole")))
	if len(secrets) > 0 {
		t.Errorf("with watchNamespaces the ClusterRole still grants %v", secrets)
	}
	_, others := bySecrets(generated)
	_, clusterOthers := bySecrets(permissions(t, onlyOfKind(t, objs, "ClusterRole")))
	samePermissions(t, "the ClusterRole's other rules", "config/rbac/role.yaml", others, clusterOthers)
	roles, bindings := map[string]*unstructured.Unstructured{}, map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		if !strings.HasSuffix(o.GetName(), "-secrets") || o.GetNamespace() == namespace {
			continue
		}
		switch o.GetKind() {
		case "Role":
			roles[o.GetNamespace()] = o
		case "RoleBinding":
			bindings[o.GetNamespace()] = o
		}
	}
	for _, ns := range []string{"team-a", "team-b"} {
		if roles[ns] == nil || bindings[ns] == nil {
			t.Fatalf("no Role and RoleBinding for Secrets in %s: roles %v, bindings %v", ns, names(roles), names(bindings))
		}
		samePermissions(t, "the Role in "+ns, "the generated rules on Secrets", onSecrets, permissions(t, roles[ns]))
		var b rbacv1.RoleBinding
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(bindings[ns].Object, &b); err != nil {
			t.Fatal(err)
		}
		if b.RoleRef.Name != roles[ns].GetName() || len(b.Subjects) != 1 || b.Subjects[0].Kind != "ServiceAccount" || b.Subjects[0].Namespace != namespace {
			t.Errorf("the RoleBinding in %s binds %+v to %+v, want the Role to the manager's ServiceAccount", ns, b.RoleRef, b.Subjects)
		}
	}
	if len(roles) != 2 {
		t.Errorf("Roles for Secrets in %v, want team-a and team-b only", names(roles))
	}
	args := managerArgs(t, objs)
	if !slices.Contains(args, "--watch-namespaces=team-a,team-b") {
		t.Errorf("the manager's args %v lack --watch-namespaces=team-a,team-b", args)
	}

	objs = decode(t, helmTemplate(t, nil))
	secrets, _ = bySecrets(permissions(t, onlyOfKind(t, objs, "ClusterRole")))
	samePermissions(t, "the ClusterRole's rules on Secrets", "config/rbac/role.yaml", onSecrets, secrets)
	for _, a := range managerArgs(t, objs) {
		if strings.HasPrefix(a, "--watch-namespaces") {
			t.Errorf("without watchNamespaces the manager is given %s", a)
		}
	}
}

func names(m map[string]*unstructured.Unstructured) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// managerArgs are the args of the manager Deployment's first container.
func managerArgs(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	d := onlyOfKind(t, objs, "Deployment")
	containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	if len(containers) == 0 {
		t.Fatal("the manager Deployment has no containers")
	}
	args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
	return args
}
