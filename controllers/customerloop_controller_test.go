package controllers

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/test/testkit"
)

var testSeq int

// newLoop returns a valid loop with a usage and a plan stream on topics of its own.
func newLoop(t *testing.T) *loopsv1alpha1.CustomerLoop {
	testSeq++
	name := fmt.Sprintf("loop%d", testSeq)
	db := fmt.Sprintf("ctrl_test_%d_%d", time.Now().Unix(), testSeq)
	loop := &loopsv1alpha1.CustomerLoop{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: loopsv1alpha1.CustomerLoopSpec{
			Kafka:      loopsv1alpha1.KafkaSpec{Brokers: brokers},
			ClickHouse: loopsv1alpha1.ClickHouseSpec{Address: chAddr, Database: db},
			Streams: []loopsv1alpha1.StreamSpec{
				{
					Name: "usage", Kind: loopsv1alpha1.StreamUsage, Topic: name + ".usage",
					Mapping:    loopsv1alpha1.FieldMapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts", Quantity: "qty"},
					Dimensions: []loopsv1alpha1.Dimension{{Name: "region", Type: "String", Nullable: true}},
				},
				{
					Name: "plans", Kind: loopsv1alpha1.StreamPlan, Topic: name + ".plans",
					Mapping: loopsv1alpha1.FieldMapping{PlanID: "id", CustomerID: "customer", Product: "product", Period: "period", Quantity: "qty"},
				},
			},
		},
	}
	// Delete the loop if the test left it, wait until its finalizer ran (so that no
	// reconcile recreates the schema), then drop its database.
	t.Cleanup(func() {
		ctx := context.Background()
		if err := k8s.Delete(ctx, loop); err == nil {
			deadline := time.Now().Add(30 * time.Second)
			for !apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(loop), &loopsv1alpha1.CustomerLoop{})) && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
		}
		_ = ch.Exec(ctx, "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db))
	})
	return loop
}

// useClickHouseSecret makes the loop read its ClickHouse credentials from a Secret of its
// namespace, as a user would, and returns the Secret; call it once the loop's namespace
// is set.
func useClickHouseSecret(t *testing.T, loop *loopsv1alpha1.CustomerLoop) *corev1.Secret {
	t.Helper()
	user := chUser
	if user == "" {
		user = "default"
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-clickhouse", Namespace: loop.Namespace},
		Data:       map[string][]byte{"username": []byte(user), "password": []byte(chPass)},
	}
	if err := k8s.Create(context.Background(), secret); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), secret) })
	loop.Spec.ClickHouse.CredentialsSecretRef = &loopsv1alpha1.CredentialsSecretRef{Name: secret.Name}
	return secret
}

// updateLoop applies mutate to the loop's latest version and writes it, again on a conflict
// with the controller's own writes (status, finalizer); it returns what was written.
func updateLoop(t *testing.T, loop *loopsv1alpha1.CustomerLoop, mutate func(*loopsv1alpha1.CustomerLoop)) *loopsv1alpha1.CustomerLoop {
	t.Helper()
	var l *loopsv1alpha1.CustomerLoop
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		l = get(t, loop)
		mutate(l)
		return k8s.Update(context.Background(), l)
	}); err != nil {
		t.Fatal(err)
	}
	return l
}

func get(t *testing.T, loop *loopsv1alpha1.CustomerLoop) *loopsv1alpha1.CustomerLoop {
	t.Helper()
	out := &loopsv1alpha1.CustomerLoop{}
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(loop), out); err != nil {
		t.Fatal(err)
	}
	return out
}

func condition(l *loopsv1alpha1.CustomerLoop, typ string) string {
	c := meta.FindStatusCondition(l.Status.Conditions, typ)
	if c == nil {
		return "<none>"
	}
	return fmt.Sprintf("%s/%s", c.Status, c.Reason)
}

