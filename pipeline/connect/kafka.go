package connect

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// ReadRange reads the messages of one partition with offsets in [from, end).
func ReadRange(ctx context.Context, sec KafkaSecurity, brokers []string, topic string, partition int, from, end int64) ([]kafka.Message, error) {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: brokers, Dialer: sec.Dialer(), Topic: topic, Partition: partition,
		MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 250 * time.Millisecond,
	})
	defer r.Close()
	if err := r.SetOffset(from); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out []kafka.Message
	for {
		m, err := r.FetchMessage(rctx)
		if err != nil {
			return nil, fmt.Errorf("reading %s/%d at %d: %w", topic, partition, from, err)
		}
		if m.Offset >= end {
			return out, nil
		}
		out = append(out, m)
		if m.Offset == end-1 {
			return out, nil
		}
	}
}

// KafkaSecurity is the TLS and SASL settings every connection of a worker uses: the
// consumer group, the partition readers, the dead-letter writer and the lag client.
type KafkaSecurity struct {
	tls  *tls.Config
	sasl sasl.Mechanism
}

func SecurityOf(c pipeline.KafkaConfig) (KafkaSecurity, error) {
	var sec KafkaSecurity
	tlsCfg, err := c.TLS.Build()
	if err != nil {
		return sec, fmt.Errorf("kafka TLS: %w", err)
	}
	sec.tls = tlsCfg
	if s := c.SASL; s != nil {
		switch s.Mechanism {
		case "PLAIN":
			sec.sasl = plain.Mechanism{Username: s.Username, Password: s.Password}
		case "SCRAM-SHA-256":
			sec.sasl, err = scram.Mechanism(scram.SHA256, s.Username, s.Password)
		case "SCRAM-SHA-512":
			sec.sasl, err = scram.Mechanism(scram.SHA512, s.Username, s.Password)
		default:
			err = fmt.Errorf("unknown SASL mechanism %q", s.Mechanism)
		}
		if err != nil {
			// The error of scram.Mechanism concerns the user name's encoding; never the password.
			return sec, fmt.Errorf("kafka SASL: %w", err)
		}
	}
	return sec, nil
}

func (s KafkaSecurity) Dialer() *kafka.Dialer {
	return &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true, TLS: s.tls, SASLMechanism: s.sasl}
}

func (s KafkaSecurity) Transport() *kafka.Transport {
	return &kafka.Transport{DialTimeout: 10 * time.Second, TLS: s.tls, SASL: s.sasl}
}

// KafkaClient returns a client for admin requests (offsets, group descriptions) with the
// config's TLS and SASL settings.
func KafkaClient(c pipeline.KafkaConfig) (*kafka.Client, error) {
	sec, err := SecurityOf(c)
	if err != nil {
		return nil, err
	}
	return &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: sec.Transport(), Timeout: 10 * time.Second}, nil
}

// OffsetRange is the offsets a partition holds: from First up to, not including, End.
type OffsetRange struct{ First, End int64 }

// TopicOffsets returns each partition's offset range. A topic that does not exist yet has
// no partitions.
func TopicOffsets(ctx context.Context, kc *kafka.Client, topic string) (map[int]OffsetRange, error) {
	meta, err := kc.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("reading metadata of %s: %w", topic, err)
	}
	var reqs []kafka.OffsetRequest
	for _, t := range meta.Topics {
		if errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
			return map[int]OffsetRange{}, nil
		}
		if t.Error != nil {
			return nil, fmt.Errorf("topic %s: %w", topic, t.Error)
		}
		for _, p := range t.Partitions {
			reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
		}
	}
	out := map[int]OffsetRange{}
	if len(reqs) == 0 {
		return out, nil
	}
	resp, err := kc.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("listing offsets of %s: %w", topic, err)
	}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("offsets of %s/%d: %w", topic, p.Partition, p.Error)
		}
		out[p.Partition] = OffsetRange{First: p.FirstOffset, End: p.LastOffset}
	}
	return out, nil
}

// Lag is the number of messages of a topic not yet ingested: for each partition, its end
// offset minus the next offset the ledger expects (or its first offset when the ledger
// has nothing of it yet).
func Lag(offsets map[int]OffsetRange, next map[int]int64) int64 {
	var lag int64
	for p, r := range offsets {
		from, ok := next[p]
		if !ok || from < r.First {
			from = r.First
		}
		lag += max(r.End-from, 0)
	}
	return lag
}
