package ingest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/go-logr/logr/testr"
)

// TestRetryWriteChecksWhatLandedBeforeRetrying: a write that failed may have landed all
// the same, so each retry first asks what did, and writes nothing more once all of it has.
func TestRetryWriteChecksWhatLandedBeforeRetrying(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := pipeline.ClickHouseConfig{Addr: stacktest.ClickhouseAddr(t), Database: "default"}
	ch, err := connect.OpenClickHouse(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	w := &Worker{cfg: pipeline.Config{ClickHouse: cfg}, log: testr.New(t), metrics: NewMetrics(nil), ch: ch}
	var calls []string
	err = w.retryWrite(ctx, StageLedger, "ledger", pipeline.LedgerTable, func([]shardReader) (bool, error) {
		calls = append(calls, "landed")
		return len(calls) == 4, nil
	}, func() error {
		calls = append(calls, "write")
		return errors.New("connection reset")
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"write", "landed", "write", "landed"}; !slices.Equal(calls, want) {
		t.Fatalf("calls %v, want %v", calls, want)
	}
}
