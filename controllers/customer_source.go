package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr"
	"github.com/segmentio/kafka-go"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/customer"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// CustomerChannels serves the customer API's channels: each loop with
// spec.customerChannel, read from the manager's cache at every request, so that every
// replica serves it and a change of the tokens Secret takes effect at once. A loop's
// connection, plan writer and rate limits are kept while its config and credentials
// stay the same.
type CustomerChannels struct {
	Client client.Client
	Log    logr.Logger

	mu sync.Mutex
	m  map[types.NamespacedName]*channelEntry
}

var _ customer.Source = (*CustomerChannels)(nil)

type channelEntry struct {
	hash     string // of the loop's config and credentials, and the channel's spec
	secretRV string // the tokens Secret's resourceVersion the registry was parsed from
	channel  *customer.Channel
	conn     driver.Conn
	writer   *kafka.Writer
}

func (e *channelEntry) close() {
	if e.writer != nil {
		_ = e.writer.Close()
	}
	if e.conn != nil {
		_ = e.conn.Close()
	}
}

// Channel returns the loop's channel, nil when the loop does not exist, is being
// deleted or declares no channel.
func (c *CustomerChannels) Channel(ctx context.Context, namespace, name string) (*customer.Channel, error) {
	key := types.NamespacedName{Namespace: namespace, Name: name}
	loop := &loopsv1alpha1.CustomerLoop{}
	if err := c.Client.Get(ctx, key, loop); err != nil {
		if apierrors.IsNotFound(err) {
			c.forget(key)
			return nil, nil
		}
		return nil, err
	}
	spec := loop.Spec.CustomerChannel
	if spec == nil || loop.Spec.Feedback == nil || !loop.DeletionTimestamp.IsZero() {
		c.forget(key)
		return nil, nil
	}
	secret := &corev1.Secret{}
	if err := c.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: spec.TokensSecretRef.Name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			// No tokens: every request is refused, as for a loop without a channel.
			return nil, nil
		}
		return nil, err
	}
	cfg, err := LoopConfig(ctx, c.Client, loop)
	if err != nil {
		return nil, err
	}
	hash := fmt.Sprintf("%s/%s/%d/%d/%t", configHash(cfg), spec.TokensSecretRef.Name, spec.RateOrDefault(), spec.BurstOrDefault(), spec.PlansAccepted())
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[key]
	if e != nil && e.hash != hash {
		e.close()
		delete(c.m, key)
		e = nil
	}
	if e == nil {
		if e, err = c.open(ctx, key, cfg, spec); err != nil {
			return nil, err
		}
		e.hash = hash
		if c.m == nil {
			c.m = map[types.NamespacedName]*channelEntry{}
		}
		c.m[key] = e
	}
	if e.secretRV != secret.ResourceVersion || e.channel.Tokens.Load() == nil {
		reg, errs := customer.Parse(key.String(), secret.Data)
		for _, err := range errs {
			// The entry's key, never its value.
			c.Log.Error(err, "customer channel: a token entry is left out", "loop", key.String(), "secret", secret.Name)
		}
		e.channel.Tokens.Store(reg)
		e.secretRV = secret.ResourceVersion
	}
	return e.channel, nil
}

// open makes the loop's channel: its connection, its plan writer, its statement and
// dead letters.
func (c *CustomerChannels) open(ctx context.Context, key types.NamespacedName, cfg pipeline.Config, spec *loopsv1alpha1.CustomerChannelSpec) (*channelEntry, error) {
	fc := *cfg.Feedback
	var plans pipeline.StreamConfig
	for _, s := range cfg.Streams {
		if s.Table() == fc.PlanTable {
			plans = s
		}
	}
	conn, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		return nil, err
	}
	e := &channelEntry{conn: conn}
	loopName := key.String()
	stored := func(customer string) string { return plans.StoredCustomer(cfg.HMACKey, customer) }
	ch := &customer.Channel{
		Loop:    loopName,
		Tokens:  &customer.Holder{},
		Limiter: customer.NewLimiter(float64(spec.RateOrDefault()), int(spec.BurstOrDefault())),
		Statement: func(ctx context.Context, id string) (*feedback.Statement, error) {
			st, err := feedback.ReadStatement(ctx, conn, fc, loopName, stored(id), time.Now())
			if err != nil {
				return nil, err
			}
			// The customer's id as their token names it: with hashed ids, the stored one
			// means nothing to them.
			st.Customer = id
			st.Consent.State = "granted"
			if cfg.Consent != nil {
				trail, err := feedback.ConsentTrail(ctx, conn, cfg.ClickHouse.Database, cfg.ConsentCustomer(id))
				if err != nil {
					return nil, err
				}
				st.Consent.State = feedback.ConsentStateOf(trail)
			}
			return st, nil
		},
	}
	ch.DeadLetters = func(ctx context.Context, id string) ([]feedback.StatementDeadLetters, error) {
		// Stored as the statement reads the customer: as the plan stream stores them.
		dead, err := feedback.ReadDeadLetters(ctx, conn, fc, stored(id))
		if err != nil {
			return nil, err
		}
		return feedback.StatementDeadLettersOf(dead), nil
	}
	if cfg.Consent != nil {
		ch.Consent = func(ctx context.Context, id string) (any, error) {
			trail, err := feedback.ConsentTrail(ctx, conn, cfg.ClickHouse.Database, cfg.ConsentCustomer(id))
			if err != nil {
				return nil, err
			}
			return feedback.Receipts(trail), nil
		}
	}
	if spec.PlansAccepted() && plans.Name != "" {
		sec, err := connect.SecurityOf(cfg.Kafka)
		if err != nil {
			e.close()
			return nil, err
		}
		e.writer = &kafka.Writer{
			Addr: kafka.TCP(cfg.Kafka.Brokers...), Topic: plans.Topic, Transport: sec.Transport(),
			Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond,
		}
		if ch.Planner, err = customer.NewPlanner(plans, e.writer, cfg.HMACKey); err != nil {
			e.close()
			return nil, err
		}
	}
	e.channel = ch
	return e, nil
}

// forget closes the loop's channel, if it has one.
func (c *CustomerChannels) forget(key types.NamespacedName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[key]; e != nil {
		e.close()
		delete(c.m, key)
	}
}
