package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/cmd/internal/cli"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ingest"
	"customerloop.dev/customerloop/test/testkit"
)

const acmeLoop = `
metadata: {name: acme}
spec:
  kafka: {brokers: []}
  clickhouse: {address: x, database: x}
  consent: {topic: cli.acme.consent}
  streams:
    - name: usage
      kind: Usage
      topic: cli.acme.usage
      mapping: {eventId: event_id, customerId: customer_id, product: product, timestamp: ts, quantity: quantity}
      customers: {allowed: [acme-01]}
`

func usageEvent(id, customer string, at time.Time) string {
	return fmt.Sprintf(`{"event_id":%q,"customer_id":%q,"product":"compute","ts":%q,"quantity":2}`, id, customer, at.Format(time.RFC3339))
}

// TestLoopCommands follows an operator through a loop's life: status shows what the
// loop's status and ledger say, dlq what its dead-letter topic holds, replay re-sends
// dead letters after the fix and stores each once however often it is run, and consent
// shows a withdrawal once the controller applied it.
func TestLoopCommands(t *testing.T) {
	s := needStack(t)
	defer func() {
		if t.Failed() {
			t.Logf("manager log:\n%s", s.logs.String())
		}
	}()
	loop := s.createLoop(t, acmeLoop)
	db := loop.Spec.ClickHouse.Database
	now := time.Now().UTC().Truncate(time.Second)
	produced := now.Add(-3 * time.Hour) // the dead letters' original produce time
	good := []kafka.Message{}
	for i := 1; i <= 5; i++ {
		good = append(good, msg("acme-01", usageEvent(fmt.Sprintf("e-%d", i), "acme-01", now)))
	}
	s.produce(t, "cli.acme.usage", good...)
	unknown := []kafka.Message{
		msg("acme-02", usageEvent("e-6", "acme-02", now)),
		msg("acme-02", usageEvent("e-7", "acme-02", now)),
	}
	for i := range unknown {
		unknown[i].Time = produced
		unknown[i].Headers = []kafka.Header{{Key: "trace", Value: []byte("t-" + strconv.Itoa(i))}}
	}
	s.produce(t, "cli.acme.usage", append(unknown,
		msg("acme-01", `{"event_id":"e-8",`),
		msg("acme-01", `{"event_id":"e-9","customer_id":"acme-01","product":"compute","quantity":1}`))...)
	s.waitStream(t, loop, "usage", "5 rows and 4 dead letters", func(_ *loopsv1alpha1.CustomerLoop, st loopsv1alpha1.StreamStatus) bool {
		return st.RowsIngested == 5 && st.RowsDeadLettered == 4 && st.Lag == 0
	})

	t.Run("status", func(t *testing.T) {
		out := s.mustRun(t, "status", "acme") // the namespace comes from the kubeconfig's context
		t.Logf("customerloop status acme:\n%s", out)
		l := s.get(t, loop)
		for _, want := range []*regexp.Regexp{
			regexp.MustCompile(`(?m)^CustomerLoop:\s+loops/acme$`),
			regexp.MustCompile(`(?m)^\s+Ready\s+True\s+Succeeded\s`),
			regexp.MustCompile(`(?m)^\s+WorkersReady\s+True\s+WorkersRunning\s`),
			regexp.MustCompile(`(?m)^Workers:\s+1 running of 1 wanted$`),
			// rows, lag, dead letters, duplicates, withheld as the status has them
			regexp.MustCompile(fmt.Sprintf(`(?m)^\s+usage\s+Usage\s+cli\.acme\.usage\s+%d\s+%d\s+%d\s+0\s+0\s+\S+Z\s+\d+[smhd]$`,
				l.Status.Streams[0].RowsIngested, l.Status.Streams[0].Lag, l.Status.Streams[0].RowsDeadLettered)),
		} {
			if !want.MatchString(out) {
				t.Errorf("status lacks %s:\n%s", want, out)
			}
		}
		// The ledger's rows per partition add up to the messages produced.
		rows := regexp.MustCompile(`(?m)^\s+usage\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+\d+\s+\S+ \(`).FindAllStringSubmatch(out, -1)
		var msgs, dead int
		for _, r := range rows {
			m, _ := strconv.Atoi(r[3])
			d, _ := strconv.Atoi(r[4])
			msgs, dead = msgs+m, dead+d
		}
		if len(rows) == 0 || msgs != 9 || dead != 4 {
			t.Errorf("the ledger rows of status sum to %d messages and %d dead letters, want 9 and 4:\n%s", msgs, dead, out)
		}

		list := s.mustRun(t, "status", "-A")
		if !regexp.MustCompile(`(?m)^loops\s+acme\s+True\s+Succeeded\s+1\s+5\s+0\s+4\s+1/1\s`).MatchString(list) {
			t.Errorf("status -A:\n%s", list)
		}
		if out, err := s.run(t, "status", "acme", "-n", "elsewhere"); err == nil || !strings.Contains(err.Error(), "elsewhere/acme") {
			t.Errorf("status -n elsewhere read a loop: %v\n%s", err, out)
		}
		// kubectl's flags stand anywhere, before the command too.
		if out, err := s.run(t, "-n", "elsewhere", "status", "acme"); err == nil || !strings.Contains(err.Error(), "elsewhere/acme") {
			t.Errorf("-n elsewhere status read a loop: %v\n%s", err, out)
		}
		if out := s.mustRun(t, "--namespace", cliNamespace, "status", "acme"); !strings.Contains(out, "acme") {
			t.Errorf("--namespace %s status acme:\n%s", cliNamespace, out)
		}
		// Shell completion offers the namespace's loops and a loop's streams.
		t.Setenv("KUBECONFIG", s.kubeconfig)
		for _, c := range []struct {
			args []string
			want string
		}{{[]string{"status", "ac"}, "acme"}, {[]string{"dlq", "acme", "--stream", ""}, "usage"}} {
			var out bytes.Buffer
			root := newRootCommand("customerloop", &out, &bytes.Buffer{})
			root.SetArgs(append([]string{"__complete"}, c.args...))
			if err := root.ExecuteContext(context.Background()); err != nil || !strings.HasPrefix(out.String(), c.want+"\n") {
				t.Errorf("completing %q: %v\n%s", c.args, err, out.String())
			}
		}
	})

	t.Run("dlq", func(t *testing.T) {
		out := s.mustRun(t, "dlq", "acme", "-o", "json", "--limit", "0")
		var got dlqJSON
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		reasons := map[string]int{}
		for _, r := range got.Summary {
			reasons[r.Reason] = r.Count
		}
		if want := map[string]int{"unknown_customer": 2, "invalid_json": 1, "missing_field": 1}; fmt.Sprint(reasons) != fmt.Sprint(want) {
			t.Errorf("summary %v, want %v", reasons, want)
		}
		if len(got.DeadLetters) != 4 {
			t.Fatalf("%d dead letters, want 4:\n%s", len(got.DeadLetters), out)
		}
		for _, d := range got.DeadLetters {
			if d.Stream != "usage" || d.Source.Topic != "cli.acme.usage" || d.Source.Offset < 0 || d.Error == "" {
				t.Errorf("dead letter %+v", d)
			}
			if d.Reason == "unknown_customer" && (d.Key != "acme-02" || d.SourceTime == nil || !d.SourceTime.Equal(produced)) {
				t.Errorf("dead letter of acme-02 %+v: want key acme-02 and source time %s", d, produced)
			}
		}

		table := s.mustRun(t, "dlq", "acme", "--reason", "unknown_customer", "--stream", "usage", "--since", "1h")
		t.Logf("customerloop dlq acme --reason unknown_customer:\n%s", table)
		if !regexp.MustCompile(`(?m)^usage\s+unknown_customer\s+2\s`).MatchString(table) || strings.Contains(table, "invalid_json") ||
			strings.Count(table, `"customer_id":"acme-02"`) != 2 {
			t.Errorf("dlq --reason unknown_customer:\n%s", table)
		}
		if out, err := s.run(t, "dlq", "acme", "--stream", "nope"); err == nil || !strings.Contains(err.Error(), `no stream "nope"`) {
			t.Errorf("dlq --stream nope: %v\n%s", err, out)
		}
	})

	t.Run("replay", func(t *testing.T) {
		// The fix: acme-02 becomes a known customer. The workers are paused, so the
		// two replays below both find nothing stored and send everything: the
		// duplicate window must drop the second.
		l := s.get(t, loop)
		l.Spec.Streams[0].Customers.Allowed = append(l.Spec.Streams[0].Customers.Allowed, "acme-02")
		l.Spec.Paused = true
		if err := s.k8s.Update(context.Background(), l); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, time.Minute, "the loop paused with the fix", func() (bool, string) {
			l := s.get(t, loop)
			c := condition(l, loopsv1alpha1.ConditionWorkersReady)
			return l.Status.ObservedGeneration == l.Generation && c != nil && c.Reason == "Paused", fmt.Sprintf("%+v", l.Status.Conditions)
		})
		end := topicEnds(t, s.brokers, "cli.acme.usage")
		dry := s.mustRun(t, "dlq", "replay", "acme", "--stream", "usage", "--reason", "unknown_customer", "--dry-run")
		t.Logf("customerloop dlq replay --dry-run:\n%s", dry)
		if !strings.Contains(dry, "Would send 2 of 2 dead letters to cli.acme.usage.") || topicEnds(t, s.brokers, "cli.acme.usage") != end {
			t.Fatalf("dry run:\n%s", dry)
		}
		for range 2 {
			out := s.mustRun(t, "dlq", "replay", "acme", "--reason", "unknown_customer", "--stream", "usage")
			if !strings.Contains(out, "Sent 2 to cli.acme.usage.") {
				t.Fatalf("replay while paused:\n%s", out)
			}
		}
		if got := topicEnds(t, s.brokers, "cli.acme.usage"); got != end+4 {
			t.Fatalf("the topic grew by %d messages, want 4", got-end)
		}
		// Each replay carries the original key, the producer's headers, the original
		// produce time and where the message first was.
		for _, m := range testkit.ReadTopic(t, s.brokers, "cli.acme.usage") {
			if header(m, ingest.HeaderReplayedAt) == "" {
				continue
			}
			if string(m.Key) != "acme-02" || !m.Time.Equal(produced) || !strings.HasPrefix(header(m, "trace"), "t-") ||
				header(m, ingest.HeaderReplaySourceTopic) != "cli.acme.usage" || header(m, ingest.HeaderReason) != "" {
				t.Errorf("replayed message %s/%d:%d key %q time %s headers %v", m.Topic, m.Partition, m.Offset, m.Key, m.Time, m.Headers)
			}
			if p := header(m, ingest.HeaderReplaySourcePartition); p != strconv.Itoa(m.Partition) {
				t.Errorf("replay sent to partition %d, the original was read from %s", m.Partition, p)
			}
		}

		l = s.get(t, loop)
		l.Spec.Paused = false
		if err := s.k8s.Update(context.Background(), l); err != nil {
			t.Fatal(err)
		}
		s.waitStream(t, loop, "usage", "the replays stored once, the second replay dropped as duplicates",
			func(_ *loopsv1alpha1.CustomerLoop, st loopsv1alpha1.StreamStatus) bool {
				return st.RowsIngested == 7 && st.DuplicatesDropped == 2
			})
		ids := s.countIDs(t, db, "usage_raw", "event_id")
		if ids["e-6"] != 1 || ids["e-7"] != 1 || len(ids) != 7 {
			t.Errorf("rows per id after two replays: %v", ids)
		}

		// Hours later the window no longer covers them: the raw table does.
		end = topicEnds(t, s.brokers, "cli.acme.usage")
		out := s.mustRun(t, "dlq", "replay", "acme", "--stream", "usage", "--reason", "unknown_customer")
		if !strings.Contains(out, "Send 0 of 2 dead letters to cli.acme.usage; not: 2 already stored.") ||
			topicEnds(t, s.brokers, "cli.acme.usage") != end {
			t.Errorf("replay of stored dead letters:\n%s", out)
		}
		// A dead letter without an id goes only with --force; one picked by offset.
		var inv dlqJSON
		if err := json.Unmarshal([]byte(s.mustRun(t, "dlq", "acme", "--reason", "invalid_json", "-o", "json")), &inv); err != nil || len(inv.DeadLetters) != 1 {
			t.Fatalf("reading the invalid_json dead letter: %v %+v", err, inv)
		}
		at := fmt.Sprintf("%d:%d", inv.DeadLetters[0].Source.Partition, inv.DeadLetters[0].Source.Offset)
		out = s.mustRun(t, "dlq", "replay", "acme", "--stream", "usage", "--offsets", at, "--force", "--dry-run")
		if !strings.Contains(out, "Would send 1 of 1 dead letters") || !strings.Contains(out, "--force: 1 without a usable id") {
			t.Errorf("replay --force of %s:\n%s", at, out)
		}
		if out, err := s.run(t, "dlq", "replay", "acme", "--stream", "usage", "--offsets", "0:999999"); err == nil {
			t.Errorf("replay of an offset no dead letter has succeeded:\n%s", out)
		}
		if out, err := s.run(t, "dlq", "replay", "acme"); err == nil || !strings.Contains(err.Error(), `"stream" not set`) {
			t.Errorf("replay without --stream: %v\n%s", err, out)
		}
	})

	t.Run("consent", func(t *testing.T) {
		if out := s.mustRun(t, "consent", "acme", "acme-01"); !strings.Contains(out, "No consent message of customer acme-01") {
			t.Errorf("consent before any message:\n%s", out)
		}
		s.produce(t, "cli.acme.consent", msg("acme-01", `{"id":"w-1","customerId":"acme-01","action":"withdraw","timestamp":"`+now.Format(time.RFC3339)+`"}`))
		var trail []consentJSON
		testkit.Eventually(t, 90*time.Second, "the withdrawal applied", func() (bool, string) {
			out, err := s.run(t, "consent", "acme", "acme-01", "-o", "json")
			if err != nil {
				return false, err.Error()
			}
			trail = nil
			_ = json.Unmarshal([]byte(out), &trail)
			return len(trail) == 1 && trail[0].State == "applied", out
		})
		// acme-01's five stored events, and the one of theirs that was dead-lettered for
		// want of a timestamp (e-9).
		if c := trail[0]; c.ID != "w-1" || c.Action != "withdraw" || !slices.Equal(c.Tables, []string{"usage_raw", pipeline.DeadLettersTable}) ||
			!slices.Equal(c.RowsDeleted, []uint64{5, 1}) || c.Source.Topic != "cli.acme.consent" {
			t.Errorf("consent trail %+v", c)
		}
		table := s.mustRun(t, "consent", "acme", "acme-01")
		t.Logf("customerloop consent acme acme-01:\n%s", table)
		if !regexp.MustCompile(`(?m)^\S+Z\s+w-1\s+withdraw\s+all streams\s+\S+\s+applied \S+\s+usage_raw=5,dead_letters=1\s`).MatchString(table) {
			t.Errorf("consent table:\n%s", table)
		}
	})
}

