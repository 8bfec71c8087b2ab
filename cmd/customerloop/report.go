package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"customerloop.dev/customerloop/cmd/internal/cli"
)

func newReportCommand(config *genericclioptions.ConfigFlags) *cobra.Command {
	var (
		o        cli.ReportOptions
		from, to string
	)
	cmd := &cobra.Command{
		Use:   "report LOOP",
		Short: "Print a loop's plan-against-actual gaps, plan accuracy and value added by horizon, and persistent biases",
		Long: "Prints the loop's plan-against-actual gaps per customer, product and period, plan accuracy and forecast value added (against the " +
			"previous period's actual) per product and horizon, and the customers whose tracking signal is outside spec.feedback.trackingSignalLimit, " +
			"from its feedback views.",
		Example: `  customerloop report acme -n default
  customerloop report acme --product compute --from 2026-10-01 --format json
  customerloop report acme --view tracking`,
		Args: cobra.ExactArgs(1),
	}
	k := addKubeFlags(config)
	k.addClickHouseFlag(cmd)
	cmd.ValidArgsFunction = k.completeLoops
	fs := cmd.Flags()
	fs.StringVar(&o.Format, "format", "table", "table, json or csv")
	fs.StringVar(&o.View, "view", "all", "gaps, accuracy, fva, tracking or all (csv prints one view: gaps unless another is named)")
	fs.StringVar(&o.Filter.Product, "product", "", "only this product")
	fs.StringVar(&o.Filter.Customer, "customer", "", "only this customer (gaps, tracking)")
	fs.StringVar(&from, "from", "", "only periods starting on or after this date, YYYY-MM-DD (gaps)")
	fs.StringVar(&to, "to", "", "only periods starting on or before this date, YYYY-MM-DD (gaps)")
	_ = cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{"table", "json", "csv"}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("view", cobra.FixedCompletions(cli.ReportViews, cobra.ShellCompDirectiveNoFileComp))
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		switch o.Format {
		case "table", "json", "csv":
		default:
			return fmt.Errorf("--format %q: want table, json or csv", o.Format)
		}
		if !slices.Contains(cli.ReportViews, o.View) {
			return fmt.Errorf("--view %q: want gaps, accuracy, fva, tracking or all", o.View)
		}
		for _, d := range []struct {
			flag string
			in   string
			out  *time.Time
		}{{"--from", from, &o.Filter.From}, {"--to", to, &o.Filter.To}} {
			if d.in == "" {
				continue
			}
			t, err := time.Parse(time.DateOnly, d.in)
			if err != nil {
				return fmt.Errorf("%s %q: want a date like 2026-11-01", d.flag, d.in)
			}
			*d.out = t
		}
		ctx := cmd.Context()
		loop, cfg, err := k.loopConfig(ctx, args[0])
		if err != nil {
			return err
		}
		if loop.Spec.Feedback == nil {
			return fmt.Errorf("CustomerLoop %s/%s has no spec.feedback: name its usage and plan streams there to get gap reports", loop.Namespace, loop.Name)
		}
		conn, err := k.openClickHouse(ctx, cfg)
		if err != nil {
			return err
		}
		defer conn.Close()
		// With --customer, the customer's rows are read alone.
		o.Filter.Feedback = cfg.Feedback
		o.TrackingLimit = cfg.Feedback.TrackingLimit()
		return cli.PrintReport(ctx, cmd.OutOrStdout(), conn, cfg.ClickHouse.Database, o)
	}
	return cmd
}
