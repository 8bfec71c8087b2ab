package feedback

import (
	"context"
	"fmt"
	"strings"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// GapRow is one row of feedback_gaps: plan against actual for a customer, a product and
// a period. Pointers are NULL in the view (no plan, or no plan made before the period).
type GapRow struct {
	Customer       string    `json:"customer"`
	Product        string    `json:"product"`
	Period         time.Time `json:"period"`
	PlannedLatest  *float64  `json:"plannedLatest"`
	PlannedAtStart *float64  `json:"plannedAtStart"`
	Versions       uint64    `json:"versions"`
	Actual         float64   `json:"actual"`
	Events         uint64    `json:"events"`
	Gap            *float64  `json:"gap"`
	GapRatio       *float64  `json:"gapRatio"`
	ConsumedShare  *float64  `json:"consumedShare"`
	// Projected is, for the period under way only, the actual so far projected to the
	// whole period at its rate so far; ProjectedGap is Projected - PlannedLatest.
	Projected    *float64 `json:"projected"`
	ProjectedGap *float64 `json:"projectedGap"`
}

// AccuracyRow is one row of feedback_accuracy: how well plans made some periods ahead
// matched what happened, per product.
type AccuracyRow struct {
	Product string   `json:"product"`
	Horizon int64    `json:"horizon"`
	N       uint64   `json:"n"`
	Planned float64  `json:"planned"`
	Actual  float64  `json:"actual"`
	Bias    *float64 `json:"bias"`
	WAPE    *float64 `json:"wape"`
}

// GapFilter narrows a gap report; empty fields match everything. From and To bound the
// period, inclusive.
type GapFilter struct {
	Product, Customer string
	From, To          time.Time
	// Feedback, when set with Customer or Product, is the loop's feedback: the customer's
	// or product's rows are then read alone (ddl.FilteredGapsSQL) instead of filtered
	// from the whole view, at a cost that follows their own groups.
	Feedback *pipeline.FeedbackConfig
}

// QueryGaps reads the loop's gap view, largest absolute gap first within each period.
func QueryGaps(ctx context.Context, conn driver.Conn, db string, f GapFilter) ([]GapRow, error) {
	from, settings := pipeline.QualifiedTable(db, pipeline.ViewGaps), ""
	var args []any
	if (f.Customer != "" || f.Product != "") && f.Feedback != nil {
		var conds []string
		var condArgs []any
		if f.Customer != "" {
			conds, condArgs = append(conds, "customer_id = ?"), append(condArgs, f.Customer)
		}
		if f.Product != "" {
			conds, condArgs = append(conds, "product = ?"), append(condArgs, f.Product)
		}
		body, err := ddl.FilteredGapsSQL(*f.Feedback, strings.Join(conds, " AND "))
		if err != nil {
			return nil, err
		}
		from, settings = "(\n"+body+"\n)", " "+ddl.PushDownSettings
		args = append(append(args, condArgs...), condArgs...)
	}
	q := gapRowsSelect + from + " WHERE 1 = 1"
	if f.Product != "" {
		q += " AND product = ?"
		args = append(args, f.Product)
	}
	if f.Customer != "" {
		q += " AND customer_id = ?"
		args = append(args, f.Customer)
	}
	if !f.From.IsZero() {
		q += " AND period >= toDate(?)"
		args = append(args, f.From.Format(time.DateOnly))
	}
	if !f.To.IsZero() {
		q += " AND period <= toDate(?)"
		args = append(args, f.To.Format(time.DateOnly))
	}
	q += " ORDER BY period, product, abs(ifNull(gap, 0)) DESC, customer_id" + settings
	return queryGapRows(ctx, conn, db, q, args...)
}

// gapRowsSelect is the start of a query whose rows queryGapRows reads.
const gapRowsSelect = "SELECT customer_id, product, period, planned_latest, planned_at_start, versions, actual, events, gap, gap_ratio, consumed_share, projected, projected_gap FROM "

// queryGapRows runs a query of the gap view that starts with gapRowsSelect.
func queryGapRows(ctx context.Context, conn driver.Conn, db, q string, args ...any) ([]GapRow, error) {
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewGaps, err)
	}
	defer rows.Close()
	var out []GapRow
	for rows.Next() {
		var r GapRow
		if err := rows.Scan(&r.Customer, &r.Product, &r.Period, &r.PlannedLatest, &r.PlannedAtStart, &r.Versions,
			&r.Actual, &r.Events, &r.Gap, &r.GapRatio, &r.ConsumedShare, &r.Projected, &r.ProjectedGap); err != nil {
			return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewGaps, err)
		}
		r.Period = r.Period.UTC()
		out = append(out, r)
	}
	return out, rows.Err()
}

// QueryAccuracy reads the loop's accuracy view, optionally for one product.
func QueryAccuracy(ctx context.Context, conn driver.Conn, db, product string) ([]AccuracyRow, error) {
	q := "SELECT product, horizon, n, planned, actual, bias, wape FROM " + pipeline.QualifiedTable(db, pipeline.ViewAccuracy)
	var args []any
	if product != "" {
		q += " WHERE product = ?"
		args = append(args, product)
	}
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewAccuracy, err)
	}
	defer rows.Close()
	var out []AccuracyRow
	for rows.Next() {
		var r AccuracyRow
		if err := rows.Scan(&r.Product, &r.Horizon, &r.N, &r.Planned, &r.Actual, &r.Bias, &r.WAPE); err != nil {
			return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewAccuracy, err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
