package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// fetcher reads one partition straight from its leader, one Fetch request at a time,
// and hands each message of the response to its caller in the same goroutine.
//
// It replaces kafka-go's Reader, which runs a goroutine per partition that sends every
// message through a channel and resets the connection's read deadline (a runtime timer)
// before each one: together a quarter of the worker's CPU in the benchmark. The fetcher
// sets the deadline once per response and passes messages by a plain call. What the
// Reader did on errors it does too: it finds the leader again after a connection or
// leadership error, skips forward when retention has deleted the offset it wants (and
// says so), and waits for data when the offset is past the end.
type fetcher struct {
	dialer    *kafka.Dialer
	brokers   []string
	topic     string
	partition int
	maxBytes  int
	// offset is the next offset to read.
	offset int64
	// skipped, when set, is told of offsets that retention deleted before they were read.
	skipped func(from, to int64)

	mu     sync.Mutex // guards conn against interrupt
	conn   *kafka.Conn
	closed bool
}

const (
	// fetchMaxWait is how long the broker holds a fetch for data to arrive.
	fetchMaxWait = 250 * time.Millisecond
	// fetchTimeout bounds, past the broker's wait, reading one response off the network.
	fetchTimeout = 10 * time.Second
)

func newFetcher(dialer *kafka.Dialer, brokers []string, topic string, partition int, offset int64) *fetcher {
	return &fetcher{dialer: dialer, brokers: brokers, topic: topic, partition: partition, maxBytes: 4 << 20, offset: offset}
}

// interrupt closes the connection, ending a fetch in progress, and any later fetch fails:
// it is how a cancelled context stops the reader without waiting for the broker.
func (f *fetcher) interrupt() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	if f.conn != nil {
		_ = f.conn.Close()
	}
}

// drop closes the connection after an error; the next fetch finds the leader again.
func (f *fetcher) drop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil {
		_ = f.conn.Close()
		f.conn = nil
	}
}

var errFetcherClosed = errors.New("the partition's reader was stopped")

// connect dials the partition's leader through the first broker that answers and seeks
// to the offset, moved forward to the first one the broker still has.
func (f *fetcher) connect(ctx context.Context) error {
	var errs []error
	for _, broker := range f.brokers {
		conn, err := f.dialer.DialLeader(ctx, "tcp", broker, f.topic, f.partition)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.mu.Lock()
		closed := f.closed
		if !closed {
			f.conn = conn
		}
		f.mu.Unlock()
		if closed {
			_ = conn.Close()
			return errFetcherClosed
		}
		_ = conn.SetDeadline(time.Now().Add(fetchTimeout))
		if err := f.bounds(); err != nil {
			f.drop()
			return err
		}
		_ = conn.SetDeadline(time.Time{})
		return nil
	}
	return fmt.Errorf("finding the leader of %s/%d: %w", f.topic, f.partition, errors.Join(errs...))
}

// bounds checks the offset against the partition's first and last offsets on the
// connection, skipping what retention deleted, and seeks to it.
func (f *fetcher) bounds() error {
	first, last, err := f.conn.ReadOffsets()
	if err != nil {
		return fmt.Errorf("reading the offsets of %s/%d: %w", f.topic, f.partition, err)
	}
	switch {
	case f.offset < 0:
		// kafka-go's FirstOffset: the group has no committed offset in the partition, so
		// reading starts at its first message; nothing was skipped.
		f.offset = first
	case f.offset < first:
		if f.skipped != nil {
			f.skipped(f.offset, first)
		}
		f.offset = first
	case f.offset > last:
		return fmt.Errorf("offset %d of %s/%d is past the partition's end (%d): waiting for it", f.offset, f.topic, f.partition, last)
	}
	if _, err := f.conn.Seek(f.offset, kafka.SeekAbsolute|kafka.SeekDontCheck); err != nil {
		return fmt.Errorf("seeking %s/%d to %d: %w", f.topic, f.partition, f.offset, err)
	}
	return nil
}

// errStopReading is fetch's error when take refused a message.
var errStopReading = errors.New("the batch loop stopped taking messages")

// fetch reads one Fetch response, the broker holding it up to wait for a first message,
// and calls take with each message in order until take returns false. An error leaves
// the offset after the last message taken, so that the next fetch goes on from there.
func (f *fetcher) fetch(ctx context.Context, wait time.Duration, take func(kafka.Message) bool) error {
	if f.conn == nil {
		if err := f.connect(ctx); err != nil {
			return err
		}
	}
	conn := f.conn
	_ = conn.SetReadDeadline(time.Now().Add(wait + fetchTimeout))
	b := conn.ReadBatchWith(kafka.ReadBatchConfig{MinBytes: 1, MaxBytes: f.maxBytes, MaxWait: max(wait, time.Millisecond)})
	for {
		m, err := b.ReadMessage()
		if err != nil {
			break
		}
		f.offset = m.Offset + 1
		if !take(m) {
			_ = b.Close()
			f.drop()
			return errStopReading
		}
	}
	err := b.Close()
	switch {
	case err == nil:
		// Past records compaction removed at the end of the response, too.
		if next, whence := conn.Offset(); whence == kafka.SeekAbsolute && next > f.offset {
			f.offset = next
		}
		return nil
	case errors.Is(err, kafka.RequestTimedOut), errors.Is(err, io.EOF):
		// Nothing arrived within the wait.
		return nil
	case errors.Is(err, kafka.OffsetOutOfRange):
		// Retention deleted the offset, or it is past the end. kafka-go's connection is
		// not reliably usable after this error; the next fetch connects again and checks
		// the offset against the partition's bounds.
		f.drop()
		return nil
	default:
		f.drop()
		return fmt.Errorf("fetching %s/%d at offset %d: %w", f.topic, f.partition, f.offset, err)
	}
}
