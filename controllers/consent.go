package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// reconcileConsent consumes the loop's consent topic into ClickHouse and applies what is
// new. Workers read the consent state only when they start a generation, so a change
// is applied with the loop's workers stopped: no worker then holds a customer's
// messages read under the old state, the customer's rows are deleted with nothing
// inserting behind the mutation, and the rollups are rebuilt from what is left. The
// workers started afterwards read the new state before they ingest. Consent messages
// arriving together are applied in one stop. While the workers are still stopping it
// stops the reconcile and comes back.
func (r *CustomerLoopReconciler) reconcileConsent(ctx context.Context, s *reconcileScope) (outcome, error) {
	loop, cfg := s.loop, s.cfg
	if cfg.Consent == nil {
		return outcome{}, nil
	}
	// Until consent is applied the workers stay as they are: the streams are read anyway.
	failed := outcome{observe: true}
	conn, err := s.clickhouse(ctx)
	if err != nil {
		return failed, err
	}
	// The rollups rebuilt after a withdrawal are planned for this server.
	if cfg.ClickHouse.Features, err = s.serverFeatures(ctx); err != nil {
		return failed, err
	}
	if _, err := connect.PullConsent(ctx, conn, cfg); err != nil {
		return failed, fmt.Errorf("consent topic %s: %w", cfg.Consent.Topic, err)
	}
	db := cfg.ClickHouse.Database
	pending, err := connect.PendingConsent(ctx, conn, db)
	if err != nil {
		return failed, fmt.Errorf("reading the pending consent messages: %w", err)
	}
	if len(pending) == 0 {
		return outcome{}, nil
	}
	// Refused messages change no state: they are audited without stopping anything.
	if slices.ContainsFunc(pending, func(e pipeline.ConsentEvent) bool { return e.Err == "" }) {
		key := types.NamespacedName{Namespace: loop.Namespace, Name: loop.Name}
		waiting, err := r.Runner.Quiesce(ctx, key)
		if err != nil {
			return failed, fmt.Errorf("stopping the workers to apply consent: %w", err)
		}
		if waiting != "" {
			s.obs.rollupWait, s.obs.consentWait, s.obs.schemaReady = fmt.Sprintf("consent: %d message(s) to apply; workers are stopped until they are, waiting for %s",
				len(pending), waiting), true, false
			return waitFor(rollupPoll()), nil
		}
	}
	plans, err := ddl.PlanRollups(cfg)
	if err != nil {
		return failed, err
	}
	audits, rebuilt, err := feedback.ApplyConsent(ctx, conn, cfg, plans, pending)
	if err != nil {
		return failed, fmt.Errorf("applying consent: %w", err)
	}
	for _, a := range audits {
		e := a.Event
		l := log.FromContext(ctx).WithValues("id", e.ID, "action", e.Action, "scope", e.Scope)
		if e.Err != "" {
			l.Info("consent message refused", "error", e.Err, "partition", e.Partition, "offset", e.Offset)
			r.event(loop, "Warning", ReasonConsent, "Consent", "consent message at %s/%d offset %d refused: %s", e.Topic, e.Partition, e.Offset, e.Err)
			continue
		}
		var deleted []string
		for i, t := range a.Tables {
			deleted = append(deleted, fmt.Sprintf("%s: %d", t, a.RowsDeleted[i]))
		}
		// Customer ids stay out of events: the audit table holds them.
		l.Info("consent applied", "rowsDeleted", strings.Join(deleted, ", "), "mutations", a.MutationIDs)
		r.event(loop, "Normal", ReasonConsent, "Consent", "consent message %q (%s) applied; rows deleted: %s", e.ID, e.Action, strings.Join(deleted, ", "))
	}
	if len(rebuilt) > 0 {
		log.FromContext(ctx).Info("rollups rebuilt after a consent withdrawal", "rollups", rebuilt)
	}
	return outcome{}, nil
}
