// Command customerloop is CustomerLoop's binary: the operator, its workers, and the
// commands that show a loop to the people who run it. The local development stack is
// customerloop-dev, so that this binary links no test framework.
// Installed as kubectl-customerloop it is a kubectl plugin: kubectl customerloop ...
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"customerloop.dev/customerloop/cmd/internal/cli"
)

var version = "dev"

// pluginName is the name kubectl runs the binary under as a plugin.
const pluginName = "kubectl-customerloop"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCommand(filepath.Base(os.Args[0]), os.Stdout, os.Stderr)
	if cmd, err := root.ExecuteContextC(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", cmd.CommandPath(), err)
		os.Exit(1)
	}
}

// newRootCommand builds the command tree. argv0 is the name the binary was run as:
// as kubectl-customerloop, usage reads "kubectl customerloop ..." and the commands that
// run CustomerLoop itself (manager, worker) are hidden from it.
func newRootCommand(argv0 string, out, errOut io.Writer) *cobra.Command {
	plugin := strings.HasPrefix(argv0, pluginName)
	root := &cobra.Command{
		Use:   "customerloop",
		Short: "CustomerLoop closes the loop between customers' usage, their plans and product teams",
		Long: `customerloop closes the loop between customers' usage, their plans and product teams.

It runs the operator and its workers, and shows a CustomerLoop to the people who run it:
its status, its dead letters (and replays them after a fix), a customer's consent trail,
and the plan-against-actual report. Those commands read the loop through your
kubeconfig, like kubectl.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	if plugin {
		root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl customerloop"}
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.AddGroup(&cobra.Group{ID: "loops", Title: "Commands for a CustomerLoop:"})
	if !plugin {
		root.AddGroup(&cobra.Group{ID: "run", Title: "Commands that run CustomerLoop:"})
	}
	kube := newKubeConfigFlags(root)
	for _, c := range []*cobra.Command{newStatusCommand(kube), newDLQCommand(kube), newConsentCommand(kube), newReportCommand(kube), newTokenCommand(kube)} {
		c.GroupID = "loops"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{newManagerCommand(), newWorkerCommand()} {
		if plugin {
			c.Hidden = true
		} else {
			c.GroupID = "run"
		}
		// The kubectl flags are for the commands that read a loop: the help of the
		// commands that run CustomerLoop leaves them out (the manager has its own
		// --kubeconfig).
		help := root.HelpFunc()
		c.SetHelpFunc(func(cmd *cobra.Command, args []string) {
			root.PersistentFlags().VisitAll(func(f *pflag.Flag) { f.Hidden = true })
			help(cmd, args)
		})
		root.AddCommand(c)
	}
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version) },
	})
	if plugin {
		pluginExamples(root)
	}
	return root
}

// pluginExamples writes the examples as a kubectl user types them.
func pluginExamples(c *cobra.Command) {
	c.Example = strings.ReplaceAll(c.Example, "  customerloop ", "  kubectl customerloop ")
	for _, sub := range c.Commands() {
		pluginExamples(sub)
	}
}

// logFlags are the logging flags of the long-running commands.
type logFlags struct{ level, format string }

func (l *logFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&l.level, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().StringVar(&l.format, "log-format", "text", "text (logfmt-like key=value) or json (one JSON object a line)")
}

func (l logFlags) logger(w io.Writer) (logr.Logger, error) {
	return cli.NewLogger(w, l.level, l.format)
}
