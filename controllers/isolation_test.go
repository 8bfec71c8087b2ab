package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
)

// TestSecretRefsHaveNoNamespace: no field anywhere in a loop's spec names a namespace, so
// a loop can only point at Secrets of its own namespace. A ref type that grew a namespace
// field would fail here.
func TestSecretRefsHaveNoNamespace(t *testing.T) {
	seen := map[reflect.Type]bool{}
	refs := 0
	var walk func(ty reflect.Type, path string)
	walk = func(ty reflect.Type, path string) {
		for ty.Kind() == reflect.Pointer || ty.Kind() == reflect.Slice || ty.Kind() == reflect.Map {
			ty = ty.Elem()
		}
		if ty.Kind() != reflect.Struct || seen[ty] || ty.PkgPath() != reflect.TypeFor[loopsv1alpha1.CustomerLoopSpec]().PkgPath() {
			return
		}
		seen[ty] = true
		if strings.Contains(ty.Name(), "Secret") && strings.HasSuffix(ty.Name(), "Ref") {
			refs++
		}
		for i := range ty.NumField() {
			f := ty.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if strings.Contains(strings.ToLower(name), "namespace") || strings.Contains(strings.ToLower(f.Name), "namespace") {
				t.Errorf("%s.%s: a spec field names a namespace; Secret refs must stay in the loop's namespace", path, f.Name)
			}
			walk(f.Type, path+"."+name)
		}
	}
	walk(reflect.TypeFor[loopsv1alpha1.CustomerLoopSpec](), "spec")
	if refs < 2 { // SecretKeyRef and CredentialsSecretRef: the walk must reach them
		t.Fatalf("the walk found %d Secret ref types; it no longer sees the spec's refs", refs)
	}
}

// TestWorkerServiceAccountCannotReadSecrets: worker pods run as their loop's own
// ServiceAccount, whose token they mount to have their scrapers' tokens reviewed, and
// that account, bound as the runner binds it (system:auth-delegator) and impersonated
// against the real API server's RBAC, can get no Secret: neither of its own namespace
// nor of another. A control account bound to a Role that grants get on Secrets can, so
// the check is RBAC's answer and not a broken impersonation.
func TestWorkerServiceAccountCannotReadSecrets(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Namespace = deploymentNamespace
	dep := buildWorkerDeployment(loop, "customerloop:test", "x", corev1.ResourceRequirements{}, true)
	pod := dep.Spec.Template.Spec
	sa := pod.ServiceAccountName
	if sa != workerName(loop) {
		t.Errorf("worker pods run as ServiceAccount %q, want the loop's own %q", sa, workerName(loop))
	}
	delegator := buildWorkerAuthBinding(loop)
	if err := k8s.Create(ctx, delegator); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, delegator) })

	other := fmt.Sprintf("isolation-%d", testSeq)
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: other}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: other}}) })
	for _, ns := range []string{deploymentNamespace, other} {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "isolation-probe", Namespace: ns}, Data: map[string][]byte{"password": []byte("x")}}
		if err := k8s.Create(ctx, s); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		for _, name := range []string{sa, "reader"} {
			if err := k8s.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	// The control: "reader" of namespace workers may get Secrets there.
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "isolation-secret-reader", Namespace: deploymentNamespace},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}}}}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "isolation-secret-reader", Namespace: deploymentNamespace},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "reader", Namespace: deploymentNamespace}}}
	for _, o := range []client.Object{role, binding} {
		if err := k8s.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}

	as := func(ns, name string) client.Client {
		cfg := rest.CopyConfig(restCfg)
		cfg.Impersonate = rest.ImpersonationConfig{
			UserName: "system:serviceaccount:" + ns + ":" + name,
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
		}
		c, err := client.New(cfg, client.Options{Scheme: k8s.Scheme()})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	get := func(c client.Client, ns string) error {
		return c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "isolation-probe"}, &corev1.Secret{})
	}
	worker := as(deploymentNamespace, sa)
	for _, ns := range []string{deploymentNamespace, other} {
		if err := get(worker, ns); !apierrors.IsForbidden(err) {
			t.Errorf("the worker's service account getting a Secret of namespace %s: %v, want Forbidden", ns, err)
		}
		if err := worker.List(ctx, &corev1.SecretList{}, client.InNamespace(ns)); !apierrors.IsForbidden(err) {
			t.Errorf("the worker's service account listing the Secrets of namespace %s: %v, want Forbidden", ns, err)
		}
	}
	reader := as(deploymentNamespace, "reader")
	if err := get(reader, deploymentNamespace); err != nil {
		t.Errorf("the control account, granted get on Secrets, could not get one: %v", err)
	}
	if err := get(reader, other); !apierrors.IsForbidden(err) {
		t.Errorf("the control account got a Secret of another namespace: %v, want Forbidden", err)
	}
}

// TestManagerMayBindWorkerReviews: with exactly the ClusterRole generated from this
// package's RBAC markers (config/rbac/role.yaml), the manager may create a loop's worker
// ServiceAccount and bind it to system:auth-delegator: RBAC lets a binding through only
// when its author holds every permission of the role bound. An account allowed to create
// ClusterRoleBindings but not to review tokens is refused the same binding, so the check
// is RBAC's escalation rule and not a broken impersonation.
func TestManagerMayBindWorkerReviews(t *testing.T) {
	ctx := context.Background()
	raw, err := os.ReadFile(filepath.Join("..", "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	generated := &rbacv1.ClusterRole{}
	if err := yaml.Unmarshal(raw, generated); err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("escalation-%d", testSeq)
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}) })
	bindOnly := []rbacv1.PolicyRule{{APIGroups: []string{rbacv1.GroupName}, Resources: []string{"clusterrolebindings"}, Verbs: []string{"create"}}}
	for name, rules := range map[string][]rbacv1.PolicyRule{"manager": generated.Rules, "binder": bindOnly} {
		role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name}, Rules: rules}
		binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}}}
		for _, o := range []client.Object{role, binding} {
			if err := k8s.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = k8s.Delete(ctx, o) })
		}
	}
	as := func(name string) client.Client {
		cfg := rest.CopyConfig(restCfg)
		cfg.Impersonate = rest.ImpersonationConfig{
			UserName: "system:serviceaccount:" + ns + ":" + name,
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
		}
		c, err := client.New(cfg, client.Options{Scheme: k8s.Scheme()})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	loop := newLoop(t)
	loop.Namespace = ns
	loop.UID = "0b5d6a1e-7c7e-4c1a-9d47-0d0c2b9b4f11"
	binder := buildWorkerAuthBinding(loop)
	if err := as("binder").Create(ctx, binder.DeepCopy()); !apierrors.IsForbidden(err) {
		_ = k8s.Delete(ctx, binder)
		t.Fatalf("an account without the reviews' permissions bound system:auth-delegator: %v, want Forbidden", err)
	}
	manager := as("manager")
	sa := buildWorkerServiceAccount(loop)
	sa.OwnerReferences = nil // the loop is not created here
	if err := manager.Create(ctx, sa); err != nil {
		t.Errorf("the manager creating the worker ServiceAccount: %v", err)
	}
	if err := manager.Create(ctx, binder); err != nil {
		t.Errorf("the manager binding the worker ServiceAccount to system:auth-delegator: %v", err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, binder) })
	if err := manager.Delete(ctx, binder); err != nil {
		t.Errorf("the manager deleting the binding: %v", err)
	}
}
