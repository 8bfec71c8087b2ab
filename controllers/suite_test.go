package controllers

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// The suite runs the reconciler in a manager against a real kube-apiserver (envtest),
// a real ClickHouse server and a real Kafka-protocol broker (kfake).
// deploymentNamespace holds the loops whose workers run as Deployments.
const deploymentNamespace = "workers"

var (
	k8s     client.Client
	brokers []string
	chAddr  string
	chUser  string
	chPass  string
	ch      driver.Conn
	runner  *InProcessRunner
	// restCfg reaches the API server as its admin; tests impersonate others with it.
	restCfg *rest.Config
	// suiteLogs holds everything the managers and in-process workers logged at debug
	// level, for the secret scan.
	suiteLogs = &syncBuffer{}
	// workerMetrics is the registry of the in-process workers' metrics.
	workerMetrics = prometheus.NewRegistry()
	// reconciler is the manager's of namespace default, for tests that reach into its
	// state (a digest publisher dropped, as by a restart).
	reconciler *CustomerLoopReconciler
)

// syncBuffer is a bytes.Buffer safe for concurrent writers.
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

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	chAddr = os.Getenv("CLICKHOUSE_ADDR")
	if chAddr == "" || os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			fmt.Fprintln(os.Stderr, "CLICKHOUSE_ADDR and KUBEBUILDER_ASSETS must be set; run the tests with make test")
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping the controller suite: CLICKHOUSE_ADDR and KUBEBUILDER_ASSETS are not set (make test sets them)")
		return 0
	}
	chUser, chPass = os.Getenv("CLICKHOUSE_USER"), os.Getenv("CLICKHOUSE_PASSWORD")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting envtest:", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	restCfg = cfg

	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3))
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting kfake:", err)
		return 1
	}
	defer broker.Close()
	brokers = broker.ListenAddrs()

	ch, err = connect.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: chAddr})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer ch.Close()

	scheme := clientgoscheme.Scheme
	if err := loopsv1alpha1.AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Debug is --log-level=debug, the most verbose level documented. Below it, client-go
	// dumps API response bodies (Secrets included) at V(8), as kubectl -v=8 does.
	var h slog.Handler = slog.NewTextHandler(suiteLogs, &slog.HandlerOptions{Level: slog.LevelDebug})
	if testing.Verbose() {
		h = teeHandler{h, slog.NewTextHandler(os.Stderr, nil)}
	}
	log := logr.FromSlogHandler(h)
	ctrl.SetLogger(log)
	klog.SetLogger(log)
	// Two managers, as two installations would be: one runs workers in-process for the
	// loops of namespace default, the other as Deployments for those of namespace
	// workers.
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cache.Options{DefaultNamespaces: map[string]cache.Config{"default": {}}}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	depMgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:      cache.Options{DefaultNamespaces: map[string]cache.Config{deploymentNamespace: {}}},
		Controller: ctrlconfig.Controller{SkipNameValidation: ptr(true)}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	depRunner := &DeploymentRunner{Client: depMgr.GetClient(), Image: "customerloop:test", SecureMetrics: true}
	if err := (&CustomerLoopReconciler{
		Client:          depMgr.GetClient(),
		Runner:          depRunner,
		Recorder:        depMgr.GetEventRecorder("customerloop-controller"),
		RefreshInterval: time.Second,
	}).SetupWithManager(ctx, depMgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	runner = NewInProcessRunner(log.WithName("worker"), ingest.NewMetrics(workerMetrics))
	r := &CustomerLoopReconciler{
		Client:          mgr.GetClient(),
		Runner:          runner,
		Recorder:        mgr.GetEventRecorder("customerloop-controller"),
		Batch:           pipeline.BatchConfig{MaxRows: 1000, MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}},
		RefreshInterval: time.Second,
	}
	if err := r.SetupWithManager(ctx, mgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	reconciler = r
	mgrDone := make(chan error, 2)
	go func() { mgrDone <- mgr.Start(ctx) }()
	go func() { mgrDone <- depMgr.Start(ctx) }()
	defer func() { cancel(); <-mgrDone; <-mgrDone }()

	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: deploymentNamespace}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// workerGoroutines counts goroutines running inside a pipeline worker.
func workerGoroutines() int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "customerloop/pipeline.(*Worker)") {
			n++
		}
	}
	return n
}

// teeHandler sends each record to both handlers, each at its own level.
type teeHandler struct{ a, b slog.Handler }

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return t.a.Enabled(ctx, l) || t.b.Enabled(ctx, l)
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var err error
	for _, h := range []slog.Handler{t.a, t.b} {
		if h.Enabled(ctx, r.Level) {
			err = errors.Join(err, h.Handle(ctx, r.Clone()))
		}
	}
	return err
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{t.a.WithAttrs(as), t.b.WithAttrs(as)}
}

func (t teeHandler) WithGroup(g string) slog.Handler {
	return teeHandler{t.a.WithGroup(g), t.b.WithGroup(g)}
}
