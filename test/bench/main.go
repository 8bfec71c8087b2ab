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
	"os"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/twmb/franz-go/pkg/kfake"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
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
