package feedback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr"
	"github.com/segmentio/kafka-go"
)

// Flag is a digest published with Flagged set: the caller may raise a Warning event.
type Flag struct {
	Product  string
	Period   time.Time
	GapRatio float64
	// ProjectedGapRatio is set when the period under way is flagged by its run rate.
	ProjectedGapRatio *float64
	Version           int64
}

// PublishResult is what a publication round did, and the figures a loop's status shows.
type PublishResult struct {
	// Published are the digests sent in this round (their content changed); Unchanged
	// counts the others.
	Published []Digest
	Unchanged int
	// Flagged lists the published digests that are flagged by their gap: each is reported
	// with the publication that carries it, not again on rounds where its figures do not
	// change. (Digests flagged for a persistent bias alone are not listed: Crossings
	// reports each customer that crossed out of the band.)
	Flagged []Flag
	// Crossings are the customers and products whose tracking signal crossed out of the
	// band since the last round, each reported once (see pipeline.TrackingTable), in
	// product, customer order.
	Crossings []TrackingCrossing
	// LastPublishedPeriod is the latest period with a published digest and
	// LastPublishedAt the time of the latest publication, from the digest table (they
	// survive restarts); zero before the first.
	LastPublishedPeriod time.Time
	LastPublishedAt     time.Time
	// CustomersWithPlans counts the customers with a plan for the current period, over
	// all products.
	CustomersWithPlans uint64
	// WAPE is over all products' completed periods and horizons; ProductWAPE per product.
	// nil while there is no usage to compare with.
	WAPE        *float64
	ProductWAPE map[string]*float64
}

// Publisher publishes a loop's digests to its feedback topic.
type Publisher struct {
	cfg    pipeline.DigestConfig
	ch     driver.Conn
	writer *kafka.Writer
	log    logr.Logger
	now    func() time.Time
	table  bool // the digest table exists
	// cache keeps the figures of the periods whose data did not change since the last
	// round, so that a round reads the period under way and what changed.
	cache *Cache
	// crossed is the snapshot's pathsKey at the last round that recorded the crossings.
	crossed string
}

// NewPublisher validates the config and prepares the Kafka writer. conn is the loop's
// ClickHouse connection; it stays the caller's to close.
func NewPublisher(cfg pipeline.DigestConfig, conn driver.Conn, log logr.Logger) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid digest config: %w", err)
	}
	sec, err := connect.SecurityOf(cfg.Kafka)
	if err != nil {
		return nil, err
	}
	w := &kafka.Writer{
		Addr:      kafka.TCP(cfg.Kafka.Brokers...),
		Topic:     cfg.Topic,
		Transport: sec.Transport(),
		// Keyed by product: a product's digests stay in order in one partition.
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: 10 * time.Millisecond,
		// The feedback topic is created on demand where the broker allows it.
		AllowAutoTopicCreation: true,
	}
	return &Publisher{cfg: cfg, ch: conn, writer: w, log: log, now: time.Now, cache: NewCache()}, nil
}

// Close flushes and closes the Kafka writer.
func (p *Publisher) Close() error { return p.writer.Close() }

type digestState struct {
	version   int64  // highest version reserved or sent
	published string // content hash last sent; "" if none
}

