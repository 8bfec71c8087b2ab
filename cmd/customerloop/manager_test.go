package main

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"customerloop.dev/customerloop/cmd/internal/cli"
)

// TestManagerWithNamespacedSecretAccess gives a manager the permissions the chart grants
// with watchNamespaces (the generated ClusterRole without its rules on Secrets, and those
// rules in a Role of one namespace) on a real API server. Told to watch that namespace,
// the manager starts and reads its Secrets, and cannot read those of another namespace;
// told to watch every namespace, it cannot start its Secret watches at all.
func TestManagerWithNamespacedSecretAccess(t *testing.T) {
	s := needStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, ns := range []string{"watched", "elsewhere"} {
		if err := s.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
		if err := s.k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "kafka", Namespace: ns},
			StringData: map[string]string{"password": "p"}}); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile("../../config/rbac/role.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var generated rbacv1.ClusterRole
	if err := yaml.Unmarshal(raw, &generated); err != nil {
		t.Fatal(err)
	}
	cluster := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "narrow-manager"}}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "narrow-manager-secrets", Namespace: "watched"}}
	for _, r := range generated.Rules {
		if slices.Contains(r.Resources, "secrets") {
			role.Rules = append(role.Rules, r)
		} else {
			cluster.Rules = append(cluster.Rules, r)
		}
	}
	if len(role.Rules) == 0 {
		t.Fatal("the generated ClusterRole has no rule on Secrets: nothing to narrow")
	}
	subject := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "narrow-manager"}}
	if err := s.k8s.Create(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if err := s.k8s.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "narrow-manager"}, Subjects: subject,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cluster.Name}}); err != nil {
		t.Fatal(err)
	}
	if err := s.k8s.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	if err := s.k8s.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "narrow-manager-secrets", Namespace: "watched"},
		Subjects: subject, RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}}); err != nil {
		t.Fatal(err)
	}
	user, err := s.env.ControlPlane.AddUser(envtest.User{Name: "narrow-manager"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	log, err := cli.NewLogger(s.logs, "info", "text")
	if err != nil {
		t.Fatal(err)
	}
	// start runs a manager as the narrow user and returns a function that reads a Secret
	// through its client (and so its cache), giving up after wait.
	start := func(namespaces []string) func(ns string, wait time.Duration) error {
		t.Helper()
		mctx, stop := context.WithCancel(ctx)
		// The Deployment runner: the in-process one would register the workers' metrics
		// a second time in this process.
		mgr, err := cli.NewManager(mctx, user.Config(), cli.ManagerOptions{Runner: "deployment", MetricsAddr: "0", ProbeAddr: "0",
			Log: log.WithName("narrow"), WatchNamespaces: namespaces, Several: true})
		if err != nil {
			stop()
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- mgr.Start(mctx) }()
		t.Cleanup(func() { stop(); <-done })
		if !mgr.GetCache().WaitForCacheSync(mctx) {
			t.Fatal("the manager's cache did not start")
		}
		return func(ns string, wait time.Duration) error {
			gctx, cancel := context.WithTimeout(mctx, wait)
			defer cancel()
			return mgr.GetClient().Get(gctx, types.NamespacedName{Namespace: ns, Name: "kafka"}, &corev1.Secret{})
		}
	}

	get := start([]string{"watched"})
	if err := get("watched", time.Minute); err != nil {
		t.Errorf("reading a Secret of the watched namespace: %v", err)
	}
	if err := get("elsewhere", 10*time.Second); err == nil {
		t.Error("a manager watching one namespace read a Secret of another")
	}
	if err := start(nil)("watched", 5*time.Second); err == nil {
		t.Error("a manager watching every namespace read Secrets without the right to read them cluster-wide: the test proves nothing")
	}
}
