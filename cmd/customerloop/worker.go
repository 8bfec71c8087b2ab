package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"runtime/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"customerloop.dev/customerloop/pipeline"
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
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint; 0 disables it")
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
	metrics := pipeline.NewMetrics(reg)
	if o.metricsAddr != "0" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		// The worker is alive while it serves; a failing ClickHouse or Kafka shows in its
		// metrics and logs, not in restarts that would not help.
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		srv := &http.Server{Addr: o.metricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics endpoint: %w", err)
		}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	w, err := pipeline.NewWorker(ctx, cfg, log.WithValues("loop", cfg.Loop), metrics)
	if err != nil {
		return err
	}
	defer w.Close()
	return w.Run(ctx)
}
