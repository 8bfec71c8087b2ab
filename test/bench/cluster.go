package main

// The cluster variant: the same loop on a ClickHouse cluster (Replicated tables behind
// Distributed ones, created ON CLUSTER), its topic drained by one, two, then three worker
// processes in one consumer group. Each run is checked for exactness before its figures
// count, and reads what planning a larger cluster needs: parts per insert, ZooKeeper
// requests per batch, ledger rows per batch and bytes per ledger row.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
)

// clusterWorkers are the worker counts the variant runs, in order.
var clusterWorkers = []int{1, 2, 3}

// clusterTopic is the topic of the run with n workers: the first -cluster-messages events
// of the same generator, in as many partitions as the main topic.
func clusterTopic(n int) string { return fmt.Sprintf("bench.cluster.%dw", n) }

func clusterTopics() []string {
	var out []string
	for _, n := range clusterWorkers {
		out = append(out, clusterTopic(n))
	}
	return out
}

// clusterEnv is the cluster the variant runs against, as make test exports it.
type clusterEnv struct {
	name           string
	addrs          []string
	user, password string
}

func clusterFromEnv() (clusterEnv, bool) {
	name, addrs := os.Getenv("CLICKHOUSE_CLUSTER"), os.Getenv("CLICKHOUSE_CLUSTER_ADDRS")
	if name == "" || addrs == "" {
		return clusterEnv{}, false
	}
	return clusterEnv{name: name, addrs: strings.Split(addrs, ","),
		user: os.Getenv("CLICKHOUSE_USER"), password: os.Getenv("CLICKHOUSE_PASSWORD")}, true
}

func (c clusterEnv) config(addr, db string) pipeline.ClickHouseConfig {
	return pipeline.ClickHouseConfig{Addr: addr, Database: db, Username: c.user, Password: c.password, Cluster: c.name}
}

// clusterFigure is one figure of every run: values[i] belongs to clusterWorkers[i].
// A figure that could not be read (a process not found) has ok[i] false.
type clusterFigure struct {
	key, label string // key gets the worker count appended
	values     []float64
	ok         []bool
}

// clusterRun is what one run measured.
type clusterRun struct {
	workers                         int
	rate                            float64
	workerCPU, clickhouseCPU, zkCPU float64 // seconds during the drain
	benchCPU                        float64 // this process: kfake and the polling
	haveCH, haveZK                  bool
	batches, ledgerRows, writers    uint64  // writers: workers with a batch in the ledger
	rawParts, ledgerParts           int     // level-0 parts, counted once per shard
	zkTransactions                  float64 // summed over the nodes, until replication settled
	zkByKind                        map[string]float64
	ledgerStored                    uint64 // rows in the ledger's active parts, one replica per shard
	ledgerDiskBytes, ledgerUnpacked uint64
	shards, months                  int // of the raw table's inserted parts
}

func clusterVariant(ctx context.Context, o options, c clusterEnv, work string, brokers []string) ([]clusterFigure, error) {
	step("cluster %s (%s): runs of %d usage events each (fewer than the single-server runs)",
		c.name, strings.Join(c.addrs, ","), o.clusterMessages)
	msgs := makeMessages(o.clusterMessages)
	admin, err := connect.OpenClickHouse(ctx, c.config(c.addrs[0], ""))
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	nodes := make([]driver.Conn, len(c.addrs))
	for i, a := range c.addrs {
		if nodes[i], err = connect.OpenClickHouse(ctx, c.config(a, "")); err != nil {
			return nil, fmt.Errorf("cluster node %d: %w", i+1, err)
		}
		defer nodes[i].Close()
	}
	var runs []clusterRun
	for _, n := range clusterWorkers {
		step("cluster: %d worker(s) in one consumer group", n)
		r, err := clusterDrain(ctx, o, c, admin, nodes, work, brokers, msgs, n)
		if err != nil {
			return nil, fmt.Errorf("cluster run with %d worker(s): %w", n, err)
		}
		runs = append(runs, r)
	}
	return clusterFigures(o, runs), nil
}

