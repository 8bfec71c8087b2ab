package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/test/testkit"
)

// TestClusterScaleOut runs three workers in one consumer group against the three-node
// cluster (shard 1: node1 and node2, shard 2: node3) while usage events and plans, some
// malformed, are produced. Mid-stream one worker is killed with SIGKILL and restarted,
// and node2 is stopped and later started again. Afterwards the replicas agree, raw rows
// and the rollup are exact, no customer is split across shards, the gap view equals
// what a single server computes from the same messages, and through every node each
// event counts once per customer, product and month in the feedback_actuals rollup and
// feedback_gaps, as in the raw usage by event id.
func TestClusterScaleOut(t *testing.T) {
	requireStack(t)
	clusterName, addrs := testkit.Cluster(t)
	if len(addrs) != 3 {
		t.Fatalf("the test cluster has %d nodes, want 3", len(addrs))
	}
	const (
		usageTotal = 60_000
		planTotal  = 3_000
		badEvery   = 997
		customers  = 40
		slices     = 10
	)
	bin := buildBinary(t)
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(6),
		kfake.SeedTopics(6, "scale.usage", "scale.plans"), kfake.AllowAutoTopicCreation(),
		kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	brokers := kc.ListenAddrs()

	user, pass := os.Getenv("CLICKHOUSE_USER"), os.Getenv("CLICKHOUSE_PASSWORD")
	db := fmt.Sprintf("e2e_scale_%d", time.Now().UnixNano())
	mk := func(group string, ch pipeline.ClickHouseConfig) pipeline.Config {
		ch.Database, ch.Username, ch.Password = db, user, pass
		return pipeline.Config{
			Feedback: &pipeline.FeedbackConfig{Database: db, Cluster: ch.Cluster, UsageTable: "usage_raw", PlanTable: "plans_raw",
				Grain: pipeline.GrainMonth},
			Loop: "e2e/scale",
			Kafka: pipeline.KafkaConfig{Brokers: brokers, Group: group,
				SessionTimeout: pipeline.Duration{Duration: 2 * time.Second}, RebalanceTimeout: pipeline.Duration{Duration: 6 * time.Second}},
			ClickHouse: ch,
			Streams: []pipeline.StreamConfig{
				{Name: "usage", Kind: pipeline.KindUsage, Topic: "scale.usage", DeadLetterTopic: "scale.usage.dlq",
					Mapping: pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts", Quantity: "qty"}},
				{Name: "plans", Kind: pipeline.KindPlan, Topic: "scale.plans", DeadLetterTopic: "scale.plans.dlq",
					Mapping: pipeline.Mapping{PlanID: "id", CustomerID: "customer", Product: "product", Period: "period",
						Quantity: "qty", SubmittedAt: "submitted"}},
			},
			Rollups: []pipeline.RollupConfig{{Name: "totals", Stream: "usage", Granularity: pipeline.RollupMonth,
				Dimensions: []string{"customer_id", "product"}, Measures: []pipeline.MeasureConfig{
					{Name: "qty", Function: pipeline.FuncSum, Field: "quantity"}, {Name: "events", Function: pipeline.FuncCount}}}},
			Batch: pipeline.BatchConfig{MaxRows: 2000, MaxWait: pipeline.Duration{Duration: 200 * time.Millisecond}},
		}
	}
	// The workers write through node3 (shard 2), so that shard 1's rows travel through
	// the Distributed tables to node1 or node2, whichever is up.
	clusterCfg := mk("scale", pipeline.ClickHouseConfig{Addr: addrs[2], Cluster: clusterName})
	singleCfg := mk("single", pipeline.ClickHouseConfig{Addr: os.Getenv("CLICKHOUSE_ADDR")})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	nodes := make([]driver.Conn, len(addrs))
	for i, a := range addrs {
		nodes[i] = open(t, pipeline.ClickHouseConfig{Addr: a, Username: user, Password: pass})
	}
	// Each loop's schema, rollups and feedback views, as the controller makes them.
	ch := ddltest.ApplyFeedback(t, clusterCfg, *clusterCfg.Feedback)
	single := ddltest.ApplyFeedback(t, singleCfg, *singleCfg.Feedback)

	// The workload, and what it must add up to.
	wantQty, wantBad, want := map[string]float64{}, 0, ddltest.Actuals{}
	var usage, plans []kafka.Message
	for i := range usageTotal {
		c := "c" + strconv.Itoa(i%customers)
		if i%badEvery == 0 {
			usage = append(usage, kafka.Message{Key: []byte(c), Value: []byte(`{"id":"broken-` + strconv.Itoa(i) + `"`)})
			wantBad++
			continue
		}
		qty := i%13 + 1
		wantQty[c] += float64(qty)
		want.Add(pipeline.GrainMonth, c, "p"+strconv.Itoa(i%4), time.Unix(int64(1790000000+i*60), 0), float64(qty))
		usage = append(usage, kafka.Message{Key: []byte(c), Value: []byte(fmt.Sprintf(
			`{"id":"e%d","customer":%q,"product":"p%d","ts":%d,"qty":%d}`, i, c, i%4, 1790000000+i*60, qty))})
	}
	for i := range planTotal {
		c := "c" + strconv.Itoa(i%customers)
		plans = append(plans, kafka.Message{Key: []byte(c), Value: []byte(fmt.Sprintf(
			`{"id":"pl%d","customer":%q,"product":"p%d","period":"2026-%02d-01","qty":%d,"submitted":%d}`,
			i, c, i%4, 9+i%4, 100+i%50, 1788000000+i*600))})
	}
	goodUsage := uint64(usageTotal - wantBad)

	// The workers' logs are kept (in test/artifacts, or where CLUSTER_LOGS says), so that
	// a run that stalls can be read afterwards.
	logs := os.Getenv("CLUSTER_LOGS")
	if logs == "" {
		logs = filepath.Join("..", "artifacts", t.Name())
		if err := os.RemoveAll(logs); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the workers' logs are in %s", logs)
		}
	})
	start := func(name string, cfg pipeline.Config) *exec.Cmd {
		path := filepath.Join(logs, name+".json")
		raw, _ := json.Marshal(cfg)
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filepath.Join(logs, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "worker", "--config", path, "--metrics-bind-address", "127.0.0.1:0", "--metrics-secure=false")
		// The password never goes into the config file; workers read it from the environment.
		cmd.Env = append(os.Environ(), "CUSTOMERLOOP_CLICKHOUSE_PASSWORD="+pass)
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	workers := []*exec.Cmd{start("w0", clusterCfg), start("w1", clusterCfg), start("w2", clusterCfg)}
	t.Cleanup(func() { testkit.ClusterNode(t, "start", 2) })

	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
		BatchSize: 500, BatchTimeout: 2 * time.Millisecond}
	defer w.Close()
	for s := range slices {
		send := func(topic string, msgs []kafka.Message) {
			per := (len(msgs) + slices - 1) / slices
			part := msgs[min(s*per, len(msgs)):min((s+1)*per, len(msgs))]
			for i := range part {
				part[i].Topic = topic
			}
			if err := w.WriteMessages(ctx, part...); err != nil {
				t.Fatal(err)
			}
		}
		send("scale.usage", usage)
		send("scale.plans", plans)
		switch s {
		case 2:
			// Killed once it holds partitions, as a crash in production would find it. A
			// worker killed while its JoinGroup waits is a member the test broker never
			// expires: it starts a member's session timer only when the join's reply is
			// delivered, so the dead member keeps its partitions and the test stalls
			// (the ledger stopped short of the messages in two runs of many).
			waitForLine(t, filepath.Join(logs, "w1.log"), "partitions assigned", time.Minute)
			_ = workers[1].Process.Signal(syscall.SIGKILL)
			_ = workers[1].Wait()
			t.Logf("slice %d: killed worker w1; %d usage rows so far", s, count(t, ch, "SELECT count() FROM `"+db+"`.usage_raw"))
		case 3:
			workers[1] = start("w1-again", clusterCfg)
		case 4:
			testkit.ClusterNode(t, "stop", 2)
			t.Logf("slice %d: stopped node2; %d usage rows so far", s, count(t, ch, "SELECT count() FROM `"+db+"`.usage_raw"))
		case 7:
			testkit.ClusterNode(t, "start", 2)
			t.Logf("slice %d: started node2 again", s)
		}
		time.Sleep(700 * time.Millisecond)
	}
	waitLedger(t, ch, db, "scale.usage", usageTotal)
	waitLedger(t, ch, db, "scale.plans", planTotal)

	// The same messages through one worker into the single server: the reference.
	start("single", singleCfg)
	waitLedger(t, single, db, "scale.usage", usageTotal)
	waitLedger(t, single, db, "scale.plans", planTotal)

	// Every replica of shard 1 has every part; node1 and node2 agree row for row.
	for _, table := range []string{"usage_raw_local", "plans_raw_local", "customerloop_ledger_local", "rollup_totals_v" + rollupVersion(t, nodes[0], db) + "_local"} {
		for _, n := range nodes[:2] {
			if err := n.Exec(ctx, "SYSTEM SYNC REPLICA `"+db+"`."+table); err != nil {
				t.Fatalf("SYNC REPLICA %s: %v", table, err)
			}
		}
	}
	for _, table := range []string{"usage_raw_local", "plans_raw_local"} {
		q := "SELECT toString(count()) || '/' || toString(sum(cityHash64(_partition, _offset))) FROM `" + db + "`." + table
		a, b := str(t, nodes[0], q), str(t, nodes[1], q)
		if a != b {
			t.Errorf("%s: node1 holds %s, node2 holds %s; the replicas of shard 1 disagree", table, a, b)
		}
	}
	shard1 := count(t, nodes[0], "SELECT count() FROM `"+db+"`.usage_raw_local")
	shard2 := count(t, nodes[2], "SELECT count() FROM `"+db+"`.usage_raw_local")
	t.Logf("usage rows: %d on shard 1, %d on shard 2", shard1, shard2)
	if shard1+shard2 != goodUsage || shard1 == 0 || shard2 == 0 {
		t.Errorf("usage rows per shard %d + %d, want %d spread over both", shard1, shard2, goodUsage)
	}
	c1 := table(t, nodes[0], "SELECT DISTINCT customer_id FROM `"+db+"`.usage_raw_local")
	for _, c := range table(t, nodes[2], "SELECT DISTINCT customer_id FROM `"+db+"`.usage_raw_local") {
		if i := sort.SearchStrings(c1, c); i < len(c1) && c1[i] == c {
			t.Errorf("customer %s has rows on both shards; a customer must stay on one", c)
		}
	}

	// Exactly once, read through every node.
	for i, n := range nodes {
		if got := count(t, n, "SELECT count() FROM `"+db+"`.usage_raw"); got != goodUsage {
			t.Errorf("node%d: %d usage rows, want %d", i+1, got, goodUsage)
		}
		if got := count(t, n, "SELECT uniqExact(_partition, _offset) FROM `"+db+"`.usage_raw"); got != goodUsage {
			t.Errorf("node%d: %d distinct usage offsets, want %d", i+1, got, goodUsage)
		}
		if got := count(t, n, "SELECT count() FROM `"+db+"`.plans_raw"); got != planTotal {
			t.Errorf("node%d: %d plan rows, want %d", i+1, got, planTotal)
		}
		if got := count(t, n, "SELECT sum(messages) FROM `"+db+"`.customerloop_ledger"); got != usageTotal+planTotal {
			t.Errorf("node%d: the ledger covers %d messages, want exactly %d", i+1, got, usageTotal+planTotal)
		}
		got := map[string]float64{}
		rows, err := n.Query(ctx, "SELECT customer_id, sum(qty) FROM `"+db+"`.rollup_totals GROUP BY customer_id")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var c string
			var q float64
			if err := rows.Scan(&c, &q); err != nil {
				t.Fatal(err)
			}
			got[c] = q
		}
		rows.Close()
		if !reflect.DeepEqual(got, wantQty) {
			t.Errorf("node%d: the rollup's quantities per customer differ from the produced sums:\n got %v\nwant %v", i+1, got, wantQty)
		}
	}

	// The gaps on the cluster are the gaps a single server computes from the same data.
	const gaps = "SELECT customer_id, product, toString(period), ifNull(toString(planned_latest), '-'), ifNull(toString(planned_at_start), '-'), toString(versions), toString(actual), toString(events) " +
		"FROM `%s`.feedback_gaps ORDER BY customer_id, product, period"
	onCluster, onSingle := table(t, nodes[0], fmt.Sprintf(gaps, db)), table(t, single, fmt.Sprintf(gaps, db))
	if len(onSingle) == 0 || !reflect.DeepEqual(onCluster, onSingle) {
		t.Errorf("feedback_gaps: %d rows on the cluster, %d on the single server, and they differ", len(onCluster), len(onSingle))
	}

	// Each event counts once in the aggregates, per customer, product and month.
	for i, n := range nodes {
		t.Run(fmt.Sprintf("node%d", i+1), func(t *testing.T) { ddltest.CheckActualsOnce(t, n, *clusterCfg.Feedback, want) })
	}
	t.Run("single", func(t *testing.T) { ddltest.CheckActualsOnce(t, single, *singleCfg.Feedback, want) })

	// Every malformed message is in the dead-letter topic (at least once), and nothing else.
	sources := deadLetterSources(t, brokers, "scale.usage.dlq")
	if len(sources) != wantBad {
		t.Errorf("dead letters come from %d distinct messages, want %d", len(sources), wantBad)
	}
}

