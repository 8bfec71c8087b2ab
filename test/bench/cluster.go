package main

// The cluster variant: the same loop on a ClickHouse cluster (Replicated tables behind
// Distributed ones, created ON CLUSTER), its topic drained by one, two, then three worker
// processes in one consumer group. Each run is checked for exactness before its figures
// count, and reads what planning a larger cluster needs: parts per insert, ZooKeeper
// requests per batch, ledger rows per batch and bytes per ledger row.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
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
