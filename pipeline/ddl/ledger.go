package ddl

import (
	"customerloop.dev/customerloop/pipeline"
)

// ledgerColumns are the ledger's columns; later versions only ever add to them.
var ledgerColumns = []pipeline.Column{
	{Name: "topic", Type: "String"},
	{Name: "partition", Type: "Int32"},
	{Name: "first_offset", Type: "Int64"},
	{Name: "last_offset", Type: "Int64"},
	{Name: "messages", Type: "UInt64"},
	{Name: "dead_lettered", Type: "UInt64"},
	{Name: "duplicates", Type: "UInt64"},
	{Name: "batch_id", Type: "String"},
	{Name: "worker", Type: "String"},
	{Name: "written_at", Type: "DateTime"},
	{Name: "withheld", Type: "UInt64"},
}

// ledgerDDL creates the ledger. On a cluster it is sharded by partition, so a partition's
// entries sit on one shard beside nothing else they need to agree with.
func ledgerDDL(ch pipeline.ClickHouseConfig) []pipeline.Statement {
	return tableStatements(ch, ch.Database, pipeline.LedgerTable, ledgerColumns, "MergeTree",
		"ORDER BY (topic, partition, last_offset)", "cityHash64(topic, partition)")
}
