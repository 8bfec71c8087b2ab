package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/semaphore"
)

// Worker runs one loop's ingestion: a member of the loop's consumer group that reads its
// assigned partitions, decodes, batches, inserts into ClickHouse and commits offsets only
// after the batch is written.
type Worker struct {
	cfg      Config
	log      logr.Logger
	decoders map[string]*Decoder      // by topic
	streams  map[string]*StreamConfig // by topic
	dlq      *kafka.Writer
	kafkaSec kafkaSecurity
	ch       driver.Conn
	name     string // identifies the worker in the ledger
	metrics  *Metrics
	// replicas reaches every replica for the reads exactly-once depends on; nil without a
	// cluster. features is read from the server at the first insert on a cluster.
	replicas *replicaSet
	features atomic.Pointer[ServerFeatures]
	// consent is the consent state the current generation ingests under; nil without
	// a consent stream.
	consent atomic.Pointer[ConsentState]
	// running counts the goroutines of the current generation. kafka-go runs a function
	// started on a generation that has already ended without waiting for it, so one
	// generation's readers and batch loop could outlive it and overlap the next one's:
	// they share the decoders and the duplicate windows. Each generation waits for them.
	running sync.WaitGroup
}

// NewWorker validates the config and connects to ClickHouse. Metrics may be nil.
func NewWorker(ctx context.Context, cfg Config, log logr.Logger, metrics *Metrics) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid pipeline config: %w", err)
	}
	host, _ := os.Hostname()
	w := &Worker{
		cfg:      cfg,
		log:      log,
		decoders: map[string]*Decoder{},
		streams:  map[string]*StreamConfig{},
		name:     fmt.Sprintf("%s/%d", host, os.Getpid()),
		metrics:  metrics,
	}
	if w.metrics == nil {
		w.metrics = NewMetrics(nil)
	}
	// Export every stream's counters from the start, at zero.
	for _, s := range cfg.Streams {
		w.metrics.ReceivedEvents.WithLabelValues(cfg.Loop, s.Name)
		w.metrics.ReceivedBytes.WithLabelValues(cfg.Loop, s.Name)
		w.metrics.SentEvents.WithLabelValues(cfg.Loop, s.Name)
		w.metrics.SentBytes.WithLabelValues(cfg.Loop, s.Name)
	}
	for i := range cfg.Streams {
		s := &w.cfg.Streams[i]
		d, err := NewDecoder(*s, WithHMACKey(cfg.HMACKey), WithLimits(cfg.Limits))
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", s.Name, err)
		}
		w.decoders[s.Topic], w.streams[s.Topic] = d, s
	}
	sec, err := cfg.Kafka.security()
	if err != nil {
		return nil, err
	}
	w.kafkaSec = sec
	ch, err := OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		return nil, err
	}
	w.ch = ch
	if cfg.ClickHouse.Clustered() {
		w.replicas = newReplicaSet(cfg.ClickHouse, ch)
	}
	w.dlq = &kafka.Writer{
		Addr:         kafka.TCP(cfg.Kafka.Brokers...),
		Transport:    sec.transport(),
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: 10 * time.Millisecond,
		// Dead-letter topics are created on demand where the broker allows it.
		AllowAutoTopicCreation: true,
	}
	return w, nil
}

// Close releases the worker's connections.
func (w *Worker) Close() error {
	errs := []error{w.dlq.Close(), w.ch.Close()}
	if w.replicas != nil {
		errs = append(errs, w.replicas.close())
	}
	return errors.Join(errs...)
}

