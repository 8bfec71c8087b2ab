package ddl

import (
	"customerloop.dev/customerloop/pipeline"
)

// deadLetterColumns are the dead_letters table's columns; later versions only ever add
// to them. event_time is the message's event time when it could be read, else its Kafka
// timestamp, else when it was dead-lettered: the time a customer's period counts it in.
var deadLetterColumns = []pipeline.Column{
	{Name: "customer_id", Type: "String"},
	{Name: "stream", Type: "String"},
	{Name: "reason", Type: "String"},
	{Name: "source_topic", Type: "String"},
	{Name: "source_partition", Type: "Int32"},
	{Name: "source_offset", Type: "Int64"},
	{Name: "event_time", Type: "DateTime"},
	{Name: "dead_lettered_at", Type: "DateTime"},
}

// deadLettersDDL creates the dead_letters table. Its sort key leads with the customer,
// so that one customer's rows are a point read; the source position that follows makes
// it the ReplacingMergeTree's identity, so that a message dead-lettered again after a
// crash before the ledger collapses into one row when parts merge (readers still count
// distinct positions: merges happen when they happen). On a cluster the customer picks
// the shard, as for the raw tables.
//
// Retention: a stream's retention (ApplyRetention) does not apply here. The table holds
// no content of the messages, only who sent them, why they were refused and where they
// are in Kafka, one row per refused message; a customer's withdrawal deletes their rows
// (feedback.ApplyConsent), and the month partitions make dropping old ones cheap by hand.
func deadLettersDDL(ch pipeline.ClickHouseConfig) []pipeline.Statement {
	return tableStatements(ch, ch.Database, pipeline.DeadLettersTable, deadLetterColumns, "ReplacingMergeTree",
		"PARTITION BY toYYYYMM(event_time)\nORDER BY (customer_id, source_topic, source_partition, source_offset)", customerShardKey)
}

// DeadLetterInsertSQL is the INSERT a batch's dead letters are prepared with, its columns
// in deadLetterColumns' order.
func DeadLetterInsertSQL(db string) string {
	return "INSERT INTO " + pipeline.QualifiedTable(db, pipeline.DeadLettersTable) +
		" (`customer_id`, `stream`, `reason`, `source_topic`, `source_partition`, `source_offset`, `event_time`, `dead_lettered_at`)"
}
