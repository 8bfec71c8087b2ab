package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
)

// What a worker pod is made of. The builders below are pure: they turn a loop and its
// pipeline config into the ConfigMap and Deployment the Deployment runner applies, so
// that golden files pin them down without a cluster.
const (
	workerConfigDir  = "/etc/customerloop/config"
	workerConfigFile = "config.json"
	workerCADir      = "/etc/customerloop/kafka-ca"
	// Client certificates and the ClickHouse CA are mounted like the Kafka CA, each
	// Secret in its own directory.
	workerKafkaCertDir      = "/etc/customerloop/kafka-client-cert"
	workerClickHouseCADir   = "/etc/customerloop/clickhouse-ca"
	workerClickHouseCertDir = "/etc/customerloop/clickhouse-client-cert"
	workerMetricsPort       = 8080

	// ChecksumAnnotation on the pod template changes with the worker config and the
	// referenced Secrets' data, so that either rolls the pods.
	ChecksumAnnotation = "customerloop.dev/config-checksum"

	envClickHouseUser = "CUSTOMERLOOP_CLICKHOUSE_USERNAME"
	envClickHousePass = "CUSTOMERLOOP_CLICKHOUSE_PASSWORD"
	envSASLUser       = "CUSTOMERLOOP_KAFKA_SASL_USERNAME"
	envSASLPass       = "CUSTOMERLOOP_KAFKA_SASL_PASSWORD"
	envHMACKey        = "CUSTOMERLOOP_PII_HMAC_KEY"
)

// workerName is the name of a loop's worker ConfigMap and Deployment.
func workerName(loop *loopsv1alpha1.CustomerLoop) string { return loop.Name + "-worker" }

// workerLabels select a loop's worker pods.
func workerLabels(loop *loopsv1alpha1.CustomerLoop) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":       "customerloop-worker",
		"app.kubernetes.io/instance":   loop.Name,
		"app.kubernetes.io/managed-by": "customerloop",
	}
}

// workerSelector is workerLabels as a label selector string, for the scale subresource.
func workerSelector(loop *loopsv1alpha1.CustomerLoop) string {
	return metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: workerLabels(loop)})
}

// renderWorkerConfig is the config file of the loop's worker pods: the pipeline config
// without credentials (they come from the Secrets through the environment) and with the
// CAs and client certificates read from their mounted Secrets.
func renderWorkerConfig(loop *loopsv1alpha1.CustomerLoop, cfg pipeline.Config) ([]byte, error) {
	cfg.ClickHouse.Username, cfg.ClickHouse.Password = "", ""
	if t := cfg.Kafka.TLS; t != nil {
		spec := loop.Spec.Kafka.TLS
		cfg.Kafka.TLS = mountedTLS(t, spec.CASecretRef, workerCADir, spec.ClientCertSecretRef, workerKafkaCertDir)
	}
	if t := cfg.ClickHouse.TLS; t != nil {
		spec := loop.Spec.ClickHouse.TLS
		cfg.ClickHouse.TLS = mountedTLS(t, spec.CASecretRef, workerClickHouseCADir, spec.ClientCertSecretRef, workerClickHouseCertDir)
	}
	if s := cfg.Kafka.SASL; s != nil {
		cfg.Kafka.SASL = &pipeline.SASLConfig{Mechanism: s.Mechanism}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("rendering the worker config: %w", err)
	}
	return append(b, '\n'), nil
}

// mountedTLS is a TLS config with its PEM replaced by the paths where the worker pod
// mounts the Secrets holding it.
func mountedTLS(t *pipeline.TLSConfig, ca *loopsv1alpha1.SecretKeyRef, caDir string, cert *loopsv1alpha1.ClientCertSecretRef, certDir string) *pipeline.TLSConfig {
	tc := *t
	tc.CAPEM, tc.CertPEM, tc.KeyPEM = nil, nil, nil
	if ca != nil {
		tc.CAFile = path.Join(caDir, ca.GetKey())
	}
	if cert != nil {
		tc.CertFile, tc.KeyFile = path.Join(certDir, cert.GetCertKey()), path.Join(certDir, cert.GetKeyKey())
	}
	return &tc
}