// PublishOnce builds the loop's digests and publishes those whose content changed since
// they were last published, then records them (see DigestTable).
func (p *Publisher) PublishOnce(ctx context.Context) (PublishResult, error) {
	db := p.cfg.Feedback.Database
	if !p.table {
		ch := pipeline.ClickHouseConfig{Database: db, Cluster: p.cfg.Cluster}
		st, _ := ddl.DigestTableStatement(ch) // validated in NewPublisher
		tr, _ := ddl.TrackingTableStatement(ch)
		// Created when the connected node lacks them. A cluster host that is down creates
		// the tables when back; this node has them.
		changes, err := ddl.Apply(ctx, p.ch, nil, []ddl.Object{{Name: st.Object, Create: []pipeline.Statement{st}},
			{Name: tr.Object, Create: []pipeline.Statement{tr}}})
		if err != nil && !errors.Is(err, connect.ErrDDLPending) {
			return PublishResult{}, fmt.Errorf("creating %s and %s: %w", st.Object, tr.Object, err)
		}
		for _, c := range changes {
			if c.Action != ddl.Unchanged {
				p.log.Info("publisher table "+string(c.Action), "loop", p.cfg.Loop, "table", c.Object)
			}
		}
		p.table = true
	}
	now := p.now().UTC()
	digests, snap, err := buildDigests(ctx, p.ch, p.cfg, now, p.cache)
	if err != nil {
		return PublishResult{}, err
	}
	state, err := p.readState(ctx)
	if err != nil {
		return PublishResult{}, err
	}
	var res PublishResult
	var changed []Digest
	var hashes []string
	publishedAt := now.Truncate(time.Millisecond)
	for _, d := range digests {
		h := d.contentHash()
		s := state[digestKey{d.Product, d.Period.Time}]
		if s.published == h {
			res.Unchanged++
			continue
		}
		d.Version, d.PublishedAt = s.version+1, publishedAt
		changed = append(changed, d)
		hashes = append(hashes, h)
	}
	if len(changed) > 0 {
		if err := p.record(ctx, changed, hashes, nil, 0, now); err != nil {
			return res, fmt.Errorf("reserving digest versions: %w", err)
		}
		msgs := make([]kafka.Message, len(changed))
		for i, d := range changed {
			b, err := json.Marshal(d)
			if err != nil {
				return res, err
			}
			msgs[i] = kafka.Message{Key: []byte(d.Product), Value: b, Time: d.PublishedAt}
		}
		sendErr := p.writer.WriteMessages(ctx, msgs...)
		sent := make([]bool, len(msgs))
		var we kafka.WriteErrors
		switch {
		case sendErr == nil:
			for i := range sent {
				sent[i] = true
			}
		case errors.As(sendErr, &we) && len(we) == len(msgs):
			for i := range sent {
				sent[i] = we[i] == nil
			}
		}
		if err := p.record(ctx, changed, hashes, sent, 1, now); err != nil {
			// Sent but not recorded: the next round sends them again, under a higher version.
			return res, errors.Join(sendErr, fmt.Errorf("recording published digests: %w", err))
		}
		for i, d := range changed {
			if !sent[i] {
				continue
			}
			res.Published = append(res.Published, d)
			if d.gapFlagged {
				fl := Flag{Product: d.Product, Period: d.Period.Time, GapRatio: *d.GapRatio, Version: d.Version}
				if !d.Complete && d.ProjectedGapRatio != nil && *d.GapRatio <= *d.Threshold {
					fl.ProjectedGapRatio = d.ProjectedGapRatio
				}
				res.Flagged = append(res.Flagged, fl)
			}
		}
		if sendErr != nil {
			return res, fmt.Errorf("publishing digests to %s: %w", p.cfg.Topic, sendErr)
		}
	}
	// After the digests, which carry the same customers: a round whose digests could not
	// be sent announces its crossings in the next round that could.
	// The crossings follow the tracking paths alone: paths made from the same complete
	// periods as at the last round that recorded them cross nothing new.
	if snap.pathsKey == "" || snap.pathsKey != p.crossed {
		if res.Crossings, err = p.trackCrossings(ctx, snap.paths, now); err != nil {
			return res, err
		}
		p.crossed = snap.pathsKey
	}
	if err := p.statusFigures(ctx, &res, digests, now); err != nil {
		return res, err
	}
	return res, nil
}

type digestKey struct {
	product string
	period  time.Time
}

func (p *Publisher) readState(ctx context.Context) (map[digestKey]digestState, error) {
	db := p.cfg.Feedback.Database
	rows, err := p.ch.Query(ctx, "SELECT product, period, max(version), argMaxIf(content_hash, version, published = 1) FROM "+
		pipeline.QualifiedTable(db, pipeline.DigestTable)+" WHERE loop = ? GROUP BY product, period", p.cfg.Loop)
	if err != nil {
		return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.DigestTable, err)
	}
	defer rows.Close()
	out := map[digestKey]digestState{}
	for rows.Next() {
		var k digestKey
		var s digestState
		if err := rows.Scan(&k.product, &k.period, &s.version, &s.published); err != nil {
			return nil, fmt.Errorf("reading %s.%s: %w", db, pipeline.DigestTable, err)
		}
		k.period = k.period.UTC()
		out[k] = s
	}
	return out, rows.Err()
}

