package ingest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Exactly-once on a cluster.
//
// Writes go through the Distributed tables with insert_distributed_sync, so that an
// acknowledged insert is on one replica of every shard it touches (and in ZooKeeper's
// replication log), never in a spool waiting to be sent. Replication to the shard's other
// replicas is asynchronous, and a read through a Distributed table may be served by a
// replica that has not fetched an acknowledged part yet: a recovery read there would miss
// rows or ledger entries and write them again. So the reads the ledger protocol decides
// on (recoverPartition, loadDedupWindow, withoutLanded, ledgerRecorded) go, per shard, to one replica that has
// first run SYSTEM SYNC REPLICA on the tables read: it pulls the replication log, which
// holds every acknowledged part, and returns once its queue is empty. If no replica of a
// shard syncs in time the read fails and the partition waits: stalling beats duplicating.
// Before any of these reads, on a single server as on a cluster, the worker waits until
// no insert into the tables read that began earlier is still running on any node
// (awaitEarlierInserts): an insert its client gave up on may still complete.
//
// Replicated tables deduplicate identical insert blocks by default, and newer servers
// take a deduplication token from the client; the worker sets one where the server has
// it (insertContext), but does not depend on either: the same rows split into different
// blocks (a retry after withoutLanded, a batch re-read after a crash) are not deduplicated,
// and only the last replicated_deduplication_window blocks are remembered. (Where it does
// act, it is whole: on 18.16 a block dropped as a duplicate does not reach the
// materialized views over the table either.)

// shardReader is where one shard's part of a consistent read goes: the loop's connection
// and the public table names on a single server; a synced replica and the local tables on
// a cluster.
type shardReader struct {
	conn  driver.Conn
	local bool
}

// table is the name to read a table of the loop under.
func (r shardReader) table(db, name string) string {
	if r.local {
		name = pipeline.LocalTable(name)
	}
	return pipeline.QualifiedTable(db, name)
}

// replica is one node of the cluster as system.clusters lists it.
type replica struct {
	shard, num int
	addr       string
	local      bool // the loop's own address: the node its inserts usually land on
}

// shardsOf groups replicas by shard, in shard order; within a shard the loop's own node
// comes first, then replica order.
func shardsOf(rs []replica) [][]replica {
	var out [][]replica
	for _, r := range rs {
		if len(out) == 0 || out[len(out)-1][0].shard != r.shard {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], r)
	}
	for _, sh := range out {
		for i, r := range sh {
			if r.local && i > 0 {
				copy(sh[1:i+1], sh[:i])
				sh[0] = r
				break
			}
		}
	}
	return out
}

// UnsyncedShardError says that no replica of a shard could be brought up to date with
// what the shard acknowledged, so a read that must see it cannot be made.
type UnsyncedShardError struct {
	Shard int
	Err   error // each replica's failure, joined
}

func (e *UnsyncedShardError) Error() string {
	return fmt.Sprintf("no replica of shard %d could be synced (%v); the read waits rather than risk writing acknowledged rows again", e.Shard, e.Err)
}

func (e *UnsyncedShardError) Unwrap() error { return e.Err }

// defaultSyncTimeout bounds SYSTEM SYNC REPLICA on one replica, after which the next
// replica of its shard is tried.
//
// On 18.16 SYSTEM SYNC REPLICA waits until the replica's queue is empty, however long:
// it ignores receive_timeout and KILL QUERY. A replica that cannot fetch a part (the only
// replica holding it is down, or its fetches are stopped) would hold the query until it
// can. So a replica whose queue shows a fetch already failing is passed over without
// being asked; the timeout only frees the worker from one that starts failing while it
// waits (the server's query then ends when the replica catches up).
const defaultSyncTimeout = 20 * time.Second

// replicaSet reaches every replica of the loop's cluster, with the loop's credentials.
// Connections are opened on first use and kept until close.
type replicaSet struct {
	ch          pipeline.ClickHouseConfig
	loop        driver.Conn // reads system.clusters
	syncTimeout time.Duration

	mu    sync.Mutex
	conns map[string]driver.Conn // by address
}