// tlsVolumes mount the Secrets of a TLS config: the CA bundle readable by all, the client
// certificate's key by the worker's group only.
func tlsVolumes(prefix string, ca *loopsv1alpha1.SecretKeyRef, caDir string, cert *loopsv1alpha1.ClientCertSecretRef, certDir string) ([]corev1.Volume, []corev1.VolumeMount) {
	var (
		volumes []corev1.Volume
		mounts  []corev1.VolumeMount
	)
	if ca != nil {
		volumes = append(volumes, corev1.Volume{Name: prefix + "-ca", VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{SecretName: ca.Name,
				Items: []corev1.KeyToPath{{Key: ca.GetKey(), Path: ca.GetKey()}}}}})
		mounts = append(mounts, corev1.VolumeMount{Name: prefix + "-ca", MountPath: caDir, ReadOnly: true})
	}
	if cert != nil {
		volumes = append(volumes, corev1.Volume{Name: prefix + "-client-cert", VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{SecretName: cert.Name,
				Items: []corev1.KeyToPath{{Key: cert.GetCertKey(), Path: cert.GetCertKey()}, {Key: cert.GetKeyKey(), Path: cert.GetKeyKey()}}}}})
		mounts = append(mounts, corev1.VolumeMount{Name: prefix + "-client-cert", MountPath: certDir, ReadOnly: true})
	}
	return volumes, mounts
}

// workerChecksum identifies a worker config and the data of the Secrets it refers to,
// without keeping any of it. Secrets are hashed in name order.
func workerChecksum(config []byte, secrets map[string]map[string][]byte) string {
	h := sha256.New()
	h.Write(config)
	names := make([]string, 0, len(secrets))
	for n := range secrets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(h, "\x00secret %s", n)
		keys := make([]string, 0, len(secrets[n]))
		for k := range secrets[n] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v := sha256.Sum256(secrets[n][k])
			fmt.Fprintf(h, "\x00%s=%x", k, v)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

func ownerRef(loop *loopsv1alpha1.CustomerLoop) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{
		APIVersion: loopsv1alpha1.GroupVersion.String(), Kind: "CustomerLoop",
		Name: loop.Name, UID: loop.UID, Controller: &yes, BlockOwnerDeletion: &yes,
	}
}

// buildWorkerConfigMap holds the rendered worker config.
func buildWorkerConfigMap(loop *loopsv1alpha1.CustomerLoop, config []byte) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{
			Name: workerName(loop), Namespace: loop.Namespace, Labels: workerLabels(loop),
			OwnerReferences: []metav1.OwnerReference{ownerRef(loop)},
		},
		Data: map[string]string{workerConfigFile: string(config)},
	}
}

func secretEnv(name, secret, key string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: key,
	}}}
}

// authDelegator is Kubernetes' built-in ClusterRole that may create TokenReviews and
// SubjectAccessReviews, and nothing else: what a worker needs to check who scrapes it.
const authDelegator = "system:auth-delegator"

// workerAuthBindingName names the ClusterRoleBinding of a loop's worker ServiceAccount.
// Colons appear in neither namespaces nor names, so no two loops share one.
func workerAuthBindingName(namespace, name string) string {
	return "customerloop-worker:" + namespace + ":" + name
}

// buildWorkerServiceAccount is the identity of a loop's worker pods when their metrics
// are secure: the API server reviews scrapers' tokens for them.
func buildWorkerServiceAccount(loop *loopsv1alpha1.CustomerLoop) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{
			Name: workerName(loop), Namespace: loop.Namespace, Labels: workerLabels(loop),
			OwnerReferences: []metav1.OwnerReference{ownerRef(loop)},
		},
	}
}

// buildWorkerAuthBinding lets the worker ServiceAccount review tokens and access
// (system:auth-delegator). Cluster-scoped, it cannot be owned by the loop: the runner
// deletes it when the loop's workers stop.
func buildWorkerAuthBinding(loop *loopsv1alpha1.CustomerLoop) *rbacv1.ClusterRoleBinding {
	labels := workerLabels(loop)
	labels[workerNamespaceLabel] = loop.Namespace
	return &rbacv1.ClusterRoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: workerAuthBindingName(loop.Namespace, loop.Name), Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: authDelegator},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: workerName(loop), Namespace: loop.Namespace}},
	}
}

// workerNamespaceLabel tells, on a cluster-scoped object, the namespace of its loop.
const workerNamespaceLabel = "loops.customerloop.dev/namespace"