// record writes one row per digest (those with only[i] set, when only is given) in one
// insert.
func (p *Publisher) record(ctx context.Context, ds []Digest, hashes []string, only []bool, published uint8, now time.Time) error {
	db := p.cfg.Feedback.Database
	b, err := p.ch.PrepareBatch(ctx, "INSERT INTO "+pipeline.QualifiedTable(db, pipeline.DigestTable)+
		" (loop, product, period, version, content_hash, published, publisher, recorded_at)")
	if err != nil {
		return err
	}
	n := 0
	for i, d := range ds {
		if only != nil && !only[i] {
			continue
		}
		if err := b.Append(p.cfg.Loop, d.Product, d.Period.Time, d.Version, hashes[i], published, p.cfg.Publisher, now); err != nil {
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

// statusFigures fills in what a loop's status shows.
func (p *Publisher) statusFigures(ctx context.Context, res *PublishResult, digests []Digest, now time.Time) error {
	db := p.cfg.Feedback.Database
	var n uint64
	if err := p.ch.QueryRow(ctx, "SELECT count(), max(period), max(recorded_at) FROM "+pipeline.QualifiedTable(db, pipeline.DigestTable)+
		" WHERE loop = ? AND published = 1", p.cfg.Loop).Scan(&n, &res.LastPublishedPeriod, &res.LastPublishedAt); err != nil {
		return fmt.Errorf("reading %s.%s: %w", db, pipeline.DigestTable, err)
	}
	if n == 0 {
		res.LastPublishedPeriod, res.LastPublishedAt = time.Time{}, time.Time{}
	} else {
		res.LastPublishedPeriod, res.LastPublishedAt = res.LastPublishedPeriod.UTC(), res.LastPublishedAt.UTC()
	}
	current := PeriodStart(p.cfg.Feedback.Grain, now)
	// The customers with plans for the period under way, from the plans' rollup: only that
	// period's groups are read (the condition reaches into its read view).
	plans := ddl.RollupView(pipeline.FeedbackPlansRollup)
	if err := p.ch.QueryRow(ctx, "SELECT uniqExact(customer_id) FROM "+pipeline.QualifiedTable(db, plans)+
		" WHERE period = toDate(?) AND versions > 0 "+ddl.PushDownSettings, current.Format(time.DateOnly)).Scan(&res.CustomersWithPlans); err != nil {
		return fmt.Errorf("reading %s.%s: %w", db, plans, err)
	}
	res.ProductWAPE = map[string]*float64{}
	var absErr, actual float64
	for _, d := range digests {
		a := d.Accuracy
		if a == nil {
			continue
		}
		if _, seen := res.ProductWAPE[d.Product]; seen {
			continue
		}
		res.ProductWAPE[d.Product] = a.WAPE
		for _, h := range a.ByHorizon {
			e := h.Planned
			if h.WAPE != nil {
				e = *h.WAPE * h.Actual
			}
			absErr += e
			actual += h.Actual
		}
	}
	if actual > 0 {
		w := absErr / actual
		res.WAPE = &w
	}
	return nil
}

// Run publishes every interval until ctx ends, and hands each round's result (or error:
// a failed round is retried at the next tick) to onResult, which may be nil.
func (p *Publisher) Run(ctx context.Context, interval time.Duration, onResult func(PublishResult, error)) error {
	if interval <= 0 {
		return fmt.Errorf("digest interval %v: want > 0", interval)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		res, err := p.PublishOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			p.log.Error(err, "publishing digests failed; retrying at the next interval", "loop", p.cfg.Loop, "topic", p.cfg.Topic)
		} else if len(res.Published) > 0 {
			p.log.Info("published digests", "loop", p.cfg.Loop, "topic", p.cfg.Topic, "published", len(res.Published),
				"unchanged", res.Unchanged, "flagged", len(res.Flagged))
		}
		if onResult != nil {
			onResult(res, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
