package ingest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/semaphore"
)

// item is one consumed message, decoded into a row or destined for the dead-letter topic.
// The batch loop decodes it: straight into the batch's columns, with no row in between.
type item struct {
	stream *pipeline.StreamConfig
	msg    kafka.Message
	seen   *dedupWindow          // the partition's window of ingested ids
	err    *pipeline.DecodeError // set when the message is dead-lettered without decoding (oversize)
	landed bool                  // already in ClickHouse, from a batch that was not recorded
	row    landedRow             // of a landed message, what the duplicate window needs
}

func (w *Worker) budget() int64 { return 2 * int64(w.cfg.Batch.MaxBytes) }

// weight is what a message costs of the budget; capped so that one message larger than
// the budget still passes.
func (w *Worker) weight(m *kafka.Message) int64 {
	return min(int64(len(m.Value)+len(m.Key))+64, w.budget())
}

// A reader hands messages to the batch loop in chunks, so that the channel and the
// budget are paid for per chunk rather than per message. A chunk goes when it holds
// chunkItems messages or an eighth of the budget, or chunkLinger after its first message
// when no more arrive.
const (
	chunkItems  = 256
	chunkLinger = 5 * time.Millisecond
)

// Chunks go back to a pool once the batch loop has added their items to a batch: at
// 150-odd bytes of pointers per message, allocating them made up most of what the
// garbage collector scanned of the worker's own allocations.
var chunks = sync.Pool{New: func() any { return new([]item) }}

func newChunk() []item {
	c := *chunks.Get().(*[]item)
	if c == nil {
		c = make([]item, 0, chunkItems)
	}
	return c
}

// recycle returns a chunk whose items the batch loop is done with. The items are not
// cleared: clearing pointers costs a write barrier each while the collector marks, and
// the next use overwrites them. What they keep alive meanwhile is bounded by the chunks
// in flight, and the pool lets go of idle chunks within two collections.
func recycle(c []item) {
	if cap(c) != chunkItems {
		return
	}
	c = c[:0]
	chunks.Put(&c)
}

func (w *Worker) readPartition(ctx, gctx context.Context, topic string, partition int, offset int64, out chan<- []item, budget *semaphore.Weighted) {
	ctx, cancel := connect.MergeDone(ctx, gctx)
	defer cancel()
	stream := w.streams[topic]
	var rp resumePoint
	if err := w.retry(ctx, StageRecover, fmt.Sprintf("recovering %s/%d from the ledger", topic, partition), func() error {
		shards, err := w.readers(ctx, stream.Table(), pipeline.LedgerTable)
		if err != nil {
			return err
		}
		rp, err = recoverPartition(ctx, shards, w.cfg.ClickHouse.Database, stream, topic, partition)
		return err
	}); err != nil {
		return
	}
	if rp.offset >= 0 {
		offset = rp.offset
	}
	var seen *dedupWindow
	if err := w.retry(ctx, StageRecover, fmt.Sprintf("loading the duplicate window of %s/%d", topic, partition), func() error {
		shards, err := w.readers(ctx, stream.Table())
		if err != nil {
			return err
		}
		seen, err = loadDedupWindow(ctx, shards, w.cfg.ClickHouse.Database, stream, partition, rp.offset, stream.DedupWindow.Duration,
			w.cfg.MaxDedupIDs, w.metrics.DedupEvicted.WithLabelValues(w.cfg.Loop, stream.Name))
		return err
	}); err != nil {
		return
	}
	if len(rp.landed) > 0 {
		w.log.Info("resuming past rows of an unrecorded batch", "topic", topic, "partition", partition,
			"from", offset, "alreadyLanded", len(rp.landed))
	}
	f := newFetcher(w.kafkaSec.Dialer(), w.cfg.Kafka.Brokers, topic, partition, offset)
	f.skipped = func(from, to int64) {
		// Retention deleted these messages before anything read them: nothing can bring
		// them back, but nobody should learn it from a gap in the data.
		w.metrics.Errors.WithLabelValues(w.cfg.Loop, StageFetch).Inc()
		w.log.Error(nil, "messages were deleted by the topic's retention before they were read; skipping them",
			"topic", topic, "partition", partition, "from", from, "to", to, "messages", to-from)
	}
	stop := context.AfterFunc(ctx, f.interrupt)
	defer stop()
	defer f.interrupt()
	pr := w.newPartitionReader(stream, partition, rp, seen)
	defer w.metrics.Lag.DeleteLabelValues(w.cfg.Loop, topic, strconv.Itoa(partition))
	defer func() {
		pr.count()
		// Hand what was read to the batch loop, which flushes and commits it on its way
		// out; if it has already gone, the messages are read again later.
		if len(pr.chunk) > 0 {
			select {
			case out <- pr.chunk:
			case <-time.After(time.Second):
			}
		}
	}()
	// lingerEnd is when the pending chunk goes even if not full: chunkLinger after its
	// first message.
	var lingerEnd time.Time
	send := func() bool {
		pr.count()
		if len(pr.chunk) == 0 {
			return true
		}
		if err := budget.Acquire(ctx, pr.weight); err != nil {
			return false
		}
		select {
		case out <- pr.chunk:
		case <-ctx.Done():
			return false
		}
		pr.handOver()
		return true
	}
	accept := func(m kafka.Message) bool {
		if len(pr.chunk) == 0 {
			lingerEnd = time.Now().Add(chunkLinger)
		}
		pr.take(m)
		return !pr.full() || send()
	}
	failures := 0
	for {
		wait := fetchMaxWait
		if len(pr.chunk) > 0 {
			wait = min(wait, time.Until(lingerEnd))
		}
		err := f.fetch(ctx, wait, accept)
		if ctx.Err() != nil || errors.Is(err, errStopReading) {
			return
		}
		if len(pr.chunk) > 0 && !time.Now().Before(lingerEnd) && !send() {
			return
		}
		if err == nil {
			failures = 0
			continue
		}
		if !send() {
			return
		}
		w.metrics.Errors.WithLabelValues(w.cfg.Loop, StageFetch).Inc()
		w.log.Error(err, "fetching", "topic", topic, "partition", partition, "offset", f.offset)
		failures++
		if !connect.Sleep(ctx, min(100*time.Millisecond<<min(failures-1, 4), time.Second)) {
			return
		}
	}
}

