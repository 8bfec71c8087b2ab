package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/dashboard"
)

func runManager(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	config.RegisterFlags(fs) // --kubeconfig; then KUBECONFIG, in-cluster, ~/.kube/config
	runner := fs.String("runner", "inprocess", "where workers run: inprocess (goroutines of the manager) or deployment (a Deployment of worker pods per loop)")
	workerImage := fs.String("worker-image", "customerloop:"+version, "image of the worker pods (with --runner=deployment)")
	metricsAddr := fs.String("metrics-bind-address", ":8080", "address of the metrics endpoint; 0 disables it")
	metricsSecure := fs.Bool("metrics-secure", true, metricsSecureUsage+"; the worker pods of --runner=deployment follow it")
	metricsCertDir := fs.String("metrics-cert-dir", "", "directory with tls.crt and tls.key of the metrics endpoint (with --metrics-secure); without them a self-signed certificate")
	probeAddr := fs.String("health-probe-bind-address", ":8081", "address of the health and readiness probes")
	leaderElect := fs.Bool("leader-elect", false, "elect a leader so that only one of several replicas reconciles")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	workerResources := fs.String("worker-resources", "", `resources of worker containers whose loop sets no spec.workers.resources (with --runner=deployment), as JSON, e.g. {"requests":{"cpu":"500m","memory":"256Mi"},"limits":{"memory":"512Mi"}}`)
	var batch pipeline.BatchConfig
	fs.IntVar(&batch.MaxRows, "worker-batch-max-rows", 0, "rows per insert of loops that set no spec.workers.batch.maxRows (0: the pipeline's default, 20000)")
	fs.IntVar(&batch.MaxBytes, "worker-batch-max-bytes", 0, "message bytes per insert of loops that set no spec.workers.batch.maxBytes (0: the pipeline's default, 32 MiB)")
	fs.DurationVar(&batch.MaxWait.Duration, "worker-batch-max-wait", 0, "longest a message waits for its batch in loops that set no spec.workers.batch.maxWait (0: the pipeline's default, 1s)")
	dashboardAddr := fs.String("dashboard-bind-address", ":8082", "address of the read-only plan-against-actual dashboard, served by every replica; 0 disables it")
	dashboardAuth := fs.Bool("dashboard-auth", true, dashboardAuthUsage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var resources corev1.ResourceRequirements
	if *workerResources != "" {
		if err := json.Unmarshal([]byte(*workerResources), &resources); err != nil {
			return fmt.Errorf("--worker-resources: %w", err)
		}
	}
	log, err := newLogger(os.Stderr, *logLevel)
	if err != nil {
		return err
	}
	ctrl.SetLogger(log)
	restCfg, err := config.GetConfig()
	if err != nil {
		return fmt.Errorf("finding the cluster: %w", err)
	}
	mgr, err := newManager(ctx, restCfg, managerOptions{
		runner: *runner, workerImage: *workerImage, metricsAddr: *metricsAddr, probeAddr: *probeAddr, leaderElect: *leaderElect, log: log,
		metricsSecure: *metricsSecure, metricsCertDir: *metricsCertDir,
		dashboardAddr: *dashboardAddr, dashboardAuth: *dashboardAuth, workerResources: resources, batch: batch,
	})
	if err != nil {
		return err
	}
	log.Info("starting manager", "version", version, "runner", *runner)
	return mgr.Start(ctx)
}

type managerOptions struct {
	runner      string
	workerImage string
	metricsAddr string
	// metricsSecure serves metrics over HTTPS to authorized tokens only, the manager's
	// and the worker pods'.
	metricsSecure  bool
	metricsCertDir string
	probeAddr      string
	leaderElect    bool
	// dashboardAddr serves the dashboard; "" or "0" does not.
	dashboardAddr string
	// dashboardAuth lets in only readers with a token, each to the loops it may get.
	dashboardAuth bool
	// workerResources are the Deployment runner's default worker resources.
	workerResources corev1.ResourceRequirements
	batch           pipeline.BatchConfig
	refresh         time.Duration
	log             logr.Logger
}

// newManager builds the controller manager with the CustomerLoop reconciler and the
// chosen worker runner.
func newManager(ctx context.Context, restCfg *rest.Config, o managerOptions) (ctrl.Manager, error) {
	scheme, err := newScheme()
	if err != nil {
		return nil, err
	}
	var runner controllers.Runner
	switch o.runner {
	case "inprocess":
		// Workers' metrics are served with the manager's, on its metrics endpoint.
		runner = controllers.NewInProcessRunner(o.log.WithName("worker"), pipeline.NewMetrics(ctrlmetrics.Registry))
	case "deployment":
		// The client is the manager's, set below once it exists.
		runner = &controllers.DeploymentRunner{Image: o.workerImage, DefaultResources: o.workerResources, SecureMetrics: o.metricsSecure}
	default:
		return nil, fmt.Errorf("--runner=%q: want inprocess or deployment", o.runner)
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                managerMetrics(o.metricsAddr, o.metricsSecure, o.metricsCertDir),
		HealthProbeBindAddress: o.probeAddr,
		LeaderElection:         o.leaderElect,
		LeaderElectionID:       "customerloop-manager.loops.customerloop.dev",
		Logger:                 o.log,
	})
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	if o.probeAddr != "0" {
		if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
			return nil, err
		}
	}
	if d, ok := runner.(*controllers.DeploymentRunner); ok {
		d.Client = mgr.GetClient()
	}
	r := &controllers.CustomerLoopReconciler{
		Client:          mgr.GetClient(),
		Runner:          runner,
		Recorder:        mgr.GetEventRecorder("customerloop-controller"),
		Batch:           o.batch,
		RefreshInterval: o.refresh,
	}
	if err := r.SetupWithManager(ctx, mgr); err != nil {
		return nil, fmt.Errorf("setting up the controller: %w", err)
	}
	if o.metricsAddr != "0" && !o.metricsSecure && !loopback(o.metricsAddr) {
		o.log.Info("WARNING: metrics are served over plain HTTP to anyone who reaches the port (--metrics-secure=false)", "address", o.metricsAddr)
	}
	if o.dashboardAddr != "" && o.dashboardAddr != "0" {
		log := o.log.WithName("dashboard")
		h, err := dashboardHandler(mgr, controllers.DashboardSource{Client: mgr.GetClient()}, o.dashboardAuth, log)
		if err != nil {
			return nil, err
		}
		if !o.dashboardAuth && !loopback(o.dashboardAddr) {
			log.Info("WARNING: the dashboard shows every loop to anyone who reaches the port (--dashboard-auth=false)", "address", o.dashboardAddr)
		}
		if err := mgr.Add(&httpRunnable{addr: o.dashboardAddr, handler: h, log: log}); err != nil {
			return nil, err
		}
	}
	return mgr, nil
}

// dashboardHandler is the dashboard of src: with auth, to readers with a token the API
// server accepts, each seeing the loops it may get; without, every loop to anyone.
func dashboardHandler(mgr ctrl.Manager, src dashboard.Source, auth bool, log logr.Logger) (http.Handler, error) {
	if !auth {
		return dashboard.New(src, log), nil
	}
	a, err := controllers.NewDashboardAuth(mgr.GetConfig(), mgr.GetHTTPClient(), log)
	if err != nil {
		return nil, err
	}
	return a.Handler(src), nil
}

// newScheme holds Kubernetes' built-in types and CustomerLoop's.
func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := loopsv1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return scheme, nil
}

// httpRunnable serves a read-only handler for as long as the manager runs, on every
// replica: it needs no leader.
type httpRunnable struct {
	addr    string
	handler http.Handler
	log     logr.Logger
}

func (h *httpRunnable) NeedLeaderElection() bool { return false }

func (h *httpRunnable) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", h.addr)
	if err != nil {
		return fmt.Errorf("dashboard: %w", err)
	}
	srv := &http.Server{Handler: h.handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	h.log.Info("serving the dashboard", "address", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