func produceJSON(t *testing.T, topic string, values []string) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic, RequiredAcks: kafka.RequireAll,
		AllowAutoTopicCreation: true, BatchTimeout: 5 * time.Millisecond}
	defer w.Close()
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		msgs[i] = kafka.Message{Value: []byte(v)}
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
}

// TestLoopLifecycle applies a loop that takes ClickHouse credentials from a Secret,
// streams both kinds of data through it, and checks the tables, the rows and the status;
// then deletes it and checks that nothing of its worker is left.
func TestLoopLifecycle(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	useClickHouseSecret(t, loop)
	loop.Spec.Streams[1].Customers = &loopsv1alpha1.CustomerRestriction{Pattern: "c[0-9]+"}
	loop.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "plans"}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}

	var usage, plans []string
	for i := range 300 {
		usage = append(usage, fmt.Sprintf(`{"id":"e%d","customer":"c%d","product":"p%d","ts":%d,"qty":2,"region":"eu"}`, i, i%4, i%2, 1793449815+i))
	}
	for i := range 24 {
		plans = append(plans, fmt.Sprintf(`{"id":"p%d","customer":"c%d","product":"p%d","period":"2027-0%d-01","qty":%d}`, i, i%4, i%2, 1+i%3, 100+i))
	}
	usage = append(usage, `{"id":"bad"`)                                                                    // dead-lettered, not counted
	plans = append(plans, `{"id":"px","customer":"intruder","product":"p0","period":"2027-01-01","qty":1}`) // unknown customer
	produceJSON(t, loop.Spec.Streams[0].Topic, usage)
	produceJSON(t, loop.Spec.Streams[1].Topic, plans)

	testkit.Eventually(t, 90*time.Second, "the loop Ready with every row counted", func() (bool, string) {
		l := get(t, loop)
		state := fmt.Sprintf("Ready=%s SchemaReady=%s WorkersReady=%s rows=%d streams=%+v",
			condition(l, "Ready"), condition(l, "SchemaReady"), condition(l, "WorkersReady"), l.Status.RowsIngested, l.Status.Streams)
		dead := map[string]int64{}
		for _, s := range l.Status.Streams {
			dead[s.Name] = s.RowsDeadLettered
		}
		return condition(l, "Ready") == "True/Succeeded" && l.Status.RowsIngested == 324 &&
			dead["usage"] == 1 && dead["plans"] == 1 && l.Status.Lag == 0, state
	})

	l := get(t, loop)
	if l.Status.ObservedGeneration != l.Generation {
		t.Errorf("observedGeneration = %d, want %d", l.Status.ObservedGeneration, l.Generation)
	}
	if got := condition(l, "Stalled"); got != "False/Succeeded" {
		t.Errorf("Stalled = %s", got)
	}
	if got := condition(l, "Reconciling"); got != "False/Succeeded" {
		t.Errorf("Reconciling = %s", got)
	}
	byName := map[string]loopsv1alpha1.StreamStatus{}
	for _, s := range l.Status.Streams {
		byName[s.Name] = s
	}
	if byName["usage"].RowsIngested != 300 || byName["plans"].RowsIngested != 24 {
		t.Errorf("stream rows = %+v, want usage 300 and plans 24", l.Status.Streams)
	}
	if byName["usage"].LastIngestTime == nil || byName["usage"].Table != loop.Spec.ClickHouse.Database+".usage_raw" {
		t.Errorf("usage stream status = %+v", byName["usage"])
	}
	if got := testutil.ToFloat64(loopStreamRows.WithLabelValues(loop.Namespace, loop.Name, "usage")); got != 300 {
		t.Errorf("customerloop_loop_stream_rows{stream=usage} = %v, want 300", got)
	}
	if got := testutil.ToFloat64(loopCondition.WithLabelValues(loop.Namespace, loop.Name, "Ready", "True")); got != 1 {
		t.Errorf("customerloop_loop_condition{type=Ready,status=True} = %v, want 1", got)
	}
	if len(l.Status.Objects) != 17 {
		t.Errorf("status.objects = %v, want the database, the ledger, the dead letters, 2 raw tables, the feedback rollups' 3 objects each and 6 feedback views", l.Status.Objects)
	}
	// The feedback views join the two streams: every (customer, product, period) with a
	// plan or usage has a row.
	var gapRows, planned uint64
	if err := ch.QueryRow(ctx, "SELECT count(), countIf(isNotNull(planned_latest)) FROM "+
		pipeline.QualifiedTable(loop.Spec.ClickHouse.Database, pipeline.ViewGaps)).Scan(&gapRows, &planned); err != nil {
		t.Fatal(err)
	}
	if planned == 0 || gapRows <= planned {
		t.Errorf("feedback_gaps: %d rows, %d with a plan; want rows with plans and rows with usage only", gapRows, planned)
	}
	if l.Status.StreamCount != 2 {
		t.Errorf("streamCount = %d", l.Status.StreamCount)
	}
	if !strings.Contains(fmt.Sprint(l.Finalizers), loopsv1alpha1.Finalizer) {
		t.Errorf("finalizers = %v", l.Finalizers)
	}

	// The tables hold the rows with their source coordinates and the declared dimension.
	var n, offsets uint64
	var regions string
	if err := ch.QueryRow(ctx, "SELECT count(), uniqExact(_partition, _offset), arrayStringConcat(groupUniqArray(assumeNotNull(region)), ',') FROM "+
		pipeline.QualifiedTable(loop.Spec.ClickHouse.Database, "usage_raw")).Scan(&n, &offsets, &regions); err != nil {
		t.Fatal(err)
	}
	if n != 300 || offsets != 300 || regions != "eu" {
		t.Errorf("usage_raw: %d rows, %d distinct offsets, regions %q", n, offsets, regions)
	}

	// Deleting the loop stops its worker: no goroutine, no consumer-group member.
	if err := k8s.Delete(ctx, loop); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the loop to be gone", func() (bool, string) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(loop), &loopsv1alpha1.CustomerLoop{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	if n := workerGoroutines(); n != 0 {
		t.Errorf("%d worker goroutines left after the loop was deleted", n)
	}
	testkit.Eventually(t, 10*time.Second, "the loop's metrics to be gone", func() (bool, string) {
		names := " " + metricNames(t)
		return !strings.Contains(names, " "+loop.Name+" "), "series of loops:" + names
	})
	kc := &kafka.Client{Addr: kafka.TCP(brokers...)}
	resp, err := kc.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{loop.GetConsumerGroup()}})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range resp.Groups {
		if len(g.Members) != 0 {
			t.Errorf("consumer group %s has %d members after deletion", g.GroupID, len(g.Members))
		}
	}
	// Retain is the only policy so far: the data stays.
	var tables uint64
	if err := ch.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ?", loop.Spec.ClickHouse.Database).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 16 {
		t.Errorf("%d tables left in %s after deletion, want the 2 raw tables, the ledger, the dead letters, the feedback rollups' 3 objects each and 6 views kept", tables, loop.Spec.ClickHouse.Database)
	}
}

