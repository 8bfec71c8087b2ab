package controllers

import (
	"context"
	"fmt"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
)

// reconcileRetention keeps each stream with retentionDays to it, on every reconcile: a
// TTL on servers that have one, dropping expired month partitions on older ones.
// Rollups keep their aggregates of dropped rows: retention applies to raw rows.
func (r *CustomerLoopReconciler) reconcileRetention(ctx context.Context, s *reconcileScope) (outcome, error) {
	var kept []pipeline.StreamConfig
	for _, sc := range s.cfg.Streams {
		if sc.RetentionDays > 0 {
			kept = append(kept, sc)
		}
	}
	if len(kept) == 0 {
		return outcome{}, nil
	}
	conn, err := s.clickhouse(ctx)
	if err != nil {
		return outcome{}, err
	}
	v, err := pipeline.ReadServerVersion(ctx, conn)
	if err != nil {
		return outcome{}, err
	}
	now := time.Now()
	for _, sc := range kept {
		d := sc.RetentionDays
		dropped, err := ddl.ApplyRetention(ctx, conn, v, s.cfg.ClickHouse, sc, d, now)
		if err != nil {
			return outcome{}, fmt.Errorf("retention of stream %s: %w", sc.Name, err)
		}
		if len(dropped) > 0 {
			log.FromContext(ctx).Info("expired partitions dropped", "stream", sc.Name, "retentionDays", d, "partitions", dropped)
			r.event(s.loop, "Normal", ReasonRetention, "Retention", "stream %s: dropped month partition(s) %v, all older than %d days", sc.Name, dropped, d)
		}
	}
	return outcome{}, nil
}
