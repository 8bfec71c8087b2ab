package v1alpha1

// The connections of a loop: Kafka and ClickHouse, their TLS and credentials, always
// by reference to Secrets of the loop's namespace.

// SASLMechanism is a Kafka SASL mechanism.
// +kubebuilder:validation:Enum=PLAIN;SCRAM-SHA-256;SCRAM-SHA-512
type SASLMechanism string

// KafkaSpec is the Kafka connection of a loop.
type KafkaSpec struct {
	// brokers are bootstrap addresses, host:port.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=261
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:[0-9]{1,5}$`
	Brokers []string `json:"brokers"`

	// consumerGroup is the Kafka consumer group of the loop's workers. Defaults to
	// "customerloop.<namespace>.<name>".
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=249
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._-]+$`
	ConsumerGroup string `json:"consumerGroup,omitempty"`

	// tls encrypts the connection to the brokers.
	// +optional
	TLS *KafkaTLS `json:"tls,omitempty"`

	// sasl authenticates the workers to the brokers.
	// +optional
	SASL *KafkaSASL `json:"sasl,omitempty"`
}

// KafkaTLS configures TLS to the brokers.
type KafkaTLS struct {
	// caSecretRef names a Secret key with the PEM CA bundle that signs the brokers'
	// certificates. Without it the system's roots are used.
	// +optional
	CASecretRef *SecretKeyRef `json:"caSecretRef,omitempty"`

	// serverName overrides the name checked in the brokers' certificates.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`
	ServerName string `json:"serverName,omitempty"`

	// clientCertSecretRef names a Secret with a client certificate and its key, for
	// brokers that authenticate clients by certificate (mutual TLS). For a Strimzi
	// KafkaUser with authentication type tls, name the user's Secret with certKey
	// user.crt and keyKey user.key.
	// +optional
	ClientCertSecretRef *ClientCertSecretRef `json:"clientCertSecretRef,omitempty"`

	// insecureSkipVerify accepts any broker certificate. For tests only.
	// +optional
	InsecureSkipVerify bool `json:"insecureSkipVerify,omitempty"`
}

// ClientCertSecretRef names a Secret in the loop's namespace holding a client
// certificate and its private key, both PEM. The default keys are those of a
// kubernetes.io/tls Secret, which cert-manager writes: tls.crt and tls.key.
type ClientCertSecretRef struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`

	// certKey is the Secret key holding the certificate, followed by any intermediate
	// CA certificates. Defaults to "tls.crt".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	CertKey string `json:"certKey,omitempty"`

	// keyKey is the Secret key holding the certificate's private key. Defaults to
	// "tls.key".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	KeyKey string `json:"keyKey,omitempty"`
}

// KafkaSASL configures SASL authentication to the brokers.
// +kubebuilder:validation:XValidation:rule="!has(self.username) || !has(self.credentialsSecretRef.usernameKey)",message="set username (the user name itself) or credentialsSecretRef.usernameKey (the Secret key holding it), not both"
type KafkaSASL struct {
	// mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512. PLAIN sends the password as it
	// is; use it only with tls.
	// +required
	Mechanism SASLMechanism `json:"mechanism"`

	// username is the SASL user name, for Secrets that hold only the password. A Strimzi
	// KafkaUser's Secret is one (keys password and sasl.jaas.config): the user name is
	// the KafkaUser's name, so set username to it and credentialsSecretRef.name to the
	// Secret Strimzi made. Without it the user name is read from the Secret.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^\S+$`
	Username string `json:"username,omitempty"`

	// credentialsSecretRef names the Secret with the SASL password and, unless username
	// is set, the user name.
	// +required
	CredentialsSecretRef CredentialsSecretRef `json:"credentialsSecretRef"`
}

