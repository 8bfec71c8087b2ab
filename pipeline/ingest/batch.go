package ingest

import (
	"errors"
	"strconv"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/segmentio/kafka-go"
)

// batch accumulates each stream's rows as columns, dead letters, and each partition's
// offset span. The batch loop reuses one batch, and its columns' memory, from flush to
// flush.
type batch struct {
	w       *Worker
	held    int64 // budget taken by the batch's messages
	cols    map[*pipeline.StreamConfig]*columns
	dead    []kafka.Message
	reasons []pipeline.Reason // of each dead letter
	// deadRows are the dead letters' rows of the dead_letters table, one per dead letter.
	deadRows []deadRow
	spans    map[topicPartition]*span
	n        int
	// last is the partition and stream of the last message added, whose span, columns
	// and decoder the next message most likely shares: a chunk is one partition's.
	last struct {
		tp     topicPartition
		sp     *span
		stream *pipeline.StreamConfig
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
	stream *pipeline.StreamConfig
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
	return &batch{w: w, cols: map[*pipeline.StreamConfig]*columns{}, spans: map[topicPartition]*span{}}
}

// reset empties the batch for the next one, keeping the columns' memory.
func (b *batch) reset() {
	for _, c := range b.cols {
		c.reset()
	}
	clear(b.spans)
	b.held, b.dead, b.reasons, b.deadRows, b.n = 0, nil, nil, nil, 0
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
			var de *pipeline.DecodeError
			if !errors.As(err, &de) {
				de = &pipeline.DecodeError{Reason: pipeline.ReasonInvalidJSON, Err: err}
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
		b.deadRows = append(b.deadRows, d.deadLetterRow(it.stream, m, it.err.Reason, now, b.w.consent.Load().Withheld))
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
