package controllers

import (
	"context"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
)

// FieldOwner is the one field manager under which CustomerLoop applies what it owns.
const FieldOwner = client.FieldOwner("customerloop")

// DeploymentRunner runs each loop's workers as a Deployment of "customerloop worker" pods
// with the rendered config in a ConfigMap, both applied server-side under FieldOwner.
type DeploymentRunner struct {
	Client client.Client
	// Image of the worker pods.
	Image string
	// DefaultResources are the worker containers' resources when a loop sets none in
	// spec.workers.resources.
	DefaultResources corev1.ResourceRequirements
	// SecureMetrics has the worker pods serve metrics over HTTPS to authorized tokens
	// only, as the manager's --metrics-secure does for its own.
	SecureMetrics bool
}

// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=list
// Secure worker metrics: a ServiceAccount per loop bound to system:auth-delegator, which
// the manager may bind since it holds the same two permissions itself.
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterrolebindings,verbs=get;create;update;patch;delete

// Ensure implements Runner.
func (r *DeploymentRunner) Ensure(ctx context.Context, loop *loopsv1alpha1.CustomerLoop, cfg pipeline.Config) (WorkerState, error) {
	config, err := renderWorkerConfig(loop, cfg)
	if err != nil {
		return WorkerState{}, err
	}
	secrets := map[string]map[string][]byte{}
	for _, name := range loop.SecretNames() {
		var s corev1.Secret
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: loop.Namespace, Name: name}, &s); err != nil {
			return WorkerState{}, fmt.Errorf("reading Secret %s/%s: %w", loop.Namespace, name, err)
		}
		secrets[name] = s.Data
	}
	if err := r.apply(ctx, buildWorkerConfigMap(loop, config)); err != nil {
		return WorkerState{}, err
	}
	if r.SecureMetrics {
		if err := r.apply(ctx, buildWorkerServiceAccount(loop)); err != nil {
			return WorkerState{}, err
		}
		if err := r.apply(ctx, buildWorkerAuthBinding(loop)); err != nil {
			return WorkerState{}, err
		}
	}
	if err := r.apply(ctx, buildWorkerDeployment(loop, r.Image, workerChecksum(config, secrets), r.DefaultResources, r.SecureMetrics)); err != nil {
		return WorkerState{}, err
	}
	var dep appsv1.Deployment
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: loop.Namespace, Name: workerName(loop)}, &dep); err != nil {
		return WorkerState{}, fmt.Errorf("reading the worker Deployment: %w", err)
	}
	return deploymentState(loop, &dep), nil
}

// deploymentState reads the workers' state from their Deployment's status.
func deploymentState(loop *loopsv1alpha1.CustomerLoop, dep *appsv1.Deployment) WorkerState {
	st := WorkerState{Replicas: dep.Status.ReadyReplicas, Selector: workerSelector(loop)}
	want := loop.GetReplicas()
	for _, c := range dep.Status.Conditions {
		if (c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue) ||
			(c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse) {
			st.Message = fmt.Sprintf("worker Deployment %s: %s", c.Reason, c.Message)
			return st
		}
	}
	switch {
	case want == 0:
		st.Message = "no worker runs: replicas is 0"
	case dep.Status.ObservedGeneration < dep.Generation:
		st.Message = "worker Deployment rolling out"
	case dep.Status.UpdatedReplicas >= want && dep.Status.AvailableReplicas >= want:
		st.Running = true
	default:
		st.Message = fmt.Sprintf("%d/%d worker pods available", dep.Status.AvailableReplicas, want)
	}
	return st
}

// apply server-side applies a typed object built by this package.
func (r *DeploymentRunner) apply(ctx context.Context, obj client.Object) error {
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return err
	}
	// Fields a typed object carries empty but that are not ours to set.
	delete(u, "status")
	unstructured.RemoveNestedField(u, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u, "spec", "template", "metadata", "creationTimestamp")
	ac := client.ApplyConfigurationFromUnstructured(&unstructured.Unstructured{Object: u})
	if err := r.Client.Apply(ctx, ac, FieldOwner, client.ForceOwnership); err != nil {
		return fmt.Errorf("applying %s %s: %w", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
	}
	return nil
}

// Stop implements Runner: it deletes the loop's worker Deployment, ConfigMap,
// ServiceAccount and the ServiceAccount's ClusterRoleBinding.
func (r *DeploymentRunner) Stop(ctx context.Context, key types.NamespacedName) error {
	meta := metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name + "-worker"}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: workerAuthBindingName(key.Namespace, key.Name)}}
	for _, obj := range []client.Object{&appsv1.Deployment{ObjectMeta: meta}, &corev1.ConfigMap{ObjectMeta: meta}, &corev1.ServiceAccount{ObjectMeta: meta}, binding} {
		if err := r.Client.Delete(ctx, obj, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting the workers of %s: %w", key, err)
		}
	}
	return nil
}

// Quiesce implements Runner: it deletes the loop's worker Deployment and reports the
// worker pods that still exist. A terminating pod still exists: it may be flushing its
// last batch. The pods are listed from the API server, not from a cache that could lag
// behind a pod just created: the manager's client reads unstructured objects directly.
func (r *DeploymentRunner) Quiesce(ctx context.Context, key types.NamespacedName) (string, error) {
	if err := r.Stop(ctx, key); err != nil {
		return "", err
	}
	pods := &unstructured.UnstructuredList{}
	pods.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
	loop := &loopsv1alpha1.CustomerLoop{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	if err := r.Client.List(ctx, pods, client.InNamespace(key.Namespace), client.MatchingLabels(workerLabels(loop))); err != nil {
		return "", fmt.Errorf("listing the worker pods of %s: %w", key, err)
	}
	if n := len(pods.Items); n > 0 {
		names := make([]string, n)
		for i, p := range pods.Items {
			names[i] = p.GetName()
		}
		return fmt.Sprintf("%d worker pod(s) to stop: %s", n, strings.Join(names, ", ")), nil
	}
	return "", nil
}
