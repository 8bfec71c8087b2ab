package cli

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

	"customerloop.dev/customerloop/pipeline/feedback"
)

// ReportOptions say what PrintReport prints and how.
type ReportOptions struct {
	// Format is table, json or csv.
	Format string
	// View is gaps, accuracy or all; csv prints one view, gaps unless accuracy.
	View   string
	Filter feedback.GapFilter
}

// PrintReport reads the loop's feedback views and writes them in the chosen format.
func PrintReport(ctx context.Context, w io.Writer, conn driver.Conn, db string, o ReportOptions) error {
	if o.Format == "csv" && o.View == "all" {
		o.View = "gaps"
	}
	var (
		gaps []feedback.GapRow
		acc  []feedback.AccuracyRow
		err  error
	)
	if o.View != "accuracy" {
		if gaps, err = feedback.QueryGaps(ctx, conn, db, o.Filter); err != nil {
			return err
		}
	}
	if o.View != "gaps" {
		if acc, err = feedback.QueryAccuracy(ctx, conn, db, o.Filter.Product); err != nil {
			return err
		}
	}
	switch o.Format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Gaps     []feedback.GapRow      `json:"gaps,omitempty"`
			Accuracy []feedback.AccuracyRow `json:"accuracy,omitempty"`
		}{gaps, acc})
	case "csv":
		cw := csv.NewWriter(w)
		if o.View == "gaps" {
			_ = cw.Write([]string{"period", "customer", "product", "planned_latest", "planned_at_start", "versions", "actual", "events", "gap", "gap_ratio", "consumed_share", "projected", "projected_gap"})
			for _, r := range gaps {
				_ = cw.Write([]string{r.Period.Format(time.DateOnly), r.Customer, r.Product, num(r.PlannedLatest), num(r.PlannedAtStart),
					strconv.FormatUint(r.Versions, 10), num(&r.Actual), strconv.FormatUint(r.Events, 10), num(r.Gap), num(r.GapRatio), num(r.ConsumedShare), num(r.Projected), num(r.ProjectedGap)})
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
	if o.View != "accuracy" {
		fmt.Fprintln(w, "plan against actual per customer, product and period")
		fmt.Fprintln(tw, "period\tcustomer\tproduct\tplanned\tplanned at start\tactual\tgap\tgap %\tused %\tversions\tprojected\tprojected gap\t")
		for _, r := range gaps {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t\n", r.Period.Format(time.DateOnly), r.Customer, r.Product,
				Round(r.PlannedLatest), Round(r.PlannedAtStart), Round(&r.Actual), Round(r.Gap), Percent(r.GapRatio), Percent(r.ConsumedShare), r.Versions,
				Round(r.Projected), Round(r.ProjectedGap))
		}
		if len(gaps) == 0 {
			fmt.Fprintln(tw, "(no plans or usage yet)\t")
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if o.View == "all" {
		fmt.Fprintln(w)
	}
	if o.View != "gaps" {
		fmt.Fprintln(w, "accuracy by horizon (completed periods)")
		fmt.Fprintln(tw, "product\thorizon\tpoints\tplanned\tactual\tbias\tWAPE\t")
		for _, r := range acc {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t\n", r.Product, r.Horizon, r.N, Round(&r.Planned), Round(&r.Actual), Percent(r.Bias), Percent(r.WAPE))
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

// Round formats a figure with one decimal, "-" when there is none.
func Round(p *float64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatFloat(*p, 'f', 1, 64)
}

// Percent formats a ratio as a percentage with one decimal, "-" when there is none.
func Percent(p *float64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatFloat(*p*100, 'f', 1, 64) + "%"
}
