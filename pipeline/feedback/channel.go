package feedback

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr"
	"github.com/segmentio/kafka-go"
)

// HeaderKind names what a message on a statement topic is: KindStatement or KindReceipt.
const HeaderKind = "customerloop-kind"

// LastStatementReason is the Reason of the statement sent after a customer's withdrawal.
const LastStatementReason = "consent withdrawn: the loop deleted your data and sends no further statements until you grant consent again"

// ChannelReceipt is a consent receipt as a customer's statement topic carries it, once
// the consent message was applied in full.
type ChannelReceipt struct {
	Schema   int    `json:"schema"`
	Kind     string `json:"kind"`
	Loop     string `json:"loop"`
	Customer string `json:"customer"`
	Receipt
}

// ChannelResult is what a round of the channel publisher did.
type ChannelResult struct {
	// Statements and Receipts count the messages the broker acknowledged.
	Statements, Receipts int
	// Unchanged counts the statements read again whose figures had not changed.
	Unchanged int
	// Withheld counts the statements not sent because the customer withdrew consent.
	Withheld int
	// PeriodsRead are the periods whose figures were read ("all" on a full read).
	PeriodsRead int
	Full        bool
}

// ChannelPublisher publishes, for each customer and period whose figures changed, the
// customer's statement of that period, and each applied consent message's receipt, to
// the customer's statement topic (see pipeline.StatementConfig.TopicFor). A period's
// statement holds, per product, the period's row of the customer's statement; the
// statement of the period under way also holds their plan accuracy by horizon. The run
// rate and the projected gap are sent with a statement, but do not make one change: they
// move with the clock, and the customer API serves them as of the request.
//
// A round reads again only the periods whose data parts changed since the last round
// (as the feedback cache does, see Cache), and the accuracy points only of the customers
// with rows in a complete period that changed. On a cluster, or after a restart, a round
// reads everything once.
type ChannelPublisher struct {
	cfg    pipeline.StatementConfig
	ch     driver.Conn
	writer *kafka.Writer
	log    logr.Logger
	now    func() time.Time
	table  bool
	// sigs are the periods' part signatures and current the period under way at the
	// last round; nil sigs reads everything.
	sigs    map[time.Time]string
	current time.Time
	// acc is each customer's accuracy by product, as of the last read of their points.
	acc map[string]map[string][]StatementAccuracy
	// state is what the channel table says was sent, read at the first round; receipts
	// the audit ids whose receipts were sent.
	state    map[cellKey]channelState
	receipts map[string]bool
	// dead are the customers' dead letters by period as of the last round, and deadSig
	// the dead-letter table's parts then.
	dead    map[string]map[time.Time]StatementDeadLetters
	deadSig string
	// admin creates customers' topics; topics are those known to exist.
	admin  *kafka.Client
	topics map[string]bool
}

// cellKey's product is the customer here.
type channelState struct {
	version int64
	hash    string // of the content last sent; "" if none
}

// NewChannelPublisher validates the config and prepares the Kafka writer. conn stays the
// caller's to close.
func NewChannelPublisher(cfg pipeline.StatementConfig, conn driver.Conn, log logr.Logger) (*ChannelPublisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid statement config: %w", err)
	}
	sec, err := connect.SecurityOf(cfg.Kafka)
	if err != nil {
		return nil, err
	}
	w := &kafka.Writer{
		Addr:      kafka.TCP(cfg.Kafka.Brokers...),
		Transport: sec.Transport(),
		// Keyed by customer: a customer's messages stay in order in one partition.
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: 10 * time.Millisecond,
		BatchSize:    1000,
		// A customer's topic is created on demand where the broker allows it.
		AllowAutoTopicCreation: true,
	}
	admin := &kafka.Client{Addr: kafka.TCP(cfg.Kafka.Brokers...), Transport: sec.Transport(), Timeout: 30 * time.Second}
	return &ChannelPublisher{cfg: cfg, ch: conn, writer: w, log: log, now: time.Now, admin: admin, topics: map[string]bool{}}, nil
}

// Close flushes and closes the Kafka writer.
func (p *ChannelPublisher) Close() error { return p.writer.Close() }

// outgoing is one message of a round, with what records it.
type outgoing struct {
	customer string
	kind     string
	period   time.Time
	version  int64
	hash     string
	value    any
}