// clusterDrain starts n workers on a fresh database, consumer group and empty topic,
// waits until the group has given each of them partitions, then produces the events and
// times them until the ledger covers the topic; it checks that every event landed once
// and reads the run's costs.
//
// The workers join before the events exist because kfake, like Kafka, rebalances a
// group each time a member joins: started on a backlog, the first worker drains 300k
// events before the others get a partition, and the run measures the join, not the
// workers.
func clusterDrain(ctx context.Context, o options, c clusterEnv, admin driver.Conn, nodes []driver.Conn, work string, brokers []string, msgs [][]byte, n int) (clusterRun, error) {
	want := uint64(len(msgs))
	topic := clusterTopic(n)
	db := fmt.Sprintf("bench_cluster_%d_%dw", time.Now().Unix(), n)
	cfg := benchConfig(brokers, c.addrs[0], db, "usage", topic)
	cfg.Kafka.Group = fmt.Sprintf("bench-cluster-%dw", n)
	cfg.ClickHouse = c.config(c.addrs[0], db)
	cfg.Batch.MaxRows = o.maxRows
	stmts, err := ddl.PlanSchema(cfg)
	if err != nil {
		return clusterRun{}, err
	}
	if err := ddl.ApplySchema(ctx, admin, stmts); err != nil {
		return clusterRun{}, err
	}
	defer admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db)+cfg.ClickHouse.OnCluster())
	shardOf, err := shardsOf(ctx, admin, c)
	if err != nil {
		return clusterRun{}, err
	}

	chPIDs, zkPID := clusterPIDs(c.addrs, o.zookeeper)
	zk0, err := zkEvents(ctx, nodes)
	if err != nil {
		return clusterRun{}, err
	}
	chCPU0, zkCPU0, self0 := cpuOf(chPIDs...), cpuOf(zkPID), selfCPU()

	type proc struct {
		cmd  *exec.Cmd
		log  *os.File
		done chan error
	}
	var procs []*proc
	defer func() {
		for _, p := range procs {
			if p.cmd.ProcessState == nil {
				_ = p.cmd.Process.Kill()
				<-p.done
			}
			p.log.Close()
		}
	}()
	for i := range n {
		// Workers spread over the nodes, as a Service in front of them would spread them.
		wcfg := cfg
		wcfg.ClickHouse.Addr = c.addrs[i%len(c.addrs)]
		cmd, logf, err := startWorker(o, work, fmt.Sprintf("cluster-%dw-%d", n, i), wcfg,
			[]string{"CUSTOMERLOOP_CLICKHOUSE_PASSWORD=" + c.password})
		if err != nil {
			return clusterRun{}, err
		}
		p := &proc{cmd: cmd, log: logf, done: make(chan error, 1)}
		go func() { p.done <- cmd.Wait() }()
		procs = append(procs, p)
	}
	if err := groupAssigned(ctx, brokers, cfg.Kafka.Group, topic, n, min(n, o.partitions)); err != nil {
		return clusterRun{}, err
	}
	start := time.Now()
	if _, err := produce(ctx, brokers, topic, msgs, 0); err != nil {
		return clusterRun{}, err
	}
	ledger := pipeline.QualifiedTable(db, pipeline.LedgerTable)
	for deadline := start.Add(10 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		// Covered up to the end in every partition (the topic's offsets start at 0): a
		// span ledgered twice is the exactness check's to find, not a reason to stop early.
		var got uint64
		if err := admin.QueryRow(ctx, "SELECT toUInt64(sum(end)) FROM (SELECT max(last_offset) + 1 AS end FROM "+ledger+
			" WHERE topic = ? GROUP BY partition)", topic).Scan(&got); err != nil {
			return clusterRun{}, err
		}
		if got >= want {
			break
		}
		for _, p := range procs {
			select {
			case err := <-p.done:
				return clusterRun{}, fmt.Errorf("a worker exited before the topic was drained (%v); log: %s", err, p.log.Name())
			default:
			}
		}
		if time.Now().After(deadline) {
			return clusterRun{}, fmt.Errorf("the workers did not drain %d messages in 10 minutes (at %d); logs in %s", want, got, work)
		}
	}
	took := time.Since(start)
	r := clusterRun{workers: n, rate: float64(want) / took.Seconds()}
	chCPU1, zkCPU1, self1 := cpuOf(chPIDs...), cpuOf(zkPID), selfCPU()
	r.clickhouseCPU, r.haveCH = chCPU1-chCPU0, len(chPIDs) == len(c.addrs)
	r.zkCPU, r.haveZK = zkCPU1-zkCPU0, zkPID != 0
	r.benchCPU = self1 - self0
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		if err := <-p.done; err != nil {
			return clusterRun{}, fmt.Errorf("worker exit: %w; log: %s", err, p.log.Name())
		}
		ru := p.cmd.ProcessState.SysUsage().(*syscall.Rusage)
		r.workerCPU += time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}

	if err := checkExact(ctx, admin, cfg, want); err != nil {
		return clusterRun{}, err
	}
	if err := admin.QueryRow(ctx, "SELECT uniqExact(batch_id), count(), uniqExact(worker) FROM "+ledger).Scan(&r.batches, &r.ledgerRows, &r.writers); err != nil {
		return clusterRun{}, err
	}
	// The replicas fetch the last parts after the ledger says they are in: the ZooKeeper
	// requests of a batch include its replication, so read them once the queues are empty.
	if err := replicationSettled(ctx, nodes, db); err != nil {
		return clusterRun{}, err
	}
	zk1, err := zkEvents(ctx, nodes)
	if err != nil {
		return clusterRun{}, err
	}
	r.zkByKind = map[string]float64{}
	for k, v := range zk1 {
		r.zkByKind[k] = float64(v - zk0[k])
	}
	r.zkTransactions = r.zkByKind["ZooKeeperTransactions"]
	raw := pipeline.LocalTable(cfg.Streams[0].Table())
	local := pipeline.LocalTable(pipeline.LedgerTable)
	if r.rawParts, r.shards, r.months, err = insertedParts(ctx, nodes, shardOf, db, raw); err != nil {
		return clusterRun{}, err
	}
	if r.ledgerParts, _, _, err = insertedParts(ctx, nodes, shardOf, db, local); err != nil {
		return clusterRun{}, err
	}
	if r.ledgerStored, r.ledgerDiskBytes, r.ledgerUnpacked, err = activeBytes(ctx, nodes, shardOf, db, local); err != nil {
		return clusterRun{}, err
	}
	step("cluster: %d worker(s): %.0f events/s, %d batches, %d+%d parts, %.0f ZooKeeper transactions",
		n, r.rate, r.batches, r.rawParts, r.ledgerParts, r.zkTransactions)
	return r, nil
}

