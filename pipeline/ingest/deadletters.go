package ingest

import (
	"context"
	"fmt"
	"hash/crc32"
	"slices"
	"strconv"
	"strings"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fastjson"
)

// The headers a worker adds to a dead letter, and those a replay adds to the message it
// re-sends. Every header CustomerLoop sets starts with "customerloop.".
const (
	HeaderReason          = "customerloop.reason"
	HeaderError           = "customerloop.error"
	HeaderSourceTopic     = "customerloop.source.topic"
	HeaderSourcePartition = "customerloop.source.partition"
	HeaderSourceOffset    = "customerloop.source.offset"
	// HeaderSourceTimestamp is the Kafka timestamp of the dead-lettered message, so that
	// a replay can send it with its original produce time.
	HeaderSourceTimestamp = "customerloop.source.timestamp"
	HeaderDeadLetteredAt  = "customerloop.dead_lettered_at"

	// HeaderReplayedAt marks a message re-sent from the dead-letter topic.
	HeaderReplayedAt = "customerloop.replayed_at"
	// The coordinates of the message as its producer first sent it; a replay of a
	// replay keeps those of the first.
	HeaderReplaySourceTopic     = "customerloop.replay.source.topic"
	HeaderReplaySourcePartition = "customerloop.replay.source.partition"
	HeaderReplaySourceOffset    = "customerloop.replay.source.offset"

	headerPrefix = "customerloop."
)

// MessageRef names a message by its coordinates.
type MessageRef struct {
	Topic     string `json:"topic"`
	Partition int    `json:"partition"`
	Offset    int64  `json:"offset"`
}

func (r MessageRef) String() string { return fmt.Sprintf("%s/%d:%d", r.Topic, r.Partition, r.Offset) }

// DeadLetter is a message of a dead-letter topic, with what its headers say.
type DeadLetter struct {
	// At is where the dead letter itself is; Time its Kafka timestamp.
	At   MessageRef `json:"deadLetter"`
	Time time.Time  `json:"time"`
	Key  []byte     `json:"key"`
	// Value is the message as the worker read it, or as rewritten when Scrubbed is set.
	Value   []byte         `json:"value"`
	Headers []kafka.Header `json:"-"`
	Reason  string         `json:"reason"`
	Error   string         `json:"error"`
	// Source is the message that was dead-lettered; Origin the message its producer
	// first sent (Source unless the message was itself a replay).
	Source MessageRef `json:"source"`
	Origin MessageRef `json:"origin"`
	// SourceTime is Source's Kafka timestamp; zero when the dead letter does not say
	// (dead letters written before the header existed).
	SourceTime     time.Time `json:"sourceTime,omitzero"`
	DeadLetteredAt time.Time `json:"deadLetteredAt,omitzero"`
	// Scrubbed is set when the value is not the message as sent: its personal data
	// was hashed or removed ("pii=rewritten") or the body withheld ("withheld=REASON").
	Scrubbed string `json:"scrubbed,omitempty"`
}

// ParseDeadLetter reads a dead-letter topic's message.
func ParseDeadLetter(m kafka.Message) DeadLetter {
	d := DeadLetter{
		At:   MessageRef{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset},
		Time: m.Time, Key: m.Key, Value: m.Value, Headers: m.Headers,
		Source: MessageRef{Partition: -1, Offset: -1},
	}
	var replay MessageRef
	replayed := false
	for _, h := range m.Headers {
		v := string(h.Value)
		switch h.Key {
		case HeaderReason:
			d.Reason = v
		case HeaderError:
			d.Error = v
		case HeaderSourceTopic:
			d.Source.Topic = v
		case HeaderSourcePartition:
			d.Source.Partition = atoi(v, -1)
		case HeaderSourceOffset:
			d.Source.Offset = int64(atoi(v, -1))
		case HeaderSourceTimestamp:
			d.SourceTime, _ = time.Parse(time.RFC3339Nano, v)
		case HeaderDeadLetteredAt:
			d.DeadLetteredAt, _ = time.Parse(time.RFC3339Nano, v)
		case HeaderPII:
			d.Scrubbed = "pii=" + v
		case HeaderWithheld:
			d.Scrubbed = "withheld=" + v
		case HeaderReplaySourceTopic:
			replay.Topic, replayed = v, true
		case HeaderReplaySourcePartition:
			replay.Partition = atoi(v, -1)
		case HeaderReplaySourceOffset:
			replay.Offset = int64(atoi(v, -1))
		}
	}
	d.Origin = d.Source
	if replayed {
		d.Origin = replay
	}
	return d
}

func atoi(s string, def int) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}

// ProducedAt is when the dead-lettered message was produced, as far as the dead letter
// tells: its source timestamp header, else the dead letter's own timestamp.
func (d DeadLetter) ProducedAt() time.Time {
	if !d.SourceTime.IsZero() {
		return d.SourceTime
	}
	return d.Time
}

// ReplayMessage is the message that re-sends d to its source topic: its key, value and
// the producer's headers, the original produce time (so that two replays of it fall
// in one duplicate window), and headers that mark it as a replay of Origin. The
// partition is chosen by ReplayBalancer.
func (d DeadLetter) ReplayMessage(now time.Time) kafka.Message {
	var headers []kafka.Header
	for _, h := range d.Headers {
		if !strings.HasPrefix(h.Key, headerPrefix) {
			headers = append(headers, h)
		}
	}
	headers = append(headers,
		kafka.Header{Key: HeaderReplayedAt, Value: []byte(now.UTC().Format(time.RFC3339Nano))},
		kafka.Header{Key: HeaderReplaySourceTopic, Value: []byte(d.Origin.Topic)},
		kafka.Header{Key: HeaderReplaySourcePartition, Value: []byte(strconv.Itoa(d.Origin.Partition))},
		kafka.Header{Key: HeaderReplaySourceOffset, Value: []byte(strconv.FormatInt(d.Origin.Offset, 10))},
	)
	return kafka.Message{Key: d.Key, Value: d.Value, Time: d.ProducedAt(), Headers: headers}
}

