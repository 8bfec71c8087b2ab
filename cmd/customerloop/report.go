package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
)

type reportOptions struct {
	format, view string
	filter       pipeline.GapFilter
}

// runReport prints a loop's plan-against-actual figures: the gap per customer, product
// and period, and plan accuracy per product and horizon.
func runReport(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: customerloop report LOOP [flags]\n\nPrints the loop's plan-against-actual gaps and accuracy by horizon.\n\n")
		fs.PrintDefaults()
	}
	config.RegisterFlags(fs)
	namespace := fs.String("namespace", "default", "namespace of the CustomerLoop")
	fs.StringVar(namespace, "n", "default", "shorthand for --namespace")
	var o reportOptions
	fs.StringVar(&o.format, "format", "table", "table, json or csv")
	fs.StringVar(&o.view, "view", "all", "gaps, accuracy or all (csv prints one view: gaps unless accuracy)")
	fs.StringVar(&o.filter.Product, "product", "", "only this product")
	fs.StringVar(&o.filter.Customer, "customer", "", "only this customer (gaps)")
	from := fs.String("from", "", "only periods starting on or after this date, YYYY-MM-DD (gaps)")
	to := fs.String("to", "", "only periods starting on or before this date, YYYY-MM-DD (gaps)")
	chAddr := fs.String("clickhouse", "", "read ClickHouse at this host:port instead of the loop's address (e.g. through a port-forward)")
	// The loop's name may come before or after the flags.
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if name == "" && fs.NArg() > 0 {
		name = fs.Arg(0)
	}
	if name == "" {
		fs.Usage()
		return errors.New("the name of a CustomerLoop is required")
	}
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
	}{{"--from", *from, &o.filter.From}, {"--to", *to, &o.filter.To}} {
		if d.in == "" {
			continue
		}
		t, err := time.Parse(time.DateOnly, d.in)
		if err != nil {
			return fmt.Errorf("%s %q: want a date like 2026-11-01", d.flag, d.in)
		}
		*d.out = t
	}

	restCfg, err := config.GetConfig()
	if err != nil {
		return fmt.Errorf("finding the cluster: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := loopsv1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	c, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	loop := &loopsv1alpha1.CustomerLoop{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: *namespace, Name: name}, loop); err != nil {
		return fmt.Errorf("reading CustomerLoop %s/%s: %w", *namespace, name, err)
	}
	if loop.Spec.Feedback == nil {
		return fmt.Errorf("CustomerLoop %s/%s has no spec.feedback: name its usage and plan streams there to get gap reports", *namespace, name)
	}
	cfg, err := controllers.LoopConfig(ctx, c, loop)
	if err != nil {
		return err
	}
	if *chAddr != "" {
		overrideAddr(&cfg.ClickHouse, *chAddr)
	}
	conn, err := pipeline.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	return printReport(ctx, os.Stdout, conn, cfg.ClickHouse.Database, o)
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

// overrideAddr points the connection at addr alone, such as a port-forward. Over TLS the
// server's certificate is still checked against the loop's own server name (the host of
// its first address when the loop sets none), not against the forward's.
func overrideAddr(ch *pipeline.ClickHouseConfig, addr string) {
	if t := ch.TLS; t != nil && t.ServerName == "" {
		tc := *t
		if host, _, err := net.SplitHostPort(ch.Addr); err == nil {
			tc.ServerName = host
		}
		ch.TLS = &tc
	}
	ch.Addr, ch.Failover = addr, nil
}