// PublishOnce publishes the statements whose figures changed and the receipts not sent
// yet, then records them (see pipeline.ChannelTable).
func (p *ChannelPublisher) PublishOnce(ctx context.Context) (ChannelResult, error) {
	var res ChannelResult
	if err := p.prepare(ctx); err != nil {
		return res, err
	}
	now := p.now().UTC()
	g := p.cfg.Feedback.Grain
	current := PeriodStart(g, now)
	var sigs map[time.Time]string
	ok := false
	if p.cfg.Cluster == "" {
		var err error
		if sigs, ok, err = signatures(ctx, p.ch, p.cfg.Feedback); err != nil {
			return res, err
		}
	}
	res.Full = !ok || p.sigs == nil || !current.Equal(p.current)
	var changed []time.Time
	if !res.Full {
		for period, sig := range sigs {
			if p.sigs[period] != sig {
				changed = append(changed, period)
			}
		}
		for period := range p.sigs {
			if _, still := sigs[period]; !still {
				changed = append(changed, period)
			}
		}
	}
	dead, deadSig, deadChanged, err := p.readDead(ctx, res.Full)
	if err != nil {
		return res, err
	}
	for _, period := range deadChanged {
		if !slices.ContainsFunc(changed, period.Equal) {
			changed = append(changed, period)
		}
	}
	statements, periods, err := p.changedStatements(ctx, res.Full, changed, dead, current, now)
	if err != nil {
		return res, err
	}
	res.PeriodsRead = periods
	consent, err := p.consent(ctx)
	if err != nil {
		return res, err
	}
	var out []outgoing
	customers := make([]string, 0, len(statements))
	for c := range statements {
		customers = append(customers, c)
	}
	sort.Strings(customers)
	for _, c := range customers {
		if consent.withdrawn[c] {
			res.Withheld += len(statements[c])
			continue
		}
		for _, st := range statements[c] {
			h := st.contentHash()
			if p.state[cellKey{c, st.Period.Time}].hash == h {
				res.Unchanged++
				continue
			}
			out = append(out, outgoing{customer: c, kind: KindStatement, period: st.Period.Time, hash: h, value: st})
		}
	}
	for _, r := range consent.receipts {
		out = append(out, outgoing{customer: r.Customer, kind: KindReceipt, period: r.Applied.CompletedAt, hash: r.Applied.AuditID, value: r})
		if r.Action == pipeline.ConsentWithdraw && consent.withdrawn[r.Customer] {
			last := &Statement{Schema: StatementSchema, Kind: KindStatement, Loop: p.cfg.Loop, Customer: r.Customer,
				Period: Date{current}, Granularity: g, GeneratedAt: now, Products: []StatementProduct{}, DeadLetters: []StatementDeadLetters{},
				Consent: StatementConsent{State: "withdrawn"}, Reason: LastStatementReason}
			out = append(out, outgoing{customer: r.Customer, kind: KindStatement, period: current, hash: last.contentHash(), value: last})
		}
	}
	if len(out) == 0 {
		p.sigs, p.current, p.dead, p.deadSig = sigs, current, dead, deadSig
		return res, nil
	}
	sent, err := p.send(ctx, out, now)
	for i, o := range out {
		if !sent[i] {
			continue
		}
		if o.kind == KindReceipt {
			res.Receipts++
			p.receipts[o.hash] = true
			continue
		}
		res.Statements++
		p.state[cellKey{o.customer, o.period}] = channelState{version: o.version, hash: o.hash}
	}
	if err != nil {
		// The periods are read again at the next round, which sends what was not.
		return res, err
	}
	p.sigs, p.current, p.dead, p.deadSig = sigs, current, dead, deadSig
	return res, nil
}