func newReplicaSet(ch pipeline.ClickHouseConfig, loop driver.Conn) *replicaSet {
	return &replicaSet{ch: ch, loop: loop, syncTimeout: defaultSyncTimeout, conns: map[string]driver.Conn{}}
}

// topology reads the cluster's replicas. It is read for each consistent read, so that a
// changed <remote_servers> is followed without a restart.
func (s *replicaSet) topology(ctx context.Context) ([][]replica, error) {
	// is_local is no help: 18.16 sets it for every replica on the server's host, whatever
	// the port.
	hosts, err := connect.ClusterHosts(ctx, s.loop, s.ch.Cluster)
	if err != nil {
		return nil, err
	}
	rs := make([]replica, len(hosts))
	for i, h := range hosts {
		rs[i] = replica{shard: int(h.Shard), num: i, addr: h.Addr, local: slices.Contains(s.ch.Addresses(), h.Addr)}
	}
	return shardsOf(rs), nil
}

func (s *replicaSet) conn(ctx context.Context, addr string) (driver.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.conns[addr]; c != nil {
		return c, nil
	}
	cfg := s.ch
	cfg.Addr, cfg.Failover = addr, nil
	c, err := connect.OpenClickHouse(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.conns[addr] = c
	return c, nil
}

// synced returns, for every shard, a reader on a replica that holds every part of the
// given tables acknowledged before the call.
func (s *replicaSet) synced(ctx context.Context, tables ...string) ([]shardReader, error) {
	shards, err := s.topology(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]shardReader, len(shards))
	errs := make([]error, len(shards))
	var wg sync.WaitGroup
	for i, sh := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = s.syncShard(ctx, sh, tables)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// syncShard syncs the tables on the shard's replicas in turn until one succeeds.
func (s *replicaSet) syncShard(ctx context.Context, sh []replica, tables []string) (shardReader, error) {
	var errs []error
	for _, r := range sh {
		c, err := s.syncReplica(ctx, r.addr, tables)
		if err == nil {
			return shardReader{conn: c, local: true}, nil
		}
		if ctx.Err() != nil {
			return shardReader{}, ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s: %w", r.addr, err))
	}
	return shardReader{}, &UnsyncedShardError{Shard: sh[0].shard, Err: errors.Join(errs...)}
}

// syncReplica runs SYSTEM SYNC REPLICA on each table's local table of one replica, within
// syncTimeout (newer servers stop at receive_timeout themselves).
func (s *replicaSet) syncReplica(ctx context.Context, addr string, tables []string) (driver.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.syncTimeout)
	defer cancel()
	c, err := s.conn(ctx, addr)
	if err != nil {
		return nil, err
	}
	for _, t := range tables {
		local := pipeline.LocalTable(t)
		var (
			failing uint64
			last    string
		)
		if err := c.QueryRow(ctx, "SELECT count(), any(last_exception) FROM system.replication_queue"+
			" WHERE database = ? AND table = ? AND type = 'GET_PART' AND num_tries > 1", s.ch.Database, local).Scan(&failing, &last); err != nil {
			return nil, fmt.Errorf("reading the replication queue of %s: %w", local, err)
		}
		if failing > 0 {
			return nil, fmt.Errorf("%s cannot fetch %d part(s) now: %s", local, failing, last)
		}
		sctx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
			"receive_timeout": int(max(s.syncTimeout/time.Second, 1)),
		}))
		if err := c.Exec(sctx, "SYSTEM SYNC REPLICA "+pipeline.QualifiedTable(s.ch.Database, local)); err != nil {
			return nil, fmt.Errorf("SYSTEM SYNC REPLICA %s: %w", local, err)
		}
	}
	return c, nil
}

