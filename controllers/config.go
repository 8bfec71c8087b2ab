package controllers

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
)

// specError is a problem with the spec that retrying cannot fix: the loop stalls until the
// user changes it.
type specError struct{ msg string }

func (e *specError) Error() string { return e.msg }

// missingInputError is something the loop needs that does not exist yet (a Secret, a
// key): the loop waits for it and is re-reconciled when it appears.
type missingInputError struct{ msg string }

func (e *missingInputError) Error() string { return e.msg }

// pipelineConfig renders the loop's config from the spec, reading credentials from the
// referenced Secrets. It is the one place the spec is translated: the schema, feedback
// views, rollups, consent, retention and digests are planned from the result, and the
// workers run its workerConfig.
func (r *CustomerLoopReconciler) pipelineConfig(ctx context.Context, loop *loopsv1alpha1.CustomerLoop) (pipeline.Config, error) {
	spec := loop.Spec
	cfg := pipeline.Config{
		Loop: loop.Namespace + "/" + loop.Name,
		Kafka: pipeline.KafkaConfig{
			Brokers: append([]string(nil), spec.Kafka.Brokers...),
			Group:   loop.GetConsumerGroup(),
		},
		ClickHouse: pipeline.ClickHouseConfig{
			Database: spec.ClickHouse.Database,
			Cluster:  spec.ClickHouse.Cluster,
		},
		Batch: r.Batch,
	}
	if addrs := spec.ClickHouse.GetAddresses(); len(addrs) > 0 {
		cfg.ClickHouse.Addr, cfg.ClickHouse.Failover = addrs[0], addrs[1:]
	}
	if c := spec.Consent; c != nil {
		cfg.Consent = &pipeline.ConsentConfig{Topic: c.Topic}
	}
	if b := spec.Workers.Batch; b != nil {
		if b.MaxRows > 0 {
			cfg.Batch.MaxRows = int(b.MaxRows)
		}
		if b.MaxBytes > 0 {
			cfg.Batch.MaxBytes = int(b.MaxBytes)
		}
		if b.MaxWait != "" {
			d, err := time.ParseDuration(b.MaxWait)
			if err != nil {
				return cfg, &specError{msg: fmt.Sprintf("workers.batch.maxWait: %v", err)}
			}
			cfg.Batch.MaxWait = pipeline.Duration{Duration: d}
		}
	}
	for i := range spec.Streams {
		s := &spec.Streams[i]
		m := s.Mapping
		sc := pipeline.StreamConfig{
			Name:            s.Name,
			Kind:            pipeline.Kind(s.Kind),
			Topic:           s.Topic,
			DeadLetterTopic: s.GetDeadLetterTopic(),
			Mapping: pipeline.Mapping{
				CustomerID: m.CustomerID, Product: m.Product, Quantity: m.Quantity,
				EventID: m.EventID, Timestamp: m.Timestamp,
				PlanID: m.PlanID, Period: m.Period, SubmittedAt: m.SubmittedAt, Confidence: m.Confidence,
			},
		}
		if s.DedupWindow != "" {
			d, err := time.ParseDuration(s.DedupWindow)
			if err != nil {
				return cfg, &specError{msg: fmt.Sprintf("streams[%s].dedupWindow: %v", s.Name, err)}
			}
			sc.DedupWindow = pipeline.Duration{Duration: d}
		}
		if c := s.Customers; c != nil {
			sc.Customers = &pipeline.CustomerFilter{Allowed: append([]string(nil), c.Allowed...), Pattern: c.Pattern}
		}
		if p := s.PII; p != nil {
			sc.PII = &pipeline.CorePII{CustomerID: string(p.CustomerID), ID: string(p.ID)}
		}
		for j := range s.Dimensions {
			d := &s.Dimensions[j]
			sc.Dimensions = append(sc.Dimensions, pipeline.Dimension{
				Name: d.Name, Field: d.GetField(), Type: string(d.Type), Nullable: d.Nullable, PII: string(d.PII),
			})
		}
		if s.RetentionDays != nil {
			sc.RetentionDays = int(*s.RetentionDays)
		}
		cfg.Streams = append(cfg.Streams, sc)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, &specError{msg: err.Error()}
	}
	cfg.Rollups = rollupConfigs(spec.Rollups)
	fc, err := feedbackConfig(spec)
	if err != nil {
		return cfg, err
	}
	cfg.Feedback = fc
	if l := spec.Limits; l != nil {
		cfg.Limits = pipeline.Limits{MaxFields: int(l.MaxFields), MaxStringBytes: int(l.MaxStringBytes), MaxDepth: int(l.MaxDepth)}
	}
	if p := spec.Privacy; p != nil {
		key, err := r.secretValue(ctx, loop.Namespace, "privacy.hmacKeySecretRef", p.HMACKeySecretRef.Name, p.HMACKeySecretRef.GetKey())
		if err != nil {
			return cfg, err
		}
		if len(key) < pipeline.MinHMACKeyBytes {
			return cfg, &specError{msg: fmt.Sprintf("Secret %s/%s (privacy.hmacKeySecretRef) key %q holds %d bytes; the HMAC key needs at least %d",
				loop.Namespace, p.HMACKeySecretRef.Name, p.HMACKeySecretRef.GetKey(), len(key), pipeline.MinHMACKeyBytes)}
		}
		cfg.HMACKey = key
	}
	if ref := spec.ClickHouse.CredentialsSecretRef; ref != nil {
		user, pass, err := r.credentials(ctx, loop.Namespace, "clickhouse.credentialsSecretRef", ref)
		if err != nil {
			return cfg, err
		}
		cfg.ClickHouse.Username, cfg.ClickHouse.Password = user, pass
	}
	if t := spec.ClickHouse.TLS; t != nil {
		tc, err := r.tlsConfig(ctx, loop.Namespace, "clickhouse.tls", t.CASecretRef, t.ClientCertSecretRef)
		if err != nil {
			return cfg, err
		}
		tc.ServerName = t.ServerName
		cfg.ClickHouse.TLS = tc
	}
	if t := spec.Kafka.TLS; t != nil {
		tc, err := r.tlsConfig(ctx, loop.Namespace, "kafka.tls", t.CASecretRef, t.ClientCertSecretRef)
		if err != nil {
			return cfg, err
		}
		tc.ServerName, tc.InsecureSkipVerify = t.ServerName, t.InsecureSkipVerify
		cfg.Kafka.TLS = tc
	}
	if sa := spec.Kafka.SASL; sa != nil {
		ref := &sa.CredentialsSecretRef
		var user, pass string
		var err error
		if sa.Username != "" {
			var b []byte
			b, err = r.secretValue(ctx, loop.Namespace, "kafka.sasl.credentialsSecretRef", ref.Name, ref.GetPasswordKey())
			user, pass = sa.Username, string(b)
		} else {
			user, pass, err = r.credentials(ctx, loop.Namespace, "kafka.sasl.credentialsSecretRef", ref)
		}
		if err != nil {
			return cfg, err
		}
		cfg.Kafka.SASL = &pipeline.SASLConfig{Mechanism: string(sa.Mechanism), Username: user, Password: pass}
	}
	dc, err := digestConfig(spec.Feedback, cfg)
	if err != nil {
		return cfg, err
	}
	cfg.Digests = dc
	sc, err := statementConfig(spec.CustomerChannel, cfg)
	if err != nil {
		return cfg, err
	}
	cfg.Statements = sc
	return cfg, nil
}

