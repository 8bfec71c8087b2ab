package pipeline

// On a ClickHouse cluster (ClickHouseConfig.Cluster set) every table CustomerLoop owns is
// a pair:
//
//   - <name>_local: a Replicated* table on every node, one replica set per shard
//     ({shard}/{replica} macros), holding that shard's rows;
//   - <name>: a Distributed table over <name>_local, the name everything writes to and
//     reads from, exactly as on a single server.
//
// Views are created on every node over the Distributed names; materialized views are
// created on every node over the local raw tables, so each shard aggregates its own rows.
// Without a cluster, <name> is a plain MergeTree table and nothing else changes.

// LocalSuffix is appended to a table's name for its per-shard Replicated table.
const LocalSuffix = "_local"

// LocalTable is the name of the per-shard table behind the Distributed table name.
func LocalTable(name string) string { return name + LocalSuffix }

// Clustered reports whether the loop's objects live on a ClickHouse cluster.
func (c ClickHouseConfig) Clustered() bool { return c.Cluster != "" }

// OnCluster is the ON CLUSTER clause of a DDL statement, or "" on a single server.
func (c ClickHouseConfig) OnCluster() string {
	if c.Cluster == "" {
		return ""
	}
	return " ON CLUSTER " + QuoteIdent(c.Cluster)
}

// replicatedPath is the ZooKeeper path of a local table's replica set on one shard. The
// names in it are validated identifiers, so they are safe inside a string literal.
func replicatedPath(db, local string) string {
	return "'/clickhouse/tables/{shard}/customerloop/" + db + "/" + local + "'"
}

// tableStatements returns the DDL of one of the loop's tables. engine is a MergeTree
// family engine ("MergeTree", "AggregatingMergeTree") and keys what follows the engine
// (PARTITION BY, ORDER BY). On a single server that is one plain table. On a cluster it is
// the Replicated<engine> table <table>_local on every node and the Distributed table
// <table> over it, sharded by shardKey (an expression over the table's columns: the
// customer where the table has one, so that a customer's rows stay on one shard).
func tableStatements(ch ClickHouseConfig, db, table string, cols []Column, engine, keys, shardKey string) []Statement {
	if !ch.Clustered() {
		return []Statement{{Object: db + "." + table, SQL: createTableDDL(db, table, cols, "") + "ENGINE = " + engine + "\n" + keys}}
	}
	local := LocalTable(table)
	on := ch.OnCluster()
	return []Statement{
		{Object: db + "." + local, SQL: createTableDDL(db, local, cols, on) +
			"ENGINE = Replicated" + engine + "(" + replicatedPath(db, local) + ", '{replica}')\n" + keys},
		{Object: db + "." + table, SQL: createTableDDL(db, table, cols, on) +
			"ENGINE = Distributed('" + ch.Cluster + "', '" + db + "', '" + local + "', " + shardKey + ")"},
	}
}