// readers returns where a read that must see every acknowledged write to tables goes:
// the loop's connection on a single server, a synced replica of every shard on a cluster.
func (w *Worker) readers(ctx context.Context, tables ...string) ([]shardReader, error) {
	nodes := []driver.Conn{w.ch}
	if w.replicas != nil {
		var err error
		if nodes, err = w.replicas.reachable(ctx); err != nil {
			return nil, err
		}
	}
	if err := awaitEarlierInserts(ctx, nodes, w.cfg.ClickHouse.Database, tables, w.replicas != nil); err != nil {
		return nil, err
	}
	if w.replicas == nil {
		return []shardReader{{conn: w.ch}}, nil
	}
	return w.replicas.synced(ctx, tables...)
}

// awaitEarlierInserts waits until no insert into the tables that began before the call
// is still running on any of the nodes. An insert the client gave up on (a flush that
// timed out when its partitions were revoked, a worker killed while the server was still
// writing) may yet complete on the server: read before it does, and the rows it writes
// would be written again. Inserts that begin later are other workers' batches, for other
// partitions. A node that is down runs nothing.
func awaitEarlierInserts(ctx context.Context, nodes []driver.Conn, db string, tables []string, skipFailing bool) error {
	start := time.Now()
	q := "SELECT count() FROM system.processes WHERE elapsed > ? AND match(query, '^\\\\s*[Ii][Nn][Ss][Ee][Rr][Tt]\\\\s') AND position(query, ?) > 0 AND ("
	for i := range tables {
		if i > 0 {
			q += " OR "
		}
		q += "position(query, ?) > 0"
	}
	q += ")"
	for {
		var running uint64
		for _, n := range nodes {
			args := []any{time.Since(start).Seconds(), db}
			for _, t := range tables {
				args = append(args, t)
			}
			var c uint64
			if err := n.QueryRow(ctx, q, args...).Scan(&c); err != nil {
				if skipFailing && ctx.Err() == nil {
					continue // a node that does not answer finishes no insert
				}
				return fmt.Errorf("looking for inserts into %v still running: %w", tables, err)
			}
			running += c
		}
		if running == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d insert(s) into %v begun before this read still running: %w", running, tables, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// reachable returns connections to the cluster's nodes that answer.
func (s *replicaSet) reachable(ctx context.Context) ([]driver.Conn, error) {
	shards, err := s.topology(ctx)
	if err != nil {
		return nil, err
	}
	var out []driver.Conn
	for _, sh := range shards {
		for _, r := range sh {
			if c, err := s.conn(ctx, r.addr); err == nil {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// insertContext carries the settings of one insert attempt of rows of a batch into a
// table; on a single server it is ctx.
func (w *Worker) insertContext(ctx context.Context, batchID, table string, rows int) (context.Context, error) {
	if w.replicas == nil {
		return ctx, nil
	}
	f := w.features.Load()
	if f == nil {
		read, err := pipeline.ReadServerFeatures(ctx, w.ch)
		if err != nil {
			return nil, err
		}
		f = &read
		w.features.Store(f)
	}
	return clickhouse.Context(ctx, clickhouse.WithSettings(clusterInsertSettings(*f, insertToken(batchID, table, rows)))), nil
}

func (s *replicaSet) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for addr, c := range s.conns {
		errs = append(errs, c.Close())
		delete(s.conns, addr)
	}
	return errors.Join(errs...)
}

// clusterInsertSettings are the settings of an insert into a Distributed table. 18.16
// takes settings from the client only as ints and bools; the token, a string, goes only to
// servers that have it.
func clusterInsertSettings(f pipeline.ServerFeatures, token string) clickhouse.Settings {
	s := clickhouse.Settings{"insert_distributed_sync": 1}
	if f.DedupToken && token != "" {
		s["insert_deduplication_token"] = token
	}
	return s
}

// insertToken names the rows of one insert attempt for the server's deduplication. It
// must change whenever the rows do: a retry after withoutLanded sends fewer rows, and under
// the same token its blocks would be taken for the first attempt's and dropped. Rows only
// ever leave a batch's insert, so their count tells its attempts apart.
func insertToken(batchID, table string, rows int) string {
	return batchID + "/" + table + "/" + strconv.Itoa(rows)
}
