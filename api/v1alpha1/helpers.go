package v1alpha1

// Condition types of a CustomerLoop. Ready, Reconciling and Stalled follow kstatus.
const (
	ConditionReady        = "Ready"
	ConditionReconciling  = "Reconciling"
	ConditionStalled      = "Stalled"
	ConditionSchemaReady  = "SchemaReady"
	ConditionWorkersReady = "WorkersReady"
)

// Finalizer holds a CustomerLoop until its workers are stopped.
const Finalizer = "loops.customerloop.dev/finalizer"

// GetConsumerGroup returns the Kafka consumer group of the loop's workers.
func (l *CustomerLoop) GetConsumerGroup() string {
	if l.Spec.Kafka.ConsumerGroup != "" {
		return l.Spec.Kafka.ConsumerGroup
	}
	return "customerloop." + l.Namespace + "." + l.Name
}

// GetDeadLetterTopic returns the stream's dead-letter topic.
func (s *StreamSpec) GetDeadLetterTopic() string {
	if s.DeadLetterTopic != "" {
		return s.DeadLetterTopic
	}
	return s.Topic + ".dlq"
}

// GetField returns the JSON field of the dimension.
func (d *Dimension) GetField() string {
	if d.Field != "" {
		return d.Field
	}
	return d.Name
}

// GetUsernameKey returns the Secret key of the ClickHouse user name.
func (r *CredentialsSecretRef) GetUsernameKey() string {
	if r.UsernameKey != "" {
		return r.UsernameKey
	}
	return "username"
}

// GetPasswordKey returns the Secret key of the ClickHouse password.
func (r *CredentialsSecretRef) GetPasswordKey() string {
	if r.PasswordKey != "" {
		return r.PasswordKey
	}
	return "password"
}

// GetKey returns the Secret key, "ca.crt" when unset.
func (r *SecretKeyRef) GetKey() string {
	if r.Key != "" {
		return r.Key
	}
	return "ca.crt"
}

// GetCertKey returns the Secret key of the client certificate, "tls.crt" when unset.
func (r *ClientCertSecretRef) GetCertKey() string {
	if r.CertKey != "" {
		return r.CertKey
	}
	return "tls.crt"
}

// GetKeyKey returns the Secret key of the client certificate's private key, "tls.key"
// when unset.
func (r *ClientCertSecretRef) GetKeyKey() string {
	if r.KeyKey != "" {
		return r.KeyKey
	}
	return "tls.key"
}

// GetAddresses returns the ClickHouse addresses in the order they are tried: address, or
// addresses.
func (c *ClickHouseSpec) GetAddresses() []string {
	if len(c.Addresses) > 0 {
		return append([]string(nil), c.Addresses...)
	}
	if c.Address == "" {
		return nil
	}
	return []string{c.Address}
}

// GetReplicas returns the number of worker pods the spec asks for: zero when paused.
func (l *CustomerLoop) GetReplicas() int32 {
	if l.Spec.Paused {
		return 0
	}
	if l.Spec.Workers.Replicas == nil {
		return 1
	}
	return *l.Spec.Workers.Replicas
}

// GetDeletionPolicy returns the loop's deletion policy, Retain when unset.
func (l *CustomerLoop) GetDeletionPolicy() DeletionPolicy {
	if l.Spec.DeletionPolicy == "" {
		return DeletionRetain
	}
	return l.Spec.DeletionPolicy
}

// SecretNames returns the names of every Secret the loop references, each once.
func (l *CustomerLoop) SecretNames() []string {
	var names []string
	if r := l.Spec.ClickHouse.CredentialsSecretRef; r != nil {
		names = append(names, r.Name)
	}
	if t := l.Spec.ClickHouse.TLS; t != nil {
		if t.CASecretRef != nil {
			names = append(names, t.CASecretRef.Name)
		}
		if t.ClientCertSecretRef != nil {
			names = append(names, t.ClientCertSecretRef.Name)
		}
	}
	if t := l.Spec.Kafka.TLS; t != nil {
		if t.CASecretRef != nil {
			names = append(names, t.CASecretRef.Name)
		}
		if t.ClientCertSecretRef != nil {
			names = append(names, t.ClientCertSecretRef.Name)
		}
	}
	if s := l.Spec.Kafka.SASL; s != nil {
		names = append(names, s.CredentialsSecretRef.Name)
	}
	if c := l.Spec.CustomerChannel; c != nil {
		names = append(names, c.TokensSecretRef.Name)
	}
	if p := l.Spec.Privacy; p != nil {
		names = append(names, p.HMACKeySecretRef.Name)
	}
	// One Secret may serve several refs (a Strimzi user's Secret holds its CA, certificate
	// and key).
	seen := map[string]bool{}
	out := names[:0]
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}
