package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/semaphore"
)

// batchLoop owns the generation's batch. It flushes on size or age and, when the
// generation or the worker ends, flushes what it holds and commits before returning.
func (w *Worker) batchLoop(ctx, gctx context.Context, gen *kafka.Generation, items chan []item, readers *sync.WaitGroup, budget *semaphore.Weighted) {
	// Two batches take turns: the loop decodes into one while a flusher writes the other,
	// so that decoding goes on during an insert. The flusher writes one batch at a time,
	// in order, and after a failed one writes nothing more: a later batch recorded in the
	// ledger before an earlier one would hide the earlier one's offsets.
	free := make(chan *batch, 2)
	free <- newBatch(w)
	free <- newBatch(w)
	full := make(chan *batch)
	failed, flusherDone := make(chan struct{}), make(chan struct{})
	// The flusher writes with a context of its own: when the worker stops or the
	// generation ends, the batch being written, those handed over and finish's last one
	// are still written and committed, within half the rebalance timeout of the stop,
	// instead of being abandoned to be read again by the partitions' next owner.
	// The grace starts at the stop itself, not where the loop notices it: the loop may be
	// waiting on the flusher then.
	flushCtx, cancelFlush := context.WithCancel(context.Background())
	defer cancelFlush()
	stopped, cancelStopped := connect.MergeDone(ctx, gctx)
	defer cancelStopped()
	context.AfterFunc(stopped, func() { time.AfterFunc(w.cfg.Kafka.RebalanceTimeout.Duration/2, cancelFlush) })
	go func() {
		defer close(flusherDone)
		for fb := range full {
			if err := w.flush(flushCtx, gen, fb); err != nil {
				w.log.Error(err, "flush abandoned; the batch will be read again", "messages", fb.n)
				close(failed)
				return
			}
			budget.Release(fb.held)
			fb.reset()
			free <- fb
		}
	}()
	// endFlusher ends the flusher once it has written what it holds, and reports whether
	// every batch it was given was written.
	endFlusher := func() bool {
		close(full)
		<-flusherDone
		select {
		case <-failed:
			return false
		default:
			return true
		}
	}
	b := <-free
	// swap gives the filled batch to the flusher and takes the other one, waiting for its
	// write to end if need be.
	swap := func() bool {
		b.settle() // the flusher must find no row whose id is not yet checked
		if b.n == 0 {
			return true
		}
		select {
		case full <- b:
		case <-failed:
			return false
		}
		select {
		case b = <-free:
			return true
		case <-failed:
			return false
		}
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case chunk := <-items:
			now := time.Now()
			for i := range chunk {
				if b.n == 0 {
					timer.Reset(w.cfg.Batch.MaxWait.Duration)
				}
				b.add(&chunk[i], now)
				b.held += w.weight(&chunk[i].msg)
				if b.n >= w.cfg.Batch.MaxRows || b.held >= int64(w.cfg.Batch.MaxBytes) {
					timer.Stop()
					if !swap() {
						endFlusher()
						return
					}
				}
			}
			b.settle()
			recycle(chunk)
		case <-timer.C:
			if !swap() {
				endFlusher()
				return
			}
		case <-failed:
			endFlusher()
			return
		case <-ctx.Done():
			if endFlusher() {
				w.finish(flushCtx, gen, items, readers, b)
			}
			return
		case <-gctx.Done():
			if endFlusher() {
				w.finish(flushCtx, gen, items, readers, b)
			}
			return
		}
	}
}

// finish drains what the readers already handed over, then flushes and commits it, so
// that a revoke or a shutdown leaves nothing decoded and unwritten behind.
//
// ctx is the flusher's: it ends half the rebalance timeout after the stop, so that the
// partitions do not move while we write.
func (w *Worker) finish(ctx context.Context, gen *kafka.Generation, items chan []item, readers *sync.WaitGroup, b *batch) {
	done := make(chan struct{})
	go func() { readers.Wait(); close(done) }()
	now := time.Now()
	for waiting := true; waiting; {
		select {
		case chunk := <-items:
			b.addAll(chunk, now)
		case <-done:
			waiting = false
		}
	}
	// The readers have returned: nothing is sent any more.
	for len(items) > 0 {
		b.addAll(<-items, now)
	}
	if b.n == 0 {
		return
	}
	if err := w.flush(ctx, gen, b); err != nil {
		w.log.Error(err, "final flush failed; the batch will be read again", "messages", b.n)
	}
}

