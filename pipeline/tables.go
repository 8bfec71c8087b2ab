package pipeline

// DigestTable records, per (loop, product, period), every digest version the publisher
// reserved and every one it sent, in the loop's database. It is what makes versions
// strictly increasing across restarts and across replicas taking over publication, and
// what tells whether a digest's content changed since it was last sent.
//
// The protocol of one publication round:
//
//  1. read the views and build the digests; keep those whose content hash differs from
//     the last one sent;
//  2. reserve their versions, max(version) + 1, with rows published = 0;
//  3. send them to the feedback topic, keyed by product;
//  4. record the ones the broker acknowledged, with rows published = 1.
//
// Publishing comes before recording: a crash between 3 and 4 leaves the content
// unrecorded, so the next round sends the same content again, under a higher version
// (the reserved one counts in max(version)). Consumers keep, per (loop, product, period),
// the message with the highest version; an equal content at a higher version is harmless.
// A crash between 2 and 3 only skips a version number. One publisher per loop at a time
// (the manager's leader) is assumed: two at once could reserve the same version.
const DigestTable = "feedback_digests"

// TrackingTable records, per (loop, product, customer), every time the digest publisher
// found the customer's tracking signal (feedback_tracking) newly outside the alert band
// (above or below it), and every time back inside, in the loop's database. It is what
// raises one Warning event per crossing, across restarts and replicas: a round reads
// each pair's latest record, announces the pairs outside now on another side than that
// record says (inside when there is none), and records them; a pair back inside is
// recorded too, so that its next crossing is announced again. Recording comes before
// announcing: a crash in between loses that event (the digests still carry the
// customer), never repeats it.
const TrackingTable = "feedback_tracking_crossings"

// LedgerTable records, per flushed batch and partition, the offsets whose rows are in
// ClickHouse. It lives in the loop's database beside the data it vouches for, and is the
// system of record for where ingestion stands: Kafka's committed offsets follow it (for
// lag monitoring) and are never trusted over it.
//
// The protocol, which needs no insert deduplication from the server:
//
//  1. a batch's rows go into each raw table in one insert per table;
//  2. then one insert into the ledger records each partition's offset span of the batch;
//  3. then offsets are committed to Kafka.
//
// When a partition is assigned, the worker resumes after the ledger's last offset for it.
// A crash between 1 and 2 leaves rows past that offset, possibly only some of them (an
// insert spanning several table partitions writes several parts); the worker reads which
// offsets are already there and skips exactly those. Every offset lands once.
const LedgerTable = "customerloop_ledger"

// DeadLettersTable records, in the loop's database, one row per dead-lettered message:
// whose it was (customer_id as the stream stores it: the HMAC when the stream hashes
// customer ids, empty when the message had no readable customer id), its stream, reason and
// source position, and the time it counts in. It is what a customer's statement and the
// customer API read of their dead letters; the dead-letter topic keeps the messages.
//
// Workers write a batch's rows after its raw rows and before its ledger entry, checking
// what landed before a retry. A crash before the ledger makes the batch be read again
// and its dead letters written again: the table is a ReplacingMergeTree keyed by the
// source position, which merges collapse, and readers count distinct source positions,
// so a dead-lettered message counts once either way.
const DeadLettersTable = "dead_letters"

// Column is a column of a raw table.
type Column struct {
	Name string
	Type string // ClickHouse type
}

// dimensionTypes maps a declared dimension type to its ClickHouse column type. ClickHouse
// before 21.12 has no Bool; UInt8 holds 0/1 on every version.
var dimensionTypes = map[string]string{
	"String":   "String",
	"Int32":    "Int32",
	"Int64":    "Int64",
	"UInt32":   "UInt32",
	"UInt64":   "UInt64",
	"Float32":  "Float32",
	"Float64":  "Float64",
	"Bool":     "UInt8",
	"Date":     "Date",
	"DateTime": "DateTime",
}

// SourceColumns record where every raw row came from; the (topic, partition, offset)
// triple identifies a message. _produced_at_ms is the message's Kafka timestamp (Unix
// milliseconds), which the duplicate window runs on and is rebuilt from; rows written
// before it existed read 0 there.
var SourceColumns = []Column{
	{"_topic", "String"},
	{"_partition", "Int32"},
	{"_offset", "Int64"},
	{"_ingested_at", "DateTime"},
	{"_produced_at_ms", "Int64"},
}

func coreColumns(kind Kind) []Column {
	switch kind {
	case KindPlan:
		return []Column{
			{"plan_id", "String"},
			{"customer_id", "String"},
			{"product", "String"},
			{"period", "Date"},
			{"quantity", "Float64"},
			{"submitted_at", "DateTime"},
			{"confidence", "Nullable(Float64)"},
		}
	default:
		return []Column{
			{"event_id", "String"},
			{"customer_id", "String"},
			{"product", "String"},
			{"ts", "DateTime"},
			{"quantity", "Float64"},
		}
	}
}

// Statement is one idempotent DDL statement and the object it manages.
type Statement struct {
	Object string // database-qualified name, unquoted, for status and logs
	SQL    string
}