// rollupConfigs renders the spec's rollups.
func rollupConfigs(rollups []loopsv1alpha1.RollupSpec) []pipeline.RollupConfig {
	var out []pipeline.RollupConfig
	for _, r := range rollups {
		rc := pipeline.RollupConfig{
			Name: r.Name, Stream: r.Stream, Granularity: pipeline.RollupGranularity(r.Granularity),
			Dimensions: append([]string(nil), r.Dimensions...),
		}
		for _, m := range r.Measures {
			rc.Measures = append(rc.Measures, pipeline.MeasureConfig{
				Name: m.Name, Function: pipeline.RollupFunction(m.Function), Field: m.Field,
				Quantiles: append([]string(nil), m.Quantiles...),
			})
		}
		out = append(out, rc)
	}
	return out
}

// feedbackConfig renders what the feedback views of the loop read, and the tracking
// signal's alert band, or nil without feedback.
func feedbackConfig(spec loopsv1alpha1.CustomerLoopSpec) (*pipeline.FeedbackConfig, error) {
	f := spec.Feedback
	if f == nil {
		return nil, nil
	}
	grain := pipeline.Grain(f.Granularity)
	if grain == "" {
		grain = pipeline.GrainMonth
	}
	fc := &pipeline.FeedbackConfig{
		Database:   spec.ClickHouse.Database,
		Cluster:    spec.ClickHouse.Cluster,
		UsageTable: f.UsageStream + "_raw",
		PlanTable:  f.PlanStream + "_raw",
		Grain:      grain,
	}
	if s := f.TrackingSignalLimit; s != "" {
		// The API server admits only decimals above 0; a loop stored before the field
		// existed reads the default.
		l, err := strconv.ParseFloat(s, 64)
		if err != nil || !(l > 0) || math.IsInf(l, 0) {
			return nil, &specError{msg: fmt.Sprintf("spec.feedback.trackingSignalLimit %q: want a decimal above 0, e.g. \"4\"", s)}
		}
		fc.TrackingSignalLimit = l
	}
	return fc, nil
}