const hashedLoop = `
metadata: {name: hashed}
spec:
  kafka: {brokers: []}
  clickhouse: {address: x, database: x}
  consent: {topic: cli.hashed.consent}
  privacy: {hmacKeySecretRef: {name: hashed-pii}}
  streams:
    - name: usage
      kind: Usage
      topic: cli.hashed.usage
      mapping: {eventId: event_id, customerId: customer_id, product: product, timestamp: ts, quantity: quantity}
      pii: {customerId: Hash}
`

// TestHashedCustomers: where every stream hashes customer ids, consent finds a customer
// by the clear id (hashed with the loop's key from its Secret), and replay refuses dead
// letters whose personal data was rewritten.
func TestHashedCustomers(t *testing.T) {
	s := needStack(t)
	key := "an-hmac-key-of-more-than-16-bytes"
	if err := s.k8s.Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "hashed-pii", Namespace: cliNamespace},
		StringData: map[string]string{"hmac-key": key}}); err != nil {
		t.Fatal(err)
	}
	loop := s.createLoop(t, hashedLoop)
	now := time.Now().UTC().Truncate(time.Second)
	s.produce(t, "cli.hashed.usage",
		msg("h-01", usageEvent("e-1", "h-01", now)),
		msg("h-01", `{"event_id":"e-2","customer_id":"h-01","product":"compute","quantity":1}`))
	s.waitStream(t, loop, "usage", "1 row and 1 dead letter", func(_ *loopsv1alpha1.CustomerLoop, st loopsv1alpha1.StreamStatus) bool {
		return st.RowsIngested == 1 && st.RowsDeadLettered == 1
	})

	out := s.mustRun(t, "dlq", "replay", "hashed", "--stream", "usage", "--force")
	if !strings.Contains(out, "Send 0 of 1 dead letters") || !strings.Contains(out, "personal data hashed or removed") {
		t.Errorf("replay of a rewritten dead letter:\n%s", out)
	}
	dl := s.mustRun(t, "dlq", "hashed")
	if strings.Contains(dl, "h-01") || !strings.Contains(dl, "(pii=rewritten)") {
		t.Errorf("dlq of a hashed stream shows the clear customer or hides that it was rewritten:\n%s", dl)
	}

	s.produce(t, "cli.hashed.consent", msg("h-01", `{"id":"w-9","customerId":"h-01","action":"withdraw","timestamp":"`+now.Format(time.RFC3339)+`"}`))
	testkit.Eventually(t, 90*time.Second, "the withdrawal of h-01 applied", func() (bool, string) {
		out, err := s.run(t, "consent", "hashed", "h-01", "-o", "json")
		if err != nil {
			return false, err.Error()
		}
		var trail []consentJSON
		_ = json.Unmarshal([]byte(out), &trail)
		return len(trail) == 1 && trail[0].State == "applied" && trail[0].RowsDeleted[0] == 1, out
	})
	// The table holds the hash: asking with it hashes again and finds nothing.
	hashed := pipeline.HashPII([]byte(key), []byte("h-01"))
	if out := s.mustRun(t, "consent", "hashed", hashed); !strings.Contains(out, "No consent message") {
		t.Errorf("consent by the hash found the clear id's trail:\n%s", out)
	}
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// The commands that run CustomerLoop take the arguments every caller passes them: the
// chart and kustomize config (manager), the worker Deployment and tests (worker).
func TestRunCommandsKeepTheirFlags(t *testing.T) {
	for _, args := range [][]string{
		{"manager", "--runner=deployment", "--worker-image=img:1", `--worker-resources={"limits":{"memory":"512Mi"}}`,
			"--worker-batch-max-rows=1000", "--worker-batch-max-bytes=1048576", "--worker-batch-max-wait=250ms", "--leader-elect=true",
			"--log-level=info", "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081", "--dashboard-bind-address=:8082",
			"--kubeconfig", "k", "--log-format=json"},
		{"worker", "--config=/etc/customerloop/config.json", "--metrics-bind-address=:8080"},
		{"worker", "--config", "c.json", "--metrics-bind-address", "127.0.0.1:0", "--log-level", "debug", "--log-format", "json"},
	} {
		root := newRootCommand("customerloop", &bytes.Buffer{}, &bytes.Buffer{})
		cmd, rest, err := root.Find(args)
		if err != nil {
			t.Errorf("%v: %v", args, err)
			continue
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Errorf("%s: %v", strings.Join(args, " "), err)
		}
	}
}