// flush writes the batch's rows, its dead letters' rows and dead letters, records its
// offsets in the ledger, then commits them to Kafka. Writes are retried with backoff until they succeed or ctx ends;
// nothing is recorded or committed for data that is not written.
func (w *Worker) flush(ctx context.Context, gen *kafka.Generation, b *batch) error {
	start := time.Now()
	db, loop := w.cfg.ClickHouse.Database, w.cfg.Loop
	batchID := fmt.Sprintf("%016x", rand.Uint64())
	for s, c := range b.cols {
		if c.n == 0 {
			continue
		}
		rows := c.n
		var took time.Duration
		if err := w.retryWrite(ctx, StageInsert, "insert "+s.Table(), s.Table(), func(shards []shardReader) (bool, error) {
			err := withoutLanded(ctx, shards, db, s, c)
			return c.n == 0, err
		}, func() error {
			ictx, err := w.insertContext(ctx, batchID, s.Table(), c.n)
			if err != nil {
				return err
			}
			t0 := time.Now()
			err = insertColumns(ictx, w.ch, db, *s, c)
			took = time.Since(t0)
			return err
		}); err != nil {
			return err
		}
		w.observeInsert(s, c, rows, c.bytes, took)
	}
	if len(b.deadRows) > 0 {
		// Before the ledger: a crash after this insert and before the ledger makes the
		// batch be read again and these rows be written again, which readers of the
		// table count once (see pipeline.DeadLettersTable); a crash before it leaves no
		// row for a message the ledger says was dead-lettered.
		rows := b.deadRows
		if err := w.retryWrite(ctx, StageDeadLetter, "insert "+pipeline.DeadLettersTable, pipeline.DeadLettersTable, func(shards []shardReader) (bool, error) {
			var err error
			rows, err = deadRowsNotLanded(ctx, shards, db, rows)
			return len(rows) == 0, err
		}, func() error {
			ictx, err := w.insertContext(ctx, batchID, pipeline.DeadLettersTable, len(rows))
			if err != nil {
				return err
			}
			return writeDeadRows(ictx, w.ch, db, rows)
		}); err != nil {
			return err
		}
	}
	if len(b.dead) > 0 {
		if err := w.retry(ctx, StageDeadLetter, "dead-letter", func() error {
			return w.dlq.WriteMessages(ctx, b.dead...)
		}); err != nil {
			return err
		}
		for i, m := range b.dead {
			w.metrics.DeadLettered.WithLabelValues(loop, w.streams[sourceTopic(m)].Name, string(b.reasons[i])).Inc()
		}
	}
	spans := b.spans
	if err := w.retryWrite(ctx, StageLedger, "ledger", pipeline.LedgerTable, func(shards []shardReader) (bool, error) {
		done, err := ledgerRecorded(ctx, shards, db, batchID)
		if err != nil {
			return false, err
		}
		spans = unrecorded(b.spans, done)
		return len(spans) == 0, nil
	}, func() error {
		ictx, err := w.insertContext(ctx, batchID, pipeline.LedgerTable, len(spans))
		if err != nil {
			return err
		}
		return writeLedger(ictx, w.ch, db, batchID, w.name, spans, time.Now().UTC().Truncate(time.Second))
	}); err != nil {
		return err
	}
	if err := gen.CommitOffsets(b.commitOffsets()); err != nil {
		// The ledger holds the truth; the commit only serves lag monitoring.
		w.metrics.Errors.WithLabelValues(loop, StageCommit).Inc()
		w.log.Error(err, "committing offsets after the ledger")
	}
	w.log.V(1).Info("flushed", "messages", b.n, "deadLettered", len(b.dead), "took", time.Since(start))
	return nil
}

// retryWrite retries write to table like retry, but before each attempt after the first
// it calls landed with the table's readers: a failed insert may have landed all the same,
// and writing it again would store it twice. landed drops from the write what is already
// there and reports whether nothing is left.
func (w *Worker) retryWrite(ctx context.Context, stage, what, table string, landed func([]shardReader) (bool, error), write func() error) error {
	retried := false
	return w.retry(ctx, stage, what, func() error {
		if retried {
			shards, err := w.readers(ctx, table)
			if err != nil {
				return err
			}
			if done, err := landed(shards); err != nil || done {
				return err
			}
		}
		retried = true
		return write()
	})
}

// observeInsert records a successful insert: events and bytes sent, batch size, insert
// time, and each row's freshness by the event's own clock and by the broker's.
func (w *Worker) observeInsert(s *pipeline.StreamConfig, c *columns, rows, bytes int, took time.Duration) {
	loop := w.cfg.Loop
	w.metrics.SentEvents.WithLabelValues(loop, s.Name).Add(float64(rows))
	w.metrics.SentBytes.WithLabelValues(loop, s.Name).Add(float64(bytes))
	w.metrics.BatchRows.WithLabelValues(loop, s.Name).Observe(float64(rows))
	w.metrics.InsertSeconds.WithLabelValues(loop, s.Name).Observe(took.Seconds())
	now := time.Now()
	byEvent, byReceive := w.metrics.Freshness.WithLabelValues(loop, s.Name, "event"), w.metrics.Freshness.WithLabelValues(loop, s.Name, "receive")
	events := c.cols[ddl.EventTimeColumn(s.Kind)].i64 // DateTime, Unix seconds
	nowSec, nowNano := float64(now.Unix()), now.UnixNano()
	for i := range c.n {
		byEvent.Observe(nowSec - float64(events[i]))
		byReceive.Observe(float64(nowNano-c.received[i]) / 1e9)
	}
}

// sourceTopic reads the source topic a dead letter carries.
func sourceTopic(m kafka.Message) string {
	for _, h := range m.Headers {
		if h.Key == HeaderSourceTopic {
			return string(h.Value)
		}
	}
	return ""
}