// Run consumes until ctx is cancelled, then flushes what it holds, commits and leaves the
// group. It returns nil after a clean stop.
func (w *Worker) Run(ctx context.Context) error {
	topics := make([]string, 0, len(w.streams))
	for t := range w.streams {
		topics = append(topics, t)
	}
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                    w.cfg.Kafka.Group,
		Brokers:               w.cfg.Kafka.Brokers,
		Dialer:                w.kafkaSec.dialer(),
		Topics:                topics,
		StartOffset:           kafka.FirstOffset,
		WatchPartitionChanges: true,
		JoinGroupBackoff:      time.Second,
		HeartbeatInterval:     w.cfg.Kafka.SessionTimeout.Duration / 3,
		SessionTimeout:        w.cfg.Kafka.SessionTimeout.Duration,
		RebalanceTimeout:      w.cfg.Kafka.RebalanceTimeout.Duration,
	})
	if err != nil {
		return fmt.Errorf("joining consumer group %s: %w", w.cfg.Kafka.Group, err)
	}
	w.log.Info("worker started", "group", w.cfg.Kafka.Group, "topics", topics)

	for {
		gen, err := group.Next(ctx)
		switch {
		case ctx.Err() != nil:
			// The loop's only exit. Close ends the generation; its functions flush and
			// commit before it returns.
			err := group.Close()
			w.running.Wait()
			w.log.Info("worker stopped")
			if errors.Is(err, kafka.ErrGroupClosed) {
				return nil
			}
			return err
		case errors.Is(err, kafka.RebalanceInProgress):
			// The ordinary course of a member joining or leaving: rejoin at once.
			w.log.V(1).Info("consumer group rebalancing")
			continue
		case err != nil:
			w.log.Error(err, "consumer group: waiting for the next generation")
			sleep(ctx, time.Second)
			continue
		}
		w.runGeneration(ctx, gen)
	}
}

// item is one consumed message, decoded into a row or destined for the dead-letter topic.
// The batch loop decodes it: straight into the batch's columns, with no row in between.
type item struct {
	stream *StreamConfig
	msg    kafka.Message
	seen   *dedupWindow // the partition's window of ingested ids
	err    *DecodeError // set when the message is dead-lettered without decoding (oversize)
	landed bool         // already in ClickHouse, from a batch that was not recorded
	row    landedRow    // of a landed message, what the duplicate window needs
}