// ReplayBalancer sends a replay to the partition of its original message, where the
// duplicate window of its id is (windows are per partition). A partition the topic no
// longer has falls back to a hash of the key.
type ReplayBalancer struct{}

func (ReplayBalancer) Balance(m kafka.Message, partitions ...int) int {
	for _, h := range m.Headers {
		if h.Key == HeaderReplaySourcePartition {
			if p, err := strconv.Atoi(string(h.Value)); err == nil && slices.Contains(partitions, p) {
				return p
			}
		}
	}
	return partitions[int(crc32.ChecksumIEEE(m.Key)%uint32(len(partitions)))]
}

// ReadDeadLetters reads a dead-letter topic, from the messages written at or after since
// (all when since is zero) to the topic's end as of the call.
func ReadDeadLetters(ctx context.Context, kc pipeline.KafkaConfig, topic string, since time.Time) ([]DeadLetter, error) {
	client, err := connect.KafkaClient(kc)
	if err != nil {
		return nil, err
	}
	ends, err := connect.TopicOffsets(ctx, client, topic)
	if err != nil {
		return nil, err
	}
	starts := map[int]int64{}
	for p, r := range ends {
		starts[p] = r.First
	}
	if !since.IsZero() && len(ends) > 0 {
		var reqs []kafka.OffsetRequest
		for p := range ends {
			reqs = append(reqs, kafka.TimeOffsetOf(p, since))
		}
		resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
		if err != nil {
			return nil, fmt.Errorf("finding the offsets of %s at %s: %w", topic, since.Format(time.RFC3339), err)
		}
		for _, po := range resp.Topics[topic] {
			if po.Error != nil {
				return nil, fmt.Errorf("finding the offsets of %s/%d at %s: %w", topic, po.Partition, since.Format(time.RFC3339), po.Error)
			}
			// No offset means no message at or after since.
			starts[po.Partition] = ends[po.Partition].End
			for off := range po.Offsets {
				if off >= 0 {
					starts[po.Partition] = max(off, ends[po.Partition].First)
				}
			}
		}
	}
	sec, err := connect.SecurityOf(kc)
	if err != nil {
		return nil, err
	}
	var out []DeadLetter
	for p, r := range ends {
		if starts[p] >= r.End {
			continue
		}
		msgs, err := connect.ReadRange(ctx, sec, kc.Brokers, topic, p, starts[p], r.End)
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if !since.IsZero() && m.Time.Before(since) {
				continue
			}
			out = append(out, ParseDeadLetter(m))
		}
	}
	slices.SortFunc(out, func(a, b DeadLetter) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		if a.At.Partition != b.At.Partition {
			return a.At.Partition - b.At.Partition
		}
		return int(a.At.Offset - b.At.Offset)
	})
	return out, nil
}

// SendReplays writes replay messages (see ReplayMessage) to topic, each to the partition
// ReplayBalancer chooses, and returns once the brokers have acknowledged all of them.
func SendReplays(ctx context.Context, kc pipeline.KafkaConfig, topic string, msgs []kafka.Message) error {
	sec, err := connect.SecurityOf(kc)
	if err != nil {
		return err
	}
	w := &kafka.Writer{
		Addr: kafka.TCP(kc.Brokers...), Topic: topic, Transport: sec.Transport(),
		Balancer: ReplayBalancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: 10 * time.Millisecond,
	}
	defer w.Close()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("sending replays to %s: %w", topic, err)
	}
	return nil
}

// MessageID is the id (event_id, plan_id) a worker would store for a message of the
// stream, read by the stream's mapping; false when the message is not a JSON object or
// has no usable id. A stream that hashes its ids stores their hash instead.
func MessageID(s pipeline.StreamConfig, msg []byte) (string, bool) {
	field := s.Mapping.EventID
	if s.Kind == pipeline.KindPlan {
		field = s.Mapping.PlanID
	}
	var p fastjson.Parser
	doc, err := p.ParseBytes(msg)
	if err != nil || doc.Type() != fastjson.TypeObject || field == "" {
		return "", false
	}
	v := doc.Get(strings.Split(field, ".")...)
	if v == nil {
		return "", false
	}
	var out value
	if toID(v, &out) != nil {
		return "", false
	}
	return string(out.str), true
}

// StoredIDs returns which of ids the stream's raw table holds.
func StoredIDs(ctx context.Context, conn driver.Conn, db string, s pipeline.StreamConfig, ids []string) (map[string]bool, error) {
	found := map[string]bool{}
	col := pipeline.QuoteIdent(idColumn(s.Kind))
	// Chunks well under the server's max_query_size (256 KiB by default).
	for len(ids) > 0 {
		n, size := 0, 0
		for n < len(ids) && size < 64<<10 {
			size += len(ids[n]) + 4
			n++
		}
		chunk := ids[:n]
		ids = ids[n:]
		rows, err := conn.Query(ctx, "SELECT DISTINCT "+col+" FROM "+pipeline.QualifiedTable(db, s.Table())+
			" WHERE "+col+" IN (SELECT arrayJoin(?))", chunk)
		if err != nil {
			return nil, fmt.Errorf("reading which ids %s holds: %w", s.Table(), err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			found[id] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return found, nil
}
