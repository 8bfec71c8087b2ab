package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/test/testkit"
)

// TestWorkerSurvivesSIGKILL runs two worker processes in one consumer group and kills one
// of them with SIGKILL at random moments, 20 times, restarting it each time, while 200k
// messages arrive: some malformed, and 5% followed right away by a producer's retry (the
// same key and bytes), and a few plans. Meanwhile heavy queries keep the ClickHouse
// server busy. Then a last worker finishes. Every offset must land exactly once (raw rows
// = distinct offsets = messages minus dead letters minus retries), every retry must be
// dropped (each event id stored once, the ledger counting each retry once as a
// duplicate), and the aggregates count each event once: a user's rollup equals the sums
// computed from what was produced, and so, per customer, product and month, do the
// feedback_actuals rollup, feedback_gaps and the raw usage by event id.
//
// The stream's duplicate window is 2 s, shorter than the group takes to get over a kill,
// so a window kept in the time of reading (as it once was) lets through retries whose
// originals were stored before a kill: several per run. CRASH_RUNS repeats the test;
// CRASH_BIN runs another build of the binary.
func TestWorkerSurvivesSIGKILL(t *testing.T) {
	requireStack(t)
	bin := os.Getenv("CRASH_BIN")
	if bin == "" {
		bin = buildBinary(t)
	}
	runs, _ := strconv.Atoi(os.Getenv("CRASH_RUNS"))
	for run := range max(runs, 1) {
		t.Run(fmt.Sprintf("run%d", run+1), func(t *testing.T) { crashRun(t, bin) })
	}
}

