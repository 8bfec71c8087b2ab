// Command bench measures CustomerLoop's ingestion on the local stack and, in the same run
// and on the same data, the ceilings around it: ClickHouse's own Kafka table engine, a
// bare kafka-go consume loop, and a bare clickhouse-go insert of pre-decoded rows. It
// prints a markdown table and writes the figures as JSON (BENCH_OUT).
//
// Run it with make bench, which provisions ClickHouse and builds the worker binary.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ingest"
)

type options struct {
	messages   int
	partitions int
	rate       int
	freshFor   time.Duration
	bin        string
	clickhouse string
	out        string
	cpuProfile string
	maxRows    int
	heapAt     string
	only       string

	clusterMessages int
	zookeeper       string
}

func main() {
	var o options
	flag.IntVar(&o.messages, "messages", 1_000_000, "usage events to produce for the throughput runs")
	flag.IntVar(&o.partitions, "partitions", 6, "partitions of the topic")
	flag.IntVar(&o.rate, "rate", 20_000, "events/s of the freshness run")
	flag.DurationVar(&o.freshFor, "fresh-for", 15*time.Second, "length of the freshness run")
	flag.StringVar(&o.bin, "bin", "bin/customerloop", "the customerloop binary")
	flag.StringVar(&o.clickhouse, "clickhouse", os.Getenv("CLICKHOUSE_ADDR"), "ClickHouse native address")
	flag.StringVar(&o.out, "out", envOr("BENCH_OUT", "bench-results.json"), "where the JSON figures go")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write the throughput run's worker CPU profile here")
	flag.StringVar(&o.heapAt, "heapprofile", "", "save the throughput run's worker heap profile, taken halfway, here")
	flag.IntVar(&o.maxRows, "max-rows", 0, "the workers' batch row limit (0: the pipeline's default)")
	flag.StringVar(&o.only, "only", "", "run only the CustomerLoop drain (\"customerloop\"), the bare insert (\"insert\") or the cluster variant (\"cluster\"), for profiling and A/B runs; the report then holds their figures alone")
	flag.IntVar(&o.clusterMessages, "cluster-messages", 300_000, "usage events each cluster run drains (fewer than -messages: three runs on the cluster)")
	flag.StringVar(&o.zookeeper, "zookeeper", "127.0.0.1:"+envOr("CLUSTER_ZK_PORT", "12181"), "the cluster's ZooKeeper address, to read its CPU time")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type figure struct {
	key, label string
	value      float64
}

func run(o options) error {
	ctx := context.Background()
	switch o.only {
	case "", "customerloop", "insert", "cluster":
	default:
		return fmt.Errorf("-only takes \"customerloop\", \"insert\", \"cluster\" or nothing, not %q", o.only)
	}
	chc, clustered := clusterFromEnv()
	if o.clickhouse == "" && o.only != "cluster" {
		return fmt.Errorf("no ClickHouse: set CLICKHOUSE_ADDR (make bench does)")
	}
	if o.only == "cluster" && !clustered {
		return fmt.Errorf("-only cluster: set CLICKHOUSE_CLUSTER and CLICKHOUSE_CLUSTER_ADDRS (hack/clickhouse-cluster.sh prints the addresses)")
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
		kfake.SeedTopics(int32(o.partitions), append([]string{"bench.usage", "bench.fresh"}, clusterTopics()...)...))
	if err != nil {
		return err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	db := fmt.Sprintf("bench_%d", time.Now().Unix())
	work, err := os.MkdirTemp("", "customerloop-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if o.only == "cluster" {
		figs, err := clusterVariant(ctx, o, chc, work, brokers)
		if err != nil {
			return err
		}
		return report(o, nil, figs)
	}

	ch, err := connect.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: o.clickhouse})
	if err != nil {
		return err
	}
	defer ch.Close()
	defer ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db))

	step("producing %d usage events of about 300 bytes to %d partitions", o.messages, o.partitions)
	msgs := makeMessages(o.messages)
	if o.only == "insert" {
		step("bare clickhouse-go insert of pre-decoded rows")
		insertRate, err := bareInsert(ctx, ch, db, msgs)
		if err != nil {
			return err
		}
		fmt.Printf("\n| figure | value |\n|---|---:|\n| bare clickhouse-go insert, pre-decoded (rows/s) | %s |\n", format(insertRate))
		return nil
	}
	t0 := time.Now()
	if _, err := produce(ctx, brokers, "bench.usage", msgs, 0); err != nil {
		return err
	}
	produceRate := float64(len(msgs)) / time.Since(t0).Seconds()
	var bytes int
	for _, m := range msgs {
		bytes += len(m)
	}

	cfg := benchConfig(brokers, o.clickhouse, db, "usage", "bench.usage")
	cfg.Batch.MaxRows = o.maxRows
	stmts, err := ddl.PlanSchema(cfg)
	if err != nil {
		return err
	}
	if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
		return err
	}

	step("CustomerLoop worker draining the topic")
	cl, err := runWorker(ctx, o, work, cfg, ch, uint64(o.messages))
	if err != nil {
		return err
	}

	if o.only == "customerloop" {
		m := float64(o.messages) / 1e6
		fmt.Printf("\n| figure | value |\n|---|---:|\n| CustomerLoop end to end (events/s) | %s |\n| worker CPU per million events (s) | %s |\n| of which user / system (s) | %s / %s |\n| worker page faults per million events | %s |\n| worker peak RSS with the backlog (MiB) | %s |\n",
			format(cl.rate), format(cl.cpuSeconds/m), format(cl.userSeconds/m), format(cl.sysSeconds/m), format(cl.pageFaults/m), format(cl.rssMiB))
		return nil
	}

	settle(ctx, ch)
	step("ClickHouse's Kafka table engine draining the same topic into the same table shape")
	engineRate, err := kafkaEngine(ctx, ch, brokers, db, cfg.Streams[0], o)
	if err != nil {
		return err
	}

	step("bare kafka-go consume loop")
	consumeRate, err := bareConsume(ctx, brokers, "bench.usage", o.partitions, o.messages)
	if err != nil {
		return err
	}

	settle(ctx, ch)
	step("bare clickhouse-go insert of pre-decoded rows")
	insertRate, err := bareInsert(ctx, ch, db, msgs)
	if err != nil {
		return err
	}

	step("freshness at %d events/s for %s", o.rate, o.freshFor)
	p50, p99, err := freshness(ctx, o, work, brokers, db, ch)
	if err != nil {
		return err
	}

	figs := []figure{
		{"customerloop_events_per_s", "CustomerLoop end to end (events/s)", cl.rate},
		{"kafka_engine_events_per_s", "ClickHouse Kafka engine (events/s)", engineRate},
		{"customerloop_vs_kafka_engine_ratio", "CustomerLoop / Kafka engine", cl.rate / engineRate},
		{"kafka_go_consume_events_per_s", "bare kafka-go consume (events/s)", consumeRate},
		{"clickhouse_insert_rows_per_s", "bare clickhouse-go insert, pre-decoded (rows/s)", insertRate},
		{"worker_cpu_s_per_million", "worker CPU per million events (s)", cl.cpuSeconds / (float64(o.messages) / 1e6)},
		{"worker_user_cpu_s_per_million", "of which user (s)", cl.userSeconds / (float64(o.messages) / 1e6)},
		{"worker_sys_cpu_s_per_million", "of which system, in the kernel (s)", cl.sysSeconds / (float64(o.messages) / 1e6)},
		{"worker_page_faults_per_million", "worker page faults per million events", cl.pageFaults / (float64(o.messages) / 1e6)},
		{"worker_rss_mib", "worker peak RSS with the backlog (MiB)", cl.rssMiB},
		{"freshness_p50_ms", fmt.Sprintf("freshness p50 at %d events/s (ms)", o.rate), p50},
		{"freshness_p99_ms", fmt.Sprintf("freshness p99 at %d events/s (ms)", o.rate), p99},
		{"produce_events_per_s", "producing the topic, franz-go (events/s)", produceRate},
		{"message_bytes_avg", "average message size (bytes)", float64(bytes) / float64(len(msgs))},
	}
	var cfigs []clusterFigure
	if clustered {
		if cfigs, err = clusterVariant(ctx, o, chc, work, brokers); err != nil {
			return err
		}
	} else {
		step("no ClickHouse cluster (CLICKHOUSE_CLUSTER, CLICKHOUSE_CLUSTER_ADDRS): skipping the cluster variant")
	}
	return report(o, figs, cfigs)
}

