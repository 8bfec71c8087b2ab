package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

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

// pipelineConfig renders the worker config from the spec, reading credentials from the
// referenced Secret. The result is what the schema is planned from and what the workers
// run.
func (r *CustomerLoopReconciler) pipelineConfig(ctx context.Context, loop *loopsv1alpha1.CustomerLoop) (pipeline.Config, error) {
	spec := loop.Spec
	cfg := pipeline.Config{
		Loop: loop.Namespace + "/" + loop.Name,
		Kafka: pipeline.KafkaConfig{
			Brokers: append([]string(nil), spec.Kafka.Brokers...),
			Group:   loop.GetConsumerGroup(),
		},
		ClickHouse: pipeline.ClickHouseConfig{
			Addr:     spec.ClickHouse.Address,
			Database: spec.ClickHouse.Database,
		},
		Batch: r.Batch,
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
		for j := range s.Dimensions {
			d := &s.Dimensions[j]
			sc.Dimensions = append(sc.Dimensions, pipeline.Dimension{
				Name: d.Name, Field: d.GetField(), Type: string(d.Type), Nullable: d.Nullable,
			})
		}
		cfg.Streams = append(cfg.Streams, sc)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, &specError{msg: err.Error()}
	}
	if ref := spec.ClickHouse.CredentialsSecretRef; ref != nil {
		user, pass, err := r.credentials(ctx, loop.Namespace, ref)
		if err != nil {
			return cfg, err
		}
		cfg.ClickHouse.Username, cfg.ClickHouse.Password = user, pass
	}
	return cfg, nil
}

// credentials reads a user and password from a Secret in the loop's namespace. Errors
// name the Secret and key, never a value.
func (r *CustomerLoopReconciler) credentials(ctx context.Context, namespace string, ref *loopsv1alpha1.CredentialsSecretRef) (string, string, error) {
	var secret corev1.Secret
	if err := r.Get(ctx, types.NamespacedName{Namespace: namespace, Name: ref.Name}, &secret); err != nil {
		if apierrors.IsNotFound(err) {
			return "", "", &missingInputError{msg: fmt.Sprintf("Secret %s/%s (clickhouse.credentialsSecretRef) not found", namespace, ref.Name)}
		}
		return "", "", fmt.Errorf("reading Secret %s/%s: %w", namespace, ref.Name, err)
	}
	user, ok := secret.Data[ref.GetUsernameKey()]
	if !ok {
		return "", "", &missingInputError{msg: fmt.Sprintf("Secret %s/%s has no key %q", namespace, ref.Name, ref.GetUsernameKey())}
	}
	pass, ok := secret.Data[ref.GetPasswordKey()]
	if !ok {
		return "", "", &missingInputError{msg: fmt.Sprintf("Secret %s/%s has no key %q", namespace, ref.Name, ref.GetPasswordKey())}
	}
	return string(user), string(pass), nil
}
