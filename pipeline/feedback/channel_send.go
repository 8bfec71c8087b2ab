package feedback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/segmentio/kafka-go"
)

// send reserves the statements' versions, sends every message, and records what the
// broker acknowledged, as the digests are (see pipeline.DigestTable). It reports which
// were sent.
func (p *ChannelPublisher) send(ctx context.Context, out []outgoing, now time.Time) ([]bool, error) {
	ms := now.UnixMilli()
	for i := range out {
		if out[i].kind == KindReceipt {
			out[i].version = 1
			continue
		}
		out[i].version = max(ms, p.state[cellKey{out[i].customer, out[i].period}].version+1)
		out[i].value.(*Statement).Version = out[i].version
	}
	if err := p.record(ctx, out, nil, 0, now); err != nil {
		return make([]bool, len(out)), fmt.Errorf("reserving statement versions: %w", err)
	}
	msgs := make([]kafka.Message, 0, len(out))
	idx := make([]int, 0, len(out))
	sent := make([]bool, len(out))
	var errs []error
	for i, o := range out {
		topic, err := p.cfg.TopicFor(o.customer)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		b, err := json.Marshal(o.value)
		if err != nil {
			return sent, err
		}
		msgs = append(msgs, kafka.Message{Topic: topic, Key: []byte(o.customer), Value: b, Time: now,
			Headers: []kafka.Header{{Key: HeaderKind, Value: []byte(o.kind)}}})
		idx = append(idx, i)
	}
	if p.cfg.PerCustomer() {
		p.createTopics(ctx, msgs)
	}
	if err := p.write(ctx, msgs, func(j int) { sent[idx[j]] = true }); err != nil {
		errs = append(errs, fmt.Errorf("publishing customer statements: %w", err))
	}
	if err := p.record(ctx, out, sent, 1, now); err != nil {
		// Sent but not recorded: the next round sends them again, under a higher version.
		errs = append(errs, fmt.Errorf("recording published statements: %w", err))
	}
	return sent, errors.Join(errs...)
}

// writeTopics is how many topics one write reaches at most: the writer sends each
// topic's batch at once, each on a connection of its own, so that a round to 100,000
// customers' topics in one write opened connections until the process ran out of file
// descriptors.
const writeTopics = 256

// write sends msgs, at most writeTopics topics at a time, and calls ok with the index of
// each message the broker acknowledged. Its error counts what was not sent, with the
// first reason, whatever the number of messages.
func (p *ChannelPublisher) write(ctx context.Context, msgs []kafka.Message, ok func(int)) error {
	failed, total := 0, len(msgs)
	var first error
	for start := 0; start < len(msgs); {
		end, topics := start, map[string]bool{}
		for end < len(msgs) && (topics[msgs[end].Topic] || len(topics) < writeTopics) {
			topics[msgs[end].Topic] = true
			end++
		}
		chunk := msgs[start:end]
		err := p.writer.WriteMessages(ctx, chunk...)
		var we kafka.WriteErrors
		switch {
		case err == nil:
			for j := range chunk {
				ok(start + j)
			}
		case errors.As(err, &we) && len(we) == len(chunk):
			for j, e := range we {
				if e == nil {
					ok(start + j)
					continue
				}
				failed++
				if first == nil {
					first = e
				}
			}
		default:
			failed += len(chunk)
			if first == nil {
				first = err
			}
		}
		if ctx.Err() != nil {
			failed += len(msgs) - end
			break
		}
		start = end
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d messages not sent (retried at the next round), the first because: %w", failed, total, first)
	}
	return nil
}

// createTopics creates the customers' topics that the publisher has not seen yet, a
// thousand to a request: a producer creating them one at a time, as the broker's
// auto-creation does, takes time that grows with the square of their number. A topic
// that exists already is fine. When the broker refuses (the manager may not create
// topics), the topics are left to the broker's auto-creation or to its administrator,
// and the write says what is missing.
func (p *ChannelPublisher) createTopics(ctx context.Context, msgs []kafka.Message) {
	var missing []kafka.TopicConfig
	seen := map[string]bool{}
	for _, m := range msgs {
		if !p.topics[m.Topic] && !seen[m.Topic] {
			seen[m.Topic] = true
			// One partition keeps a customer's messages in order; the broker's default
			// replication.
			missing = append(missing, kafka.TopicConfig{Topic: m.Topic, NumPartitions: 1, ReplicationFactor: -1})
		}
	}
	for len(missing) > 0 {
		batch := missing[:min(len(missing), 1000)]
		missing = missing[len(batch):]
		res, err := p.admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: batch})
		if err != nil {
			p.log.Info("creating customers' statement topics failed; leaving them to the broker", "loop", p.cfg.Loop, "topics", len(batch), "error", err.Error())
			return
		}
		for _, t := range batch {
			if e := res.Errors[t.Topic]; e == nil || errors.Is(e, kafka.TopicAlreadyExists) {
				p.topics[t.Topic] = true
			}
		}
	}
}

// record writes one row per message (those with only[i] set, when only is given).
func (p *ChannelPublisher) record(ctx context.Context, out []outgoing, only []bool, published uint8, now time.Time) error {
	b, err := p.ch.PrepareBatch(ctx, "INSERT INTO "+pipeline.QualifiedTable(p.cfg.Feedback.Database, pipeline.ChannelTable)+
		" (loop, customer_id, kind, period, version, content_hash, published, publisher, recorded_at)")
	if err != nil {
		return err
	}
	n := 0
	for i, o := range out {
		if only != nil && !only[i] {
			continue
		}
		if err := b.Append(p.cfg.Loop, o.customer, o.kind, o.period, o.version, o.hash, published, p.cfg.Publisher, now); err != nil {
			_ = b.Abort()
			return err
		}
		n++
	}
	if n == 0 {
		_ = b.Abort()
		return nil
	}
	return b.Send()
}
