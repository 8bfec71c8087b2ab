package main

// The feedback section: the feedback views, a digest round and the dashboard page over
// histories of 10M and 100M usage events, loaded with INSERT ... SELECT.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/dashboard"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// The history's shape: every customer plans every product for every month, twice.
const (
	fbCustomers = 2000
	fbProducts  = 10
	fbMonths    = 24
	fbVersions  = 2
	// fbChunk is the most usage events one INSERT ... SELECT writes.
	fbChunk = 10_000_000
)

type benchSize struct {
	events int64
	suffix string // "10m"
}

// parseSizes reads "10m,100m" (k and m suffixes; ascending); "none" and "" are no sizes.
func parseSizes(s string) ([]benchSize, error) {
	if s == "" || s == "none" {
		return nil, nil
	}
	var out []benchSize
	for _, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		mult := int64(1)
		switch {
		case strings.HasSuffix(f, "m"):
			mult = 1_000_000
		case strings.HasSuffix(f, "k"):
			mult = 1_000
		}
		n, err := strconv.ParseInt(strings.TrimRight(f, "mk"), 10, 64)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("-feedback-sizes: %q is not a size such as 1m or 100m", f)
		}
		if len(out) > 0 && n*mult <= out[len(out)-1].events {
			return nil, fmt.Errorf("-feedback-sizes: %q: sizes must ascend (each adds to the previous history)", s)
		}
		out = append(out, benchSize{n * mult, f})
	}
	return out, nil
}

// feedbackFigure is one of the section's measurements with its target at the largest size.
type feedbackFigure struct {
	key, label string
	targetMs   float64 // 0: none but the growth
	run        func(ctx context.Context) error
	// prepare, when set, runs before each attempt, untimed.
	prepare func(ctx context.Context) error
}

// fbNewEvents is how many events arrive, in the month under way, before each timed digest
// round and dashboard page: about what a digest interval brings at a few hundred events
// a second.
const fbNewEvents = 20_000

// feedbackGrowthLimit is how much a figure may grow from 10M events to 100M.
const feedbackGrowthLimit = 1.3

