package main

// What a cluster run reads from its nodes: exactness, replication, parts, ZooKeeper load.

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/pipeline"
)

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
