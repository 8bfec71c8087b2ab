package main

// The headline contenders, run in turns: rounds within one run, so that a figure is a
// median with its spread and the ratios compare contenders measured minutes apart.

import (
	"context"
	"fmt"
	"slices"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
)

// round is one turn of every contender, each on its own database, tables and groups.
type round struct {
	ours            workerRun
	engine, ceiling float64 // events/s, rows/s; 0 when not run
	order           []string
}

// contenders of the rounds, in the order of the first round; each later round starts one
// further along, so that no contender always follows the same one.
var contenders = []string{"customerloop", "engine", "ceiling"}

func runRounds(ctx context.Context, o options, ch driver.Conn, work string, brokers []string, db string, nb *nativeBlocks) ([]round, error) {
	var which []string
	for _, c := range contenders {
		if o.only == "" || o.only == c || (o.only == "insert" && c == "ceiling") {
			which = append(which, c)
		}
	}
	out := make([]round, o.rounds)
	// A failed round leaves its database: drop every round's at the end too.
	defer func() {
		for r := range o.rounds {
			_ = ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(fmt.Sprintf("%s_r%d", db, r+1)))
		}
	}()
	for r := range o.rounds {
		rdb := fmt.Sprintf("%s_r%d", db, r+1)
		ro := o
		if r > 0 { // profiles of the first round only
			ro.cpuProfile, ro.heapAt = "", ""
		}
		n := len(which)
		order := append(slices.Clone(which[r%n:]), which[:r%n]...)
		out[r].order = order
		for _, c := range order {
			settle(ctx, ch)
			switch c {
			case "customerloop":
				step("round %d/%d: CustomerLoop worker draining the topic", r+1, o.rounds)
				cfg := benchConfig(brokers, o.clickhouse, rdb, "usage", "bench.usage")
				cfg.Kafka.Group = fmt.Sprintf("bench-usage-r%d", r+1)
				cfg.Batch.MaxRows = o.maxRows
				stmts, err := ddl.PlanSchema(cfg)
				if err != nil {
					return nil, err
				}
				if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
					return nil, err
				}
				if out[r].ours, err = runWorker(ctx, ro, work, cfg, ch, uint64(o.messages)); err != nil {
					return nil, err
				}
			case "engine":
				step("round %d/%d: ClickHouse's Kafka table engine draining the same topic into the same table shape", r+1, o.rounds)
				if err := ch.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+pipeline.QuoteIdent(rdb)); err != nil {
					return nil, err
				}
				s := benchConfig(nil, "", rdb, "usage", "bench.usage").Streams[0]
				rate, err := kafkaEngine(ctx, ch, brokers, rdb, fmt.Sprintf("clickhouse-engine-r%d", r+1), s, o)
				if err != nil {
					return nil, err
				}
				out[r].engine = rate
			case "ceiling":
				step("round %d/%d: the server taking the same rows in Native format", r+1, o.rounds)
				rate, err := nativeCeiling(ctx, ch, o.clickhouseHTTP, rdb, nb)
				if err != nil {
					return nil, err
				}
				out[r].ceiling = rate
			}
		}
		// Each round's tables go with it: the next round's merges and disk start level.
		if err := ch.Exec(ctx, "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(rdb)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// spread is a figure over the rounds.
type spread struct{ med, min, max float64 }

func spreadOf(vs []float64) spread {
	if len(vs) == 0 {
		return spread{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{med, s[0], s[len(s)-1]}
}

// roundFigures are the rounds' figures: the headline keys hold medians, with _min and
// _max beside them; ratios are computed within each round first.
func roundFigures(o options, rs []round) []figure {
	per := func(f func(round) float64) spread {
		var vs []float64
		for _, r := range rs {
			if v := f(r); v != 0 {
				vs = append(vs, v)
			}
		}
		return spreadOf(vs)
	}
	m := float64(o.messages) / 1e6
	var figs []figure
	add := func(key, label string, s spread) {
		if s == (spread{}) {
			return
		}
		figs = append(figs, figure{key: key, label: label, value: s.med, spread: true, lo: s.min, hi: s.max})
	}
	ratio := func(a, b float64) float64 {
		if a == 0 || b == 0 {
			return 0
		}
		return a / b
	}
	add("customerloop_events_per_s", "CustomerLoop end to end (events/s)", per(func(r round) float64 { return r.ours.rate }))
	add("kafka_engine_events_per_s", "ClickHouse Kafka engine (events/s)", per(func(r round) float64 { return r.engine }))
	add("clickhouse_native_ceiling_rows_per_s", "ClickHouse taking the rows in Native format (rows/s)", per(func(r round) float64 { return r.ceiling }))
	add("customerloop_vs_kafka_engine_ratio", "CustomerLoop / Kafka engine, per round", per(func(r round) float64 { return ratio(r.ours.rate, r.engine) }))
	add("customerloop_vs_native_ceiling_ratio", "CustomerLoop / Native ceiling, per round", per(func(r round) float64 { return ratio(r.ours.rate, r.ceiling) }))
	add("worker_cpu_s_per_million", "worker CPU per million events (s)", per(func(r round) float64 { return r.ours.cpuSeconds / m }))
	add("worker_user_cpu_s_per_million", "of which user (s)", per(func(r round) float64 { return r.ours.userSeconds / m }))
	add("worker_sys_cpu_s_per_million", "of which system, in the kernel (s)", per(func(r round) float64 { return r.ours.sysSeconds / m }))
	add("worker_page_faults_per_million", "worker page faults per million events", per(func(r round) float64 { return r.ours.pageFaults / m }))
	add("worker_rss_mib", "worker peak RSS with the backlog (MiB)", per(func(r round) float64 { return r.ours.rssMiB }))
	return figs
}

// printRounds prints each round's contenders and what the worker's drain cost around it.
func printRounds(o options, rs []round) {
	m := float64(o.messages) / 1e6
	fmt.Printf("\n| round | order | CustomerLoop (events/s) | engine (events/s) | Native ceiling (rows/s) | ours/engine | ours/ceiling |\n|---|---|---:|---:|---:|---:|---:|\n")
	for i, r := range rs {
		re, rc := "", ""
		if r.engine > 0 && r.ours.rate > 0 {
			re = format(r.ours.rate / r.engine)
		}
		if r.ceiling > 0 && r.ours.rate > 0 {
			rc = format(r.ours.rate / r.ceiling)
		}
		fmt.Printf("| %d | %v | %s | %s | %s | %s | %s |\n", i+1, r.order, format(r.ours.rate), format(r.engine), format(r.ceiling), re, rc)
	}
	if rs[0].ours.rate == 0 {
		return
	}
	fmt.Printf("\nDuring each worker drain (CPU in seconds; per million events where marked):\n\n" +
		"| round | drain (s) | worker CPU/M | user/M | sys/M | minor faults/M | major faults | invol. / vol. switches | GCs | GC pause (ms) | GC CPU %% | ClickHouse CPU | bench+kfake CPU | machine busy | steal | iowait |\n" +
		"|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, r := range rs {
		w, d := r.ours, r.ours.diag
		fmt.Printf("| %d | %s | %s | %s | %s | %s | %.0f | %.0f / %.0f | %.0f | %s | %.0f | %s | %s | %s | %s | %s |\n", i+1,
			format(d.drainSeconds), format(w.cpuSeconds/m), format(w.userSeconds/m), format(w.sysSeconds/m), format(w.pageFaults/m),
			d.majorFaults, d.involuntary, d.voluntary, d.gcs, format(d.gcPauseMs), d.gcCPUPercent,
			format(d.serverCPU), format(d.benchCPU), format(d.busy), format(d.steal), format(d.iowait))
	}
}

// roundsJSON is the rounds as the JSON report's "rounds" array.
func roundsJSON(o options, rs []round) []map[string]any {
	m := float64(o.messages) / 1e6
	out := make([]map[string]any, len(rs))
	for i, r := range rs {
		d := r.ours.diag
		out[i] = map[string]any{
			"order": r.order, "customerloop_events_per_s": r.ours.rate, "kafka_engine_events_per_s": r.engine,
			"clickhouse_native_ceiling_rows_per_s": r.ceiling,
			"worker_cpu_s_per_million":             r.ours.cpuSeconds / m, "worker_user_cpu_s_per_million": r.ours.userSeconds / m,
			"worker_sys_cpu_s_per_million": r.ours.sysSeconds / m, "worker_page_faults_per_million": r.ours.pageFaults / m,
			"drain_s": d.drainSeconds, "worker_major_faults": d.majorFaults,
			"worker_involuntary_switches": d.involuntary, "worker_voluntary_switches": d.voluntary,
			"worker_gcs": d.gcs, "worker_gc_pause_ms": d.gcPauseMs, "worker_gc_cpu_percent": d.gcCPUPercent,
			"clickhouse_cpu_s": d.serverCPU, "bench_kfake_cpu_s": d.benchCPU,
			"machine_busy_s": d.busy, "machine_steal_s": d.steal, "machine_iowait_s": d.iowait,
		}
	}
	return out
}
