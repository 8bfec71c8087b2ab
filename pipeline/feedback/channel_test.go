package feedback

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr/testr"
)

// topicMessage is a message of a statement topic, decoded.
type topicMessage struct {
	kind      string
	key       string
	statement *Statement
	receipt   *ChannelReceipt
}

func readChannel(t *testing.T, k pipeline.KafkaConfig, topic string) []topicMessage {
	t.Helper()
	statementSchema := loadStatementSchema(t)
	receiptSchema := loadSchema(t, filepath.Join("..", "..", "docs", "schemas", "receipt.schema.json"))
	var out []topicMessage
	for _, m := range readDigests(t, k, topic) {
		tm := topicMessage{key: string(m.Key)}
		for _, h := range m.Headers {
			if h.Key == HeaderKind {
				tm.kind = string(h.Value)
			}
		}
		var err error
		switch tm.kind {
		case KindStatement:
			tm.statement = &Statement{}
			err = json.Unmarshal(m.Value, tm.statement)
			if err == nil && tm.statement.Kind != KindStatement {
				t.Errorf("%s: a statement of kind %q", topic, tm.statement.Kind)
			}
		case KindReceipt:
			tm.receipt = &ChannelReceipt{}
			err = json.Unmarshal(m.Value, tm.receipt)
		default:
			t.Errorf("%s: a message with kind header %q", topic, tm.kind)
		}
		if err != nil {
			t.Fatalf("%s: %v in %s", topic, err, m.Value)
		}
		schema := statementSchema
		if tm.kind == KindReceipt {
			schema = receiptSchema
		}
		if errs := validateSchema(schema, schema, decodeJSON(t, m.Value), ""); len(errs) > 0 {
			t.Errorf("%s: a %s does not meet its schema:\n%s\n%s", topic, tm.kind, strings.Join(errs, "\n"), m.Value)
		}
		out = append(out, tm)
	}
	return out
}

// latestStatements keeps, per period, the statement of the highest version, and checks
// that each message names the topic's customer and no other.
func latestStatements(t *testing.T, msgs []topicMessage, customer string) map[time.Time]*Statement {
	t.Helper()
	out := map[time.Time]*Statement{}
	for _, m := range msgs {
		if m.key != customer {
			t.Errorf("a message of %s's topic is keyed %q", customer, m.key)
		}
		if m.statement == nil {
			continue
		}
		s := m.statement
		if s.Customer != customer {
			t.Errorf("%s's topic carries a statement of %q", customer, s.Customer)
		}
		if prev := out[s.Period.Time]; prev == nil || s.Version > prev.Version {
			out[s.Period.Time] = s
		}
	}
	return out
}

