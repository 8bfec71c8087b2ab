// Command customerloop is CustomerLoop's one binary: the operator, its workers and the
// local development stack.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
)

var version = "dev"

const usage = `customerloop closes the loop between customers' usage, their plans and product teams.

Usage:
  customerloop <command> [flags]

Commands:
  manager   run the operator: reconcile CustomerLoops into ClickHouse schema and workers
  worker    run one loop's ingestion from a pipeline config file
  report    print a loop's plan-against-actual gaps and plan accuracy by horizon
  dev       run the whole stack locally (control plane, broker, manager) with a demo workload
  broker    run a local Kafka-protocol broker for development
  version   print the version

Run 'customerloop <command> -h' for the flags of a command.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmds := map[string]func(context.Context, []string) error{
		"manager": runManager,
		"worker":  runWorker,
		"report":  runReport,
		"dev":     runDev,
		"broker":  runBroker,
		"version": func(context.Context, []string) error { fmt.Println(version); return nil },
	}
	cmd, ok := cmds[os.Args[1]]
	if !ok {
		if os.Args[1] != "-h" && os.Args[1] != "--help" && os.Args[1] != "help" {
			fmt.Fprintf(os.Stderr, "unknown command %q\n\n", os.Args[1])
		}
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd(ctx, os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "customerloop %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// newLogger returns a structured logger writing to w at the given level (debug, info,
// warn, error).
func newLogger(w *os.File, level string) (logr.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return logr.Logger{}, fmt.Errorf("--log-level: %w", err)
	}
	return logr.FromSlogHandler(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
