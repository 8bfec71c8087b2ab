package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"runtime/pprof"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"customerloop.dev/customerloop/cmd/internal/cli"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// Credentials reach a worker through its environment (from Secrets, in a pod), so that
// they never sit in the config file.
const (
	userEnv         = "CUSTOMERLOOP_CLICKHOUSE_USERNAME"
	passwordEnv     = "CUSTOMERLOOP_CLICKHOUSE_PASSWORD"
	saslUserEnv     = "CUSTOMERLOOP_KAFKA_SASL_USERNAME"
	saslPasswordEnv = "CUSTOMERLOOP_KAFKA_SASL_PASSWORD"
	hmacKeyEnv      = "CUSTOMERLOOP_PII_HMAC_KEY"
)

type workerOptions struct {
	path, metricsAddr, cpuProfile, pprofAddr string
	metricsSecure                            bool
	logs                                     logFlags
}

func newWorkerCommand() *cobra.Command {
	var o workerOptions
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run one loop's ingestion from a pipeline config file",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runWorker(cmd.Context(), o) },
	}
	fs := cmd.Flags()
	fs.StringVar(&o.path, "config", "", "pipeline config file (JSON), as the operator renders it")
	o.logs.add(cmd)
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint (and /healthz); 0 disables it")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true, cli.MetricsSecureUsage+"; /healthz is served to anyone")
	// --kubeconfig, for --metrics-secure's token reviews; in a pod its ServiceAccount.
	goFlags := flag.NewFlagSet("worker", flag.ContinueOnError)
	config.RegisterFlags(goFlags)
	fs.AddGoFlagSet(goFlags)
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile to this file until the worker stops")
	fs.StringVar(&o.pprofAddr, "pprof-bind-address", "0", "serve Go's /debug/pprof on this address; 0 disables it")
	return cmd
}

func runWorker(ctx context.Context, o workerOptions) error {
	if o.path == "" {
		return fmt.Errorf("--config is required")
	}
	log, err := o.logs.logger(os.Stderr)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(o.path)
	if err != nil {
		return err
	}
	var cfg pipeline.Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("reading %s: %w", o.path, err)
	}
	if u := os.Getenv(userEnv); u != "" {
		cfg.ClickHouse.Username = u
	}
	cfg.ClickHouse.Password = os.Getenv(passwordEnv)
	if cfg.Kafka.SASL != nil {
		cfg.Kafka.SASL.Username, cfg.Kafka.SASL.Password = os.Getenv(saslUserEnv), os.Getenv(saslPasswordEnv)
	}
	if k := os.Getenv(hmacKeyEnv); k != "" {
		cfg.HMACKey = []byte(k)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if o.pprofAddr != "0" {
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		srv := &http.Server{Addr: o.pprofAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.ListenAndServe() }()
		defer srv.Close()
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := ingest.NewMetrics(reg)
	if o.metricsAddr != "0" {
		var filter metricsserver.Filter
		if o.metricsSecure {
			if filter, err = workerMetricsFilter(); err != nil {
				return err
			}
		} else if !cli.Loopback(o.metricsAddr) {
			log.Info("WARNING: metrics are served over plain HTTP to anyone who reaches the port (--metrics-secure=false)", "address", o.metricsAddr)
		}
		stop, err := serveWorkerMetrics(o.metricsAddr, filter, reg, log.WithName("metrics"))
		if err != nil {
			return err
		}
		defer stop()
	}
	w, err := ingest.NewWorker(ctx, cfg, log.WithValues("loop", cfg.Loop), metrics)
	if err != nil {
		return err
	}
	defer w.Close()
	return w.Run(ctx)
}

// workerMetricsFilter lets in the tokens the API server (found as --kubeconfig says; in
// a pod through its ServiceAccount) accepts and allows to get /metrics.
func workerMetricsFilter() (metricsserver.Filter, error) {
	restCfg, err := config.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("--metrics-secure needs the Kubernetes API to review tokens: %w", err)
	}
	httpClient, err := rest.HTTPClientFor(restCfg)
	if err != nil {
		return nil, err
	}
	return controllers.MetricsFilter(restCfg, httpClient)
}

// serveWorkerMetrics serves the worker's metrics endpoint until stop is called; with a
// filter, over HTTPS and to the requests it lets through.
func serveWorkerMetrics(addr string, filter metricsserver.Filter, reg prometheus.Gatherer, log logr.Logger) (stop func(), err error) {
	h, err := cli.WorkerMetricsHandler(reg, filter, log)
	if err != nil {
		return nil, err
	}
	ln, err := cli.ListenMetrics(addr, filter != nil)
	if err != nil {
		return nil, fmt.Errorf("metrics endpoint: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return func() { _ = srv.Close() }, nil
}
