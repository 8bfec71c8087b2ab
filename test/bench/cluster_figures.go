package main

// The cluster variant's figures, one value per run, and the table that prints them.

import (
	"fmt"
	"strings"
)

// clusterFigure is one figure of every run: values[i] belongs to clusterWorkers[i].
// A figure that could not be read (a process not found) has ok[i] false.
type clusterFigure struct {
	key, label string // key gets the worker count appended
	values     []float64
	ok         []bool
}

func clusterFigures(o options, runs []clusterRun) []clusterFigure {
	per := func(key, label string, ok func(clusterRun) bool, v func(clusterRun) float64) clusterFigure {
		f := clusterFigure{key: key, label: label}
		for _, r := range runs {
			f.values = append(f.values, v(r))
			f.ok = append(f.ok, ok == nil || ok(r))
		}
		return f
	}
	m := float64(o.clusterMessages) / 1e6
	haveCH := func(r clusterRun) bool { return r.haveCH }
	haveZK := func(r clusterRun) bool { return r.haveZK }
	return []clusterFigure{
		per("events_per_s", "CustomerLoop end to end (events/s)", nil, func(r clusterRun) float64 { return r.rate }),
		per("worker_cpu_s_per_million", "workers' CPU per million events (s)", nil, func(r clusterRun) float64 { return r.workerCPU / m }),
		per("clickhouse_cpu_s_per_million", "ClickHouse nodes' CPU per million events (s)", haveCH, func(r clusterRun) float64 { return r.clickhouseCPU / m }),
		per("zookeeper_cpu_s_per_million", "ZooKeeper's CPU per million events (s)", haveZK, func(r clusterRun) float64 { return r.zkCPU / m }),
		per("kfake_bench_cpu_s_per_million", "kfake and the bench's polling, CPU per million events (s)", nil, func(r clusterRun) float64 { return r.benchCPU / m }),
		per("cores_busy", "all of the above: cores busy during the drain", nil, func(r clusterRun) float64 {
			return (r.workerCPU + r.clickhouseCPU + r.zkCPU + r.benchCPU) / (float64(o.clusterMessages) / r.rate)
		}),
		per("workers_writing", "workers that flushed a batch", nil, func(r clusterRun) float64 { return float64(r.writers) }),
		per("batches", "batches (one raw insert and one ledger insert each)", nil, func(r clusterRun) float64 { return float64(r.batches) }),
		per("rows_per_batch", "rows per batch", nil, func(r clusterRun) float64 { return float64(o.clusterMessages) / float64(r.batches) }),
		per("shard_months", "shards x month partitions the events span", nil, func(r clusterRun) float64 { return float64(r.shards * r.months) }),
		per("raw_parts_per_insert", "raw table parts per insert (shards x months touched)", nil, func(r clusterRun) float64 { return float64(r.rawParts) / float64(r.batches) }),
		per("ledger_parts_per_insert", "ledger parts per insert", nil, func(r clusterRun) float64 { return float64(r.ledgerParts) / float64(r.batches) }),
		per("zookeeper_transactions_per_batch", "ZooKeeper requests per batch, all nodes", nil, func(r clusterRun) float64 { return r.zkTransactions / float64(r.batches) }),
		per("zookeeper_transactions_per_part", "ZooKeeper requests per inserted part, all nodes", nil, func(r clusterRun) float64 {
			return r.zkTransactions / float64(r.rawParts+r.ledgerParts)
		}),
		per("zookeeper_writes_per_part", "of which creates and multis per part", nil, func(r clusterRun) float64 {
			return (r.zkByKind["ZooKeeperCreate"] + r.zkByKind["ZooKeeperMulti"]) / float64(r.rawParts+r.ledgerParts)
		}),
		per("ledger_rows_per_batch", "ledger rows per batch", nil, func(r clusterRun) float64 { return float64(r.ledgerRows) / float64(r.batches) }),
		per("ledger_disk_bytes_per_row", "ledger bytes on disk per row (small parts: an upper bound)", nil, func(r clusterRun) float64 {
			return float64(r.ledgerDiskBytes) / float64(r.ledgerStored)
		}),
		per("ledger_uncompressed_bytes_per_row", "ledger uncompressed bytes per row", nil, func(r clusterRun) float64 {
			return float64(r.ledgerUnpacked) / float64(r.ledgerStored)
		}),
	}
}

// printClusterFigures prints the cluster table, one column per worker count, and adds the
// figures to out as cluster_<key>_<workers> (the throughput as cluster_<n>_worker(s)_events_per_s).
func printClusterFigures(o options, figs []clusterFigure, out map[string]float64) {
	if len(figs) == 0 {
		return
	}
	out["cluster_messages"] = float64(o.clusterMessages)
	fmt.Printf("\nOn the cluster, %d events per run (fewer than the single-server runs):\n\n| figure |", o.clusterMessages)
	for _, n := range clusterWorkers {
		fmt.Printf(" %d worker%s |", n, plural(n))
	}
	fmt.Printf("\n|---|%s\n", strings.Repeat("---:|", len(clusterWorkers)))
	for _, f := range figs {
		fmt.Printf("| %s |", f.label)
		for i, n := range clusterWorkers {
			if !f.ok[i] {
				fmt.Printf(" n/a |")
				continue
			}
			fmt.Printf(" %s |", format(f.values[i]))
			key := fmt.Sprintf("cluster_%s_%d", f.key, n)
			if f.key == "events_per_s" {
				key = fmt.Sprintf("cluster_%d_worker%s_events_per_s", n, plural(n))
			}
			out[key] = f.values[i]
		}
		fmt.Println()
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