func feedbackSection(ctx context.Context, o options, ch driver.Conn, brokers []string, db string, sizes []benchSize) ([]figure, error) {
	if o.feedbackKeep {
		defer step("feedback: kept database %s (drop it when done)", db)
	} else {
		defer ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db))
	}
	cfg, fc := feedbackLoop(o.clickhouse, db, brokers)
	step("feedback: creating the loop's tables and feedback views (%s grain) in %s", fc.Grain, db)
	if err := createFeedback(ctx, ch, &cfg, fc); err != nil {
		return nil, err
	}
	first := time.Now().UTC().AddDate(0, -(fbMonths - 1), 0)
	first = time.Date(first.Year(), first.Month(), 1, 0, 0, 0, 0, time.UTC)
	step("feedback: %d customers x %d products x %d months x %d plan versions, some plans sent twice", fbCustomers, fbProducts, fbMonths, fbVersions)
	if err := loadPlans(ctx, ch, db, first); err != nil {
		return nil, err
	}

	newPublisher := func() (*feedback.Publisher, error) {
		return feedback.NewPublisher(pipeline.DigestConfig{Loop: cfg.Loop, Kafka: pipeline.KafkaConfig{Brokers: brokers},
			Topic: "bench.feedback", Feedback: fc, Publisher: "bench"}, ch, logr.Discard())
	}
	pub, err := newPublisher()
	if err != nil {
		return nil, err
	}
	defer func() { pub.Close() }()
	ref := dashboard.LoopRef{Namespace: "bench", Name: "feedback"}
	// The handler's errors go to the bench's log: a 502's page does not say why.
	hlog := funcr.New(func(_, args string) { step("dashboard: %.400s", args) }, funcr.Options{})
	caches := &feedback.Caches{}
	srv := httptest.NewServer(dashboard.New(loopSource{ref: ref, cfg: cfg.ClickHouse, fc: fc, caches: caches}, hlog))
	// New usage in the month under way, numbered after the history.
	var arrived int64
	arrive := func(ctx context.Context) error {
		arrived += fbNewEvents
		return loadUsage(ctx, ch, db, feedback.PeriodStart(pipeline.GrainMonth, time.Now()), 1<<40+arrived, fbNewEvents)
	}
	defer srv.Close()
	page := srv.URL + "/loops/" + ref.Namespace + "/" + ref.Name
	customer := fbCustomer(42)

	figs := []feedbackFigure{
		// One customer's gaps as the report (and a customer's own statement) reads them:
		// that customer's rows alone.
		{"customer_gaps", "one customer's gaps (ms)", 50, func(ctx context.Context) error {
			rows, err := feedback.QueryGaps(ctx, ch, db, feedback.GapFilter{Customer: customer, Feedback: &fc})
			if err == nil && len(rows) == 0 {
				err = fmt.Errorf("no gaps of customer %s", customer)
			}
			return err
		}, nil},
		// One product's gaps as the report's --product reads them: that product's groups.
		{"product_gaps", "one product's gaps (ms)", 0, func(ctx context.Context) error {
			rows, err := feedback.QueryGaps(ctx, ch, db, feedback.GapFilter{Product: "product-3", Feedback: &fc})
			if err == nil && len(rows) == 0 {
				err = fmt.Errorf("no gaps of product-3")
			}
			return err
		}, nil},
		// The same filter on the view, as a product team's own SQL runs it.
		{"customer_gaps_view", "one customer's gaps through the view (ms)", 0, func(ctx context.Context) error {
			return drain(ch.Query(ctx, "SELECT * FROM "+pipeline.QualifiedTable(db, pipeline.ViewGaps)+" WHERE customer_id = ?", customer))
		}, nil},
		// A round as the manager runs it every interval: new usage arrived since the last.
		{"digest_round", fmt.Sprintf("a digest round after %d new events (ms)", fbNewEvents), 500, func(ctx context.Context) error {
			_, err := pub.PublishOnce(ctx)
			return err
		}, arrive},
		// The first round of a publisher that keeps nothing yet (a manager restarted).
		{"digest_round_cold", "a digest round from nothing, as after a restart (ms)", 0, func(ctx context.Context) error {
			_, err := pub.PublishOnce(ctx)
			return err
		}, func(context.Context) error {
			pub.Close()
			pub, err = newPublisher()
			return err
		}},
		{"accuracy", "feedback_accuracy (ms)", 0, func(ctx context.Context) error {
			return drain(ch.Query(ctx, "SELECT * FROM "+pipeline.QualifiedTable(db, pipeline.ViewAccuracy)))
		}, nil},
		{"dashboard", fmt.Sprintf("the dashboard page over HTTP after %d new events (ms)", fbNewEvents), 300, func(ctx context.Context) error {
			return getPage(ctx, page)
		}, arrive},
		{"dashboard_cold", "the dashboard page from nothing, as after a restart (ms)", 0, func(ctx context.Context) error {
			return getPage(ctx, page)
		}, func(context.Context) error { caches.Retain(nil); return nil }},
	}
	got := make([][]timing, len(figs)) // [figure][size]
	var extra []figure
	var loaded int64
	for _, sz := range sizes {
		t0 := time.Now()
		for loaded < sz.events {
			n := min(int64(fbChunk), sz.events-loaded)
			step("feedback: usage events %d to %d", loaded, loaded+n)
			if err := loadUsage(ctx, ch, db, first, loaded, n); err != nil {
				return nil, err
			}
			loaded += n
		}
		loadS := time.Since(t0).Seconds()
		parts := settleParts(ctx, ch, db, 10*time.Minute)
		step("feedback: %s events loaded in %.0f s; %d active parts of usage_raw once merges settled", sz.suffix, loadS, parts)
		extra = append(extra, figure{key: "feedback_load_s_" + sz.suffix, label: "loading the history to " + sz.suffix + " events (s)", value: loadS},
			figure{key: "feedback_usage_parts_" + sz.suffix, label: "usage_raw active parts at " + sz.suffix, value: float64(parts)})
		for i, f := range figs {
			t := timed(ctx, f.run, f.prepare)
			if t.err != nil {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("feedback %s at %s: %w", f.key, sz.suffix, t.err)
				}
				// A figure that fails (a request's timeout, say) is reported as such, and
				// the others are still measured.
				step("feedback: %s at %s: FAILED after %.0f ms: %.300v", f.key, sz.suffix, t.med, t.err)
			} else {
				step("feedback: %s at %s: median %.0f ms (%.0f-%.0f)", f.key, sz.suffix, t.med, t.min, t.max)
			}
			got[i] = append(got[i], t)
		}
		// The customer channel over the same history; plans once, at the largest size.
		last := sz == sizes[len(sizes)-1]
		cf, err := channelFigures(ctx, ch, cfg, fc, "_"+sz.suffix, last)
		if err != nil {
			return nil, fmt.Errorf("feedback: the customer channel at %s: %w", sz.suffix, err)
		}
		extra = append(extra, cf...)
	}
	return feedbackReport(sizes, figs, got, extra), nil
}

