package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/cmd/internal/cli"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/test/testkit"
)

// The CLI's commands run against the local stack: a real kube-apiserver (envtest) with
// the CRD, the operator's manager with in-process workers, a Kafka-protocol broker
// (kfake) in this process and the real ClickHouse server. The stack starts once, on the
// first test that needs it, and stops after the last.

type cliStack struct {
	env        *envtest.Environment
	k8s        client.Client
	kubeconfig string // its current context's namespace is cliNamespace
	brokers    []string
	ch         driver.Conn
	chAddr     string
	logs       *syncBuffer
	stop       []func()
}

const cliNamespace = "loops"

var (
	stackOnce sync.Once
	stack     *cliStack
	stackErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if stack != nil {
		for i := len(stack.stop) - 1; i >= 0; i-- {
			stack.stop[i]()
		}
	}
	os.Exit(code)
}

func needStack(t *testing.T) *cliStack {
	t.Helper()
	if os.Getenv("CLICKHOUSE_ADDR") == "" || os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CLICKHOUSE_ADDR and KUBEBUILDER_ASSETS must be set; run the tests with make test")
		}
		t.Skip("CLICKHOUSE_ADDR and KUBEBUILDER_ASSETS are not set")
	}
	stackOnce.Do(func() { stack, stackErr = startCLIStack() })
	if stackErr != nil {
		t.Fatal(stackErr)
	}
	return stack
}

func startCLIStack() (*cliStack, error) {
	s := &cliStack{chAddr: os.Getenv("CLICKHOUSE_ADDR"), logs: &syncBuffer{}}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	restCfg, err := env.Start()
	if err != nil {
		return s, fmt.Errorf("starting envtest: %w", err)
	}
	s.stop = append(s.stop, func() { _ = env.Stop() })
	s.env = env
	user, err := env.ControlPlane.AddUser(envtest.User{Name: "operator", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return s, err
	}
	raw, err := user.KubeConfig()
	if err != nil {
		return s, err
	}
	// The commands take -n from the kubeconfig's context, as kubectl does.
	kc, err := clientcmd.Load(raw)
	if err != nil {
		return s, err
	}
	kc.Contexts[kc.CurrentContext].Namespace = cliNamespace
	dir, err := os.MkdirTemp("", "customerloop-cli")
	if err != nil {
		return s, err
	}
	s.stop = append(s.stop, func() { _ = os.RemoveAll(dir) })
	s.kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, s.kubeconfig); err != nil {
		return s, err
	}

	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3))
	if err != nil {
		return s, err
	}
	s.stop = append(s.stop, broker.Close)
	s.brokers = broker.ListenAddrs()

	s.ch, err = connect.OpenClickHouse(context.Background(), pipeline.ClickHouseConfig{Addr: s.chAddr,
		Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")})
	if err != nil {
		return s, err
	}
	s.stop = append(s.stop, func() { _ = s.ch.Close() })

	log, err := cli.NewLogger(s.logs, "info", "text")
	if err != nil {
		return s, err
	}
	ctrl.SetLogger(log)
	ctx, cancel := context.WithCancel(context.Background())
	mgr, err := cli.NewManager(ctx, restCfg, cli.ManagerOptions{Runner: "inprocess", MetricsAddr: "0", ProbeAddr: "0", Log: log,
		Batch: pipeline.BatchConfig{MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}, Refresh: time.Second})
	if err != nil {
		cancel()
		return s, err
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	s.stop = append(s.stop, func() { cancel(); <-done })
	c, err := client.New(restCfg, client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return s, err
	}
	s.k8s = c
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cliNamespace}}
	if err := c.Create(ctx, ns); err != nil {
		return s, err
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "clickhouse", Namespace: cliNamespace},
		StringData: map[string]string{"username": os.Getenv("CLICKHOUSE_USER"), "password": os.Getenv("CLICKHOUSE_PASSWORD")}}
	if err := c.Create(ctx, secret); err != nil {
		return s, err
	}
	return s, nil
}

