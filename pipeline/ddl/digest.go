package ddl

import (
	"customerloop.dev/customerloop/pipeline"
)

var digestColumns = []pipeline.Column{
	{Name: "loop", Type: "String"},
	{Name: "product", Type: "String"},
	{Name: "period", Type: "Date"},
	{Name: "version", Type: "Int64"},
	{Name: "content_hash", Type: "String"},
	{Name: "published", Type: "UInt8"},
	{Name: "publisher", Type: "String"},
	{Name: "recorded_at", Type: "DateTime"},
}

// DigestTableStatement returns the statement that creates the digest table in ch's
// database; it is idempotent and plain MergeTree on a single server, so it works on every
// supported ClickHouse.
//
// On a cluster it is one ReplicatedMergeTree replica set spanning every node (its
// ZooKeeper path has no {shard}), not a Distributed pair: the table is tiny, and the
// publication protocol reads max(version) right after reserving versions, which a
// Distributed table's asynchronous inserts would not show yet, while a replicated table
// shows the connected node's own inserts at once.
func DigestTableStatement(ch pipeline.ClickHouseConfig) (pipeline.Statement, error) {
	db := ch.Database
	if err := pipeline.ValidIdent(db); err != nil {
		return pipeline.Statement{}, err
	}
	if ch.Cluster != "" {
		if err := pipeline.ValidIdent(ch.Cluster); err != nil {
			return pipeline.Statement{}, err
		}
	}
	engine := "MergeTree"
	if ch.Clustered() {
		engine = "ReplicatedMergeTree('/clickhouse/tables/all/customerloop/" + db + "/" + pipeline.DigestTable + "', '{replica}')"
	}
	return pipeline.Statement{Object: db + "." + pipeline.DigestTable,
		SQL: createTableDDL(db, pipeline.DigestTable, digestColumns, ch.OnCluster()) + "ENGINE = " + engine + "\nORDER BY (loop, product, period, version)"}, nil
}