// timing is a figure's milliseconds; when err is set, med is how long the failing
// attempt took and nothing more was tried.
type timing struct {
	spread
	err error
}

// timed runs f once to warm up, then three times, and returns the milliseconds; prepare,
// when set, runs before each, untimed.
func timed(ctx context.Context, f, prepare func(context.Context) error) timing {
	var ms []float64
	for i := range 4 {
		if prepare != nil {
			if err := prepare(ctx); err != nil {
				return timing{err: err}
			}
		}
		t0 := time.Now()
		err := f(ctx)
		took := float64(time.Since(t0).Microseconds()) / 1000
		if err != nil {
			return timing{spread{took, took, took}, err}
		}
		if i > 0 {
			ms = append(ms, took)
		}
	}
	return timing{spreadOf(ms), nil}
}

// feedbackReport prints a row per figure with each size, the growth from the first size
// to the last and the target, and returns the figures under the keys
// (feedback_<figure>_ms_<size>, with _min and _max).
func feedbackReport(sizes []benchSize, figs []feedbackFigure, got [][]timing, extra []figure) []figure {
	var out []figure
	fmt.Printf("\nFeedback views over a history of %d customers x %d products x %d months of plans (2 versions):\n\n| figure |", fbCustomers, fbProducts, fbMonths)
	for _, sz := range sizes {
		fmt.Printf(" %s events, median (min-max) |", sz.suffix)
	}
	last := sizes[len(sizes)-1].suffix
	fmt.Printf(" %s / %s | target at %s |\n|---|%s---:|---|\n", last, sizes[0].suffix, last, strings.Repeat("---:|", len(sizes)))
	for i, f := range figs {
		fmt.Printf("| %s |", f.label)
		failed := false
		for j, sz := range sizes {
			s := got[i][j]
			key := "feedback_" + f.key + "_ms_" + sz.suffix
			if s.err != nil {
				// The key holds how long the failing attempt took; _failed says it failed.
				failed = true
				fmt.Printf(" failed after %s |", format(s.med))
				out = append(out, figure{key: key, value: s.med}, figure{key: "feedback_" + f.key + "_failed_" + sz.suffix, value: 1})
				continue
			}
			fmt.Printf(" %s (%s-%s) |", format(s.med), format(s.min), format(s.max))
			out = append(out, figure{key: key, value: s.med, spread: true, lo: s.min, hi: s.max})
		}
		growth := got[i][len(sizes)-1].med / got[i][0].med
		if failed {
			fmt.Printf(" n/a |")
		} else {
			fmt.Printf(" %sx |", format(growth))
		}
		target := fmt.Sprintf("<= %.1fx", feedbackGrowthLimit)
		if f.targetMs > 0 {
			target = fmt.Sprintf("<= %.0f ms, ", f.targetMs) + target
		}
		fmt.Printf(" %s |\n", target)
		if len(sizes) > 1 && !failed {
			out = append(out, figure{key: "feedback_" + f.key + "_growth", value: growth})
		}
	}
	for _, e := range extra {
		fmt.Printf("| %s | %s |\n", e.label, format(e.value))
		e.label = ""
		out = append(out, e)
	}
	return out
}

