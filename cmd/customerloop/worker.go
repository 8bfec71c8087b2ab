package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"customerloop.dev/customerloop/pipeline"
)

// passwordEnv carries the ClickHouse password to a worker, so that it never sits in the
// config file.
const passwordEnv = "CUSTOMERLOOP_CLICKHOUSE_PASSWORD"

func runWorker(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	path := fs.String("config", "", "pipeline config file (JSON), as the operator renders it")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("--config is required")
	}
	log, err := newLogger(os.Stderr, *logLevel)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(*path)
	if err != nil {
		return err
	}
	var cfg pipeline.Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("reading %s: %w", *path, err)
	}
	cfg.ClickHouse.Password = os.Getenv(passwordEnv)
	w, err := pipeline.NewWorker(ctx, cfg, log.WithValues("loop", cfg.Loop))
	if err != nil {
		return err
	}
	defer w.Close()
	return w.Run(ctx)
}