func crashRun(t *testing.T, bin string) {
	const (
		total      = 200_000
		kills      = 20
		badEvery   = 997
		retryEvery = 20
		customers  = 50
	)
	// The few plans take one partition: more would only slow every rebalance.
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(6),
		kfake.SeedTopics(6, "crash.usage"), kfake.SeedTopics(1, "crash.plans"), kfake.AllowAutoTopicCreation(),
		kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	cfg := pipeline.Config{
		Loop: "e2e/crash",
		Kafka: pipeline.KafkaConfig{Brokers: brokers, Group: "crash",
			// Short timeouts, so that the group gets over each kill in seconds.
			SessionTimeout: pipeline.Duration{Duration: 2 * time.Second}, RebalanceTimeout: pipeline.Duration{Duration: 6 * time.Second}},
		ClickHouse: pipeline.ClickHouseConfig{Addr: os.Getenv("CLICKHOUSE_ADDR"), Database: fmt.Sprintf("e2e_crash_%d", time.Now().UnixNano())},
		Streams: []pipeline.StreamConfig{{
			Name: "usage", Kind: pipeline.KindUsage, Topic: "crash.usage", DeadLetterTopic: "crash.usage.dlq",
			Mapping:     pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts", Quantity: "qty"},
			DedupWindow: pipeline.Duration{Duration: 2 * time.Second},
		}, {
			Name: "plans", Kind: pipeline.KindPlan, Topic: "crash.plans", DeadLetterTopic: "crash.plans.dlq",
			Mapping: pipeline.Mapping{PlanID: "id", CustomerID: "customer", Product: "product", Period: "period", Quantity: "qty"},
		}},
		Batch: pipeline.BatchConfig{MaxRows: 5000, MaxWait: pipeline.Duration{Duration: 200 * time.Millisecond}},
	}
	fc := pipeline.FeedbackConfig{Database: cfg.ClickHouse.Database, UsageTable: "usage_raw", PlanTable: "plans_raw", Grain: pipeline.GrainMonth}
	cfg.Feedback = &fc
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ch := createSchema(t, cfg)
	db := pipeline.QuoteIdent(cfg.ClickHouse.Database)
	usageLedger := "SELECT sum(messages) FROM " + db + ".customerloop_ledger WHERE topic = 'crash.usage'"
	planLedger := "SELECT sum(messages) FROM " + db + ".customerloop_ledger WHERE topic = 'crash.plans'"
	t.Cleanup(func() {
		_ = ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
		_ = ch.Close()
	})
	// Rollups fed by materialized views, as spec.rollups and feedback make them, built
	// before any worker runs: they count every insert, so a duplicate insert would show
	// there even if the raw table were deduplicated later.
	cfg.Rollups = []pipeline.RollupConfig{{Name: "totals", Stream: "usage", Granularity: pipeline.RollupMonth,
		Dimensions: []string{"customer_id", "product"}, Measures: []pipeline.MeasureConfig{
			{Name: "qty", Function: pipeline.FuncSum, Field: "quantity"}, {Name: "events", Function: pipeline.FuncCount}}}}
	ddltest.Feedback(t, ch, cfg, fc)
	cfgPath := filepath.Join(t.TempDir(), "worker.json")
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	wantQty, wantBad, retries := 0.0, 0, 0
	want := ddltest.Actuals{}
	var msgs []kafka.Message
	retryOf := map[int]int{} // a retry's index: its original's
	for i := range total - total/retryEvery {
		c := "c" + strconv.Itoa(i%customers)
		if i%badEvery == 0 {
			msgs = append(msgs, kafka.Message{Key: []byte(c), Value: []byte(`{"id":"broken-` + strconv.Itoa(i) + `"`)})
			wantBad++
			continue
		}
		qty := i%13 + 1
		wantQty += float64(qty)
		want.Add(fc.Grain, c, "p"+strconv.Itoa(i%4), time.Unix(int64(1793449815+i), 0), float64(qty))
		m := kafka.Message{Key: []byte(c), Value: []byte(fmt.Sprintf(
			`{"id":"e%d","customer":%q,"product":"p%d","ts":%d,"qty":%d,"note":"padding to make a realistic message of a couple hundred bytes"}`,
			i, c, i%4, 1793449815+i, qty))}
		msgs = append(msgs, m)
		if i%(retryEvery-1) == 1 && len(msgs) < total {
			retryOf[len(msgs)] = len(msgs) - 1
			msgs = append(msgs, m) // a producer's retry, right behind the original
			retries++
		}
	}
	for len(msgs) < total { // fill up with more events, so that the total stays round
		i := len(msgs) + total
		c := "c" + strconv.Itoa(i%customers)
		wantQty++
		want.Add(fc.Grain, c, "p0", time.Unix(int64(1793449815+i), 0), 1)
		msgs = append(msgs, kafka.Message{Key: []byte(c), Value: []byte(fmt.Sprintf(
			`{"id":"e%d","customer":%q,"product":"p0","ts":%d,"qty":1}`, i, c, 1793449815+i))})
	}
	// Plans for a month with usage and for one without, so that feedback_gaps joins
	// plans to actuals and has cells with a plan alone.
	plans := planMessages(customers, "p1", "2026-11-01", "2026-12-01")
	produce(t, ctx, brokers, "crash.plans", plans)
	// A slice of the messages arrives with each kill, so that every kill lands while
	// there is fresh data to ingest, however fast the workers drain it.
	produced, next := make(chan error, 1), make(chan struct{}, kills)
	go func() {
		w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: "crash.usage", Balancer: &kafka.Hash{},
			RequiredAcks: kafka.RequireAll, BatchSize: 500, BatchTimeout: 2 * time.Millisecond}
		defer w.Close()
		per := (len(msgs) + kills - 1) / kills
		for i := 0; i < len(msgs); i += per {
			<-next
			for j := i; j < min(i+per, len(msgs)); j += 2000 {
				// Stamped as they go; a retry carries its original's timestamp, as a
				// producer's retry of a batch does.
				batch := msgs[j:min(j+2000, i+per, len(msgs))]
				for k := range batch {
					if o, ok := retryOf[j+k]; ok {
						batch[k].Time = msgs[o].Time
					} else {
						batch[k].Time = time.Now()
					}
				}
				if err := w.WriteMessages(ctx, batch...); err != nil {
					produced <- err
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		produced <- nil
	}()
	// A busy server: heavy queries, one after another, until the kills are over.
	busyCtx, stopBusy := context.WithCancel(ctx)
	busyDone := make(chan int)
	go func() {
		n := 0
		for busyCtx.Err() == nil {
			var x uint64
			if ch.QueryRow(busyCtx, "SELECT count() FROM numbers(100000000) WHERE cityHash64(number) % 7 = 3").Scan(&x) == nil {
				n++
			}
		}
		busyDone <- n
	}()

	logs := os.Getenv("CRASH_LOGS")
	if logs == "" {
		logs = t.TempDir()
	}
	metricsAddr := testkit.FreeAddr(t)
	logPath := func(i int) string { return filepath.Join(logs, fmt.Sprintf("worker-%02d.log", i)) }
	start := func(i int) *exec.Cmd {
		f, err := os.Create(logPath(i))
		if err != nil {
			t.Fatal(err)
		}
		addr := "127.0.0.1:0"
		if i == kills+2 {
			addr = metricsAddr // the last worker's metrics are scraped
		}
		cmd := exec.Command(bin, "worker", "--config", cfgPath, "--metrics-bind-address", addr, "--metrics-secure=false")
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	// Two workers; each kill takes one of them, which comes back at once as a new process.
	workers, logOf := [2]*exec.Cmd{start(0), start(1)}, [2]int{0, 1}
	for i := range kills {
		next <- struct{}{}
		k := rng.IntN(2)
		if i%2 == 0 {
			// Any moment: joining, rebalancing, recovering, reading or writing.
			time.Sleep(time.Duration(200+rng.IntN(3000)) * time.Millisecond)
		} else {
			// A moment of ingestion: after the worker got its partitions.
			waitForLine(t, logPath(logOf[k]), "partitions assigned", time.Minute)
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		}
		_ = workers[k].Process.Signal(syscall.SIGKILL)
		_ = workers[k].Wait()
		t.Logf("kill %d (worker %d): %d rows, ledger at %d messages", i+1, logOf[k], count(t, ch, "SELECT count() FROM "+db+".usage_raw"),
			count(t, ch, usageLedger))
		workers[k], logOf[k] = start(i+2), i+2
	}
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	stopBusy()
	t.Logf("the server ran %d heavy queries during the kills", <-busyDone)
	for k := range workers {
		_ = workers[k].Process.Signal(syscall.SIGKILL)
		_ = workers[k].Wait()
	}

	// Two last workers finish. The second one's join is also a rebalance after the
	// kills: kfake keeps a member that was killed while it joined (its join reply could
	// not be delivered) without a session timer until the next rebalance, where a
	// broker would expire it after the session timeout; such a member would hold its
	// partitions, unread, for good.
	lastStart := time.Now()
	last := []*exec.Cmd{start(kills + 2)}
	waitForLine(t, logPath(kills+2), "partitions assigned", time.Minute)
	last = append(last, start(kills+3))
	// Started: a SIGTERM before the process handles signals would kill it outright.
	waitForLine(t, logPath(kills+3), "worker started", time.Minute)
	deadline := time.Now().Add(3 * time.Minute)
	for count(t, ch, usageLedger) < total || count(t, ch, planLedger) < uint64(len(plans)) {
		if time.Now().After(deadline) {
			var out []byte
			for i, w := range last {
				_ = w.Process.Kill()
				b, _ := os.ReadFile(logPath(kills + 2 + i))
				out = append(out, b...)
			}
			t.Fatalf("the ledger did not cover all %d messages in time; the last workers' logs:\n%s", total, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("the last workers finished the backlog in %s", time.Since(lastStart).Round(time.Millisecond))
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`customerloop_received_events_total{loop="e2e/crash",stream="usage"}`, "process_resident_memory_bytes"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("the worker's /metrics lacks %s", want)
		}
	}
	for _, w := range last {
		_ = w.Process.Signal(syscall.SIGTERM)
		if err := w.Wait(); err != nil {
			t.Errorf("a last worker did not stop cleanly on SIGTERM: %v", err)
		}
	}

	good := uint64(total - wantBad - retries)
	if n := count(t, ch, "SELECT count() FROM "+db+".usage_raw"); n != good {
		t.Errorf("raw rows = %d, want %d", n, good)
	}
	if n := count(t, ch, "SELECT uniqExact(_partition, _offset) FROM "+db+".usage_raw"); n != good {
		t.Errorf("distinct offsets = %d, want %d", n, good)
	}
	if n := count(t, ch, "SELECT count() FROM (SELECT _partition, _offset FROM "+db+".usage_raw GROUP BY _partition, _offset HAVING count() > 1)"); n != 0 {
		t.Errorf("%d offsets are in the raw table more than once", n)
	}
	if n := count(t, ch, "SELECT count() FROM (SELECT event_id FROM "+db+".usage_raw GROUP BY event_id HAVING count() > 1)"); n != 0 {
		t.Errorf("%d of the %d producer retries were stored twice", n, retries)
	}
	if n := count(t, ch, usageLedger); n != total {
		t.Errorf("the ledger covers %d messages, want exactly %d (no span recorded twice)", n, total)
	}
	if n := count(t, ch, "SELECT sum(duplicates) FROM "+db+".customerloop_ledger WHERE topic = 'crash.usage'"); n != uint64(retries) {
		t.Errorf("the ledger counts %d duplicates, want the %d retries", n, retries)
	}
	var qty float64
	var events uint64
	if err := ch.QueryRow(ctx, "SELECT sum(qty), sum(events) FROM "+db+".rollup_totals").Scan(&qty, &events); err != nil {
		t.Fatal(err)
	}
	if qty != wantQty || events != good {
		t.Errorf("rollup: quantity %v over %d events, want %v over %d", qty, events, wantQty, good)
	}
	if n := count(t, ch, "SELECT uniqExact(plan_id) FROM "+db+".plans_raw"); n != uint64(len(plans)) {
		t.Errorf("%d plans stored, want %d", n, len(plans))
	}
	if n := count(t, ch, planLedger); n != uint64(len(plans)) {
		t.Errorf("the ledger covers %d plan messages, want exactly %d", n, len(plans))
	}
	ddltest.CheckActualsOnce(t, ch, fc, want)
	// Dead letters may repeat after a crash (the dead-letter topic is at-least-once), but
	// every malformed message is there, and nothing else.
	sources := deadLetterSources(t, brokers, "crash.usage.dlq")
	if len(sources) != wantBad {
		t.Errorf("dead letters come from %d distinct messages, want %d", len(sources), wantBad)
	}
}

func count(t *testing.T, ch driver.Conn, q string) uint64 {
	t.Helper()
	var n uint64
	if err := ch.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// waitForLine waits until a log file contains a line with substr.
func waitForLine(t *testing.T, path, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), substr) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s has no %q after %s", path, substr, timeout)
}