func TestLogFormat(t *testing.T) {
	var buf bytes.Buffer
	log, err := cli.NewLogger(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("flushed", "messages", 3)
	log.V(1).Info("not at info")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil || line["msg"] != "flushed" || line["messages"] != 3.0 {
		t.Errorf("json log %q: %v", buf.String(), err)
	}
	if _, err := cli.NewLogger(&buf, "info", "xml"); err == nil {
		t.Error("--log-format=xml accepted")
	}
}

// Run as kubectl-customerloop, usage and examples read as kubectl's, and the commands
// that run CustomerLoop itself stay out of the plugin's help but still run.
func TestPluginName(t *testing.T) {
	var out bytes.Buffer
	root := newRootCommand("kubectl-customerloop", &out, &out)
	root.SetArgs([]string{"dlq", "replay", "--help"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "kubectl customerloop dlq replay LOOP --stream STREAM [flags]") ||
		!strings.Contains(s, "\n  kubectl customerloop dlq replay acme --stream usage") {
		t.Errorf("plugin help:\n%s", s)
	}
	out.Reset()
	root = newRootCommand("kubectl-customerloop", &out, &out)
	root.SetArgs([]string{"--help"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); strings.Contains(s, "manager") || !strings.Contains(s, "status") {
		t.Errorf("plugin help lists manager or lacks status:\n%s", s)
	}
}