// digestConfig renders the digest publisher's config from the spec and the rest of the
// loop's config (cfg.Feedback and the Kafka connection), or nil when the loop publishes
// no digests.
func digestConfig(f *loopsv1alpha1.FeedbackSpec, cfg pipeline.Config) (*pipeline.DigestConfig, error) {
	if f == nil || f.Publish == nil || cfg.Feedback == nil {
		return nil, nil
	}
	interval := defaultPublishInterval
	if f.Publish.Interval != "" {
		d, err := time.ParseDuration(f.Publish.Interval)
		if err != nil {
			return nil, &specError{msg: fmt.Sprintf("spec.feedback.publish.interval: %v", err)}
		}
		interval = d
	}
	kafka := cfg.Kafka
	kafka.Group = ""
	dc := &pipeline.DigestConfig{
		Loop:      cfg.Loop,
		Kafka:     kafka,
		Topic:     f.Publish.Topic,
		Feedback:  *cfg.Feedback,
		Publisher: publisherName(),
		Cluster:   cfg.ClickHouse.Cluster,
		Interval:  pipeline.Duration{Duration: interval},
	}
	if f.Publish.TopCustomers != nil {
		dc.TopCustomers = int(*f.Publish.TopCustomers)
	}
	if p := f.GapThresholdPercent; p != nil {
		t := float64(*p) / 100
		dc.Threshold = &t
	}
	if err := dc.Validate(); err != nil {
		return nil, &specError{msg: "spec.feedback.publish: " + err.Error()}
	}
	return dc, nil
}

// statementConfig renders the channel publisher's config from the spec and the rest of
// the loop's config, or nil when the loop publishes no statements.
func statementConfig(c *loopsv1alpha1.CustomerChannelSpec, cfg pipeline.Config) (*pipeline.StatementConfig, error) {
	if c == nil || c.Statements == nil || cfg.Feedback == nil {
		return nil, nil
	}
	interval := defaultPublishInterval
	if c.Statements.Interval != "" {
		d, err := time.ParseDuration(c.Statements.Interval)
		if err != nil {
			return nil, &specError{msg: fmt.Sprintf("spec.customerChannel.statements.interval: %v", err)}
		}
		interval = d
	}
	kafka := cfg.Kafka
	kafka.Group = ""
	sc := &pipeline.StatementConfig{
		Loop:      cfg.Loop,
		Kafka:     kafka,
		Topic:     c.Statements.Topic,
		Feedback:  *cfg.Feedback,
		Consent:   cfg.Consent != nil,
		Publisher: publisherName(),
		Cluster:   cfg.ClickHouse.Cluster,
		Interval:  pipeline.Duration{Duration: interval},
	}
	// The consent tables keep clear ids unless every stream hashes them; the feedback
	// tables keep what the usage stream stores.
	for _, s := range cfg.Streams {
		if s.Table() == cfg.Feedback.UsageTable && s.PII != nil && s.PII.CustomerID == pipeline.PIIHash && !cfg.ConsentHashed() {
			sc.HashConsentIDs, sc.HMACKey = true, cfg.HMACKey
		}
	}
	if err := sc.Validate(); err != nil {
		return nil, &specError{msg: "spec.customerChannel.statements: " + err.Error()}
	}
	return sc, nil
}