// report prints the figures as markdown tables and writes them as JSON to o.out.
func report(o options, figs []figure, cfigs []clusterFigure) error {
	out := map[string]float64{}
	if len(figs) > 0 {
		fmt.Printf("\n| figure | value |\n|---|---:|\n")
		for _, f := range figs {
			fmt.Printf("| %s | %s |\n", f.label, format(f.value))
			out[f.key] = f.value
		}
	}
	printClusterFigures(o, cfigs, out)
	b, _ := json.MarshalIndent(out, "", "  ")
	if err := os.WriteFile(o.out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("\nfigures written to %s\n", o.out)
	return nil
}

func format(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func step(format string, args ...any) { fmt.Fprintf(os.Stderr, "==> "+format+"\n", args...) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// makeMessages returns usage events of about 300 bytes: 500 customers, 8 products.
func makeMessages(n int) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	regions := []string{"eu-west-1", "us-east-1", "ap-south-1"}
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).Unix()
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(fmt.Sprintf(`{"event_id":"evt-%012d","customer_id":"customer-%04d","product":"product-%d","ts":%d,"quantity":%d,"region":%q,"note":%q}`,
			i, rng.IntN(500), rng.IntN(8), base+int64(i/50), 1+rng.IntN(100), regions[rng.IntN(3)],
			strings.Repeat("x", 130+rng.IntN(40))))
	}
	return out
}

