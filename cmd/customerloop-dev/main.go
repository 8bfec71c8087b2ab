// Command customerloop-dev runs CustomerLoop on one machine for development: the whole
// stack with a demo workload (dev, behind make demo) and a standalone Kafka-protocol
// broker (broker). It links a test control plane (envtest) and an in-memory broker
// (kfake), which is why it is not the customerloop binary the image ships.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCommand(os.Stdout, os.Stderr)
	if cmd, err := root.ExecuteContextC(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", cmd.CommandPath(), err)
		os.Exit(1)
	}
}

func newRootCommand(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "customerloop-dev",
		Short: "Run CustomerLoop locally for development: the whole stack, or a Kafka-protocol broker",
		Long: `customerloop-dev runs CustomerLoop on this machine for development.

dev starts a Kubernetes control plane, a Kafka-protocol broker and the operator, runs
a loop over a synthetic workload and checks what lands in ClickHouse (make demo runs
it). broker runs a standalone Kafka-protocol broker for kcat and local workers. The
commands for a CustomerLoop (status, dlq, consent, report) are customerloop's.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.AddCommand(newDevCommand(), newBrokerCommand())
	return root
}
