// Package ingest is the data plane: a Worker reads its partitions of a loop's topics,
// decodes each message by its stream's mapping, inserts rows into ClickHouse, records
// each batch in the ledger and commits offsets only after that, so that every message is
// stored once. Messages that cannot be stored go to the stream's dead-letter topic with
// their reason; replaying them is here too.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/semaphore"
)

// Worker runs one loop's ingestion: a member of the loop's consumer group that reads its
// assigned partitions, decodes, batches, inserts into ClickHouse and commits offsets only
// after the batch is written.
type Worker struct {
	cfg      pipeline.Config
	log      logr.Logger
	decoders map[string]*Decoder               // by topic
	streams  map[string]*pipeline.StreamConfig // by topic
	dlq      *kafka.Writer
	kafkaSec connect.KafkaSecurity
	ch       driver.Conn
	name     string // identifies the worker in the ledger
	metrics  *Metrics
	// replicas reaches every replica for the reads exactly-once depends on; nil without a
	// cluster. features is read from the server at the first insert on a cluster.
	replicas *replicaSet
	features atomic.Pointer[pipeline.ServerFeatures]
	// consent is the consent state the current generation ingests under; nil without
	// a consent stream.
	consent atomic.Pointer[pipeline.ConsentState]
	// running counts the goroutines of the current generation. kafka-go runs a function
	// started on a generation that has already ended without waiting for it, so one
	// generation's readers and batch loop could outlive it and overlap the next one's:
	// they share the decoders and the duplicate windows. Each generation waits for them.
	running sync.WaitGroup
}

// NewWorker validates the config and connects to ClickHouse. Metrics may be nil.
func NewWorker(ctx context.Context, cfg pipeline.Config, log logr.Logger, metrics *Metrics) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid pipeline config: %w", err)
	}
	host, _ := os.Hostname()
	w := &Worker{
		cfg:      cfg,
		log:      log,
		decoders: map[string]*Decoder{},
		streams:  map[string]*pipeline.StreamConfig{},
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
	sec, err := connect.SecurityOf(cfg.Kafka)
	if err != nil {
		return nil, err
	}
	w.kafkaSec = sec
	ch, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		return nil, err
	}
	w.ch = ch
	if cfg.ClickHouse.Clustered() {
		w.replicas = newReplicaSet(cfg.ClickHouse, ch)
	}
	w.dlq = &kafka.Writer{
		Addr:         kafka.TCP(cfg.Kafka.Brokers...),
		Transport:    sec.Transport(),
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
		Dialer:                w.kafkaSec.Dialer(),
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
			connect.Sleep(ctx, time.Second)
			continue
		}
		w.runGeneration(ctx, gen)
	}
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
		st, err := connect.LoadConsent(ctx, w.ch, w.cfg.ClickHouse.Database, streams)
		if err == nil {
			w.consent.Store(st.Stored(w.cfg))
		}
		return err
	}) == nil
}
