// Command bench measures CustomerLoop's ingestion on the local stack and, in the same run
// and on the same data, the ceilings around it: ClickHouse's own Kafka table engine, a
// bare kafka-go consume loop, and the server taking the same rows already in its Native
// format. The headline contenders run in turns, in rounds. Its feedback section measures
// the feedback views, the digest round and the dashboard over histories of 10M and 100M
// usage events. It prints markdown tables and writes the figures as JSON (BENCH_OUT).
//
// Run it with make bench, which provisions ClickHouse and builds the worker binary.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/twmb/franz-go/pkg/kfake"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
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
	rounds     int
	// feedbackSizes are the feedback section's history sizes ("10m,100m"; "none" skips it).
	feedbackSizes string
	// feedbackKeep keeps the feedback section's database for a look at its queries.
	feedbackKeep bool
	// serverPID is the ClickHouse server's process, when it runs here (0 otherwise).
	serverPID int
	// clickhouseHTTP is the server's HTTP address, which the Native ceiling posts to.
	clickhouseHTTP string

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
	flag.StringVar(&o.only, "only", "", "run only the CustomerLoop drain (\"customerloop\"), the Native ceiling (\"insert\"), the cluster variant (\"cluster\"), the feedback section (\"feedback\") or the customer statements (\"statements\"), for profiling and A/B runs; the report then holds their figures alone")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of the headline contenders (CustomerLoop, the Kafka engine, the Native ceiling), taken in turns")
	flag.BoolVar(&o.feedbackKeep, "feedback-keep", false, "keep the feedback section's database (its name is printed) to look at its queries afterwards")
	flag.StringVar(&o.feedbackSizes, "feedback-sizes", "10m,100m", "usage-event history sizes of the feedback section, ascending (\"1m\", \"10m,100m\"; \"none\" skips it)")
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
	// spread: the value is the median of the rounds, lo and hi their extremes (written
	// as key_min and key_max).
	spread bool
	lo, hi float64
}

func run(o options) error {
	// Interrupted, the queries fail and the deferred drops still run (on a context of
	// their own), so that no 100M-event database stays behind.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch o.only {
	case "", "customerloop", "insert", "cluster", "feedback", "statements":
	default:
		return fmt.Errorf("-only takes \"customerloop\", \"insert\", \"cluster\", \"feedback\", \"statements\" or nothing, not %q", o.only)
	}
	if o.rounds < 1 {
		return fmt.Errorf("-rounds %d: want at least 1", o.rounds)
	}
	sizes, err := parseSizes(o.feedbackSizes)
	if err != nil {
		return err
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
		return report(o, nil, figs, nil)
	}

	ch, err := connect.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: o.clickhouse})
	if err != nil {
		return err
	}
	defer ch.Close()
	defer ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db))
	o.serverPID = listener(o.clickhouse)

	if o.only == "feedback" {
		figs, err := feedbackSection(ctx, o, ch, brokers, db+"_feedback", sizes)
		if err != nil {
			return err
		}
		return report(o, figs, nil, nil)
	}
	if o.only == "statements" {
		figs, err := statementsSection(ctx, o, ch, db)
		if err != nil {
			return err
		}
		return report(o, figs, nil, nil)
	}

	step("producing %d usage events of about 300 bytes to %d partitions", o.messages, o.partitions)
	msgs := makeMessages(o.messages)
	var produceRate float64
	if o.only != "insert" {
		t0 := time.Now()
		if _, err := produce(ctx, brokers, "bench.usage", msgs, 0); err != nil {
			return err
		}
		produceRate = float64(len(msgs)) / time.Since(t0).Seconds()
	}
	var bytes int
	for _, m := range msgs {
		bytes += len(m)
	}
	var nb *nativeBlocks
	if o.only != "customerloop" {
		if o.clickhouseHTTP, err = clickhouseHTTP(o); err != nil {
			return err
		}
		step("decoding the events and laying them out as Native blocks (not timed)")
		if nb, err = encodeNative(msgs); err != nil {
			return err
		}
	}
	msgs = nil

	rs, err := runRounds(ctx, o, ch, work, brokers, db, nb)
	if err != nil {
		return err
	}
	figs := roundFigures(o, rs)
	printRounds(o, rs)
	if o.only != "" {
		return report(o, figs, nil, rs)
	}

	step("bare kafka-go consume loop")
	consumeRate, err := bareConsume(ctx, brokers, "bench.usage", o.partitions, o.messages)
	if err != nil {
		return err
	}

	if err := ch.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+pipeline.QuoteIdent(db)); err != nil {
		return err
	}
	step("freshness at %d events/s for %s", o.rate, o.freshFor)
	p50, p99, err := freshness(ctx, o, work, brokers, db, ch)
	if err != nil {
		return err
	}

	figs = append(figs,
		figure{key: "kafka_go_consume_events_per_s", label: "bare kafka-go consume (events/s)", value: consumeRate},
		figure{key: "freshness_p50_ms", label: fmt.Sprintf("freshness p50 at %d events/s (ms)", o.rate), value: p50},
		figure{key: "freshness_p99_ms", label: fmt.Sprintf("freshness p99 at %d events/s (ms)", o.rate), value: p99},
		figure{key: "produce_events_per_s", label: "producing the topic, franz-go (events/s)", value: produceRate},
		figure{key: "message_bytes_avg", label: "average message size (bytes)", value: float64(bytes) / float64(o.messages)},
	)
	if len(sizes) > 0 {
		ffigs, err := feedbackSection(ctx, o, ch, brokers, db+"_feedback", sizes)
		if err != nil {
			return err
		}
		figs = append(figs, ffigs...)
	}
	sfigs, err := statementsSection(ctx, o, ch, db)
	if err != nil {
		return err
	}
	figs = append(figs, sfigs...)
	var cfigs []clusterFigure
	if clustered {
		if cfigs, err = clusterVariant(ctx, o, chc, work, brokers); err != nil {
			return err
		}
	} else {
		step("no ClickHouse cluster (CLICKHOUSE_CLUSTER, CLICKHOUSE_CLUSTER_ADDRS): skipping the cluster variant")
	}
	return report(o, figs, cfigs, rs)
}

// report prints the figures as markdown tables and writes them as JSON to o.out: a number
// per key, and the rounds, when there were any, as an array under "rounds".
func report(o options, figs []figure, cfigs []clusterFigure, rs []round) error {
	nums := map[string]float64{}
	if slices.ContainsFunc(figs, func(f figure) bool { return f.label != "" }) {
		fmt.Printf("\n| figure | value | over the rounds (min-max) |\n|---|---:|---:|\n")
	}
	if len(figs) > 0 {
		for _, f := range figs {
			nums[f.key] = f.value
			sp := ""
			if f.spread {
				nums[f.key+"_min"], nums[f.key+"_max"] = f.lo, f.hi
				sp = format(f.lo) + "-" + format(f.hi)
			}
			if f.label != "" {
				fmt.Printf("| %s | %s | %s |\n", f.label, format(f.value), sp)
			}
		}
	}
	printClusterFigures(o, cfigs, nums)
	out := map[string]any{}
	for k, v := range nums {
		out[k] = v
	}
	if len(rs) > 0 {
		out["rounds"] = roundsJSON(o, rs)
	}
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