func benchConfig(brokers []string, chAddr, db, stream, topic string) pipeline.Config {
	return pipeline.Config{
		Loop:       "bench/" + stream,
		Kafka:      pipeline.KafkaConfig{Brokers: brokers, Group: "bench-" + stream},
		ClickHouse: pipeline.ClickHouseConfig{Addr: chAddr, Database: db},
		Streams: []pipeline.StreamConfig{{
			Name: stream, Kind: pipeline.KindUsage, Topic: topic, DeadLetterTopic: topic + ".dlq",
			Mapping: pipeline.Mapping{EventID: "event_id", CustomerID: "customer_id", Product: "product", Timestamp: "ts", Quantity: "quantity"},
			Dimensions: []pipeline.Dimension{
				{Name: "region", Field: "region", Type: "String"},
				{Name: "note", Field: "note", Type: "String"},
			},
		}},
	}
}

// produce writes the messages with franz-go, keyed round robin, and returns for each
// partition the time each offset was acknowledged. rate > 0 paces the production.
func produce(ctx context.Context, brokers []string, topic string, msgs [][]byte, rate int) (map[int32][]time.Time, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.ProducerLinger(2*time.Millisecond), kgo.RecordPartitioner(kgo.RoundRobinPartitioner()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var (
		mu    sync.Mutex
		acks  = map[int32][]time.Time{}
		first error
		wg    sync.WaitGroup
	)
	tick := time.Duration(0)
	perTick := len(msgs)
	if rate > 0 {
		tick, perTick = 10*time.Millisecond, rate/100
	}
	start := time.Now()
	for i := 0; i < len(msgs); i += perTick {
		if tick > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i/perTick) * tick)))
		}
		for _, m := range msgs[i:min(i+perTick, len(msgs))] {
			wg.Add(1)
			cl.Produce(ctx, &kgo.Record{Value: m}, func(r *kgo.Record, err error) {
				defer wg.Done()
				now := time.Now()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if first == nil {
						first = err
					}
					return
				}
				a := acks[r.Partition]
				for int64(len(a)) <= r.Offset {
					a = append(a, time.Time{})
				}
				a[r.Offset] = now
				acks[r.Partition] = a
			})
		}
	}
	wg.Wait()
	return acks, first
}

type workerRun struct {
	rate, cpuSeconds, rssMiB float64
	userSeconds, sysSeconds  float64 // the parts of cpuSeconds
	// pageFaults are the minor faults: each first touch of a page the kernel had to
	// hand over, much of the system time.
	pageFaults float64
}

