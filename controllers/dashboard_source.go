package controllers

import (
	"context"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/dashboard"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// DashboardSource serves the manager's dashboard: the loops with feedback views, each read
// from its ClickHouse with the credentials its spec names. Every replica serves it; it
// only reads.
type DashboardSource struct {
	Client client.Client
	// Caches, when set, keeps each loop's figures between requests (feedback.Cache), so
	// that a page reads what changed since the last one; nil reads everything each time.
	Caches *feedback.Caches
}

var _ dashboard.Source = DashboardSource{}

// Loops lists the loops of every namespace that declare feedback.
func (s DashboardSource) Loops(ctx context.Context) ([]dashboard.LoopRef, error) {
	var list loopsv1alpha1.CustomerLoopList
	if err := s.Client.List(ctx, &list); err != nil {
		return nil, err
	}
	var out []dashboard.LoopRef
	for _, l := range list.Items {
		if l.Spec.Feedback != nil && l.DeletionTimestamp.IsZero() {
			out = append(out, dashboard.LoopRef{Namespace: l.Namespace, Name: l.Name})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	names := make([]string, len(out))
	for i, r := range out {
		names[i] = r.String()
	}
	s.Caches.Retain(names)
	return out, nil
}

// Open connects to the loop's ClickHouse for one request.
func (s DashboardSource) Open(ctx context.Context, ref dashboard.LoopRef) (dashboard.Loop, error) {
	loop := &loopsv1alpha1.CustomerLoop{}
	if err := s.Client.Get(ctx, types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}, loop); err != nil {
		if apierrors.IsNotFound(err) {
			return dashboard.Loop{}, fmt.Errorf("%s: %w", ref, dashboard.ErrNotFound)
		}
		return dashboard.Loop{}, err
	}
	if loop.Spec.Feedback == nil {
		return dashboard.Loop{}, fmt.Errorf("%s has no spec.feedback: %w", ref, dashboard.ErrNotFound)
	}
	cfg, err := LoopConfig(ctx, s.Client, loop)
	if err != nil {
		return dashboard.Loop{}, err
	}
	fc := cfg.Feedback
	conn, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		return dashboard.Loop{}, err
	}
	return dashboard.Loop{Conn: conn, Feedback: *fc, Cache: s.Caches.For(ref.String()), Release: func() { _ = conn.Close() }}, nil
}
