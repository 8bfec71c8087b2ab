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
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/dashboard"
)

func newManagerCommand() *cobra.Command {
	var (
		runner, workerImage, metricsAddr, probeAddr, workerResources, dashboardAddr string
		watchNamespaces                                                             []string
		leaderElect                                                                 bool
		logs                                                                        logFlags
		batch                                                                       pipeline.BatchConfig
	)
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Run the operator: reconcile CustomerLoops into ClickHouse schema and workers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var resources corev1.ResourceRequirements
			if workerResources != "" {
				if err := json.Unmarshal([]byte(workerResources), &resources); err != nil {
					return fmt.Errorf("--worker-resources: %w", err)
				}
			}
			log, err := logs.logger(os.Stderr)
			if err != nil {
				return err
			}
			ctrl.SetLogger(log)
			restCfg, err := config.GetConfig()
			if err != nil {
				return fmt.Errorf("finding the cluster: %w", err)
			}
			ctx := cmd.Context()
			mgr, err := newManager(ctx, restCfg, managerOptions{
				runner: runner, workerImage: workerImage, metricsAddr: metricsAddr, probeAddr: probeAddr, leaderElect: leaderElect, log: log,
				dashboardAddr: dashboardAddr, workerResources: resources, batch: batch, watchNamespaces: watchNamespaces,
			})
			if err != nil {
				return err
			}
			log.Info("starting manager", "version", version, "runner", runner)
			return mgr.Start(ctx)
		},
	}
	// --kubeconfig as controller-runtime reads it: the flag, then KUBECONFIG, in-cluster,
	// ~/.kube/config.
	goFlags := flag.NewFlagSet("manager", flag.ContinueOnError)
	config.RegisterFlags(goFlags)
	fs := cmd.Flags()
	fs.AddGoFlagSet(goFlags)
	fs.StringVar(&runner, "runner", "inprocess", "where workers run: inprocess (goroutines of the manager) or deployment (a Deployment of worker pods per loop)")
	fs.StringVar(&workerImage, "worker-image", "customerloop:"+version, "image of the worker pods (with --runner=deployment)")
	fs.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address of the metrics endpoint; 0 disables it")
	fs.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of the health and readiness probes")
	fs.BoolVar(&leaderElect, "leader-elect", false, "elect a leader so that only one of several replicas reconciles")
	logs.add(cmd)
	fs.StringVar(&workerResources, "worker-resources", "", `resources of worker containers whose loop sets no spec.workers.resources (with --runner=deployment), as JSON, e.g. {"requests":{"cpu":"500m","memory":"256Mi"},"limits":{"memory":"512Mi"}}`)
	fs.IntVar(&batch.MaxRows, "worker-batch-max-rows", 0, "rows per insert of loops that set no spec.workers.batch.maxRows (0: the pipeline's default, 20000)")
	fs.IntVar(&batch.MaxBytes, "worker-batch-max-bytes", 0, "message bytes per insert of loops that set no spec.workers.batch.maxBytes (0: the pipeline's default, 32 MiB)")
	fs.DurationVar(&batch.MaxWait.Duration, "worker-batch-max-wait", 0, "longest a message waits for its batch in loops that set no spec.workers.batch.maxWait (0: the pipeline's default, 1s)")
	fs.StringVar(&dashboardAddr, "dashboard-bind-address", ":8082", "address of the read-only plan-against-actual dashboard, served by every replica; 0 disables it")
	fs.StringSliceVar(&watchNamespaces, "watch-namespaces", nil, "namespaces whose CustomerLoops (and their Secrets) the manager watches, comma separated; all when empty. With a list the manager needs to read Secrets only there: the chart then grants it namespaced Roles instead of a cluster-wide rule")
	return cmd
}

type managerOptions struct {
	runner      string
	workerImage string
	metricsAddr string
	probeAddr   string
	leaderElect bool
	// dashboardAddr serves the dashboard; "" or "0" does not.
	dashboardAddr string
	// workerResources are the Deployment runner's default worker resources.
	workerResources corev1.ResourceRequirements
	batch           pipeline.BatchConfig
	// watchNamespaces limits what the manager watches and reads; empty is every namespace.
	watchNamespaces []string
	// several lets more than one manager run in one process, as tests do: controller
	// names must otherwise be unique per process.
	several bool
	refresh time.Duration
	log     logr.Logger
}

// newManager builds the controller manager with the CustomerLoop reconciler and the
// chosen worker runner.
func newManager(ctx context.Context, restCfg *rest.Config, o managerOptions) (ctrl.Manager, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := loopsv1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	var runner controllers.Runner
	switch o.runner {
	case "inprocess":
		// Workers' metrics are served with the manager's, on its metrics endpoint.
		runner = controllers.NewInProcessRunner(o.log.WithName("worker"), pipeline.NewMetrics(ctrlmetrics.Registry))
	case "deployment":
		// The client is the manager's, set below once it exists.
		runner = &controllers.DeploymentRunner{Image: o.workerImage, DefaultResources: o.workerResources}
	default:
		return nil, fmt.Errorf("--runner=%q: want inprocess or deployment", o.runner)
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress: o.probeAddr,
		LeaderElection:         o.leaderElect,
		LeaderElectionID:       "customerloop-manager.loops.customerloop.dev",
		Logger:                 o.log,
		Cache:                  cacheOptions(o.watchNamespaces),
		Controller:             ctrlconfig.Controller{SkipNameValidation: &o.several},
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
	if o.dashboardAddr != "" && o.dashboardAddr != "0" {
		h := dashboard.New(controllers.DashboardSource{Client: mgr.GetClient()}, o.log.WithName("dashboard"))
		if err := mgr.Add(&httpRunnable{addr: o.dashboardAddr, handler: h, log: o.log.WithName("dashboard")}); err != nil {
			return nil, err
		}
	}
	return mgr, nil
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

// cacheOptions limits the manager's informers to the watched namespaces, so that it lists
// and watches CustomerLoops, Secrets and worker objects only there and needs no
// cluster-wide right to read Secrets.
func cacheOptions(namespaces []string) cache.Options {
	if len(namespaces) == 0 {
		return cache.Options{}
	}
	o := cache.Options{DefaultNamespaces: map[string]cache.Config{}}
	for _, ns := range namespaces {
		o.DefaultNamespaces[ns] = cache.Config{}
	}
	return o
}
