package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"customerloop.dev/customerloop/pipeline"
)

type reportOptions struct {
	format, view string
	filter       pipeline.GapFilter
}

func newReportCommand(config *genericclioptions.ConfigFlags) *cobra.Command {
	var (
		o        reportOptions
		from, to string
	)
	cmd := &cobra.Command{
		Use:   "report LOOP",
		Short: "Print a loop's plan-against-actual gaps and plan accuracy by horizon",
		Long:  "Prints the loop's plan-against-actual gaps per customer, product and period, and plan accuracy per product and horizon, from its feedback views.",
		Example: `  customerloop report acme -n default
  customerloop report acme --product compute --from 2026-10-01 --format json`,
		Args: cobra.ExactArgs(1),
	}
	k := addKubeFlags(config)
	k.addClickHouseFlag(cmd)
	cmd.ValidArgsFunction = k.completeLoops
	fs := cmd.Flags()
	fs.StringVar(&o.format, "format", "table", "table, json or csv")
	fs.StringVar(&o.view, "view", "all", "gaps, accuracy or all (csv prints one view: gaps unless accuracy)")
	fs.StringVar(&o.filter.Product, "product", "", "only this product")
	fs.StringVar(&o.filter.Customer, "customer", "", "only this customer (gaps)")
	fs.StringVar(&from, "from", "", "only periods starting on or after this date, YYYY-MM-DD (gaps)")
	fs.StringVar(&to, "to", "", "only periods starting on or before this date, YYYY-MM-DD (gaps)")
	_ = cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{"table", "json", "csv"}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("view", cobra.FixedCompletions([]string{"gaps", "accuracy", "all"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		switch o.format {
		case "table", "json", "csv":
		default:
			return fmt.Errorf("--format %q: want table, json or csv", o.format)
		}
		switch o.view {
		case "gaps", "accuracy", "all":
		default:
			return fmt.Errorf("--view %q: want gaps, accuracy or all", o.view)
		}
		for _, d := range []struct {
			flag string
			in   string
			out  *time.Time
		}{{"--from", from, &o.filter.From}, {"--to", to, &o.filter.To}} {
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
		return printReport(ctx, cmd.OutOrStdout(), conn, cfg.ClickHouse.Database, o)
	}
	return cmd
}

// printReport reads the loop's feedback views and writes them in the chosen format.
func printReport(ctx context.Context, w io.Writer, conn driver.Conn, db string, o reportOptions) error {
	if o.format == "csv" && o.view == "all" {
		o.view = "gaps"
	}
	var (
		gaps []pipeline.GapRow
		acc  []pipeline.AccuracyRow
		err  error
	)
	if o.view != "accuracy" {
		if gaps, err = pipeline.QueryGaps(ctx, conn, db, o.filter); err != nil {
			return err
		}
	}
	if o.view != "gaps" {
		if acc, err = pipeline.QueryAccuracy(ctx, conn, db, o.filter.Product); err != nil {
			return err
		}
	}
	switch o.format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Gaps     []pipeline.GapRow      `json:"gaps,omitempty"`
			Accuracy []pipeline.AccuracyRow `json:"accuracy,omitempty"`
		}{gaps, acc})
	case "csv":
		cw := csv.NewWriter(w)
		if o.view == "gaps" {
			_ = cw.Write([]string{"period", "customer", "product", "planned_latest", "planned_at_start", "versions", "actual", "events", "gap", "gap_ratio", "consumed_share"})
			for _, r := range gaps {
				_ = cw.Write([]string{r.Period.Format(time.DateOnly), r.Customer, r.Product, num(r.PlannedLatest), num(r.PlannedAtStart),
					strconv.FormatUint(r.Versions, 10), num(&r.Actual), strconv.FormatUint(r.Events, 10), num(r.Gap), num(r.GapRatio), num(r.ConsumedShare)})
			}
		} else {
			_ = cw.Write([]string{"product", "horizon", "n", "planned", "actual", "bias", "wape"})
			for _, r := range acc {
				_ = cw.Write([]string{r.Product, strconv.FormatInt(r.Horizon, 10), strconv.FormatUint(r.N, 10), num(&r.Planned), num(&r.Actual), num(r.Bias), num(r.WAPE)})
			}
		}
		cw.Flush()
		return cw.Error()
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	if o.view != "accuracy" {
		fmt.Fprintln(w, "plan against actual per customer, product and period")
		fmt.Fprintln(tw, "period\tcustomer\tproduct\tplanned\tplanned at start\tactual\tgap\tgap %\tused %\tversions\t")
		for _, r := range gaps {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", r.Period.Format(time.DateOnly), r.Customer, r.Product,
				round(r.PlannedLatest), round(r.PlannedAtStart), round(&r.Actual), round(r.Gap), percent(r.GapRatio), percent(r.ConsumedShare), r.Versions)
		}
		if len(gaps) == 0 {
			fmt.Fprintln(tw, "(no plans or usage yet)\t")
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if o.view == "all" {
		fmt.Fprintln(w)
	}
	if o.view != "gaps" {
		fmt.Fprintln(w, "accuracy by horizon (completed periods)")
		fmt.Fprintln(tw, "product\thorizon\tpoints\tplanned\tactual\tbias\tWAPE\t")
		for _, r := range acc {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t\n", r.Product, r.Horizon, r.N, round(&r.Planned), round(&r.Actual), percent(r.Bias), percent(r.WAPE))
		}
		if len(acc) == 0 {
			fmt.Fprintln(tw, "(no completed period with a plan yet)\t")
		}
	}
	return tw.Flush()
}

func num(p *float64) string {
	if p == nil {
		return ""
	}
	return strconv.FormatFloat(*p, 'g', -1, 64)
}

func round(p *float64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatFloat(*p, 'f', 1, 64)
}

func percent(p *float64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatFloat(*p*100, 'f', 1, 64) + "%"
}