// groupAssigned waits until the consumer group is stable with members members, holding
// partitions of topic between them, assigned of them with at least one.
func groupAssigned(ctx context.Context, brokers []string, group, topic string, members, assigned int) error {
	kc := &kafka.Client{Addr: kafka.TCP(brokers...)}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		resp, err := kc.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
		if err != nil {
			return err
		}
		holding := 0
		var state string
		var joined int
		for _, g := range resp.Groups {
			state, joined = g.GroupState, len(g.Members)
			for _, m := range g.Members {
				for _, t := range m.MemberAssignments.Topics {
					if t.Topic == topic && len(t.Partitions) > 0 {
						holding++
					}
				}
			}
		}
		if state == "Stable" && joined == members && holding == assigned {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("group %s: %s with %d of %d members, %d holding partitions, after two minutes", group, state, joined, members, holding)
		}
	}
}

// checkExact waits (replication may lag the ledger) until the raw table, read through
// its Distributed name, holds every produced event that was not dead-lettered, each once,
// and fails when it holds more, or fewer after two minutes.
func checkExact(ctx context.Context, ch driver.Conn, cfg pipeline.Config, want uint64) error {
	db, s := cfg.ClickHouse.Database, cfg.Streams[0]
	var messages, dead, dups, withheld uint64
	if err := ch.QueryRow(ctx, "SELECT sum(messages), sum(dead_lettered), sum(duplicates), sum(withheld) FROM "+
		pipeline.QualifiedTable(db, pipeline.LedgerTable)+" WHERE topic = ?", s.Topic).Scan(&messages, &dead, &dups, &withheld); err != nil {
		return err
	}
	expect := want - dead
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		var rows, ids uint64
		if err := ch.QueryRow(ctx, "SELECT count(), uniqExact(event_id) FROM "+pipeline.QualifiedTable(db, s.Table())).Scan(&rows, &ids); err != nil {
			return err
		}
		switch {
		case messages != want || dups+withheld != 0:
			return fmt.Errorf("not exact: the ledger covers %d messages of %d (%d duplicates, %d withheld among unique, consented events); the raw table has %d rows, %d distinct",
				messages, want, dups, withheld, rows, ids)
		case rows > expect || ids != rows:
			return fmt.Errorf("not exact: %d rows (%d distinct events) for %d produced less %d dead-lettered", rows, ids, want, dead)
		case rows == expect:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("not exact: %d rows after two minutes for %d produced less %d dead-lettered", rows, want, dead)
		}
	}
}

// replicationSettled waits until no replica of db has work queued.
func replicationSettled(ctx context.Context, nodes []driver.Conn, db string) error {
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		var queued uint64
		for _, n := range nodes {
			var q uint64
			if err := n.QueryRow(ctx, "SELECT toUInt64(sum(queue_size)) FROM system.replicas WHERE database = ?", db).Scan(&q); err != nil {
				return err
			}
			queued += q
		}
		if queued == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication of %s still has %d entries queued after two minutes", db, queued)
		}
	}
}