// TestMissingSecretThenCreated: a loop whose credentials Secret does not exist waits with
// a reason naming it, and becomes Ready once the Secret appears.
func TestMissingSecretThenCreated(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Spec.ClickHouse.CredentialsSecretRef = &loopsv1alpha1.CredentialsSecretRef{Name: loop.Name + "-late", PasswordKey: "pw"}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "Ready=False naming the missing Secret", func() (bool, string) {
		l := get(t, loop)
		c := meta.FindStatusCondition(l.Status.Conditions, "Ready")
		if c == nil {
			return false, "no Ready condition"
		}
		return c.Status == "False" && c.Reason == ReasonMissingInput && strings.Contains(c.Message, loop.Name+"-late") &&
			condition(l, "Reconciling") == "True/Progressing", fmt.Sprintf("%s: %s", condition(l, "Ready"), c.Message)
	})
	user := chUser
	if user == "" {
		user = "default"
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-late", Namespace: "default"},
		Data:       map[string][]byte{"username": []byte(user), "pw": []byte(chPass)},
	}
	if err := k8s.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "Ready once the Secret exists", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Ready") == "True/Succeeded", condition(l, "Ready")
	})
	// The password never shows in status.
	if chPass != "" {
		l := get(t, loop)
		if strings.Contains(fmt.Sprintf("%+v", l.Status), chPass) {
			t.Error("the ClickHouse password appears in status")
		}
	}
}

