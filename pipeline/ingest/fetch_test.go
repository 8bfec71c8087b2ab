package ingest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// fetchCluster is a real Kafka-protocol broker of n brokers with one single-partition
// topic holding n messages "m-<offset>".
func fetchCluster(t *testing.T, brokers, messages int) (*kfake.Cluster, string) {
	t.Helper()
	topic := "fetch.usage"
	c, err := kfake.NewCluster(kfake.NumBrokers(brokers), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	msgs := make([]kafka.Message, messages)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: []byte("k"), Value: fmt.Appendf(nil, "m-%d", i)}
	}
	stacktest.Produce(t, c.ListenAddrs(), topic, msgs)
	return c, topic
}

// fetchUntil fetches until the fetcher's offset reaches end, checking that every message
// arrives once and in order from the offset it started at; it returns the offsets read.
func fetchUntil(t *testing.T, f *fetcher, end int64, between func(read int)) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var got []int64
	for f.offset < end {
		if ctx.Err() != nil {
			t.Fatalf("fetcher stuck at offset %d of %d", f.offset, end)
		}
		err := f.fetch(ctx, 50*time.Millisecond, func(m kafka.Message) bool {
			if want := fmt.Sprintf("m-%d", m.Offset); string(m.Value) != want {
				t.Fatalf("offset %d holds %q, want %q", m.Offset, m.Value, want)
			}
			if len(got) > 0 && m.Offset <= got[len(got)-1] {
				t.Fatalf("offset %d after %d", m.Offset, got[len(got)-1])
			}
			got = append(got, m.Offset)
			return true
		})
		if err != nil {
			t.Logf("fetch: %v", err) // the caller backs off and fetches again; so do we
			time.Sleep(10 * time.Millisecond)
		}
		if between != nil {
			between(len(got))
		}
	}
	return got
}

func TestFetcherFollowsTheLeader(t *testing.T) {
	c, topic := fetchCluster(t, 2, 3000)
	f := newFetcher(&kafka.Dialer{Timeout: 5 * time.Second}, c.ListenAddrs(), topic, 0, 0)
	defer f.interrupt()
	f.maxBytes = 16 << 10 // many fetches
	moved := false
	got := fetchUntil(t, f, 3000, func(read int) {
		if read >= 1000 && !moved {
			moved = true
			leader := c.LeaderFor(topic, 0)
			if err := c.MoveTopicPartition(topic, 0, 1-leader); err != nil {
				t.Fatal(err)
			}
		}
	})
	if !moved {
		t.Fatal("the partition never moved")
	}
	if len(got) != 3000 || got[0] != 0 || got[2999] != 2999 {
		t.Fatalf("read %d messages, from %d to %d; want 0..2999 once each", len(got), got[0], got[len(got)-1])
	}
}

func TestFetcherStopsWhereTakeStops(t *testing.T) {
	c, topic := fetchCluster(t, 1, 100)
	f := newFetcher(&kafka.Dialer{Timeout: 5 * time.Second}, c.ListenAddrs(), topic, 0, 0)
	defer f.interrupt()
	taken := 0
	err := f.fetch(context.Background(), 50*time.Millisecond, func(m kafka.Message) bool {
		taken++
		return taken < 10
	})
	if !errors.Is(err, errStopReading) {
		t.Fatalf("fetch returned %v, want errStopReading", err)
	}
	if taken != 10 || f.offset != 10 {
		t.Fatalf("took %d messages and stands at offset %d; want 10 and 10", taken, f.offset)
	}
	// The next fetch goes on after the last message taken, on a new connection.
	if got := fetchUntil(t, f, 100, nil); got[0] != 10 || len(got) != 90 {
		t.Fatalf("then read %d messages from %d; want 90 from 10", len(got), got[0])
	}
}

func TestFetcherSkipsWhatRetentionDeleted(t *testing.T) {
	c, topic := fetchCluster(t, 1, 100)
	deleteBefore := func(offset int64) {
		t.Helper()
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		req := kmsg.NewPtrDeleteRecordsRequest()
		rt := kmsg.NewDeleteRecordsRequestTopic()
		rt.Topic = topic
		p := kmsg.NewDeleteRecordsRequestTopicPartition()
		p.Offset = offset
		rt.Partitions = append(rt.Partitions, p)
		req.Topics = append(req.Topics, rt)
		req.TimeoutMillis = 5000
		resp, err := req.RequestWith(context.Background(), cl)
		if err != nil {
			t.Fatal(err)
		}
		if code := resp.Topics[0].Partitions[0].ErrorCode; code != 0 {
			t.Fatalf("deleting records: error code %d", code)
		}
	}
	var skips [][2]int64
	deleteBefore(40)
	f := newFetcher(&kafka.Dialer{Timeout: 5 * time.Second}, c.ListenAddrs(), topic, 0, 10)
	defer f.interrupt()
	f.skipped = func(from, to int64) { skips = append(skips, [2]int64{from, to}) }
	// Deleted before the fetcher connects: it starts at the first offset left.
	got := fetchUntil(t, f, 60, nil)
	if got[0] != 40 {
		t.Fatalf("first offset read %d, want 40", got[0])
	}
	// Deleted while it reads: the broker refuses the offset, and the fetcher moves on.
	deleteBefore(80)
	f.offset = 60 // as if the reader had fallen behind retention
	if _, err := f.conn.Seek(60, kafka.SeekAbsolute|kafka.SeekDontCheck); err != nil {
		t.Fatal(err)
	}
	got = fetchUntil(t, f, 100, nil)
	if got[0] != 80 {
		t.Fatalf("after the second deletion read from %d, want 80", got[0])
	}
	if want := [][2]int64{{10, 40}, {60, 80}}; fmt.Sprint(skips) != fmt.Sprint(want) {
		t.Fatalf("skips reported %v, want %v", skips, want)
	}

	// A partition the group never committed in comes with kafka-go's FirstOffset: the
	// fetcher starts at the first offset left, and nothing was skipped.
	skips = nil
	fresh := newFetcher(&kafka.Dialer{Timeout: 5 * time.Second}, c.ListenAddrs(), topic, 0, kafka.FirstOffset)
	defer fresh.interrupt()
	fresh.skipped = func(from, to int64) { skips = append(skips, [2]int64{from, to}) }
	if got = fetchUntil(t, fresh, 100, nil); got[0] != 80 || len(skips) != 0 {
		t.Fatalf("from FirstOffset: first offset read %d (want 80), skips reported %v (want none)", got[0], skips)
	}
}

func TestFetcherInterruptEndsAWaitingFetch(t *testing.T) {
	c, topic := fetchCluster(t, 1, 1)
	f := newFetcher(&kafka.Dialer{Timeout: 5 * time.Second}, c.ListenAddrs(), topic, 0, 1)
	// Past the end: the broker would hold each fetch for the whole wait.
	if err := f.fetch(context.Background(), time.Millisecond, func(kafka.Message) bool { return true }); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- f.fetch(context.Background(), time.Hour, func(kafka.Message) bool { return true })
	}()
	time.Sleep(100 * time.Millisecond)
	f.interrupt()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("an interrupted fetch returned no error")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("interrupt did not end the fetch")
	}
	if err := f.fetch(context.Background(), time.Millisecond, func(kafka.Message) bool { return true }); err == nil {
		t.Fatal("a fetch after interrupt succeeded")
	}
}