// buildWorkerDeployment runs the loop's workers: "customerloop worker" pods in one
// consumer group, non-root (any UID) on a read-only root filesystem, with credentials from the
// loop's Secrets and metrics on a named port.
//
// defaults are the resources of workers whose loop sets none (the manager's
// --worker-resources). With secureMetrics the pods serve metrics over HTTPS to
// authorized tokens only, and run as the loop's worker ServiceAccount, with its token,
// to have them reviewed; without, as the namespace's default one without a token.
func buildWorkerDeployment(loop *loopsv1alpha1.CustomerLoop, image, checksum string, defaults corev1.ResourceRequirements, secureMetrics bool) *appsv1.Deployment {
	yes, no := true, false
	replicas := loop.GetReplicas()
	labels := workerLabels(loop)

	var env []corev1.EnvVar
	if ref := loop.Spec.ClickHouse.CredentialsSecretRef; ref != nil {
		env = append(env, secretEnv(envClickHouseUser, ref.Name, ref.GetUsernameKey()),
			secretEnv(envClickHousePass, ref.Name, ref.GetPasswordKey()))
	}
	if s := loop.Spec.Kafka.SASL; s != nil {
		ref := s.CredentialsSecretRef
		user := secretEnv(envSASLUser, ref.Name, ref.GetUsernameKey())
		if s.Username != "" {
			user = corev1.EnvVar{Name: envSASLUser, Value: s.Username}
		}
		env = append(env, user, secretEnv(envSASLPass, ref.Name, ref.GetPasswordKey()))
	}
	if p := loop.Spec.Privacy; p != nil {
		env = append(env, secretEnv(envHMACKey, p.HMACKeySecretRef.Name, p.HMACKeySecretRef.GetKey()))
	}
	// The Go runtime collects harder as the heap nears the container's memory limit,
	// instead of being killed past it. Without a limit this is the node's memory.
	env = append(env, corev1.EnvVar{Name: "GOMEMLIMIT", ValueFrom: &corev1.EnvVarSource{
		ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "worker", Resource: "limits.memory", Divisor: resource.MustParse("1")}}})

	volumes := []corev1.Volume{
		{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: workerName(loop)}}}},
		{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	mounts := []corev1.VolumeMount{
		{Name: "config", MountPath: workerConfigDir, ReadOnly: true},
		{Name: "tmp", MountPath: "/tmp"},
	}
	if t := loop.Spec.Kafka.TLS; t != nil {
		v, m := tlsVolumes("kafka", t.CASecretRef, workerCADir, t.ClientCertSecretRef, workerKafkaCertDir)
		volumes, mounts = append(volumes, v...), append(mounts, m...)
	}
	if t := loop.Spec.ClickHouse.TLS; t != nil {
		v, m := tlsVolumes("clickhouse", t.CASecretRef, workerClickHouseCADir, t.ClientCertSecretRef, workerClickHouseCertDir)
		volumes, mounts = append(volumes, v...), append(mounts, m...)
	}
	resources := *defaults.DeepCopy()
	if r := loop.Spec.Workers.Resources; r != nil {
		resources = *r.DeepCopy()
	}
	scheme, serviceAccount, automount := corev1.URISchemeHTTP, "", &no
	if secureMetrics {
		scheme, serviceAccount, automount = corev1.URISchemeHTTPS, workerName(loop), &yes
	}
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: path, Port: intstr.FromString("metrics"), Scheme: scheme}}, PeriodSeconds: 10}
	}

	return &appsv1.Deployment{
		TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{
			Name: workerName(loop), Namespace: loop.Namespace, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{ownerRef(loop)},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      labels,
					Annotations: map[string]string{ChecksumAnnotation: checksum},
				},
				Spec: corev1.PodSpec{
					ServiceAccountName:           serviceAccount,
					AutomountServiceAccountToken: automount,
					// No fixed UID: the image's numeric USER runs on plain Kubernetes, and
					// OpenShift's restricted SCC assigns one of the namespace's range.
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   &yes,
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					// A worker flushes and commits what it holds before it leaves its group.
					TerminationGracePeriodSeconds: ptrTo(int64(60)),
					Containers: []corev1.Container{{
						Name:  "worker",
						Image: image,
						Args: []string{"worker",
							"--config=" + path.Join(workerConfigDir, workerConfigFile),
							fmt.Sprintf("--metrics-bind-address=:%d", workerMetricsPort),
							fmt.Sprintf("--metrics-secure=%t", secureMetrics)},
						Env:            env,
						Ports:          []corev1.ContainerPort{{Name: "metrics", ContainerPort: workerMetricsPort, Protocol: corev1.ProtocolTCP}},
						LivenessProbe:  probe("/healthz"),
						ReadinessProbe: probe("/healthz"),
						Resources:      resources,
						VolumeMounts:   mounts,
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: &no, ReadOnlyRootFilesystem: &yes,
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
					Volumes: volumes,
				},
			},
		},
	}
}

func ptrTo[T any](v T) *T { return &v }