// TestKafkaUnavailable: a loop whose brokers do not answer is not Ready, with a reason
// that points at spec.kafka, although its workers run and retry; it becomes Ready once
// the brokers are right.
func TestKafkaUnavailable(t *testing.T) {
	ctx := context.Background()
	// A port nothing listens on: what a typo in the broker list gives.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nowhere := closed.Addr().String()
	_ = closed.Close()
	loop := newLoop(t)
	loop.Spec.Kafka.Brokers = []string{nowhere}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 60*time.Second, "Ready=False/KafkaUnavailable naming the broker", func() (bool, string) {
		l := get(t, loop)
		c := meta.FindStatusCondition(l.Status.Conditions, "Ready")
		if c == nil {
			return false, "no Ready condition"
		}
		return c.Status == "False" && c.Reason == ReasonKafkaUnavailable && strings.Contains(c.Message, "spec.kafka") &&
				strings.Contains(c.Message, nowhere) && condition(l, "SchemaReady") == "True/SchemaApplied" &&
				condition(l, "WorkersReady") == "False/KafkaUnavailable",
			fmt.Sprintf("Ready %s: %s; WorkersReady %s", condition(l, "Ready"), c.Message, condition(l, "WorkersReady"))
	})
	updateLoop(t, loop, func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Kafka.Brokers = brokers })
	testkit.Eventually(t, 60*time.Second, "Ready once the brokers answer", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Ready") == "True/Succeeded", condition(l, "Ready") + "; WorkersReady " + condition(l, "WorkersReady")
	})
}

// TestPausedLoop: a paused loop has its schema but no workers, and says so.
func TestPausedLoop(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Spec.Paused = true
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "a paused loop to report Paused", func() (bool, string) {
		l := get(t, loop)
		return condition(l, "Ready") == "True/Paused" && condition(l, "WorkersReady") == "False/Paused" &&
			condition(l, "SchemaReady") == "True/SchemaApplied", fmt.Sprintf("Ready=%s WorkersReady=%s", condition(l, "Ready"), condition(l, "WorkersReady"))
	})
	if n := workerGoroutines(); n != 0 {
		t.Errorf("%d worker goroutines run for a paused loop", n)
	}
	// What customers send meanwhile waits in Kafka, and the status says how much.
	produceJSON(t, loop.Spec.Streams[0].Topic, []string{
		`{"id":"e1","customer":"c","product":"p","ts":1793449815}`,
		`{"id":"e2","customer":"c","product":"p","ts":1793449816}`,
	})
	testkit.Eventually(t, 30*time.Second, "a paused loop to report its lag", func() (bool, string) {
		l := get(t, loop)
		return l.Status.Lag == 2 && l.Status.RowsIngested == 0, fmt.Sprintf("lag=%d rows=%d", l.Status.Lag, l.Status.RowsIngested)
	})
}

func ptr[T any](v T) *T { return &v }

// rollup is a valid rollup of newLoop's usage stream, changed by mutate.
func rollup(mutate func(*loopsv1alpha1.RollupSpec)) loopsv1alpha1.RollupSpec {
	r := dailyRollup()
	if mutate != nil {
		mutate(&r)
	}
	return r
}