// tlsConfig reads a CA bundle and a client certificate with its key from the loop's
// Secrets. A certificate or key that does not parse stalls the loop with what is wrong,
// never with what the Secret holds; changing the Secret reconciles the loop again.
func (r *CustomerLoopReconciler) tlsConfig(ctx context.Context, namespace, field string, ca *loopsv1alpha1.SecretKeyRef, cert *loopsv1alpha1.ClientCertSecretRef) (*pipeline.TLSConfig, error) {
	tc := &pipeline.TLSConfig{}
	if ca != nil {
		v, err := r.secretValue(ctx, namespace, field+".caSecretRef", ca.Name, ca.GetKey())
		if err != nil {
			return nil, err
		}
		tc.CAPEM = v
	}
	if cert != nil {
		var err error
		if tc.CertPEM, err = r.secretValue(ctx, namespace, field+".clientCertSecretRef", cert.Name, cert.GetCertKey()); err != nil {
			return nil, err
		}
		if tc.KeyPEM, err = r.secretValue(ctx, namespace, field+".clientCertSecretRef", cert.Name, cert.GetKeyKey()); err != nil {
			return nil, err
		}
	}
	if err := pipeline.CheckTLS(tc); err != nil {
		var names []string
		if ca != nil {
			names = append(names, namespace+"/"+ca.Name)
		}
		if cert != nil && (ca == nil || cert.Name != ca.Name) {
			names = append(names, namespace+"/"+cert.Name)
		}
		return nil, &specError{msg: fmt.Sprintf("%s (Secret %s): %v", field, strings.Join(names, ", "), err)}
	}
	return tc, nil
}

// secretValue reads one key of a Secret in the loop's namespace. Errors name the field,
// the Secret and the key, never a value.
func (r *CustomerLoopReconciler) secretValue(ctx context.Context, namespace, field, name, key string) ([]byte, error) {
	var secret corev1.Secret
	if err := r.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, &secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, &missingInputError{msg: fmt.Sprintf("Secret %s/%s (%s) not found", namespace, name, field)}
		}
		return nil, fmt.Errorf("reading Secret %s/%s: %w", namespace, name, err)
	}
	v, ok := secret.Data[key]
	if !ok {
		return nil, &missingInputError{msg: fmt.Sprintf("Secret %s/%s (%s) has no key %q", namespace, name, field, key)}
	}
	return v, nil
}

// credentials reads a user and password from a Secret in the loop's namespace.
func (r *CustomerLoopReconciler) credentials(ctx context.Context, namespace, field string, ref *loopsv1alpha1.CredentialsSecretRef) (string, string, error) {
	user, err := r.secretValue(ctx, namespace, field, ref.Name, ref.GetUsernameKey())
	if err != nil {
		return "", "", err
	}
	pass, err := r.secretValue(ctx, namespace, field, ref.Name, ref.GetPasswordKey())
	if err != nil {
		return "", "", err
	}
	return string(user), string(pass), nil
}

// LoopConfig renders a loop's pipeline config, credentials included, as the reconciler
// does: for commands that read a loop's data with the user's own access.
func LoopConfig(ctx context.Context, c client.Client, loop *loopsv1alpha1.CustomerLoop) (pipeline.Config, error) {
	return (&CustomerLoopReconciler{Client: c}).pipelineConfig(ctx, loop)
}