// SecretKeyRef names one key of a Secret in the loop's namespace.
type SecretKeyRef struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`

	// key in the Secret. Defaults to "ca.crt".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// ClickHouseSpec is the ClickHouse connection of a loop.
// +kubebuilder:validation:XValidation:rule="has(self.cluster) == has(oldSelf.cluster) && (!has(self.cluster) || self.cluster == oldSelf.cluster)",message="cluster is immutable; the loop's tables stay where they were created: create a new CustomerLoop to move to or from a cluster"
// +kubebuilder:validation:XValidation:rule="has(self.address) != has(self.addresses)",message="set clickhouse.address (one server) or clickhouse.addresses (several, tried in order), not both"
type ClickHouseSpec struct {
	// address is the host:port of ClickHouse's native protocol: usually port 9000, or
	// 9440 with tls. Set address or addresses, not both.
	// +optional
	// +kubebuilder:validation:MaxLength=261
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:[0-9]{1,5}$`
	Address string `json:"address,omitempty"`

	// addresses are several host:port of the native protocol, for failover: each
	// connection goes to the first address that accepts it, in the order listed. The
	// addresses must serve the same data (replicas of one cluster, or endpoints of one
	// service): CustomerLoop fails over connections, it does not replicate. Set address
	// or addresses, not both.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=261
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:[0-9]{1,5}$`
	// +kubebuilder:validation:XValidation:rule="self.all(a, self.exists_one(b, b == a))",message="clickhouse.addresses lists an address twice"
	Addresses []string `json:"addresses,omitempty"`

	// tls encrypts the connections to ClickHouse and checks the server's certificate.
	// The address must then be the server's secure native port (tcp_port_secure, 9440
	// on ClickHouse Cloud).
	// +optional
	TLS *ClickHouseTLS `json:"tls,omitempty"`

	// database holds the loop's tables. It is created when missing and cannot be changed
	// afterwards (the data would be left behind).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z_][a-z0-9_]*$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="database is immutable; create a new CustomerLoop to use another database"
	Database string `json:"database"`

	// cluster names a cluster of the server's <remote_servers> (with ZooKeeper or Keeper,
	// <macros> shard and replica, and <distributed_ddl>). When set, every object is created
	// ON CLUSTER: a Replicated table per shard named <table>_local and a Distributed table
	// of the usual name over it, sharded by customer, so that a customer's rows, rollups and
	// gaps stay on one shard. The address may be any node of the cluster. It cannot be
	// changed once set.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=127
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	Cluster string `json:"cluster,omitempty"`

	// credentialsSecretRef names a Secret in the loop's namespace with the ClickHouse user
	// and password. Without it the server's default user is used.
	// +optional
	CredentialsSecretRef *CredentialsSecretRef `json:"credentialsSecretRef,omitempty"`
}

// ClickHouseTLS configures TLS to ClickHouse's secure native port.
type ClickHouseTLS struct {
	// caSecretRef names a Secret key with the PEM CA bundle that signs the server's
	// certificate. Without it the system's roots are used, which is right for servers
	// with a publicly trusted certificate such as ClickHouse Cloud's.
	// +optional
	CASecretRef *SecretKeyRef `json:"caSecretRef,omitempty"`

	// serverName is the name checked in the server's certificate. Defaults to the host
	// of the address connected to; set it when that is an IP address or a name the
	// certificate does not carry.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`
	ServerName string `json:"serverName,omitempty"`

	// clientCertSecretRef names a Secret with a client certificate and its key, for
	// servers that ask for one (verificationMode strict in the server's openSSL
	// config).
	// +optional
	ClientCertSecretRef *ClientCertSecretRef `json:"clientCertSecretRef,omitempty"`
}

// CredentialsSecretRef points at a username and a password in a Secret of the loop's
// namespace.
type CredentialsSecretRef struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`

	// usernameKey is the Secret key holding the user name. Defaults to "username".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	UsernameKey string `json:"usernameKey,omitempty"`

	// passwordKey is the Secret key holding the password. Defaults to "password".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	PasswordKey string `json:"passwordKey,omitempty"`
}