// readDead reads the customers' dead letters by period when the dead-letter table's
// parts changed since the last round (every round on a cluster), and returns them, the
// parts' signature and the periods where some customer's changed.
func (p *ChannelPublisher) readDead(ctx context.Context, full bool) (map[string]map[time.Time]StatementDeadLetters, string, []time.Time, error) {
	db := p.cfg.Feedback.Database
	sig := ""
	if p.cfg.Cluster == "" {
		if err := p.ch.QueryRow(ctx, "SELECT toString(arraySort(groupArray(concat(name, '/', toString(rows))))) FROM system.parts WHERE database = ? AND table = ? AND active",
			db, pipeline.DeadLettersTable).Scan(&sig); err != nil {
			return nil, "", nil, fmt.Errorf("reading the data parts of %s.%s: %w", db, pipeline.DeadLettersTable, err)
		}
	}
	if !full && sig != "" && sig == p.deadSig {
		return p.dead, sig, nil, nil
	}
	all, err := readDeadLetters(ctx, p.ch, p.cfg.Feedback, "1", nil)
	if err != nil {
		return nil, "", nil, err
	}
	dead := map[string]map[time.Time]StatementDeadLetters{}
	for c, ss := range all {
		m := map[time.Time]StatementDeadLetters{}
		for _, d := range StatementDeadLettersOf(ss) {
			m[d.Period.Time] = d
		}
		dead[c] = m
	}
	seen := map[time.Time]bool{}
	var changed []time.Time
	note := func(period time.Time) {
		if !seen[period] {
			seen[period] = true
			changed = append(changed, period)
		}
	}
	for c, m := range dead {
		for period, d := range m {
			if old, ok := p.dead[c][period]; !ok || !reflect.DeepEqual(old, d) {
				note(period)
			}
		}
	}
	for c, m := range p.dead {
		for period := range m {
			if _, ok := dead[c][period]; !ok {
				note(period)
			}
		}
	}
	return dead, sig, changed, nil
}

// prepare creates the channel table where the connected node lacks it, and reads what
// was sent before.
func (p *ChannelPublisher) prepare(ctx context.Context) error {
	if !p.table {
		st, err := ddl.ChannelTableStatement(pipeline.ClickHouseConfig{Database: p.cfg.Feedback.Database, Cluster: p.cfg.Cluster})
		if err != nil {
			return err
		}
		changes, err := ddl.Apply(ctx, p.ch, nil, []ddl.Object{{Name: st.Object, Create: []pipeline.Statement{st}}})
		if err != nil && !errors.Is(err, connect.ErrDDLPending) {
			return fmt.Errorf("creating %s: %w", st.Object, err)
		}
		for _, c := range changes {
			if c.Action != ddl.Unchanged {
				p.log.Info("channel table "+string(c.Action), "loop", p.cfg.Loop, "table", c.Object)
			}
		}
		p.table = true
	}
	if p.state != nil {
		return nil
	}
	table := pipeline.QualifiedTable(p.cfg.Feedback.Database, pipeline.ChannelTable)
	rows, err := p.ch.Query(ctx, "SELECT customer_id, kind, period, max(version), argMaxIf(content_hash, version, published = 1), "+
		"groupUniqArrayIf(content_hash, published = 1 AND kind = ?) FROM "+table+" WHERE loop = ? GROUP BY customer_id, kind, period",
		KindReceipt, p.cfg.Loop)
	if err != nil {
		return fmt.Errorf("reading %s: %w", table, err)
	}
	defer rows.Close()
	state, receipts := map[cellKey]channelState{}, map[string]bool{}
	for rows.Next() {
		var (
			k        cellKey
			kind     string
			s        channelState
			audits   []string
			customer string
		)
		if err := rows.Scan(&customer, &kind, &k.period, &s.version, &s.hash, &audits); err != nil {
			return fmt.Errorf("reading %s: %w", table, err)
		}
		k.product, k.period = customer, k.period.UTC()
		if kind == KindReceipt {
			for _, a := range audits {
				receipts[a] = true
			}
			continue
		}
		state[k] = s
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", table, err)
	}
	p.state, p.receipts = state, receipts
	return nil
}

// contentHash identifies a statement's figures: not when it was made, its version, nor
// the run rate's projections, which move with the clock alone.
func (s *Statement) contentHash() string {
	if s.hash != "" {
		return s.hash
	}
	c := *s
	c.GeneratedAt, c.Version = time.Time{}, 0
	c.Products = make([]StatementProduct, len(s.Products))
	for i, pr := range s.Products {
		pr.Periods = append([]StatementPeriod(nil), pr.Periods...)
		for j := range pr.Periods {
			pr.Periods[j].Projected, pr.Periods[j].ProjectedGap = nil, nil
		}
		c.Products[i] = pr
	}
	b, _ := json.Marshal(c)
	sum := sha256.Sum256(b)
	s.hash = hex.EncodeToString(sum[:16])
	return s.hash
}