// feedbackLoop is a loop of a usage and a plan stream in db, with Month feedback views.
func feedbackLoop(addr, db string, brokers []string) (pipeline.Config, pipeline.FeedbackConfig) {
	cfg := pipeline.Config{
		Loop:       "bench/feedback",
		Kafka:      pipeline.KafkaConfig{Brokers: brokers, Group: "bench-feedback"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: addr, Database: db},
		Streams: []pipeline.StreamConfig{
			{Name: "usage", Kind: pipeline.KindUsage, Topic: "bench.fb.usage", DeadLetterTopic: "bench.fb.usage.dlq",
				Mapping: pipeline.Mapping{EventID: "event_id", CustomerID: "customer_id", Product: "product", Timestamp: "ts", Quantity: "quantity"}},
			{Name: "plans", Kind: pipeline.KindPlan, Topic: "bench.fb.plans", DeadLetterTopic: "bench.fb.plans.dlq",
				Mapping: pipeline.Mapping{PlanID: "plan_id", CustomerID: "customer_id", Product: "product", Period: "period",
					Quantity: "quantity", SubmittedAt: "submitted_at", Confidence: "confidence"}},
		},
	}
	return cfg, pipeline.FeedbackConfig{Database: db, UsageTable: cfg.Streams[0].Table(), PlanTable: cfg.Streams[1].Table(), Grain: pipeline.GrainMonth}
}

// createFeedback creates the loop's tables, the feedback rollups (as the controller
// builds them, before the views that read them) and the feedback views.
func createFeedback(ctx context.Context, ch driver.Conn, cfg *pipeline.Config, fc pipeline.FeedbackConfig) error {
	stmts, err := ddl.PlanSchema(*cfg)
	if err != nil {
		return err
	}
	if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
		return err
	}
	cfg.Feedback = &fc
	rollups, err := ddl.PlanRollups(*cfg)
	if err != nil {
		return err
	}
	noWorkers := func([]string) (bool, error) { return true, nil }
	if _, _, err := ddl.ApplyRollups(ctx, ch, fc.Database, rollups, noWorkers); err != nil {
		return err
	}
	views, err := ddl.PlanFeedback(fc)
	if err != nil {
		return err
	}
	return ddl.ApplyFeedback(ctx, ch, fc.Database, views)
}

func fbCustomer(i int) string { return fmt.Sprintf("customer-%d", 10000+i) }

// loadPlans writes every customer's plan of every product and month twice: submitted
// three months ahead, then revised a month ahead (even months) or three days into the
// month (odd ones). Every 20th plan is sent again with another quantity, as a producer
// retrying with a correction does; the views keep its latest.
func loadPlans(ctx context.Context, ch driver.Conn, db string, first time.Time) error {
	n := fbCustomers * fbProducts * fbMonths * fbVersions
	cells := fbCustomers * fbProducts * fbMonths
	q := fmt.Sprintf(`INSERT INTO %s (plan_id, customer_id, product, period, quantity, submitted_at, confidence, _topic, _partition, _offset, _ingested_at, _produced_at_ms)
SELECT concat('plan-', toString(n)), concat('customer-', toString(10000 + n %% %d)), concat('product-', toString(intDiv(n, %d) %% %d)),
    addMonths(toDate('%s'), toInt32(intDiv(n, %d) %% %d)) AS period,
    toFloat64(500 + intHash64(n + resent) %% 1500),
    if(n < %d, toDateTime(addMonths(period, -3)), if(intDiv(n, %d) %% 2 = 0, toDateTime(addMonths(period, -1)) + 864000, toDateTime(period) + 259200)) + (n %% %d) * 60,
    if(n < %d, NULL, 0.8), 'bench.fb.plans', toInt32(0), toInt64(n + resent * %d), now(), toInt64(0)
FROM (SELECT number AS n, 0 AS resent FROM numbers(%d) UNION ALL SELECT number * 20 AS n, 1 AS resent FROM numbers(%d))`,
		pipeline.QualifiedTable(db, "plans_raw"), fbCustomers, fbCustomers, fbProducts,
		first.Format(time.DateOnly), fbCustomers*fbProducts, fbMonths,
		cells, fbCustomers*fbProducts, fbCustomers,
		cells, n, n, n/20)
	if err := ch.Exec(ctx, q); err != nil {
		return fmt.Errorf("loading plans: %w", err)
	}
	return nil
}