// partitionReader is a reader's per-message work: it turns fetched messages into items
// and gathers them into chunks for the batch loop. It counts received events and bytes,
// and sets the lag, once per chunk rather than per message: each is an atomic operation
// on a shared counter.
type partitionReader struct {
	w           *Worker
	stream      *pipeline.StreamConfig
	seen        *dedupWindow
	rp          resumePoint
	chunk       []item
	weight      int64 // of the chunk
	chunkWeight int64

	received, receivedBytes prometheus.Counter
	lag                     prometheus.Gauge
	// Not yet added to the counters: events and bytes received, and the last lag seen.
	events, bytes, lastLag int64
	lagSeen                bool
}

func (w *Worker) newPartitionReader(stream *pipeline.StreamConfig, partition int, rp resumePoint, seen *dedupWindow) *partitionReader {
	loop := w.cfg.Loop
	return &partitionReader{
		w: w, stream: stream, seen: seen, rp: rp, chunkWeight: w.budget() / 8,
		received:      w.metrics.ReceivedEvents.WithLabelValues(loop, stream.Name),
		receivedBytes: w.metrics.ReceivedBytes.WithLabelValues(loop, stream.Name),
		lag:           w.metrics.Lag.WithLabelValues(loop, stream.Topic, strconv.Itoa(partition)),
	}
}

// take adds a fetched message to the chunk.
func (pr *partitionReader) take(m kafka.Message) {
	w := pr.w
	pr.events++
	pr.bytes += int64(len(m.Value))
	pr.lastLag, pr.lagSeen = m.HighWaterMark-m.Offset-1, true
	if pr.chunk == nil {
		pr.chunk = newChunk()
	}
	pr.chunk = append(pr.chunk, item{stream: pr.stream, msg: m, seen: pr.seen})
	it := &pr.chunk[len(pr.chunk)-1]
	if row, ok := pr.rp.landed[m.Offset]; ok {
		it.landed, it.row = true, row
		delete(pr.rp.landed, m.Offset)
		w.metrics.Discarded.WithLabelValues(w.cfg.Loop, pr.stream.Name, "already_landed").Inc()
	} else if len(m.Value) > w.cfg.MaxMessageBytes {
		it.err = &pipeline.DecodeError{Reason: pipeline.ReasonOversize, Err: fmt.Errorf("message of %d bytes exceeds the limit of %d", len(m.Value), w.cfg.MaxMessageBytes)}
	}
	pr.weight += w.weight(&m)
}

// full reports whether the chunk is due to go: chunkItems messages or an eighth of the
// budget.
func (pr *partitionReader) full() bool {
	return len(pr.chunk) >= chunkItems || pr.weight >= pr.chunkWeight
}

// count adds what was received since the last call to the counters.
func (pr *partitionReader) count() {
	if pr.events > 0 {
		pr.received.Add(float64(pr.events))
		pr.receivedBytes.Add(float64(pr.bytes))
		pr.events, pr.bytes = 0, 0
	}
	if pr.lagSeen {
		pr.lag.Set(float64(pr.lastLag))
		pr.lagSeen = false
	}
}

// handOver returns the chunk, counted, and starts a new one.
func (pr *partitionReader) handOver() []item {
	pr.count()
	chunk := pr.chunk
	pr.chunk, pr.weight = nil, 0
	return chunk
}
