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

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// ReportViews are the report's --view values: what PrintReport prints.
var ReportViews = []string{"gaps", "accuracy", "fva", "tracking", "all"}

// ReportOptions say what PrintReport prints and how.
type ReportOptions struct {
	// Format is table, json or csv.
	Format string
	// View is one of ReportViews; csv prints one view, gaps unless another is named.
	View   string
	Filter feedback.GapFilter
	// TrackingLimit is the loop's tracking signal band (FeedbackConfig.TrackingLimit):
	// the tracking view lists the customers beyond it. 0 means the default.
	TrackingLimit float64
}

// trackingReport is the tracking view of the report: the band and who is outside it.
type trackingReport struct {
	Limit   float64                `json:"limit"`
	Outside []feedback.TrackingRow `json:"outside"`
}

// PrintReport reads the loop's feedback views and writes them in the chosen format.
func PrintReport(ctx context.Context, w io.Writer, conn driver.Conn, db string, o ReportOptions) error {
	if o.Format == "csv" && o.View == "all" {
		o.View = "gaps"
	}
	if o.TrackingLimit == 0 {
		o.TrackingLimit = pipeline.DefaultTrackingSignalLimit
	}
	shows := func(v string) bool { return o.View == v || o.View == "all" }
	var (
		gaps     []feedback.GapRow
		acc      []feedback.AccuracyRow
		fva      []feedback.ValueAddedRow
		tracking *trackingReport
		err      error
	)
	if shows("gaps") {
		if gaps, err = feedback.QueryGaps(ctx, conn, db, o.Filter); err != nil {
			return err
		}
	}
	if shows("accuracy") {
		if acc, err = feedback.QueryAccuracy(ctx, conn, db, o.Filter.Product); err != nil {
			return err
		}
	}
	if shows("fva") {
		if fva, err = feedback.QueryValueAdded(ctx, conn, db, o.Filter.Product); err != nil {
			return err
		}
	}
	if shows("tracking") {
		tracking = &trackingReport{Limit: o.TrackingLimit, Outside: []feedback.TrackingRow{}}
		rows, err := feedback.QueryTracking(ctx, conn, db, feedback.TrackingFilter{Product: o.Filter.Product, Customer: o.Filter.Customer, Outside: o.TrackingLimit})
		if err != nil {
			return err
		}
		tracking.Outside = append(tracking.Outside, rows...)
	}
	switch o.Format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Gaps       []feedback.GapRow        `json:"gaps,omitempty"`
			Accuracy   []feedback.AccuracyRow   `json:"accuracy,omitempty"`
			ValueAdded []feedback.ValueAddedRow `json:"valueAdded,omitempty"`
			Tracking   *trackingReport          `json:"tracking,omitempty"`
		}{gaps, acc, fva, tracking})
	case "csv":
		cw := csv.NewWriter(w)
		switch o.View {
		case "fva":
			_ = cw.Write([]string{"product", "horizon", "n", "wape", "naive_wape", "fva", "beats_naive"})
			for _, r := range fva {
				_ = cw.Write([]string{r.Product, strconv.FormatInt(r.Horizon, 10), strconv.FormatUint(r.N, 10), num(r.WAPE), num(r.NaiveWAPE), num(r.FVA),
					strconv.FormatBool(r.BeatsNaive)})
			}
		case "tracking":
			_ = cw.Write([]string{"customer", "product", "n", "cumulative_error", "mad", "tracking_signal", "limit"})
			for _, r := range tracking.Outside {
				_ = cw.Write([]string{r.Customer, r.Product, strconv.FormatUint(r.N, 10), num(&r.CumulativeError), num(&r.MAD), num(r.TrackingSignal),
					num(&tracking.Limit)})
			}
		case "gaps":
			_ = cw.Write([]string{"period", "customer", "product", "planned_latest", "planned_at_start", "versions", "actual", "events", "gap", "gap_ratio", "consumed_share", "projected", "projected_gap"})
			for _, r := range gaps {
				_ = cw.Write([]string{r.Period.Format(time.DateOnly), r.Customer, r.Product, num(r.PlannedLatest), num(r.PlannedAtStart),
					strconv.FormatUint(r.Versions, 10), num(&r.Actual), strconv.FormatUint(r.Events, 10), num(r.Gap), num(r.GapRatio), num(r.ConsumedShare), num(r.Projected), num(r.ProjectedGap)})
			}
		default:
			_ = cw.Write([]string{"product", "horizon", "n", "planned", "actual", "bias", "wape"})
			for _, r := range acc {
				_ = cw.Write([]string{r.Product, strconv.FormatInt(r.Horizon, 10), strconv.FormatUint(r.N, 10), num(&r.Planned), num(&r.Actual), num(r.Bias), num(r.WAPE)})
			}
		}
		cw.Flush()
		return cw.Error()
	}
	return printTables(w, o, gaps, acc, fva, tracking)
}

// printTables writes the report's tables, one per view, a blank line between them.
func printTables(w io.Writer, o ReportOptions, gaps []feedback.GapRow, acc []feedback.AccuracyRow, fva []feedback.ValueAddedRow, tracking *trackingReport) error {
	shows := func(v string) bool { return o.View == v || o.View == "all" }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	if shows("gaps") {
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
	if shows("accuracy") {
		fmt.Fprintln(w, "accuracy by horizon (completed periods)")
		fmt.Fprintln(tw, "product\thorizon\tpoints\tplanned\tactual\tbias\tWAPE\t")
		for _, r := range acc {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t\n", r.Product, r.Horizon, r.N, Round(&r.Planned), Round(&r.Actual), Percent(r.Bias), Percent(r.WAPE))
		}
		if len(acc) == 0 {
			fmt.Fprintln(tw, "(no completed period with a plan yet)\t")
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if o.View == "all" {
		fmt.Fprintln(w)
	}
	if shows("fva") {
		fmt.Fprintln(w, "forecast value added by horizon (completed periods; naive forecast: the customer's actual of the period before)")
		fmt.Fprintln(tw, "product\thorizon\tpoints\tWAPE\tnaive WAPE\tFVA\tbeats naive\t")
		for _, r := range fva {
			beats := "no"
			if r.BeatsNaive {
				beats = "yes"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t\n", r.Product, r.Horizon, r.N, Percent(r.WAPE), Percent(r.NaiveWAPE), Percent(r.FVA), beats)
		}
		if len(fva) == 0 {
			fmt.Fprintln(tw, "(no completed period with a plan yet)\t")
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if o.View == "all" {
		fmt.Fprintln(w)
	}
	if shows("tracking") {
		fmt.Fprintf(w, "customers outside the tracking signal band ±%s (completed periods with a plan made before them)\n", strconv.FormatFloat(tracking.Limit, 'f', -1, 64))
		fmt.Fprintln(tw, "customer\tproduct\tperiods\tcumulative error\tMAD\ttracking signal\t")
		for _, r := range tracking.Outside {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t\n", r.Customer, r.Product, r.N, Round(&r.CumulativeError), Round(&r.MAD), Signed(r.TrackingSignal))
		}
		if len(tracking.Outside) == 0 {
			fmt.Fprintln(tw, "(none)\t")
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

// Signed formats a figure with two decimals and its sign, "-" when there is none.
func Signed(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%+.2f", *p)
}

// Percent formats a ratio as a percentage with one decimal, "-" when there is none.
func Percent(p *float64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatFloat(*p*100, 'f', 1, 64) + "%"
}