// runWorker runs the customerloop worker binary until the ledger covers want messages,
// then stops it and reads its CPU time and peak RSS from the kernel.
func runWorker(ctx context.Context, o options, work string, cfg pipeline.Config, ch driver.Conn, want uint64) (workerRun, error) {
	var args []string
	if o.cpuProfile != "" && cfg.Streams[0].Name == "usage" {
		args = append(args, "--cpuprofile", o.cpuProfile)
	}
	heapTaken := o.heapAt == "" || cfg.Streams[0].Name != "usage"
	if !heapTaken {
		args = append(args, "--pprof-bind-address", "127.0.0.1:16060")
	}
	start := time.Now()
	cmd, logf, err := startWorker(o, work, cfg.Streams[0].Name, cfg, nil, args...)
	if err != nil {
		return workerRun{}, err
	}
	defer logf.Close()
	deadline := start.Add(10 * time.Minute)
	q := "SELECT sum(messages) FROM " + pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.LedgerTable) + " WHERE topic = ?"
	for {
		var n uint64
		if err := ch.QueryRow(ctx, q, cfg.Streams[0].Topic).Scan(&n); err != nil {
			return workerRun{}, err
		}
		if n >= want {
			break
		}
		if !heapTaken && n >= want/2 {
			heapTaken = true
			_ = saveURL("http://127.0.0.1:16060/debug/pprof/heap?debug=1", o.heapAt+".txt")
			if err := saveURL("http://127.0.0.1:16060/debug/pprof/heap", o.heapAt); err != nil {
				return workerRun{}, err
			}
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return workerRun{}, fmt.Errorf("the worker did not drain %d messages in 10 minutes (at %d); log: %s", want, n, logf.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(start)
	// The peak RSS of the worker's own memory. rusage's maxrss is no use here: a child
	// started from this large process is charged this process's RSS at exec.
	hwm, err := peakRSS(cmd.Process.Pid)
	if err != nil {
		return workerRun{}, err
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		return workerRun{}, fmt.Errorf("worker exit: %w", err)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return workerRun{
		rate:        float64(want) / took.Seconds(),
		cpuSeconds:  cpu.Seconds(),
		userSeconds: time.Duration(ru.Utime.Nano()).Seconds(),
		sysSeconds:  time.Duration(ru.Stime.Nano()).Seconds(),
		rssMiB:      hwm,
		pageFaults:  float64(ru.Minflt),
	}, nil
}

// startWorker starts the customerloop worker binary on cfg, its config and log in work
// under name, with env added to this process's environment.
func startWorker(o options, work, name string, cfg pipeline.Config, env []string, args ...string) (*exec.Cmd, *os.File, error) {
	path := filepath.Join(work, name+".json")
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		return nil, nil, err
	}
	logf, err := os.Create(filepath.Join(work, name+".log"))
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(o.bin, append([]string{"worker", "--config", path, "--metrics-bind-address", "0"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, nil, err
	}
	return cmd, logf, nil
}

// kafkaEngine lets ClickHouse's Kafka table engine drain the topic through a materialized
// view into a table of the same columns as the raw table (without the source columns the
// engine cannot fill on every version).
func kafkaEngine(ctx context.Context, ch driver.Conn, brokers []string, db string, s pipeline.StreamConfig, o options) (float64, error) {
	// A new group of the engine starts at the end of the topic: commit the start first.
	offsets := map[string][]kafka.OffsetCommit{}
	for p := range o.partitions {
		offsets["bench.usage"] = append(offsets["bench.usage"], kafka.OffsetCommit{Partition: p, Offset: 0})
	}
	kc := &kafka.Client{Addr: kafka.TCP(brokers...)}
	if _, err := kc.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: "clickhouse-engine", GenerationID: -1, Topics: offsets}); err != nil {
		return 0, fmt.Errorf("committing the engine group's start: %w", err)
	}
	var cols []string
	for _, c := range s.Columns() {
		if !strings.HasPrefix(c.Name, "_") {
			cols = append(cols, pipeline.QuoteIdent(c.Name)+" "+c.Type)
		}
	}
	target := pipeline.QualifiedTable(db, "engine_raw")
	queue := pipeline.QualifiedTable(db, "engine_queue")
	stmts := []string{
		"CREATE TABLE " + target + " (" + strings.Join(cols, ", ") + ") ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (customer_id, product, ts, event_id)",
		"CREATE TABLE " + queue + " (" + strings.Join(cols, ", ") + ") ENGINE = Kafka SETTINGS kafka_broker_list = '" + brokers[0] +
			"', kafka_topic_list = 'bench.usage', kafka_group_name = 'clickhouse-engine', kafka_format = 'JSONEachRow', kafka_num_consumers = 1",
	}
	for _, q := range stmts {
		if err := ch.Exec(ctx, q); err != nil {
			return 0, fmt.Errorf("%s: %w", q, err)
		}
	}
	start := time.Now()
	if err := ch.Exec(ctx, "CREATE MATERIALIZED VIEW "+pipeline.QualifiedTable(db, "engine_mv")+" TO "+target+" AS SELECT * FROM "+queue); err != nil {
		return 0, err
	}
	defer ch.Exec(context.Background(), "DROP TABLE IF EXISTS "+pipeline.QualifiedTable(db, "engine_mv"))
	defer ch.Exec(context.Background(), "DROP TABLE IF EXISTS "+queue)
	deadline := start.Add(10 * time.Minute)
	for {
		var n uint64
		if err := ch.QueryRow(ctx, "SELECT count() FROM "+target).Scan(&n); err != nil {
			return 0, err
		}
		if n >= uint64(o.messages) {
			return float64(n) / time.Since(start).Seconds(), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the Kafka engine stored %d of %d in 10 minutes", n, o.messages)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// bareConsume reads every partition to its end with kafka-go readers and counts.
func bareConsume(ctx context.Context, brokers []string, topic string, partitions, want int) (float64, error) {
	var wg sync.WaitGroup
	counts := make([]int, partitions)
	errs := make([]error, partitions)
	start := time.Now()
	for p := range partitions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, p)
			if err != nil {
				errs[p] = err
				return
			}
			end, err := conn.ReadLastOffset()
			conn.Close()
			if err != nil {
				errs[p] = err
				return
			}
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 250 * time.Millisecond})
			defer r.Close()
			for int64(counts[p]) < end {
				if _, err := r.FetchMessage(ctx); err != nil {
					errs[p] = err
					return
				}
				counts[p]++
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	total := 0
	for p := range partitions {
		if errs[p] != nil {
			return 0, errs[p]
		}
		total += counts[p]
	}
	if total != want {
		return 0, fmt.Errorf("consumed %d of %d", total, want)
	}
	return float64(total) / took.Seconds(), nil
}

// bareInsert decodes the messages first, then times only their insert in batches of 20k,
// column by column (gathering the typed columns is timed too, as the worker pays for it).
func bareInsert(ctx context.Context, ch driver.Conn, db string, msgs [][]byte) (float64, error) {
	cfg := benchConfig(nil, "", db, "bare", "bench.bare")
	s := cfg.Streams[0]
	stmts, err := ddl.PlanSchema(pipeline.Config{Kafka: pipeline.KafkaConfig{Brokers: []string{"x:1"}, Group: "g"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: "x:1", Database: db}, Streams: cfg.Streams})
	if err != nil {
		return 0, err
	}
	if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
		return 0, err
	}
	dec, err := ingest.NewDecoder(s)
	if err != nil {
		return 0, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	rows := make([][]any, len(msgs))
	for i, m := range msgs {
		r, err := dec.Decode(m, now)
		if err != nil {
			return 0, err
		}
		rows[i] = append(r, s.Topic, int32(0), int64(i), now, now.UnixMilli())
	}
	start := time.Now()
	for i := 0; i < len(rows); i += bareInsertRows {
		b, err := ch.PrepareBatch(ctx, ddl.InsertSQL(db, s))
		if err != nil {
			return 0, err
		}
		// Column by column, as the worker inserts: clickhouse-go's fastest path.
		part := rows[i:min(i+bareInsertRows, len(rows))]
		for j := range part[0] {
			if err := b.Column(j).Append(columnOf(part, j)); err != nil {
				return 0, err
			}
		}
		if err := b.Send(); err != nil {
			return 0, err
		}
	}
	return float64(len(rows)) / time.Since(start).Seconds(), nil
}

// settle waits, up to a minute, until the server merges no parts, so that the previous
// step's background merges do not share the cores with the next measurement.
func settle(ctx context.Context, ch driver.Conn) {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		var n uint64
		if err := ch.QueryRow(ctx, "SELECT count() FROM system.merges").Scan(&n); err != nil || n == 0 {
			return
		}
	}
}

// columnOf gathers column j of the rows into a typed slice.
func columnOf(rows [][]any, j int) any {
	switch rows[0][j].(type) {
	case string:
		return gather[string](rows, j)
	case float64:
		return gather[float64](rows, j)
	case int32:
		return gather[int32](rows, j)
	case int64:
		return gather[int64](rows, j)
	case time.Time:
		return gather[time.Time](rows, j)
	}
	panic(fmt.Sprintf("column %d: no typed slice for %T", j, rows[0][j]))
}

func gather[T any](rows [][]any, j int) []T {
	out := make([]T, len(rows))
	for i, r := range rows {
		out[i] = r[j].(T)
	}
	return out
}

// freshness runs a worker on an empty topic, produces at a fixed rate, and measures for
// every message the time from its acknowledgement by the broker to the moment the ledger
// says its row is queryable (polled every 20 ms).
func freshness(ctx context.Context, o options, work string, brokers []string, db string, ch driver.Conn) (p50, p99 float64, err error) {
	cfg := benchConfig(brokers, o.clickhouse, db, "fresh", "bench.fresh")
	cfg.Batch = pipeline.BatchConfig{MaxWait: pipeline.Duration{Duration: 200 * time.Millisecond}}
	stmts, err := ddl.PlanSchema(cfg)
	if err != nil {
		return 0, 0, err
	}
	if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
		return 0, 0, err
	}
	n := o.rate * int(o.freshFor/time.Second)
	msgs := makeMessages(n)
	visible := map[int32][]time.Time{}
	stop := make(chan struct{})
	polled := make(chan error, 1)
	go func() {
		q := "SELECT partition, max(last_offset) FROM " + pipeline.QualifiedTable(db, pipeline.LedgerTable) +
			" WHERE topic = 'bench.fresh' GROUP BY partition"
		for {
			rows, err := ch.Query(ctx, q)
			if err != nil {
				polled <- err
				return
			}
			now := time.Now()
			for rows.Next() {
				var p int32
				var last int64
				if err := rows.Scan(&p, &last); err != nil {
					polled <- err
					return
				}
				for int64(len(visible[p])) <= last {
					visible[p] = append(visible[p], now)
				}
			}
			rows.Close()
			select {
			case <-stop:
				polled <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	workerDone := make(chan error, 1)
	go func() {
		_, err := runWorker(ctx, o, work, cfg, ch, uint64(n))
		workerDone <- err
	}()
	time.Sleep(3 * time.Second) // the worker joins its group
	acks, err := produce(ctx, brokers, "bench.fresh", msgs, o.rate)
	if err != nil {
		return 0, 0, err
	}
	if err := <-workerDone; err != nil {
		return 0, 0, err
	}
	close(stop)
	if err := <-polled; err != nil {
		return 0, 0, err
	}
	var lat []float64
	for p, a := range acks {
		for off, at := range a {
			if off < len(visible[p]) {
				lat = append(lat, float64(visible[p][off].Sub(at).Milliseconds()))
			}
		}
	}
	if len(lat) != n {
		return 0, 0, fmt.Errorf("saw %d of %d messages become queryable", len(lat), n)
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

func saveURL(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// peakRSS reads a process's VmHWM (its resident set's high-water mark) in MiB.
func peakRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%f kB", &kb); err != nil {
				return 0, fmt.Errorf("VmHWM %q: %w", rest, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// bareInsertRows is the bare insert's batch: the workers' default. Batches of 50k rows
// measured half as fast (72k-113k against 160k-199k rows/s, go run ./test/bench -only
// insert), clickhouse-go copying its growing string buffers out of the CPU's caches.
const bareInsertRows = 20_000
