package ingest

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/segmentio/kafka-go"
)

// benchUsageMessages are usage events shaped like the benchmark's (test/bench): about
// 300 bytes, 500 customers, 8 products, every id distinct.
func benchUsageMessages(topic string, n, partitions int) []kafka.Message {
	rng := rand.New(rand.NewPCG(1, 2))
	regions := []string{"eu-west-1", "us-east-1", "ap-south-1"}
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	out := make([]kafka.Message, n)
	for i := range out {
		v := fmt.Sprintf(`{"event_id":"evt-%012d","customer_id":"customer-%04d","product":"product-%d","ts":%d,"quantity":%d,"region":"%s","note":"%s"}`,
			i, rng.IntN(500), rng.IntN(8), base.Unix()+int64(i/50), 1+rng.IntN(100), regions[rng.IntN(3)],
			strings.Repeat("x", 130+rng.IntN(40)))
		out[i] = kafka.Message{Topic: topic, Partition: i % partitions, Offset: int64(i / partitions),
			HighWaterMark: int64(n / partitions), Value: []byte(v), Time: base.Add(time.Duration(i) * time.Microsecond)}
	}
	return out
}

// BenchmarkWorkerHotPath is the worker's per-message CPU without the network: a fetched
// message handed over by its partition's reader in chunks, decoded into the batch's
// columns, checked against the partition's duplicate window, and at each full batch the
// per-row metrics of a successful insert. One op is one message; every id is new, and
// the clock runs so that ids leave the window as in a steady stream.
func BenchmarkWorkerHotPath(b *testing.B) { benchWorkerHotPath(b, 1<<17, false) }

// BenchmarkWorkerHotPathFullWindow is BenchmarkWorkerHotPath at the cluster benchmark's
// rate: a million events a minute over 6 partitions, so each partition's window holds
// about 170k ids, too many for the CPU's caches. It starts timing once the windows are
// full.
func BenchmarkWorkerHotPathFullWindow(b *testing.B) { benchWorkerHotPath(b, 1<<20, true) }

var benchHotPathMessages = map[int][]kafka.Message{}

// hotPathWorker is a worker with a usage stream shaped like the benchmark's, enough of
// one for its batch loop's per-message work.
func hotPathWorker(tb testing.TB) (*Worker, *pipeline.StreamConfig) {
	cfg := pipeline.Config{
		Loop:       "bench/usage",
		Kafka:      pipeline.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}, Group: "bench"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: "127.0.0.1:9000", Database: "bench"},
		Streams: []pipeline.StreamConfig{{
			Name: "usage", Kind: pipeline.KindUsage, Topic: "bench.usage", DeadLetterTopic: "bench.usage.dlq",
			Mapping: pipeline.Mapping{EventID: "event_id", CustomerID: "customer_id", Product: "product", Timestamp: "ts", Quantity: "quantity"},
			Dimensions: []pipeline.Dimension{
				{Name: "region", Field: "region", Type: "String"},
				{Name: "note", Field: "note", Type: "String"},
			},
		}},
	}.WithDefaults()
	w := &Worker{cfg: cfg, metrics: NewMetrics(nil)}
	s := &w.cfg.Streams[0]
	d, err := NewDecoder(*s, WithLimits(cfg.Limits))
	if err != nil {
		tb.Fatal(err)
	}
	w.decoders, w.streams = map[string]*Decoder{s.Topic: d}, map[string]*pipeline.StreamConfig{s.Topic: s}
	return w, s
}

func benchWorkerHotPath(b *testing.B, messages int, warm bool) {
	const partitions = 6
	w, s := hotPathWorker(b)
	cfg := w.cfg
	msgs := benchHotPathMessages[messages]
	if msgs == nil {
		msgs = benchUsageMessages(s.Topic, messages, partitions)
		benchHotPathMessages[messages] = msgs
	}
	byPart := make([][]kafka.Message, partitions)
	for _, m := range msgs {
		byPart[m.Partition] = append(byPart[m.Partition], m)
	}
	next := make([]int, partitions)
	readers := make([]*partitionReader, partitions)
	for p := range readers {
		seen := newDedupWindow(s.DedupWindow.Duration)
		seen.max = cfg.MaxDedupIDs
		readers[p] = w.newPartitionReader(s, p, resumePoint{}, seen)
	}
	// The clock moves a little over a window per pass over the messages.
	tick := s.DedupWindow.Duration * 101 / 100 / time.Duration(len(byPart[0])*partitions)
	now := time.Now()
	bt := newBatch(w)
	run := func(n int) {
		for i := 0; i < n; {
			// A chunk of one partition's messages, as its reader hands it over.
			p := (i / chunkItems) % partitions
			r := readers[p]
			for ; i < n && !r.full(); i++ {
				r.take(byPart[p][next[p]])
				next[p] = (next[p] + 1) % len(byPart[p])
			}
			chunk := r.handOver()
			now = now.Add(tick * time.Duration(len(chunk)))
			bt.addAll(chunk, now)
			if bt.n >= cfg.Batch.MaxRows {
				c := bt.cols[s]
				w.observeInsert(s, c, c.n, c.bytes, time.Millisecond)
				bt.reset()
			}
		}
	}
	if warm {
		run(len(msgs))
	}
	b.SetBytes(int64(len(byPart[0][0].Value)))
	b.ReportAllocs()
	b.ResetTimer()
	run(b.N)
}

// presizeTestStrings are a batch's worth of string values of mixed lengths.
func presizeTestStrings() []string {
	strs := make([]string, 20_000)
	for i := range strs {
		strs[i] = strings.Repeat("x", 100+i%100)
	}
	return strs
}

// TestPresizeStringSizesColumn: after presizeString, appending the batch's strings to a
// clickhouse-go String column grows none of its buffers. Should clickhouse-go or ch-go
// stop sizing a decoded column exactly, this fails, and presizeString needs another way.
func TestPresizeStringSizesColumn(t *testing.T) {
	strs := presizeTestStrings()
	appendAllocs := func(presize bool) uint64 {
		var col column.String
		if presize {
			presizeString(&col, strs)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if _, err := col.Append(strs); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		if col.Rows() != len(strs) || col.Row(len(strs)-1, false) != strs[len(strs)-1] {
			t.Fatalf("the column holds %d rows, last %q", col.Rows(), col.Row(col.Rows()-1, false))
		}
		return after.Mallocs - before.Mallocs
	}
	without, with := appendAllocs(false), appendAllocs(true)
	// Append itself allocates the nulls it returns.
	if with > 2 || without <= with {
		t.Errorf("appending after presizeString made %d allocations (%d without it), want at most 2", with, without)
	}
}

func BenchmarkPresizeString(b *testing.B) {
	strs := presizeTestStrings()
	var col column.String
	b.ReportAllocs()
	for b.Loop() {
		presizeString(&col, strs)
	}
}