// shardsOf maps each node address to its shard number, from system.clusters.
func shardsOf(ctx context.Context, ch driver.Conn, c clusterEnv) (map[int]uint32, error) {
	rows, err := ch.Query(ctx, "SELECT shard_num, host_address, port FROM system.clusters WHERE cluster = ?", c.name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	byAddr := map[string]uint32{}
	for rows.Next() {
		var shard uint32
		var host string
		var port uint16
		if err := rows.Scan(&shard, &host, &port); err != nil {
			return nil, err
		}
		byAddr[fmt.Sprintf("%s:%d", host, port)] = shard
	}
	out := map[int]uint32{}
	for i, a := range c.addrs {
		s, ok := byAddr[a]
		if !ok {
			return nil, fmt.Errorf("node %s is not in cluster %s's system.clusters", a, c.name)
		}
		out[i] = s
	}
	return out, rows.Err()
}

// insertedParts counts the parts inserts created in db.table: level-0 parts, active or
// merged away (kept for minutes), each counted once per shard however many replicas
// hold it; and the shards and month partitions they span.
func insertedParts(ctx context.Context, nodes []driver.Conn, shardOf map[int]uint32, db, table string) (parts, shards, months int, err error) {
	seen := map[string]bool{}
	shardSet, monthSet := map[uint32]bool{}, map[string]bool{}
	for i, n := range nodes {
		rows, err := n.Query(ctx, "SELECT name, partition_id FROM system.parts WHERE database = ? AND table = ? AND level = 0", db, table)
		if err != nil {
			return 0, 0, 0, err
		}
		for rows.Next() {
			var name, partition string
			if err := rows.Scan(&name, &partition); err != nil {
				rows.Close()
				return 0, 0, 0, err
			}
			seen[fmt.Sprint(shardOf[i], "/", name)] = true
			shardSet[shardOf[i]], monthSet[partition] = true, true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return 0, 0, 0, err
		}
	}
	return len(seen), len(shardSet), len(monthSet), nil
}

// activeBytes reads the rows, bytes on disk and uncompressed bytes of db.table's active
// parts on the first node of each shard.
func activeBytes(ctx context.Context, nodes []driver.Conn, shardOf map[int]uint32, db, table string) (rows, disk, unpacked uint64, err error) {
	done := map[uint32]bool{}
	for i, n := range nodes {
		if done[shardOf[i]] {
			continue
		}
		done[shardOf[i]] = true
		var r, d, u uint64
		if err := n.QueryRow(ctx, "SELECT toUInt64(sum(rows)), toUInt64(sum(bytes_on_disk)), toUInt64(sum(data_uncompressed_bytes)) FROM system.parts WHERE database = ? AND table = ? AND active",
			db, table).Scan(&r, &d, &u); err != nil {
			return 0, 0, 0, err
		}
		rows, disk, unpacked = rows+r, disk+d, unpacked+u
	}
	return rows, disk, unpacked, nil
}

// zkEvents sums the nodes' ZooKeeper request counters.
func zkEvents(ctx context.Context, nodes []driver.Conn) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, n := range nodes {
		rows, err := n.Query(ctx, "SELECT event, value FROM system.events WHERE event IN ('ZooKeeperTransactions', 'ZooKeeperCreate', 'ZooKeeperMulti', 'ZooKeeperGet', 'ZooKeeperList', 'ZooKeeperExists', 'ZooKeeperSet', 'ZooKeeperRemove', 'ZooKeeperBytesSent')")
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var k string
			var v uint64
			if err := rows.Scan(&k, &v); err != nil {
				rows.Close()
				return nil, err
			}
			out[k] += v
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
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

// clusterPIDs finds the processes listening on the nodes' and ZooKeeper's ports, to read
// their CPU time; a process not found (another user's, another machine's) is left out.
func clusterPIDs(addrs []string, zookeeper string) (nodes []int, zk int) {
	for _, a := range addrs {
		if pid := listener(a); pid != 0 {
			nodes = append(nodes, pid)
		}
	}
	return nodes, listener(zookeeper)
}

// listener returns the pid of the process listening on addr's TCP port, or 0.
func listener(addr string) int {
	_, p, ok := strings.Cut(addr, ":")
	port, err := strconv.ParseUint(p, 10, 16)
	if !ok || err != nil {
		return 0
	}
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" { // LISTEN
				continue
			}
			if _, hex, ok := strings.Cut(fields[1], ":"); ok {
				if v, err := strconv.ParseUint(hex, 16, 16); err == nil && v == port {
					inodes["socket:["+fields[9]+"]"] = true
				}
			}
		}
		fh.Close()
	}
	if len(inodes) == 0 {
		return 0
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range procs {
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join(dir, "fd", fd.Name())); err == nil && inodes[link] {
				pid, _ := strconv.Atoi(filepath.Base(dir))
				return pid
			}
		}
	}
	return 0
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on Linux.
const clockTicks = 100

// cpuOf sums the user and system CPU seconds of the processes (0 for a pid of 0).
func cpuOf(pids ...int) float64 {
	var total float64
	for _, pid := range pids {
		if pid == 0 {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The fields after the command name, which may hold spaces: state is field 3,
		// utime and stime are fields 14 and 15.
		rest := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(rest) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(rest[11], 64)
		s, _ := strconv.ParseFloat(rest[12], 64)
		total += (u + s) / clockTicks
	}
	return total
}

// selfCPU is this process's CPU time so far: kfake serving the workers, and the polling.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