// checkAgainstAPI compares a customer's latest published statements with the statement
// the customer API reads (ReadStatement, itself checked against the views): every
// period's row, and the accuracy in the statement of the period under way. It returns
// how many periods the customer has statements for.
func checkAgainstAPI(t *testing.T, stage string, ctx context.Context, ch driver.Conn, fc pipeline.FeedbackConfig, loop, customer string, latest map[time.Time]*Statement) {
	t.Helper()
	now := time.Now()
	api, err := ReadStatement(ctx, ch, fc, loop, customer, now)
	if err != nil {
		t.Fatal(err)
	}
	current := PeriodStart(fc.Grain, now)
	want := map[time.Time]bool{}
	for _, p := range api.Products {
		for _, r := range p.Periods {
			want[r.Period.Time] = true
			s := latest[r.Period.Time]
			if s == nil {
				t.Errorf("%s: no statement of %s for %s", stage, customer, r.Period.Format(time.DateOnly))
				continue
			}
			var got *StatementPeriod
			for _, sp := range s.Products {
				if sp.Product == p.Product && len(sp.Periods) == 1 {
					got = &sp.Periods[0]
				}
			}
			if got == nil {
				t.Errorf("%s: the statement of %s for %s has no row of %s", stage, customer, r.Period.Format(time.DateOnly), p.Product)
				continue
			}
			g, w := *got, r
			g.Projected, g.ProjectedGap, w.Projected, w.ProjectedGap = nil, nil, nil, nil
			if gb, wb := mustJSON(t, g), mustJSON(t, w); gb != wb {
				t.Errorf("%s: %s %s %s published %s, the API reads %s", stage, customer, p.Product, r.Period.Format(time.DateOnly), gb, wb)
			}
		}
		if len(p.Accuracy) > 0 {
			want[current] = true
			s := latest[current]
			if s == nil {
				t.Errorf("%s: no statement of %s for the period under way", stage, customer)
				continue
			}
			found := false
			for _, sp := range s.Products {
				if sp.Product == p.Product {
					found = true
					if gb, wb := mustJSON(t, sp.Accuracy), mustJSON(t, p.Accuracy); gb != wb {
						t.Errorf("%s: %s %s accuracy published %s, the API reads %s", stage, customer, p.Product, gb, wb)
					}
				}
			}
			if !found {
				t.Errorf("%s: the current statement of %s has no accuracy of %s", stage, customer, p.Product)
			}
		}
	}
	for _, d := range api.DeadLetters {
		want[d.Period.Time] = true
		s := latest[d.Period.Time]
		if s == nil {
			t.Errorf("%s: no statement of %s for %s, a period with dead letters", stage, customer, d.Period.Format(time.DateOnly))
			continue
		}
		if gb, wb := mustJSON(t, s.DeadLetters), mustJSON(t, []StatementDeadLetters{d}); gb != wb {
			t.Errorf("%s: %s %s dead letters published %s, the API reads %s", stage, customer, d.Period.Format(time.DateOnly), gb, wb)
		}
	}
	for period, s := range latest {
		if len(s.DeadLetters) > 0 && !slices.ContainsFunc(api.DeadLetters, func(d StatementDeadLetters) bool { return d.Period.Equal(period) }) {
			t.Errorf("%s: the statement of %s for %s has dead letters the API does not show", stage, customer, period.Format(time.DateOnly))
		}
		if !want[period] && s.Reason == "" {
			t.Errorf("%s: a statement of %s for %s, where the API shows nothing", stage, customer, period.Format(time.DateOnly))
		}
		if !period.Equal(current) {
			for _, sp := range s.Products {
				if len(sp.Accuracy) > 0 {
					t.Errorf("%s: the statement of %s for %s carries accuracy; only the period under way's does", stage, customer, period.Format(time.DateOnly))
				}
			}
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestChannelPublisher publishes every customer's statements to a topic of their own,
// and checks them against the customer API's statement; then that an idle round sends
// nothing, that a late event sends only its customer's period and current statement,
// that a restarted publisher sends nothing new, and that a withdrawal sends a receipt
// and a last statement, after which nothing more is sent to that customer.
func TestChannelPublisher(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_channel"))
	cfg.ClickHouse.Addr = stacktest.ClickhouseAddr(t)
	cfg.Consent = &pipeline.ConsentConfig{Topic: "consent"}
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	brokers := stacktest.StartBroker(t, 2)
	k := pipeline.KafkaConfig{Brokers: brokers}

	now := time.Now().UTC().Truncate(time.Second)
	data := generateDigestData(now, 7)
	var offset int64
	data.insertPlans(t, ctx, ch, fc.Database, cfg.Streams[1], &offset)
	data.insertUsage(t, ctx, ch, fc.Database, cfg.Streams[0], data.usageEvents(rand.New(rand.NewPCG(1, 2))), &offset)
	customers := []string{"c0", "c1", "c2", "c3", "c4", "c5"}

	sc := pipeline.StatementConfig{Loop: cfg.Loop, Kafka: k, Topic: "acme.customer.{customer}.statements", Feedback: fc,
		Consent: true, Publisher: "replica-a"}
	pub, err := NewChannelPublisher(sc, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	round := func(stage string, p *ChannelPublisher) ChannelResult {
		t.Helper()
		res, err := p.PublishOnce(ctx)
		if err != nil {
			t.Fatalf("%s: %v", stage, err)
		}
		return res
	}
	topic := func(c string) string {
		tp, err := sc.TopicFor(c)
		if err != nil {
			t.Fatal(err)
		}
		return tp
	}
	count := map[string]int{}
	check := func(stage string) {
		t.Helper()
		for _, c := range customers {
			msgs := readChannel(t, k, topic(c))
			count[c] = len(msgs)
			checkAgainstAPI(t, stage, ctx, ch, fc, cfg.Loop, c, latestStatements(t, msgs, c))
		}
	}

	// 1. Everything once.
	res := round("first round", pub)
	if !res.Full || res.Statements == 0 || res.Receipts != 0 {
		t.Fatalf("first round: %+v, want a full read that sends statements and no receipt", res)
	}
	check("first round")
	total := 0
	for _, n := range count {
		total += n
	}
	if total != res.Statements {
		t.Errorf("the customers' topics hold %d messages, the round sent %d", total, res.Statements)
	}

	// 2. Nothing changed: nothing sent.
	if res := round("idle round", pub); res.Statements != 0 || res.Full {
		t.Errorf("idle round: %+v, want nothing sent and no full read", res)
	}

	// 3. A late event of c1's in a complete month: its statement of that month and its
	// current one (its accuracy moved), nothing else.
	before := map[string]int{}
	for c, n := range count {
		before[c] = n
	}
	late := data.month(-2)
	data.insertUsage(t, ctx, ch, fc.Database, cfg.Streams[0], []usageEvent{{"c1", "p0", late.Add(50 * time.Hour), 3.5}}, &offset)
	res = round("after a late event", pub)
	if res.Statements != 2 || res.Full {
		t.Errorf("after a late event: %+v, want 2 statements sent without a full read", res)
	}
	check("after a late event")
	for _, c := range customers {
		want := before[c]
		if c == "c1" {
			want += 2
		}
		if count[c] != want {
			t.Errorf("after a late event: %s's topic holds %d messages, want %d", c, count[c], want)
		}
	}
	msgs := readChannel(t, k, topic("c1"))
	periods := map[time.Time]int{}
	for _, m := range msgs[before["c1"]:] {
		periods[m.statement.Period.Time]++
	}
	if periods[late] != 1 || periods[PeriodStart(fc.Grain, time.Now())] != 1 {
		t.Errorf("after a late event c1 got statements of %v, want %s and the period under way", periods, late.Format(time.DateOnly))
	}

	// 4. A restarted publisher reads everything once and sends nothing new.
	sc2 := sc
	sc2.Publisher = "replica-b"
	pub2, err := NewChannelPublisher(sc2, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub2.Close()
	if res := round("after a restart", pub2); !res.Full || res.Statements != 0 || res.Unchanged == 0 {
		t.Errorf("after a restart: %+v, want a full read that sends nothing", res)
	}

	// 5. Dead letters: c3's in a complete month, and c9's, who has nothing else, in the
	// month under way. Their statements of those months, nothing else.
	deadRow := func(customer string, offset int64, at time.Time) []any {
		return []any{customer, "usage", string(pipeline.ReasonInvalidJSON), "usage", int32(0), offset, at, now}
	}
	ddltest.InsertInto(t, ch, fc.Database, pipeline.DeadLettersTable, deadRow("c3", 900, data.month(-1).Add(30*time.Hour)),
		deadRow("c3", 901, data.month(-1).Add(31*time.Hour)), deadRow("c9", 902, now.Add(-time.Hour)))
	customers = append(customers, "c9")
	for _, c := range customers {
		before[c] = len(readChannel(t, k, topic(c)))
	}
	if res := round("dead letters", pub2); res.Statements != 2 {
		t.Errorf("dead letters: %+v, want 2 statements", res)
	}
	check("dead letters")
	for _, c := range customers {
		if n := count[c] - before[c]; n != map[string]int{"c3": 1, "c9": 1}[c] {
			t.Errorf("dead letters: %d new messages on %s's topic", n, c)
		}
	}
	if c9 := latestStatements(t, readChannel(t, k, topic("c9")), "c9"); len(c9) != 1 {
		t.Errorf("c9's statements: %d, want the one of the month under way", len(c9))
	}

	// 6. c2 withdraws: a receipt and a last statement that says why, then nothing more.
	withdraw := pipeline.ConsentEvent{ID: "wd-1", Customer: "c2", Action: pipeline.ConsentWithdraw, At: now, Received: now, Topic: "consent", Offset: 1}
	ddltest.InsertInto(t, ch, fc.Database, pipeline.ConsentTable, []any{withdraw.ID, withdraw.Customer, withdraw.Action, []string{},
		withdraw.At, withdraw.Received, "", withdraw.Topic, int32(0), withdraw.Offset})
	if res := round("withdrawal pending", pub2); res.Statements != 0 || res.Receipts != 0 {
		t.Errorf("withdrawal recorded, not applied: %+v, want nothing sent", res)
	}
	plans, err := ddl.PlanRollups(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ApplyConsent(ctx, ch, cfg, plans, []pipeline.ConsentEvent{withdraw}); err != nil {
		t.Fatal(err)
	}
	res = round("withdrawal applied", pub2)
	if res.Receipts != 1 || res.Statements != 1 {
		t.Errorf("withdrawal applied: %+v, want one receipt and one statement", res)
	}
	msgs = readChannel(t, k, topic("c2"))
	tail := msgs[count["c2"]:]
	if len(tail) != 2 || tail[0].receipt == nil || tail[1].statement == nil {
		t.Fatalf("c2's topic after the withdrawal: %d new messages %+v, want a receipt then a statement", len(tail), tail)
	}
	rc := tail[0].receipt
	if rc.Customer != "c2" || rc.ID != "wd-1" || rc.Action != pipeline.ConsentWithdraw || rc.Applied == nil ||
		rc.Applied.AuditID != "consent/0/1" || rc.Applied.CompletedAt.IsZero() || len(rc.Applied.Deleted) == 0 {
		t.Errorf("receipt %+v, want c2's withdrawal wd-1 applied with the rows deleted per table", rc)
	}
	deleted := uint64(0)
	for _, d := range rc.Applied.Deleted {
		deleted += d.Rows
	}
	if deleted == 0 {
		t.Errorf("the receipt counts no deleted row: %+v", rc.Applied.Deleted)
	}
	last := tail[1].statement
	if last.Reason != LastStatementReason || last.Consent.State != "withdrawn" || len(last.Products) != 0 {
		t.Errorf("last statement %+v, want the reason, consent withdrawn and no figures", last)
	}
	// Data of c2's that arrives after (a late row the workers had stored before the
	// withdrawal reached them, say) sends nothing, nor does the receipt go again.
	data.insertUsage(t, ctx, ch, fc.Database, cfg.Streams[0], []usageEvent{{"c2", "p1", now.Add(-time.Minute), 1}}, &offset)
	res = round("after the withdrawal", pub2)
	if res.Receipts != 0 || res.Withheld == 0 {
		t.Errorf("after the withdrawal: %+v, want no receipt and c2's statement withheld", res)
	}
	if n := len(readChannel(t, k, topic("c2"))); n != len(msgs) {
		t.Errorf("c2's topic holds %d messages after the withdrawal's round, want %d", n, len(msgs))
	}
	// A restart does not send the receipt again.
	pub3, err := NewChannelPublisher(sc, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub3.Close()
	if res := round("restart after the withdrawal", pub3); res.Receipts != 0 || res.Statements != 0 {
		t.Errorf("restart after the withdrawal: %+v, want nothing sent", res)
	}
}

// TestChannelPublisherKeyedTopic: without {customer} in the topic, every statement goes
// to one topic keyed by its customer.
func TestChannelPublisherKeyedTopic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_channel_keyed"))
	cfg.ClickHouse.Addr = stacktest.ClickhouseAddr(t)
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	const topic = "acme.statements"
	brokers := stacktest.StartBroker(t, 3, topic)
	k := pipeline.KafkaConfig{Brokers: brokers}
	now := time.Now().UTC().Truncate(time.Second)
	data := generateDigestData(now, 11)
	var offset int64
	data.insertPlans(t, ctx, ch, fc.Database, cfg.Streams[1], &offset)
	data.insertUsage(t, ctx, ch, fc.Database, cfg.Streams[0], data.usageEvents(rand.New(rand.NewPCG(3, 4))), &offset)
	pub, err := NewChannelPublisher(pipeline.StatementConfig{Loop: cfg.Loop, Kafka: k, Topic: topic, Feedback: fc}, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	res, err := pub.PublishOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byCustomer := map[string][]topicMessage{}
	msgs := readChannel(t, k, topic)
	for _, m := range msgs {
		byCustomer[m.key] = append(byCustomer[m.key], m)
	}
	if len(msgs) != res.Statements || len(byCustomer) != 6 {
		t.Errorf("the topic holds %d messages of %d customers; the round sent %d, want 6 customers", len(msgs), len(byCustomer), res.Statements)
	}
	for c, ms := range byCustomer {
		checkAgainstAPI(t, "keyed", ctx, ch, fc, cfg.Loop, c, latestStatements(t, ms, c))
	}
}

// TestStatementTopics: topic names from the template, and the templates refused.
func TestStatementTopics(t *testing.T) {
	sc := pipeline.StatementConfig{Topic: "acme.customer.{customer}.statements"}
	for id, want := range map[string]string{
		"c1":           "acme.customer.c1.statements",
		"c10":          "acme.customer.c10.statements",
		"acme_corp":    "acme.customer.acme_5Fcorp.statements",
		"acme.corp":    "acme.customer.acme_2Ecorp.statements",
		"Zoë/ltd":      "acme.customer.Zo_C3_AB_2Fltd.statements",
		"a-b":          "acme.customer.a-b.statements",
		"c1.statement": "acme.customer.c1_2Estatement.statements",
	} {
		got, err := sc.TopicFor(id)
		if err != nil || got != want {
			t.Errorf("TopicFor(%q) = %q, %v; want %q", id, got, err, want)
		}
	}
	// No customer's topic starts with another's prefix.
	ids := []string{"c1", "c10", "c1.x", "c1_x", "c1-x", "c1_2E"}
	for _, a := range ids {
		pa, _ := sc.TopicFor(a)
		prefix := strings.TrimSuffix(pa, "statements")
		for _, b := range ids {
			pb, _ := sc.TopicFor(b)
			if a != b && strings.HasPrefix(pb, prefix) {
				t.Errorf("the prefix %q of %q's topic matches %q's topic %q", prefix, a, b, pb)
			}
		}
	}
	if _, err := sc.TopicFor(strings.Repeat("x", 240)); err == nil {
		t.Error("a topic over 249 characters was made")
	}
	keyed := pipeline.StatementConfig{Topic: "acme.statements"}
	if got, _ := keyed.TopicFor("c1"); got != "acme.statements" || keyed.PerCustomer() {
		t.Errorf("keyed topic: %q, per customer %t", got, keyed.PerCustomer())
	}
	for _, bad := range []string{"", "acme.{customer}", "acme.{customer}x", "{customer}.{customer}.s", "acme customer.{customer}.s", "acme/{customer}.s", strings.Repeat("a", 250)} {
		if err := pipeline.ValidStatementTopic(bad); err == nil {
			t.Errorf("topic %q accepted", bad)
		}
	}
	for _, ok := range []string{"acme.statements", "{customer}.statements", "acme.customer.{customer}.s"} {
		if err := pipeline.ValidStatementTopic(ok); err != nil {
			t.Errorf("topic %q refused: %v", ok, err)
		}
	}
}
