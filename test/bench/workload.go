package main

// The events the runs drain: their generator, the loop's config over them, the producer.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"customerloop.dev/customerloop/pipeline"
)

// makeMessages returns usage events of about 300 bytes: 500 customers, 8 products.
func makeMessages(n int) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	regions := []string{"eu-west-1", "us-east-1", "ap-south-1"}
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).Unix()
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(fmt.Sprintf(`{"event_id":"evt-%012d","customer_id":"customer-%04d","product":"product-%d","ts":%d,"quantity":%d,"region":%q,"note":%q}`,
			i, rng.IntN(500), rng.IntN(8), base+int64(i/50), 1+rng.IntN(100), regions[rng.IntN(3)],
			strings.Repeat("x", 130+rng.IntN(40))))
	}
	return out
}

func benchConfig(brokers []string, chAddr, db, stream, topic string) pipeline.Config {
	return pipeline.Config{
		Loop:       "bench/" + stream,
		Kafka:      pipeline.KafkaConfig{Brokers: brokers, Group: "bench-" + stream},
		ClickHouse: pipeline.ClickHouseConfig{Addr: chAddr, Database: db},
		Streams: []pipeline.StreamConfig{{
			Name: stream, Kind: pipeline.KindUsage, Topic: topic, DeadLetterTopic: topic + ".dlq",
			Mapping: pipeline.Mapping{EventID: "event_id", CustomerID: "customer_id", Product: "product", Timestamp: "ts", Quantity: "quantity"},
			Dimensions: []pipeline.Dimension{
				{Name: "region", Field: "region", Type: "String"},
				{Name: "note", Field: "note", Type: "String"},
			},
		}},
	}
}

// produce writes the messages with franz-go, keyed round robin, and returns for each
// partition the time each offset was acknowledged. rate > 0 paces the production.
func produce(ctx context.Context, brokers []string, topic string, msgs [][]byte, rate int) (map[int32][]time.Time, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.ProducerLinger(2*time.Millisecond), kgo.RecordPartitioner(kgo.RoundRobinPartitioner()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var (
		mu    sync.Mutex
		acks  = map[int32][]time.Time{}
		first error
		wg    sync.WaitGroup
	)
	tick := time.Duration(0)
	perTick := len(msgs)
	if rate > 0 {
		tick, perTick = 10*time.Millisecond, rate/100
	}
	start := time.Now()
	for i := 0; i < len(msgs); i += perTick {
		if tick > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i/perTick) * tick)))
		}
		for _, m := range msgs[i:min(i+perTick, len(msgs))] {
			wg.Add(1)
			cl.Produce(ctx, &kgo.Record{Value: m}, func(r *kgo.Record, err error) {
				defer wg.Done()
				now := time.Now()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if first == nil {
						first = err
					}
					return
				}
				a := acks[r.Partition]
				for int64(len(a)) <= r.Offset {
					a = append(a, time.Time{})
				}
				a[r.Offset] = now
				acks[r.Partition] = a
			})
		}
	}
	wg.Wait()
	return acks, first
}