// metricNames lists the label values of the loop gauges, to find a loop's series among
// those of loops other tests left.
func metricNames(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, c := range []prometheus.Collector{loopStreamRows, loopCondition} {
		ch := make(chan prometheus.Metric, 1024)
		c.Collect(ch)
		close(ch)
		for m := range ch {
			var d dto.Metric
			if err := m.Write(&d); err != nil {
				t.Fatal(err)
			}
			for _, l := range d.GetLabel() {
				if l.GetName() == "name" {
					b.WriteString(l.GetValue() + " ")
				}
			}
		}
	}
	return b.String()
}

// TestInvalidSpecsRefused applies invalid specs to the real API server and checks that
// each is refused with a message that says what is wrong.
func TestInvalidSpecsRefused(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*loopsv1alpha1.CustomerLoop)
		want   string
	}{
		{"SQL injection in the database name", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.ClickHouse.Database = "x`; DROP DATABASE system; --" }, "spec.clickhouse.database"},
		{"SQL in the cluster name", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.ClickHouse.Cluster = "c' ; DROP DATABASE system; --" }, "spec.clickhouse.cluster"},
		{"backtick in a stream name", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Name = "us`age" }, "spec.streams[0].name"},
		{"newline in a dimension name", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Dimensions[0].Name = "region\nx" }, "spec.streams[0].dimensions[0].name"},
		{"dimension named like a core column", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Dimensions[0].Name = "customer_id" }, "collides with a core column"},
		{"duplicate stream names", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[1].Name = "usage" }, "Duplicate value"},
		{"two streams on one topic", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[1].Topic = l.Spec.Streams[0].Topic }, "two streams read the same topic"},
		{"a Plan stream without a period", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[1].Mapping.Period = "" }, "a Plan stream needs mapping.period"},
		{"a Usage stream without a timestamp", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Mapping.Timestamp = "" }, "a Usage stream needs mapping.timestamp"},
		{"plan fields on a Usage stream", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Mapping.Period = "period" }, "belong to Plan streams"},
		{"unknown stream kind", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Kind = "Forecast" }, "Unsupported value: \"Forecast\""},
		{"unknown dimension type", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Dimensions[0].Type = "Array(String)" }, "spec.streams[0].dimensions[0].type"},
		{"dead-letter topic is a stream topic", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].DeadLetterTopic = l.Spec.Streams[1].Topic }, "deadLetterTopic must not be the topic"},
		{"broker without a port", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Kafka.Brokers = []string{"kafka"} }, "spec.kafka.brokers[0]"},
		{"address and addresses", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.ClickHouse.Addresses = []string{"clickhouse-0:9440", "clickhouse-1:9440"}
		}, "set clickhouse.address (one server) or clickhouse.addresses (several, tried in order), not both"},
		{"no ClickHouse address", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.ClickHouse.Address = "" }, "set clickhouse.address"},
		{"an address listed twice", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.ClickHouse.Address, l.Spec.ClickHouse.Addresses = "", []string{"clickhouse-0:9440", "clickhouse-0:9440"}
		}, "clickhouse.addresses lists an address twice"},
		{"an address without a port", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.ClickHouse.Address, l.Spec.ClickHouse.Addresses = "", []string{"clickhouse-0:9440", "clickhouse-1"}
		}, "spec.clickhouse.addresses[1]"},
		{"nine addresses", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.ClickHouse.Address = ""
			for i := range 9 {
				l.Spec.ClickHouse.Addresses = append(l.Spec.ClickHouse.Addresses, fmt.Sprintf("clickhouse-%d:9440", i))
			}
		}, "spec.clickhouse.addresses"},
		{"a TLS server name with a space", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.ClickHouse.TLS = &loopsv1alpha1.ClickHouseTLS{ServerName: "clickhouse .example"}
		}, "spec.clickhouse.tls.serverName"},
		{"a client certificate key with a slash", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Kafka.TLS = &loopsv1alpha1.KafkaTLS{ClientCertSecretRef: &loopsv1alpha1.ClientCertSecretRef{Name: "user", KeyKey: "../user.key"}}
		}, "spec.kafka.tls.clientCertSecretRef.keyKey"},
		{"a SASL username and a usernameKey", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Kafka.SASL = &loopsv1alpha1.KafkaSASL{Mechanism: "SCRAM-SHA-512", Username: "acme-loop",
				CredentialsSecretRef: loopsv1alpha1.CredentialsSecretRef{Name: "acme-loop", UsernameKey: "user"}}
		}, "set username (the user name itself) or credentialsSecretRef.usernameKey"},
		{"no streams", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams = nil }, "spec.streams"},
		{"field path with spaces", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Mapping.CustomerID = "customer id" }, "spec.streams[0].mapping.customerId"},
		{"bad batch duration", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Workers.Batch = &loopsv1alpha1.BatchSpec{MaxWait: "soon"}
		}, "spec.workers.batch.maxWait"},
		{"batch wait too long", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Workers.Batch = &loopsv1alpha1.BatchSpec{MaxWait: "1h"}
		}, "maxWait must be a duration between 10ms and 5m"},
		{"negative replicas", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Workers.Replicas = ptr(int32(-1)) }, "spec.workers.replicas"},
		{"unknown deletion policy", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.DeletionPolicy = "Archive" }, "spec.deletionPolicy"},
		{"unknown SASL mechanism", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Kafka.SASL = &loopsv1alpha1.KafkaSASL{Mechanism: "GSSAPI", CredentialsSecretRef: loopsv1alpha1.CredentialsSecretRef{Name: "kafka"}}
		}, "spec.kafka.sasl.mechanism"},
		{"empty customer restriction", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Streams[0].Customers = &loopsv1alpha1.CustomerRestriction{}
		}, "customers needs allowed, pattern or both"},
		{"feedback from a Plan stream as usage", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "plans", PlanStream: "plans"}
		}, "feedback.usageStream must name a stream of kind Usage"},
		{"feedback from a missing stream", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "forecasts"}
		}, "feedback.planStream must name a stream of kind Plan"},
		{"bad dedup window", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].DedupWindow = "48h" }, "dedupWindow must be a duration between 0s and 24h"},
		{"rollup of a missing stream", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Stream = "forecasts" })}
		}, "a rollup's stream must name a stream in spec.streams"},
		{"a rollup named as the feedback's own", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "plans"}
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Name = "feedback_actuals" })}
		}, "the rollup names feedback_actuals and feedback_plans are taken"},
		{"a rollup named as the feedback's plans", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "plans"}
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Name = "feedback_plans" })}
		}, "the rollup names feedback_actuals and feedback_plans are taken"},
		{"hourly rollup of plans", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Stream, r.Granularity = "plans", "Hour" })}
		}, "granularity Hour needs a Usage stream"},
		{"rollup granularity Year", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Granularity = "Year" })}
		}, `Unsupported value: "Year"`},
		{"backtick in a rollup name", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Name = "dai`ly" })}
		}, "spec.rollups[0].name"},
		{"quote in a rollup dimension", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Dimensions = []string{"region'"} })}
		}, "spec.rollups[0].dimensions[0]"},
		{"duplicate rollup names", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(nil), rollup(nil)}
		}, "Duplicate value"},
		{"rollup without measures", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Measures = nil })}
		}, "spec.rollups[0].measures"},
		{"unknown measure function", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Measures[1].Function = "Avg" })}
		}, `Unsupported value: "Avg"`},
		{"Sum without a field", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Measures[1].Field = "" })}
		}, "field is required for Sum, Min, Max, Uniq and Quantiles"},
		{"Count with a field", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Measures[0].Field = "quantity" })}
		}, "Count counts rows and takes no field"},
		{"Quantiles without quantiles", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Measures[1].Function = "Quantiles" })}
		}, "quantiles are required for function Quantiles and only allowed with it"},
		{"quantiles on a Sum", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Measures[1].Quantiles = []string{"0.5"} })}
		}, "quantiles are required for function Quantiles and only allowed with it"},
		{"quantile above 1", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) {
				r.Measures[1].Function, r.Measures[1].Quantiles = "Quantiles", []string{"1.5"}
			})}
		}, "spec.rollups[0].measures[1].quantiles[0]"},
		{"measure named like a dimension", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Measures[0].Name = "product" })}
		}, "a measure is named like a dimension or period"},
		{"measure named period", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Dimensions, r.Measures[0].Name = nil, "period" })}
		}, "a measure is named like a dimension or period"},
		{"pii Hash on a number", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Privacy = &loopsv1alpha1.PrivacySpec{HMACKeySecretRef: loopsv1alpha1.HMACKeySecretRef{Name: "hmac"}}
			l.Spec.Streams[0].Dimensions = append(l.Spec.Streams[0].Dimensions, loopsv1alpha1.Dimension{Name: "seats", Type: "Int32", PII: loopsv1alpha1.PIIHash})
		}, "pii Hash needs type String"},
		{"pii Hash without a key", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Dimensions[0].PII = loopsv1alpha1.PIIHash }, "pii Hash needs privacy.hmacKeySecretRef"},
		{"customer hashed without a key", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Streams[1].PII = &loopsv1alpha1.StreamPII{CustomerID: "Hash"}
		}, "pii Hash needs privacy.hmacKeySecretRef"},
		{"customer dropped", func(l *loopsv1alpha1.CustomerLoop) {
			l.Spec.Privacy = &loopsv1alpha1.PrivacySpec{HMACKeySecretRef: loopsv1alpha1.HMACKeySecretRef{Name: "hmac"}}
			l.Spec.Streams[1].PII = &loopsv1alpha1.StreamPII{CustomerID: "Drop"}
		}, "spec.streams[1].pii.customerId"},
		{"unknown pii action", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Streams[0].Dimensions[0].PII = "Mask" }, `Unsupported value: "Mask"`},
		{"message depth limit 1000", func(l *loopsv1alpha1.CustomerLoop) { l.Spec.Limits = &loopsv1alpha1.MessageLimits{MaxDepth: 1000} }, "spec.limits.maxDepth"},
	}
	cases = append(cases, injectionCases()...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			loop := newLoop(t)
			tc.mutate(loop)
			err := k8s.Create(context.Background(), loop)
			if err == nil {
				_ = k8s.Delete(context.Background(), loop)
				t.Fatal("the API server accepted the spec")
			}
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\ndoes not say %q", err, tc.want)
			}
		})
	}
}

