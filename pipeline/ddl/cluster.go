package ddl

import (
	"customerloop.dev/customerloop/pipeline"
)

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
func tableStatements(ch pipeline.ClickHouseConfig, db, table string, cols []pipeline.Column, engine, keys, shardKey string) []pipeline.Statement {
	if !ch.Clustered() {
		return []pipeline.Statement{{Object: db + "." + table, SQL: createTableDDL(db, table, cols, "") + "ENGINE = " + engine + "\n" + keys}}
	}
	local := pipeline.LocalTable(table)
	return []pipeline.Statement{
		{Object: db + "." + local, SQL: createTableDDL(db, local, cols, ch.OnCluster()) +
			"ENGINE = Replicated" + engine + "(" + replicatedPath(db, local) + ", '{replica}')\n" + keys},
		distributedStatement(ch, db, table, cols, shardKey),
	}
}

// distributedStatement creates, on every node, the Distributed table of a pair.
func distributedStatement(ch pipeline.ClickHouseConfig, db, table string, cols []pipeline.Column, shardKey string) pipeline.Statement {
	return pipeline.Statement{Object: db + "." + table, SQL: createTableDDL(db, table, cols, ch.OnCluster()) +
		"ENGINE = Distributed('" + ch.Cluster + "', '" + db + "', '" + pipeline.LocalTable(table) + "', " + shardKey + ")"}
}
