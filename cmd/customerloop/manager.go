package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/config"

	"customerloop.dev/customerloop/cmd/internal/cli"
	"customerloop.dev/customerloop/pipeline"
)

func newManagerCommand() *cobra.Command {
	var (
		runner, workerImage, metricsAddr, probeAddr, workerResources, dashboardAddr, metricsCertDir string
		customerAPIAddr, customerAPICertDir                                                         string
		watchNamespaces                                                                             []string
		leaderElect, metricsSecure, dashboardAuth                                                   bool
		logs                                                                                        logFlags
		batch                                                                                       pipeline.BatchConfig
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
			mgr, err := cli.NewManager(ctx, restCfg, cli.ManagerOptions{
				Runner: runner, WorkerImage: workerImage, MetricsAddr: metricsAddr, ProbeAddr: probeAddr, LeaderElect: leaderElect, Log: log,
				MetricsSecure: metricsSecure, MetricsCertDir: metricsCertDir,
				DashboardAddr: dashboardAddr, DashboardAuth: dashboardAuth, CustomerAPIAddr: customerAPIAddr, CustomerAPICertDir: customerAPICertDir, WorkerResources: resources, Batch: batch, WatchNamespaces: watchNamespaces,
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
	fs.BoolVar(&metricsSecure, "metrics-secure", true, cli.MetricsSecureUsage+"; the worker pods of --runner=deployment follow it")
	fs.StringVar(&metricsCertDir, "metrics-cert-dir", "", "directory with tls.crt and tls.key of the metrics endpoint (with --metrics-secure); without them a self-signed certificate")
	fs.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of the health and readiness probes")
	fs.BoolVar(&leaderElect, "leader-elect", false, "elect a leader so that only one of several replicas reconciles")
	logs.add(cmd)
	fs.StringVar(&workerResources, "worker-resources", "", `resources of worker containers whose loop sets no spec.workers.resources (with --runner=deployment), as JSON, e.g. {"requests":{"cpu":"500m","memory":"256Mi"},"limits":{"memory":"512Mi"}}`)
	fs.IntVar(&batch.MaxRows, "worker-batch-max-rows", 0, "rows per insert of loops that set no spec.workers.batch.maxRows (0: the pipeline's default, 20000)")
	fs.IntVar(&batch.MaxBytes, "worker-batch-max-bytes", 0, "message bytes per insert of loops that set no spec.workers.batch.maxBytes (0: the pipeline's default, 32 MiB)")
	fs.DurationVar(&batch.MaxWait.Duration, "worker-batch-max-wait", 0, "longest a message waits for its batch in loops that set no spec.workers.batch.maxWait (0: the pipeline's default, 1s)")
	fs.StringVar(&dashboardAddr, "dashboard-bind-address", ":8082", "address of the read-only plan-against-actual dashboard, served by every replica; 0 disables it")
	fs.BoolVar(&dashboardAuth, "dashboard-auth", true, cli.DashboardAuthUsage)
	fs.StringVar(&customerAPIAddr, "customer-api-bind-address", ":8083", "address of the customers' own API (loops with spec.customerChannel), served by every replica; 0 disables it")
	fs.StringVar(&customerAPICertDir, "customer-api-cert-dir", "", "directory with tls.crt and tls.key (a cert-manager Secret mounted there) to serve the customer API over TLS; read again when they change")
	fs.StringSliceVar(&watchNamespaces, "watch-namespaces", nil, "namespaces whose CustomerLoops (and their Secrets) the manager watches, comma separated; all when empty. With a list the manager needs to read Secrets only there: the chart then grants it namespaced Roles instead of a cluster-wide rule")
	return cmd
}