// TestDatabaseIsImmutable: moving a loop to another database would leave its data behind.
func TestDatabaseIsImmutable(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	loop.Spec.Paused = true
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	l := get(t, loop)
	patch := client.MergeFrom(l.DeepCopy())
	l.Spec.ClickHouse.Database = "elsewhere"
	err := k8s.Patch(ctx, l, patch)
	if err == nil || !strings.Contains(err.Error(), "database is immutable") {
		t.Fatalf("update of the database: err = %v, want it refused as immutable", err)
	}
}

// TestClusterIsImmutable: a loop's tables are either plain or Replicated pairs; setting,
// changing or removing the cluster afterwards would leave them behind.
func TestClusterIsImmutable(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ name, from, to string }{
		{"set", "", "analytics"},
		{"changed", "analytics", "other"},
		{"removed", "analytics", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loop := newLoop(t)
			loop.Spec.Paused = true
			loop.Spec.ClickHouse.Cluster = tc.from
			if err := k8s.Create(ctx, loop); err != nil {
				t.Fatal(err)
			}
			l := get(t, loop)
			patch := client.MergeFrom(l.DeepCopy())
			l.Spec.ClickHouse.Cluster = tc.to
			err := k8s.Patch(ctx, l, patch)
			if err == nil || !strings.Contains(err.Error(), "cluster is immutable") {
				t.Fatalf("cluster %q -> %q: err = %v, want it refused as immutable", tc.from, tc.to, err)
			}
		})
	}
}