// run runs the customerloop command line with the stack's kubeconfig, as a user would.
func (s *cliStack) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCommand("customerloop", &out, &errOut)
	root.SetArgs(append(args, "--kubeconfig", s.kubeconfig))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String() + errOut.String(), err
}

func (s *cliStack) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := s.run(t, args...)
	if err != nil {
		t.Fatalf("customerloop %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// createLoop creates a loop from YAML whose database is replaced by a fresh one, which
// is dropped when the test ends.
func (s *cliStack) createLoop(t *testing.T, manifest string) *loopsv1alpha1.CustomerLoop {
	t.Helper()
	loop := &loopsv1alpha1.CustomerLoop{}
	if err := yaml.UnmarshalStrict([]byte(manifest), loop); err != nil {
		t.Fatal(err)
	}
	loop.Namespace = cliNamespace
	loop.Spec.Kafka.Brokers = s.brokers
	loop.Spec.ClickHouse.Address = s.chAddr
	loop.Spec.ClickHouse.Database = fmt.Sprintf("cli_%s_%d", loop.Name, time.Now().UnixNano())
	loop.Spec.ClickHouse.CredentialsSecretRef = &loopsv1alpha1.CredentialsSecretRef{Name: "clickhouse"}
	if err := s.k8s.Create(context.Background(), loop); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.k8s.Delete(context.Background(), loop)
		_ = s.ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(loop.Spec.ClickHouse.Database))
	})
	return loop
}

func (s *cliStack) get(t *testing.T, loop *loopsv1alpha1.CustomerLoop) *loopsv1alpha1.CustomerLoop {
	t.Helper()
	out := &loopsv1alpha1.CustomerLoop{}
	if err := s.k8s.Get(context.Background(), types.NamespacedName{Namespace: loop.Namespace, Name: loop.Name}, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitStream waits until the status of a loop's stream satisfies ok.
func (s *cliStack) waitStream(t *testing.T, loop *loopsv1alpha1.CustomerLoop, stream, what string, ok func(l *loopsv1alpha1.CustomerLoop, st loopsv1alpha1.StreamStatus) bool) {
	t.Helper()
	testkit.Eventually(t, 90*time.Second, what, func() (bool, string) {
		l := s.get(t, loop)
		for _, st := range l.Status.Streams {
			if st.Name == stream {
				return ok(l, st), fmt.Sprintf("%+v; conditions %+v", st, l.Status.Conditions)
			}
		}
		return false, fmt.Sprintf("no status of stream %s: %+v", stream, l.Status)
	})
}

func (s *cliStack) produce(t *testing.T, topic string, msgs ...kafka.Message) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(s.brokers...), Topic: topic, Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, AllowAutoTopicCreation: true, BatchTimeout: 5 * time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatalf("producing to %s: %v", topic, err)
	}
}

func msg(key, value string) kafka.Message {
	return kafka.Message{Key: []byte(key), Value: []byte(value)}
}

// countIDs returns how many rows of a raw table hold each id.
func (s *cliStack) countIDs(t *testing.T, db, table, col string) map[string]uint64 {
	t.Helper()
	rows, err := s.ch.Query(context.Background(), "SELECT "+pipeline.QuoteIdent(col)+", count() FROM "+pipeline.QualifiedTable(db, table)+" GROUP BY "+pipeline.QuoteIdent(col))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var id string
		var n uint64
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		out[id] = n
	}
	return out
}

func topicEnds(t *testing.T, brokers []string, topic string) int64 {
	t.Helper()
	kc, err := connect.KafkaClient(pipeline.KafkaConfig{Brokers: brokers})
	if err != nil {
		t.Fatal(err)
	}
	offs, err := connect.TopicOffsets(context.Background(), kc, topic)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, r := range offs {
		n += r.End
	}
	return n
}

func condition(l *loopsv1alpha1.CustomerLoop, typ string) *metav1.Condition {
	return meta.FindStatusCondition(l.Status.Conditions, typ)
}

// syncBuffer collects the manager's logs, written from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
