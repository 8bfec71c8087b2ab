package ingest

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are a worker's Prometheus instruments, named after Vector's component
// specification: what was received, what was sent on (inserted), what was dead-lettered
// or discarded and why, errors by stage, and batches instrumented per event. Every series
// carries the loop, so that one registry serves the workers of many loops.
type Metrics struct {
	ReceivedEvents *prometheus.CounterVec   // loop, stream
	ReceivedBytes  *prometheus.CounterVec   // loop, stream
	SentEvents     *prometheus.CounterVec   // loop, stream
	SentBytes      *prometheus.CounterVec   // loop, stream
	DeadLettered   *prometheus.CounterVec   // loop, stream, reason
	Discarded      *prometheus.CounterVec   // loop, stream, reason
	DedupEvicted   *prometheus.CounterVec   // loop, stream
	Errors         *prometheus.CounterVec   // loop, stage
	BatchRows      *prometheus.HistogramVec // loop, stream
	InsertSeconds  *prometheus.HistogramVec // loop, stream
	Lag            *prometheus.GaugeVec     // loop, topic, partition
	Freshness      *prometheus.HistogramVec // loop, stream, clock
}

// Error stages.
const (
	StageFetch      = "fetch"
	StageRecover    = "recover"
	StageInsert     = "insert"
	StageDeadLetter = "dead_letter"
	StageLedger     = "ledger"
	StageCommit     = "commit"
	// StageReplicaSync: no replica of some shard could be synced for a read exactly-once
	// depends on (see replicas.go); the partition or batch waits.
	StageReplicaSync = "replica_sync"
)

// NewMetrics creates the instruments and registers them with reg; with a nil reg they
// count without being exported.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "customerloop", Name: name, Help: help}, labels)
	}
	m := &Metrics{
		ReceivedEvents: counter("received_events_total", "Messages read from Kafka.", "loop", "stream"),
		ReceivedBytes:  counter("received_event_bytes_total", "Bytes of message values read from Kafka.", "loop", "stream"),
		SentEvents:     counter("sent_events_total", "Rows inserted into ClickHouse.", "loop", "stream"),
		SentBytes:      counter("sent_event_bytes_total", "Bytes of the messages whose rows were inserted.", "loop", "stream"),
		DeadLettered:   counter("dead_lettered_events_total", "Messages sent to the dead-letter topic, by reason.", "loop", "stream", "reason"),
		Discarded: counter("discarded_events_total",
			"Messages not inserted: their rows are already in ClickHouse after a crash (already_landed), a producer's retry of an id (duplicate), or the customer withdrew consent (consent_withdrawn).", "loop", "stream", "reason"),
		DedupEvicted: counter("dedup_evicted_ids_total",
			"Ids dropped from a full duplicate window before their time (see maxDedupIDs): a retry of one of them is no longer recognised.", "loop", "stream"),
		Errors: counter("errors_total", "Errors by stage; each is retried.", "loop", "stage"),
		BatchRows: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "customerloop", Name: "batch_rows", Help: "Rows per insert.",
			Buckets: prometheus.ExponentialBuckets(10, 4, 8),
		}, []string{"loop", "stream"}),
		InsertSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "customerloop", Name: "insert_duration_seconds", Help: "Time of one insert into a raw table.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"loop", "stream"}),
		Lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "customerloop", Name: "consumer_lag_messages",
			Help: "Messages behind the partition's high watermark, as of the last message read.",
		}, []string{"loop", "topic", "partition"}),
		Freshness: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "customerloop", Name: "freshness_seconds",
			Help:    "From the event's own time (clock=event) or the broker's receive time (clock=receive) to its insert.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400},
		}, []string{"loop", "stream", "clock"}),
	}
	if reg != nil {
		reg.MustRegister(m.Collectors()...)
	}
	return m
}

// Collectors returns every metric of the set.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.ReceivedEvents, m.ReceivedBytes, m.SentEvents, m.SentBytes, m.DeadLettered,
		m.Discarded, m.DedupEvicted, m.Errors, m.BatchRows, m.InsertSeconds, m.Lag, m.Freshness}
}
