package controllers

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
)

// TestComputeConditions derives the conditions of an observation of each kind, and of a
// failure of each phase: between them every reason the controller sets is covered. A
// failure's reason names the phase (or says more: InvalidSpec, MissingInput, ...) and
// its message is the error's.
func TestComputeConditions(t *testing.T) {
	running := WorkerState{Running: true, Replicas: 1}
	fail := func(p phaseName, err error) *phaseFailure { return &phaseFailure{phase: p, err: err} }
	const (
		schemaOK    = "True/SchemaApplied"
		notReached  = "False/NotReached"
		progressing = "True/Progressing"
		notStalled  = "False/Succeeded"
	)
	cases := []struct {
		name string
		obs  observation
		// want is "Status/Reason" by condition type; Ready, Reconciling and Stalled are
		// always checked.
		want map[string]string
		// failMessage, when set, is the message Ready must carry.
		failMessage string
	}{
		{"consuming", observation{reconciled: true, schemaReady: true, workers: running},
			map[string]string{"Ready": "True/Succeeded", "Reconciling": "False/Succeeded", "Stalled": notStalled,
				"SchemaReady": schemaOK, "WorkersReady": "True/WorkersRunning"}, ""},
		{"paused", observation{reconciled: true, schemaReady: true, paused: true, scaledToZero: true},
			map[string]string{"Ready": "True/Paused", "Reconciling": "False/Succeeded", "Stalled": notStalled,
				"SchemaReady": schemaOK, "WorkersReady": "False/Paused"}, ""},
		{"scaled to zero", observation{reconciled: true, schemaReady: true, scaledToZero: true},
			map[string]string{"Ready": "True/ScaledToZero", "Reconciling": "False/Succeeded", "Stalled": notStalled,
				"WorkersReady": "False/ScaledToZero"}, ""},
		{"Kafka unavailable", observation{reconciled: true, schemaReady: true, workers: running, kafkaErr: errors.New("dial tcp 10.0.0.1:9092: refused")},
			map[string]string{"Ready": "False/KafkaUnavailable", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": schemaOK, "WorkersReady": "False/KafkaUnavailable"}, ""},
		{"a worker failing", observation{reconciled: true, schemaReady: true, workers: WorkerState{Message: "worker failing: boom"}},
			map[string]string{"Ready": "False/WorkersFailing", "Reconciling": progressing, "Stalled": notStalled,
				"WorkersReady": "False/WorkersFailing"}, "worker failing: boom"},
		{"waiting for a rollup backfill", observation{rollupWait: "rollup daily: waiting for 1 worker pod(s) to stop: w-1"},
			map[string]string{"Ready": "False/RollupBackfill", "Reconciling": "True/RollupBackfill", "Stalled": notStalled,
				"SchemaReady": "False/RollupBackfill", "WorkersReady": "False/RollupBackfill"}, "rollup daily: waiting for 1 worker pod(s) to stop: w-1"},
		{"waiting to apply consent", observation{rollupWait: "consent: 1 message(s) to apply", consentWait: true},
			map[string]string{"Ready": "False/Consent", "Reconciling": "True/Consent", "Stalled": notStalled,
				"SchemaReady": "False/Consent", "WorkersReady": "False/Consent"}, "consent: 1 message(s) to apply"},

		{"config: a Secret missing", observation{failed: fail(phaseConfig, &missingInputError{msg: "Secret default/ch (clickhouse.credentialsSecretRef) not found"})},
			map[string]string{"Ready": "False/MissingInput", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": "False/MissingInput", "WorkersReady": notReached}, "Secret default/ch (clickhouse.credentialsSecretRef) not found"},
		{"config: an invalid spec", observation{failed: fail(phaseConfig, &specError{msg: "workers.batch.maxWait: bad"})},
			map[string]string{"Ready": "False/InvalidSpec", "Reconciling": "False/InvalidSpec", "Stalled": "True/InvalidSpec",
				"SchemaReady": "False/InvalidSpec", "WorkersReady": notReached}, "workers.batch.maxWait: bad"},
		{"config: another error", observation{failed: fail(phaseConfig, errors.New("reading Secret default/ch: forbidden"))},
			map[string]string{"Ready": "False/ConfigFailed", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": "False/ConfigFailed", "WorkersReady": notReached}, "reading Secret default/ch: forbidden"},
		{"schema: ClickHouse unreachable", observation{failed: fail(phaseSchema, errors.New("clickhouse ch:9000: connection refused"))},
			map[string]string{"Ready": "False/ClickHouseError", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": "False/ClickHouseError", "WorkersReady": notReached}, "clickhouse ch:9000: connection refused"},
		{"schema: an unsafe change", observation{failed: fail(phaseSchema, &ddl.UnsafeChangeError{Table: "usage_raw", Column: "seats", Existing: "Int32", Desired: "String"})},
			map[string]string{"Ready": "False/UnsafeSchemaChange", "Reconciling": "False/UnsafeSchemaChange", "Stalled": "True/UnsafeSchemaChange",
				"SchemaReady": "False/UnsafeSchemaChange", "WorkersReady": notReached}, ""},
		{"schema: the cluster not set up", observation{failed: fail(phaseSchema, &connect.ClusterError{})},
			map[string]string{"Ready": "False/ClusterNotReady", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": "False/ClusterNotReady", "WorkersReady": notReached}, ""},
		{"feedback: the views refused", observation{schemaReady: true, failed: fail(phaseFeedback, errors.New("creating feedback_gaps: code 60"))},
			map[string]string{"Ready": "False/FeedbackFailed", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": "False/FeedbackFailed", "WorkersReady": notReached}, "creating feedback_gaps: code 60"},
		{"rollups: a rollup that does not fit", observation{schemaReady: true, failed: fail(phaseRollups, &ddl.RollupError{Rollup: "daily", Msg: `measure "used": no such field`})},
			map[string]string{"Ready": "False/InvalidRollup", "Reconciling": "False/InvalidRollup", "Stalled": "True/InvalidRollup",
				"SchemaReady": "False/InvalidRollup", "WorkersReady": notReached}, `rollup daily: measure "used": no such field`},
		{"rollups: the backfill refused", observation{schemaReady: true, failed: fail(phaseRollups, errors.New("stopping the workers for the backfill of rollup daily: timeout"))},
			map[string]string{"Ready": "False/RollupsFailed", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": "False/RollupsFailed", "WorkersReady": notReached}, "stopping the workers for the backfill of rollup daily: timeout"},
		{"consent: applying failed", observation{schemaReady: true, failed: fail(phaseConsent, errors.New("applying consent: code 497"))},
			map[string]string{"Ready": "False/ConsentFailed", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": schemaOK, "WorkersReady": "False/ConsentFailed"}, "applying consent: code 497"},
		{"consent: failed on a paused loop", observation{schemaReady: true, paused: true, failed: fail(phaseConsent, errors.New("consent topic t: unknown topic"))},
			map[string]string{"Ready": "False/ConsentFailed", "Reconciling": progressing, "Stalled": notStalled,
				"WorkersReady": "False/ConsentFailed"}, "consent topic t: unknown topic"},
		{"workers: not started", observation{schemaReady: true, failed: fail(phaseWorkers, errors.New("applying Deployment w: forbidden")),
			workers: WorkerState{Message: "applying Deployment w: forbidden"}},
			map[string]string{"Ready": "False/WorkersFailing", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": schemaOK, "WorkersReady": "False/WorkersFailing"}, "applying Deployment w: forbidden"},
		{"retention failed", observation{schemaReady: true, workers: running, failed: fail(phaseRetention, errors.New("retention of stream usage: code 341"))},
			map[string]string{"Ready": "False/RetentionFailed", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": schemaOK, "WorkersReady": "True/WorkersRunning"}, "retention of stream usage: code 341"},
		{"digests failed", observation{schemaReady: true, workers: running, failed: fail(phaseDigests, errors.New("clickhouse ch:9000: connection refused"))},
			map[string]string{"Ready": "False/DigestsFailed", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": schemaOK, "WorkersReady": "True/WorkersRunning"}, "clickhouse ch:9000: connection refused"},
		{"statements failed", observation{schemaReady: true, workers: running, failed: fail(phaseStatements, errors.New("clickhouse ch:9000: connection refused"))},
			map[string]string{"Ready": "False/StatementsFailed", "Reconciling": progressing, "Stalled": notStalled,
				"SchemaReady": schemaOK, "WorkersReady": "True/WorkersRunning"}, "clickhouse ch:9000: connection refused"},
		{"digests: a publisher that cannot start", observation{schemaReady: true, workers: running, failed: fail(phaseDigests, &specError{msg: "feedback topic: invalid"})},
			map[string]string{"Ready": "False/InvalidSpec", "Reconciling": "False/InvalidSpec", "Stalled": "True/InvalidSpec",
				"SchemaReady": schemaOK, "WorkersReady": "True/WorkersRunning"}, "feedback topic: invalid"},
	}
	seen := map[string]bool{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := computeConditions(&tc.obs)
			for _, typ := range []string{loopsv1alpha1.ConditionReady, loopsv1alpha1.ConditionReconciling, loopsv1alpha1.ConditionStalled} {
				if _, ok := tc.want[typ]; !ok {
					t.Fatalf("the case does not say what %s should be", typ)
				}
			}
			for typ, want := range tc.want {
				c, ok := got[typ]
				if !ok {
					t.Errorf("%s not set, want %s", typ, want)
					continue
				}
				seen[c.reason] = true
				if s := fmt.Sprintf("%s/%s", c.status, c.reason); s != want {
					t.Errorf("%s = %s (%q), want %s", typ, s, c.message, want)
				}
			}
			ready := got[loopsv1alpha1.ConditionReady]
			if tc.failMessage != "" && ready.message != tc.failMessage {
				t.Errorf("Ready's message = %q, want %q", ready.message, tc.failMessage)
			}
			if ready.status != "True" && ready.reason != ReasonClusterNotReady && strings.TrimSpace(ready.message) == "" {
				t.Error("Ready is not True and its message is empty")
			}
		})
	}
	for _, r := range ConditionReasons {
		if !seen[r] {
			t.Errorf("no case sets the reason %s", r)
		}
	}
	for r := range seen {
		if !slices.Contains(ConditionReasons, r) {
			t.Errorf("reason %s is set but not in ConditionReasons", r)
		}
	}
	for p, r := range phaseReasons {
		if !seen[r] {
			t.Errorf("no case fails phase %s (reason %s)", p, r)
		}
	}
}
