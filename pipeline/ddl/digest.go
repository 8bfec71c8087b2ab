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
	return publisherTableStatement(ch, pipeline.DigestTable, digestColumns, "loop, product, period, version")
}

var trackingColumns = []pipeline.Column{
	{Name: "loop", Type: "String"},
	{Name: "product", Type: "String"},
	{Name: "customer_id", Type: "String"},
	// side is where the customer went: 1 above the alert band (usage keeps exceeding the
	// plans), -1 below it, 0 back inside.
	{Name: "side", Type: "Int8"},
	{Name: "tracking_signal", Type: "Nullable(Float64)"},
	// since is the first completed period of the stretch outside (a crossing), or the
	// last completed period (back inside).
	{Name: "since", Type: "Date"},
	// version orders a pair's records: the recording time in nanoseconds.
	{Name: "version", Type: "Int64"},
	{Name: "publisher", Type: "String"},
	{Name: "recorded_at", Type: "DateTime"},
}

// TrackingTableStatement returns the statement that creates the table of tracking-signal
// crossings (pipeline.TrackingTable) in ch's database, made like the digest table.
func TrackingTableStatement(ch pipeline.ClickHouseConfig) (pipeline.Statement, error) {
	return publisherTableStatement(ch, pipeline.TrackingTable, trackingColumns, "loop, product, customer_id, version")
}

// publisherTableStatement creates one of the digest publisher's own tables: plain
// MergeTree on a single server, one replica set spanning every node of a cluster.
func publisherTableStatement(ch pipeline.ClickHouseConfig, table string, cols []pipeline.Column, orderBy string) (pipeline.Statement, error) {
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
		engine = "ReplicatedMergeTree('/clickhouse/tables/all/customerloop/" + db + "/" + table + "', '{replica}')"
	}
	return pipeline.Statement{Object: db + "." + table,
		SQL: createTableDDL(db, table, cols, ch.OnCluster()) + "ENGINE = " + engine + "\nORDER BY (" + orderBy + ")"}, nil
}

var channelColumns = []pipeline.Column{
	{Name: "loop", Type: "String"},
	{Name: "customer_id", Type: "String"},
	// kind is "statement" or "receipt".
	{Name: "kind", Type: "String"},
	// period is a statement's period; a receipt's completion day.
	{Name: "period", Type: "Date"},
	{Name: "version", Type: "Int64"},
	// content_hash is a statement's content; a receipt's audit id.
	{Name: "content_hash", Type: "String"},
	{Name: "published", Type: "UInt8"},
	{Name: "publisher", Type: "String"},
	{Name: "recorded_at", Type: "DateTime"},
}

// ChannelTableStatement returns the statement that creates the customer channel's table
// (pipeline.ChannelTable) in ch's database, made like the digest table and ordered by
// customer, so that one customer's records are a point read and a point delete.
func ChannelTableStatement(ch pipeline.ClickHouseConfig) (pipeline.Statement, error) {
	return publisherTableStatement(ch, pipeline.ChannelTable, channelColumns, "loop, customer_id, kind, period, version")
}
