package controllers

import (
	"context"
	"fmt"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
)

// ReasonRetention is the reason of the events recording partitions dropped by retention.
const ReasonRetention = "Retention"

// reconcileRetention keeps each stream with retentionDays to it, on every reconcile: a
// TTL on servers that have one, dropping expired month partitions on older ones.
// Rollups keep their aggregates of dropped rows: retention applies to raw rows.
func (r *CustomerLoopReconciler) reconcileRetention(ctx context.Context, loop *loopsv1alpha1.CustomerLoop, cfg pipeline.Config) error {
	days := map[string]int{}
	for _, s := range loop.Spec.Streams {
		if s.RetentionDays != nil {
			days[s.Name] = int(*s.RetentionDays)
		}
	}
	if len(days) == 0 {
		return nil
	}
	conn, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	v, err := pipeline.ReadServerVersion(ctx, conn)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, s := range cfg.Streams {
		d, ok := days[s.Name]
		if !ok {
			continue
		}
		dropped, err := ddl.ApplyRetention(ctx, conn, v, cfg.ClickHouse, s, d, now)
		if err != nil {
			return fmt.Errorf("retention of stream %s: %w", s.Name, err)
		}
		if len(dropped) > 0 {
			log.FromContext(ctx).Info("expired partitions dropped", "stream", s.Name, "retentionDays", d, "partitions", dropped)
			r.event(loop, "Normal", ReasonRetention, "Retention", "stream %s: dropped month partition(s) %v, all older than %d days", s.Name, dropped, d)
		}
	}
	return nil
}
