package ingest

import (
	"context"
	"fmt"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// TableStats is what a raw table says about its stream.
type TableStats struct {
	Rows         int64
	LastIngested time.Time // zero when the table is empty
}

// StreamStats reads the row count and newest ingestion time of a stream's raw table.
func StreamStats(ctx context.Context, conn driver.Conn, database string, s pipeline.StreamConfig) (TableStats, error) {
	var (
		rows uint64
		last time.Time
	)
	q := "SELECT count(), max(_ingested_at) FROM " + pipeline.QualifiedTable(database, s.Table())
	if err := conn.QueryRow(ctx, q).Scan(&rows, &last); err != nil {
		return TableStats{}, fmt.Errorf("reading %s.%s: %w", database, s.Table(), err)
	}
	st := TableStats{Rows: int64(rows)}
	if rows > 0 {
		st.LastIngested = last.UTC()
	}
	return st, nil
}