// loadUsage writes n usage events numbered from `from`, spread evenly over the customers,
// products and the time from first to now, in one INSERT ... SELECT squashed into
// blocks of the whole chunk (fewer parts to merge).
func loadUsage(ctx context.Context, ch driver.Conn, db string, first time.Time, from, n int64) error {
	span := max(time.Now().Unix()-first.Unix(), 1)
	q := fmt.Sprintf(`INSERT INTO %s (event_id, customer_id, product, ts, quantity, _topic, _partition, _offset, _ingested_at, _produced_at_ms)
SELECT concat('evt-', toString(n)), concat('customer-', toString(10000 + h %% %d)), concat('product-', toString(intDiv(h, %d) %% %d)),
    toDateTime(%d + intHash32(n) %% %d), toFloat64(1 + intDiv(h, %d) %% 100),
    'bench.fb.usage', toInt32(n %% 6), toInt64(n), now(), toInt64(0)
FROM (SELECT number + %d AS n, intHash64(number + %d) AS h FROM numbers(%d))`,
		pipeline.QualifiedTable(db, "usage_raw"), fbCustomers, fbCustomers, fbProducts,
		first.Unix(), span, fbCustomers*fbProducts, from, from, n)
	ictx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
		"min_insert_block_size_rows": fbChunk, "min_insert_block_size_bytes": 4 << 30, "max_execution_time": 1800,
	}))
	if err := ch.Exec(ictx, q); err != nil {
		return fmt.Errorf("loading usage events: %w", err)
	}
	return nil
}

// settleParts waits, up to limit, until the server merges nothing, and returns the
// number of active parts of the usage table.
func settleParts(ctx context.Context, ch driver.Conn, db string, limit time.Duration) uint64 {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(time.Second) {
		var n uint64
		if err := ch.QueryRow(ctx, "SELECT count() FROM system.merges").Scan(&n); err != nil || n == 0 {
			break
		}
	}
	var parts uint64
	_ = ch.QueryRow(ctx, "SELECT count() FROM system.parts WHERE active AND database = ? AND table = 'usage_raw'", db).Scan(&parts)
	return parts
}

// drain reads every row of a query's result.
func drain(rows driver.Rows, err error) error {
	if err != nil {
		return err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("no rows")
	}
	return nil
}

func getPage(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %.200s", url, resp.Status, body)
	}
	return nil
}

// loopSource is the dashboard's source for one loop, opening a connection per request
// and closing it after, as the manager's source does with the loop's credentials.
type loopSource struct {
	ref    dashboard.LoopRef
	cfg    pipeline.ClickHouseConfig
	fc     pipeline.FeedbackConfig
	caches *feedback.Caches
}

func (s loopSource) Loops(context.Context) ([]dashboard.LoopRef, error) {
	return []dashboard.LoopRef{s.ref}, nil
}

func (s loopSource) Open(ctx context.Context, ref dashboard.LoopRef) (dashboard.Loop, error) {
	if ref != s.ref {
		return dashboard.Loop{}, fmt.Errorf("%s: %w", ref, dashboard.ErrNotFound)
	}
	conn, err := connect.OpenClickHouse(ctx, s.cfg)
	if err != nil {
		return dashboard.Loop{}, err
	}
	return dashboard.Loop{Conn: conn, Feedback: s.fc, Cache: s.caches.For(ref.String()), Release: func() { _ = conn.Close() }}, nil
}