func open(t *testing.T, cfg pipeline.ClickHouseConfig) driver.Conn {
	t.Helper()
	c, err := connect.OpenClickHouse(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitLedger waits until the ledger covers n messages of topic.
func waitLedger(t *testing.T, ch driver.Conn, db, topic string, n uint64) {
	t.Helper()
	q := "SELECT sum(messages) FROM `" + db + "`.customerloop_ledger WHERE topic = '" + topic + "'"
	testkit.Eventually(t, 4*time.Minute, "the ledger covers "+topic, func() (bool, string) {
		var got uint64
		if err := ch.QueryRow(context.Background(), q).Scan(&got); err != nil {
			return false, err.Error()
		}
		return got >= n, fmt.Sprintf("%d of %d messages", got, n)
	})
}

func rollupVersion(t *testing.T, ch driver.Conn, db string) string {
	t.Helper()
	name := str(t, ch, "SELECT name FROM system.tables WHERE database = '"+db+"' AND name LIKE 'rollup\\_totals\\_v%\\_local'")
	return strings.TrimSuffix(strings.TrimPrefix(name, "rollup_totals_v"), "_local")
}

func str(t *testing.T, ch driver.Conn, q string) string {
	t.Helper()
	var s string
	if err := ch.QueryRow(context.Background(), q).Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

// table reads a query's rows, every column cast to String in the query, one string per
// row, sorted.
func table(t *testing.T, ch driver.Conn, q string) []string {
	t.Helper()
	rows, err := ch.Query(context.Background(), q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals := make([]string, len(rows.Columns()))
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.Join(vals, " "))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}
