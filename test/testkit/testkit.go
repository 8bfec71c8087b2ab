// Package testkit holds the helpers that CustomerLoop's tests share across packages.
package testkit

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// Eventually polls cond until it holds, failing the test with cond's last state when the
// timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (ok bool, state string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s; last state: %s", timeout, what, last)
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// ReadTopic reads every message of a topic, across its partitions, up to the current end.
func ReadTopic(t testing.TB, brokers []string, topic string) []kafka.Message {
	t.Helper()
	conn, err := kafka.Dial("tcp", brokers[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		t.Fatalf("reading partitions of %s: %v", topic, err)
	}
	var out []kafka.Message
	for _, p := range parts {
		pc, err := kafka.DialLeader(context.Background(), "tcp", brokers[0], topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		end, err := pc.ReadLastOffset()
		_ = pc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				cancel()
				_ = r.Close()
				t.Fatalf("reading %s/%d: %v", topic, p.ID, err)
			}
			out = append(out, m)
			if m.Offset+1 >= end {
				break
			}
		}
		cancel()
		_ = r.Close()
	}
	return out
}
