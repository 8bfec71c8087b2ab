package feedback

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/ClickHouse/clickhouse-go/v2"
)

// TestStatementScale times ReadStatement on a monthly history of CUSTOMERLOOP_STATEMENT_SCALE
// customers (2000 is the target's), 10 products and 24 months, one usage event per
// customer, product and month and two plan versions (two and one months ahead) per
// period, and counts the rows the server reads for it: a statement reads the customer's
// granules of the rollups and the plans, never the whole history (checked from 1000
// customers on). It runs only when the variable is set: loading takes a while.
func TestStatementScale(t *testing.T) {
	customers, _ := strconv.Atoi(os.Getenv("CUSTOMERLOOP_STATEMENT_SCALE"))
	if customers <= 0 {
		t.Skip("CUSTOMERLOOP_STATEMENT_SCALE (a number of customers) is not set")
	}
	chAddr := stacktest.ClickhouseAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_statement_scale"))
	cfg.ClickHouse.Addr = chAddr
	cfg.ClickHouse.Username, cfg.ClickHouse.Password = os.Getenv("CLICKHOUSE_USER"), os.Getenv("CLICKHOUSE_PASSWORD")
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	now := time.Now().UTC().Truncate(time.Second)
	month := func(i int) time.Time { return PeriodStart(pipeline.GrainMonth, now).AddDate(0, i, 0) }
	const products = 10
	var offset int64
	var usage, plans [][]any
	var usageRows, planRows int
	flush := func(force bool) {
		if len(usage) >= 100000 || force && len(usage) > 0 {
			if err := ddl.InsertRows(ctx, ch, fc.Database, cfg.Streams[0], usage); err != nil {
				t.Fatal(err)
			}
			usageRows, usage = usageRows+len(usage), usage[:0]
		}
		if len(plans) >= 100000 || force && len(plans) > 0 {
			if err := ddl.InsertRows(ctx, ch, fc.Database, cfg.Streams[1], plans); err != nil {
				t.Fatal(err)
			}
			planRows, plans = planRows+len(plans), plans[:0]
		}
	}
	start := time.Now()
	for c := range customers {
		cust := fmt.Sprintf("customer-%05d", c)
		for p := range products {
			prod := fmt.Sprintf("product-%02d", p)
			for i := -23; i <= 1; i++ {
				if i <= 0 {
					offset++
					ts := month(i).Add(time.Duration((c*7+p*13+i*i)%(20*24)) * time.Hour)
					if ts.After(now) {
						ts = month(i)
					}
					usage = append(usage, []any{fmt.Sprintf("e%d", offset), cust, prod, ts, float64(10 + (c+p+i+30)%40), "u", int32(0), offset, now, now.UnixMilli()})
				}
				for h := 2; h >= 1; h-- {
					sub := month(i - h).Add(time.Duration(c%500) * time.Minute)
					if sub.After(now) {
						continue
					}
					offset++
					conf := 0.5
					plans = append(plans, []any{fmt.Sprintf("plan-%d-%d-%d-%d", c, p, i, h), cust, prod, month(i), float64(20 + (c*3+p+h)%30),
						sub, &conf, "p", int32(0), offset, now, now.UnixMilli()})
				}
			}
			flush(false)
		}
	}
	flush(true)
	optimize(t, ctx, ch, fc.Database)
	t.Logf("loaded %d usage events and %d plan versions in %v", usageRows, planRows, time.Since(start).Round(time.Millisecond))
	var rollupRows uint64
	for _, r := range []string{pipeline.FeedbackActualsRollup, pipeline.FeedbackPlansRollup} {
		var n uint64
		if err := ch.QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(fc.Database, feedbackTable(t, ctx, ch, fc.Database, r))).Scan(&n); err != nil {
			t.Fatal(err)
		}
		rollupRows += n
	}
	features, err := pipeline.ReadServerFeatures(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	type run struct {
		took, gaps, points time.Duration
		rows, gapRows      uint64
	}
	var runs []run
	for i := range 20 {
		cust := fmt.Sprintf("customer-%05d", (i*7919)%customers)
		// Each of the two reads alone, for where the time goes.
		fcf := fc
		fcf.Features = features
		var r run
		var gapRead atomic.Uint64
		begin := time.Now()
		if _, err := QueryGaps(clickhouse.Context(ctx, clickhouse.WithProgress(func(p *clickhouse.Progress) { gapRead.Add(p.Rows) })),
			ch, fc.Database, GapFilter{Customer: cust, Feedback: &fcf}); err != nil {
			t.Fatal(err)
		}
		r.gaps, r.gapRows = time.Since(begin), gapRead.Load()
		begin = time.Now()
		if _, err := queryPoints(ctx, ch, fcf, "customer_id = ?", []any{cust}); err != nil {
			t.Fatal(err)
		}
		r.points = time.Since(begin)
		var read atomic.Uint64
		// No deadline under the options: clickhouse-go writes max_execution_time into the
		// options' shared settings for a context with one, which the statement's
		// concurrent reads would race on.
		qctx := clickhouse.Context(context.Background(), clickhouse.WithProgress(func(p *clickhouse.Progress) { read.Add(p.Rows) }))
		begin = time.Now()
		s, err := ReadStatement(qctx, ch, fcf, "test/scale", cust, time.Now().UTC())
		took := time.Since(begin)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Products) != products || len(s.Products[0].Periods) != 25 || len(s.Products[0].Accuracy) != 2 {
			t.Fatalf("%s: %d products, %d periods and %d horizons of the first, want %d, 25 and 2", cust, len(s.Products),
				len(s.Products[0].Periods), len(s.Products[0].Accuracy), products)
		}
		r.took, r.rows = took, read.Load()
		runs = append(runs, r)
	}
	median := func(f func(r run) time.Duration) time.Duration {
		sort.Slice(runs, func(i, j int) bool { return f(runs[i]) < f(runs[j]) })
		return f(runs[len(runs)/2]).Round(100 * time.Microsecond)
	}
	gaps, points := median(func(r run) time.Duration { return r.gaps }), median(func(r run) time.Duration { return r.points })
	sort.Slice(runs, func(i, j int) bool { return runs[i].took < runs[j].took })
	total := uint64(planRows) + rollupRows
	t.Logf("%d statements: median %v, slowest %v (the gaps alone %v, the accuracy points alone %v); median rows read %d (the gaps %d) of %d plan versions and %d rollup rows",
		len(runs), runs[len(runs)/2].took.Round(100*time.Microsecond), runs[len(runs)-1].took.Round(100*time.Microsecond), gaps, points,
		runs[len(runs)/2].rows, runs[len(runs)/2].gapRows, planRows, rollupRows)
	// With fewer customers, one granule of a monthly partition holds them all.
	for _, r := range runs {
		if customers >= 1000 && r.rows*2 > total {
			t.Errorf("a statement read %d rows of the %d the plans and rollups hold", r.rows, total)
		}
	}
}
