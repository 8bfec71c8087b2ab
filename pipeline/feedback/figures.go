package feedback

import (
	"context"
	"fmt"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ValueAddedRow is one row of feedback_value_added: whether a product's plans made some
// periods ahead beat the naive forecast (the previous period's actual).
type ValueAddedRow struct {
	Product   string   `json:"product"`
	Horizon   int64    `json:"horizon"`
	N         uint64   `json:"n"`
	WAPE      *float64 `json:"wape"`
	NaiveWAPE *float64 `json:"naiveWape"`
	// FVA is NaiveWAPE - WAPE: above 0, the plans beat the naive forecast.
	FVA        *float64 `json:"fva"`
	BeatsNaive bool     `json:"beatsNaive"`
}

// QueryValueAdded reads the loop's value-added view, optionally for one product, by
// product and horizon.
func QueryValueAdded(ctx context.Context, conn driver.Conn, db, product string) ([]ValueAddedRow, error) {
	q := "SELECT product, horizon, n, wape, naive_wape, fva, beats_naive FROM " + pipeline.QualifiedTable(db, pipeline.ViewValueAdded)
	var args []any
	if product != "" {
		q += " WHERE product = ?"
		args = append(args, product)
	}
	rows, err := conn.Query(ctx, q+" ORDER BY product, horizon", args...)
	if err != nil {
		return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewValueAdded, err)
	}
	defer rows.Close()
	var out []ValueAddedRow
	for rows.Next() {
		var r ValueAddedRow
		var beats uint8
		if err := rows.Scan(&r.Product, &r.Horizon, &r.N, &r.WAPE, &r.NaiveWAPE, &r.FVA, &beats); err != nil {
			return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewValueAdded, err)
		}
		r.BeatsNaive = beats == 1
		out = append(out, r)
	}
	return out, rows.Err()
}

// TrackingRow is one row of feedback_tracking: how persistently a customer's plans for a
// product miss, over the completed periods with a plan made before they began.
type TrackingRow struct {
	Customer        string  `json:"customer"`
	Product         string  `json:"product"`
	N               uint64  `json:"n"`
	CumulativeError float64 `json:"cumulativeError"`
	MAD             float64 `json:"mad"`
	// TrackingSignal is CumulativeError / MAD; nil when MAD is 0.
	TrackingSignal *float64 `json:"trackingSignal"`
}

// TrackingFilter narrows a read of feedback_tracking; empty fields match everything.
type TrackingFilter struct {
	Product, Customer string
	// Outside, when above 0, keeps only the rows whose |tracking signal| exceeds it: the
	// customers outside the alert band.
	Outside float64
}

// QueryTracking reads the loop's tracking view: by customer and product, or, with
// f.Outside, the largest |tracking signal| first.
func QueryTracking(ctx context.Context, conn driver.Conn, db string, f TrackingFilter) ([]TrackingRow, error) {
	q := "SELECT customer_id, product, n, cumulative_error, mad, tracking_signal FROM " + pipeline.QualifiedTable(db, pipeline.ViewTracking) + " WHERE 1 = 1"
	var args []any
	if f.Product != "" {
		q += " AND product = ?"
		args = append(args, f.Product)
	}
	if f.Customer != "" {
		q += " AND customer_id = ?"
		args = append(args, f.Customer)
	}
	order := " ORDER BY customer_id, product"
	if f.Outside > 0 {
		q += " AND abs(tracking_signal) > ?"
		args = append(args, f.Outside)
		order = " ORDER BY abs(tracking_signal) DESC, customer_id, product"
	}
	rows, err := conn.Query(ctx, q+order, args...)
	if err != nil {
		return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewTracking, err)
	}
	defer rows.Close()
	var out []TrackingRow
	for rows.Next() {
		var r TrackingRow
		if err := rows.Scan(&r.Customer, &r.Product, &r.N, &r.CumulativeError, &r.MAD, &r.TrackingSignal); err != nil {
			return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.ViewTracking, err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