func (w *Worker) runGeneration(ctx context.Context, gen *kafka.Generation) {
	w.running.Wait()
	if !w.loadConsent(ctx) {
		return
	}
	start := func(fn func(context.Context)) {
		w.running.Add(1)
		gen.Start(func(gctx context.Context) {
			defer w.running.Done()
			fn(gctx)
		})
	}
	items := make(chan []item, 4096/chunkItems)
	// Bytes read but not yet written; readers wait when it is spent.
	budget := semaphore.NewWeighted(w.budget())
	var readers sync.WaitGroup
	assigned := 0
	for topic, parts := range gen.Assignments {
		for _, p := range parts {
			assigned++
			readers.Add(1)
			start(func(gctx context.Context) {
				defer readers.Done()
				w.readPartition(ctx, gctx, topic, p.ID, p.Offset, items, budget)
			})
		}
	}
	w.log.Info("partitions assigned", "generation", gen.ID, "partitions", assigned)
	start(func(gctx context.Context) {
		w.batchLoop(ctx, gctx, gen, items, &readers, budget)
	})
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
	ctx, cancel := mergeDone(ctx, gctx)
	defer cancel()
	stream := w.streams[topic]
	var rp resumePoint
	if err := w.retry(ctx, StageRecover, fmt.Sprintf("recovering %s/%d from the ledger", topic, partition), func() error {
		shards, err := w.readers(ctx, stream.Table(), LedgerTable)
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
	f := newFetcher(w.kafkaSec.dialer(), w.cfg.Kafka.Brokers, topic, partition, offset)
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
	take := func(m kafka.Message) bool {
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
		err := f.fetch(ctx, wait, take)
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
		if !sleep(ctx, min(100*time.Millisecond<<min(failures-1, 4), time.Second)) {
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
	stream      *StreamConfig
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

func (w *Worker) newPartitionReader(stream *StreamConfig, partition int, rp resumePoint, seen *dedupWindow) *partitionReader {
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
		it.err = &DecodeError{Reason: ReasonOversize, Err: fmt.Errorf("message of %d bytes exceeds the limit of %d", len(m.Value), w.cfg.MaxMessageBytes)}
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

// batch accumulates each stream's rows as columns, dead letters, and each partition's
// offset span. The batch loop reuses one batch, and its columns' memory, from flush to
// flush.
type batch struct {
	w       *Worker
	held    int64 // budget taken by the batch's messages
	cols    map[*StreamConfig]*columns
	dead    []kafka.Message
	reasons []Reason // of each dead letter
	spans   map[topicPartition]*span
	n       int
	// last is the partition and stream of the last message added, whose span, columns
	// and decoder the next message most likely shares: a chunk is one partition's.
	last struct {
		tp     topicPartition
		sp     *span
		stream *StreamConfig
		c      *columns
		d      *Decoder
	}
	// pending are the rows added since the last settle whose ids are yet to be checked
	// against their partitions' windows; dupHashes, dupTimes and dupFlags are settle's
	// scratch.
	pending   []pendingID
	dupHashes []idHash
	dupTimes  []int64
	dupFlags  []bool
}

// pendingID is a decoded row whose id is yet to be checked against the duplicate window,
// or a row already in ClickHouse whose id the window is yet to record (landed).
type pendingID struct {
	seen   *dedupWindow
	id     idHash
	at     int64 // when the message was produced, Unix milliseconds
	c      *columns
	row    int
	sp     *span
	stream *StreamConfig
	size   int // of the message
	dup    bool
	landed bool
}

// producedAt is when m was produced, in Unix milliseconds, for the duplicate window: its
// Kafka timestamp, or now, the moment it is read, if that is earlier or the message has
// no timestamp. A producer whose clock runs ahead so cannot move a partition's clock
// past the present, which would end the window of every id stored before.
func producedAt(m *kafka.Message, now time.Time) int64 {
	read := now.UnixMilli()
	if m.Time.IsZero() {
		return read
	}
	if ms := m.Time.UnixMilli(); ms > 0 && ms < read {
		return ms
	}
	return read
}

func newBatch(w *Worker) *batch {
	return &batch{w: w, cols: map[*StreamConfig]*columns{}, spans: map[topicPartition]*span{}}
}

// reset empties the batch for the next one, keeping the columns' memory.
func (b *batch) reset() {
	for _, c := range b.cols {
		c.reset()
	}
	clear(b.spans)
	b.held, b.dead, b.reasons, b.n = 0, nil, nil, 0
	b.pending = b.pending[:0]
	b.last.sp, b.last.stream, b.last.c, b.last.d = nil, nil, nil, nil
}

// add decodes a message into the batch: a row in its stream's columns, a dead letter, or
// only its offset (a message already landed or a producer's duplicate).
func (b *batch) add(it *item, now time.Time) {
	m := &it.msg
	sp := b.last.sp
	if sp == nil || b.last.tp.partition != m.Partition || b.last.tp.topic != m.Topic {
		tp := topicPartition{m.Topic, m.Partition}
		if sp = b.spans[tp]; sp == nil {
			sp = &span{first: m.Offset}
			b.spans[tp] = sp
		}
		b.last.tp, b.last.sp = tp, sp
	}
	sp.last = m.Offset
	sp.messages++
	b.n++
	if it.landed {
		if it.seen != nil {
			// In order with the messages around it, as when it was first stored.
			b.pending = append(b.pending, pendingID{seen: it.seen, id: it.row.id, at: it.row.at, landed: true})
		}
		return
	}
	c, d := b.last.c, b.last.d
	if it.stream != b.last.stream || c == nil {
		c, d = b.cols[it.stream], b.w.decoders[m.Topic]
		if c == nil && it.err == nil {
			c = newColumns(d, it.stream)
			b.cols[it.stream] = c
		}
		if c != nil {
			b.last.stream, b.last.c, b.last.d = it.stream, c, d
		}
	}
	produced := producedAt(m, now)
	if it.err == nil {
		id, err := d.decodeInto(m.Value, m.Time, c)
		switch {
		case err != nil:
			var de *DecodeError
			if !errors.As(err, &de) {
				de = &DecodeError{Reason: ReasonInvalidJSON, Err: err}
			}
			it.err = de
		case b.w.consent.Load().Withheld(it.stream.Name, bytesString(c.scratch[customerColumn].str)):
			sp.withheld++
			b.w.metrics.Discarded.WithLabelValues(b.w.cfg.Loop, it.stream.Name, "consent_withdrawn").Inc()
			return
		case it.seen != nil:
			// Checked against the window in settle, together with the chunk's other ids,
			// and dropped from the columns there if a duplicate.
			b.pending = append(b.pending, pendingID{seen: it.seen, id: hashID(bytesString(id)), at: produced,
				c: c, row: c.n, sp: sp, stream: it.stream, size: len(m.Value)})
		}
	}
	if it.err != nil {
		b.dead = append(b.dead, deadLetter(it, d, b.w.cfg.MaxMessageBytes, now))
		b.reasons = append(b.reasons, it.err.Reason)
		sp.deadLettered++
		return
	}
	c.appendDecoded()
	c.appendSource(m.Topic, m.Partition, m.Offset, now, produced, m.Time)
	c.bytes += len(m.Value)
}

func (b *batch) addAll(chunk []item, now time.Time) {
	for i := range chunk {
		b.add(&chunk[i], now)
		b.held += b.w.weight(&chunk[i].msg)
	}
	b.settle()
	recycle(chunk)
}

// settle checks the ids of the rows added since the last settle against their partitions'
// windows, in the order they were added, and drops the duplicates' rows: as if each had
// been checked as it was added, but with the window's cache misses overlapped (see
// dedupWindow.check). It must run before the batch is written and before a window is
// used otherwise: at the end of each chunk and before a batch is handed over.
func (b *batch) settle() {
	p := b.pending
	if len(p) == 0 {
		return
	}
	dups := 0
	for start := 0; start < len(p); {
		if p[start].landed {
			p[start].seen.store(p[start].id, p[start].at)
			start++
			continue
		}
		// A run of ids of one window; a chunk is one partition's.
		end := start + 1
		for end < len(p) && p[end].seen == p[start].seen && !p[end].landed {
			end++
		}
		hs, ats, flags := b.dupHashes[:0], b.dupTimes[:0], b.dupFlags[:0]
		for i := start; i < end; i++ {
			hs = append(hs, p[i].id)
			ats = append(ats, p[i].at)
			flags = append(flags, false)
		}
		p[start].seen.check(hs, ats, flags)
		for i, dup := range flags {
			if dup {
				q := &p[start+i]
				q.dup = true
				q.sp.duplicates++
				q.c.bytes -= q.size
				b.w.metrics.Discarded.WithLabelValues(b.w.cfg.Loop, q.stream.Name, "duplicate").Inc()
				dups++
			}
		}
		b.dupHashes, b.dupTimes, b.dupFlags = hs, ats, flags
		start = end
	}
	// Drop the duplicates' rows, each stream's columns from its first duplicate on (the
	// rows of one columns are in the order added).
	for dups > 0 {
		var c *columns
		first, keep := 0, b.dupFlags[:0]
		for i := range p {
			if !p[i].dup {
				continue
			}
			if c == nil {
				c, first = p[i].c, p[i].row
				for range c.n - first {
					keep = append(keep, true)
				}
			}
			if p[i].c == c {
				keep[p[i].row-first] = false
				p[i].dup = false
				dups--
			}
		}
		c.keepFrom(first, keep)
		b.dupFlags = keep
	}
	b.pending = p[:0]
}

// commitOffsets returns the next offset to read per partition, in kafka-go's shape.
func (b *batch) commitOffsets() map[string]map[int]int64 {
	out := map[string]map[int]int64{}
	for tp, sp := range b.spans {
		if out[tp.topic] == nil {
			out[tp.topic] = map[int]int64{}
		}
		out[tp.topic][tp.partition] = sp.last + 1
	}
	return out
}

// deadLetter is the message sent to the stream's dead-letter topic for it. Of a stream
// with PII fields it carries no clear value of them: see Decoder.scrub and scrubKey.
func deadLetter(it *item, d *Decoder, maxBytes int, now time.Time) kafka.Message {
	m := it.msg
	body, pii, withheld := d.scrub(m.Value, maxBytes)
	headers := append([]kafka.Header(nil), m.Headers...)
	if pii != "" {
		headers = append(headers, kafka.Header{Key: HeaderPII, Value: []byte(pii)})
	}
	if withheld != "" {
		headers = append(headers, kafka.Header{Key: HeaderWithheld, Value: []byte(withheld)})
	}
	headers = append(headers,
		kafka.Header{Key: HeaderReason, Value: []byte(it.err.Reason)},
		kafka.Header{Key: HeaderError, Value: []byte(d.scrubError(it.err))},
		kafka.Header{Key: HeaderSourceTopic, Value: []byte(m.Topic)},
		kafka.Header{Key: HeaderSourcePartition, Value: []byte(strconv.Itoa(m.Partition))},
		kafka.Header{Key: HeaderSourceOffset, Value: []byte(strconv.FormatInt(m.Offset, 10))},
	)
	if !m.Time.IsZero() {
		// A replay sends the message again with this time: see DeadLetter.ReplayMessage.
		headers = append(headers, kafka.Header{Key: HeaderSourceTimestamp, Value: []byte(m.Time.UTC().Format(time.RFC3339Nano))})
	}
	return kafka.Message{
		Topic:   it.stream.DeadLetterTopic,
		Key:     d.scrubKey(m.Key),
		Value:   body,
		Headers: append(headers, kafka.Header{Key: HeaderDeadLetteredAt, Value: []byte(now.UTC().Format(time.RFC3339Nano))}),
	}
}

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
	stopped, cancelStopped := mergeDone(ctx, gctx)
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
	// stop ends the flusher once it has written what it holds, and reports whether every
	// batch it was given was written.
	stop := func() bool {
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
	// handOver gives the filled batch to the flusher and takes the other one, waiting for
	// its write to end if need be.
	handOver := func() bool {
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
					if !handOver() {
						stop()
						return
					}
				}
			}
			b.settle()
			recycle(chunk)
		case <-timer.C:
			if !handOver() {
				stop()
				return
			}
		case <-failed:
			stop()
			return
		case <-ctx.Done():
			if stop() {
				w.finish(flushCtx, gen, items, readers, b)
			}
			return
		case <-gctx.Done():
			if stop() {
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

// flush writes the batch's rows and dead letters, records its offsets in the ledger, then
// commits them to Kafka. Writes are retried with backoff until they succeed or ctx ends;
// nothing is recorded or committed for data that is not written.
func (w *Worker) flush(ctx context.Context, gen *kafka.Generation, b *batch) error {
	start := time.Now()
	db, loop := w.cfg.ClickHouse.Database, w.cfg.Loop
	batchID := fmt.Sprintf("%016x", rand.Uint64())
	for s, c := range b.cols {
		if c.n == 0 {
			continue
		}
		rows, retried := c.n, false
		var took time.Duration
		if err := w.retry(ctx, StageInsert, "insert "+s.Table(), func() error {
			if retried {
				shards, err := w.readers(ctx, s.Table())
				if err != nil {
					return err
				}
				if err := withoutLanded(ctx, shards, db, s, c); err != nil {
					return err
				}
				if c.n == 0 {
					return nil
				}
			}
			retried = true
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
	retried := false
	if err := w.retry(ctx, StageLedger, "ledger", func() error {
		spans := b.spans
		if retried {
			shards, err := w.readers(ctx, LedgerTable)
			if err != nil {
				return err
			}
			done, err := ledgerRecorded(ctx, shards, db, batchID)
			if err != nil {
				return err
			}
			if spans = unrecorded(spans, done); len(spans) == 0 {
				return nil
			}
		}
		retried = true
		ictx, err := w.insertContext(ctx, batchID, LedgerTable, len(spans))
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

// observeInsert records a successful insert: events and bytes sent, batch size, insert
// time, and each row's freshness by the event's own clock and by the broker's.
func (w *Worker) observeInsert(s *StreamConfig, c *columns, rows, bytes int, took time.Duration) {
	loop := w.cfg.Loop
	w.metrics.SentEvents.WithLabelValues(loop, s.Name).Add(float64(rows))
	w.metrics.SentBytes.WithLabelValues(loop, s.Name).Add(float64(bytes))
	w.metrics.BatchRows.WithLabelValues(loop, s.Name).Observe(float64(rows))
	w.metrics.InsertSeconds.WithLabelValues(loop, s.Name).Observe(took.Seconds())
	now := time.Now()
	byEvent, byReceive := w.metrics.Freshness.WithLabelValues(loop, s.Name, "event"), w.metrics.Freshness.WithLabelValues(loop, s.Name, "receive")
	events := c.cols[eventTimeColumn(s.Kind)].i64 // DateTime, Unix seconds
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

// retry runs fn until it succeeds or ctx ends, backing off between attempts and counting
// each failure as an error of the given stage.
func (w *Worker) retry(ctx context.Context, stage, what string, fn func() error) error {
	return retry(ctx, w.log, what, func() error {
		err := fn()
		if unsynced := (*UnsyncedShardError)(nil); errors.As(err, &unsynced) {
			w.metrics.Errors.WithLabelValues(w.cfg.Loop, StageReplicaSync).Inc()
		} else if err != nil {
			w.metrics.Errors.WithLabelValues(w.cfg.Loop, stage).Inc()
		}
		return err
	})
}

func retry(ctx context.Context, log logr.Logger, what string, fn func() error) error {
	delay := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		wait := delay
		if permanentError(err) {
			wait = 30 * time.Second
			log.Error(err, what+" failed and will keep failing until the table or config is fixed; retrying slowly", "attempt", attempt, "in", wait)
		} else {
			log.Error(err, what+" failed; retrying", "attempt", attempt, "in", wait)
			delay = min(delay*2, 10*time.Second)
		}
		if !sleep(ctx, wait) {
			return fmt.Errorf("%s: %w (gave up: %w)", what, err, ctx.Err())
		}
	}
}

// sleep waits d or until ctx ends; it reports whether the full wait happened.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// mergeDone returns a context that ends when either parent does.
func mergeDone(a, b context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(a)
	stop := context.AfterFunc(b, cancel)
	return ctx, func() { stop(); cancel() }
}

// loadConsent reads the consent state before a generation ingests anything, so that
// every worker of the loop knows each recorded withdrawal before its partitions are
// read. It reports false if ctx ended first.
func (w *Worker) loadConsent(ctx context.Context) bool {
	if w.cfg.Consent == nil {
		return true
	}
	streams := make([]string, len(w.cfg.Streams))
	for i, s := range w.cfg.Streams {
		streams[i] = s.Name
	}
	return w.retry(ctx, StageRecover, "loading the consent state", func() error {
		st, err := LoadConsent(ctx, w.ch, w.cfg.ClickHouse.Database, streams)
		if err == nil {
			w.consent.Store(st.stored(w.cfg))
		}
		return err
	}) == nil
}
