package customer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/segmentio/kafka-go"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/feedback"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
)

// staticSource serves fixed channels, as the manager's source does from its cache.
type staticSource map[string]*Channel

func (s staticSource) Channel(_ context.Context, namespace, name string) (*Channel, error) {
	return s[namespace+"/"+name], nil
}

// channelStack is a loop with usage and plans of three customers in the real
// ClickHouse, its plan topic on a real broker, and the API served over loopback.
type channelStack struct {
	url       string
	brokers   []string
	topic     string
	holder    *Holder
	data      map[string][]byte
	statement func(ctx context.Context, customer string) (*feedback.Statement, error)
}

var channelCustomers = []string{"acme-a", "acme-b", "acme-c"}

func newChannelStack(t *testing.T) *channelStack {
	t.Helper()
	addr := stacktest.ClickhouseAddr(t)
	ctx := context.Background()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_channel"))
	cfg.ClickHouse.Addr = addr
	conn := ddltest.ApplyFeedback(t, cfg, fc)
	now := time.Now().UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	var usage, plans [][]any
	offset := int64(0)
	for ci, c := range channelCustomers {
		for _, p := range []string{"compute", "storage"} {
			for m := -3; m <= 1; m++ {
				period := month.AddDate(0, m, 0)
				offset++
				conf := 0.5
				plans = append(plans, []any{fmt.Sprintf("plan-%d", offset), c, p, period, float64(100 * (ci + 1)), period.AddDate(0, -1, 0), &conf, "p", int32(0), offset, now, now.UnixMilli()})
				if m > 0 {
					continue
				}
				offset++
				ts := period.Add(time.Hour)
				usage = append(usage, []any{fmt.Sprintf("e%d", offset), c, p, ts, float64(90 * (ci + 1)), "u", int32(0), offset, now, now.UnixMilli()})
			}
		}
	}
	if err := ddl.InsertRows(ctx, conn, fc.Database, cfg.Streams[0], usage); err != nil {
		t.Fatal(err)
	}
	if err := ddl.InsertRows(ctx, conn, fc.Database, cfg.Streams[1], plans); err != nil {
		t.Fatal(err)
	}
	// Dead letters of each customer, in topics named after them, so that a row of
	// another customer's would show as their bytes; and one of no customer.
	var dead [][]any
	for ci, c := range channelCustomers {
		for i := range 3 + ci {
			dead = append(dead, []any{c, "usage", "wrong_type", c + "-events", int32(0), int64(i), month, now})
		}
	}
	dead = append(dead, []any{"", "usage", "invalid_json", "nobody-events", int32(0), int64(0), month, now})
	ddltest.InsertInto(t, conn, fc.Database, pipeline.DeadLettersTable, dead...)
	planStream := cfg.Streams[1]
	brokers := stacktest.StartBroker(t, 3, planStream.Topic)
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: planStream.Topic, Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond}
	t.Cleanup(func() { _ = w.Close() })
	planner, err := NewPlanner(planStream, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &channelStack{brokers: brokers, topic: planStream.Topic, holder: &Holder{}}
	s.statement = func(ctx context.Context, customer string) (*feedback.Statement, error) {
		return feedback.ReadStatement(ctx, conn, fc, "default/acme", customer, time.Now())
	}
	deadLetters := func(ctx context.Context, customer string) ([]feedback.StatementDeadLetters, error) {
		d, err := feedback.ReadDeadLetters(ctx, conn, fc, customer)
		return feedback.StatementDeadLettersOf(d), err
	}
	s.data = map[string][]byte{
		KeySigningKey: bytes.Repeat([]byte("k"), 32),
		"alice":       tokenEntry("acme-a", "alice-token-0123456789", ""),
		"bob":         tokenEntry("acme-b", "bob-token-0123456789", ""),
		"alice-old":   tokenEntry("acme-a", "alice-old-token-0123456789", now.Add(-time.Hour).Format(time.RFC3339)),
	}
	s.reload(t)
	ch := &Channel{
		Loop: "default/acme", Tokens: s.holder, Limiter: NewLimiter(10000, 10000),
		Statement:   s.statement,
		DeadLetters: deadLetters,
		Planner:     planner,
	}
	// The attacks fail hundreds of times from one client: the failure budget is large.
	srv := httptest.NewServer(NewServer(staticSource{"default/acme": ch}, testr.New(t)).LimitFailures(10000, 10000))
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func tokenEntry(customer, token, expires string) []byte {
	sum := sha256.Sum256([]byte(token))
	b, _ := json.Marshal(map[string]string{"customer": customer, "sha256": hex.EncodeToString(sum[:]), "expires": expires})
	if expires == "" {
		b, _ = json.Marshal(map[string]string{"customer": customer, "sha256": hex.EncodeToString(sum[:])})
	}
	return b
}

func (s *channelStack) reload(t *testing.T) {
	reg, errs := Parse("default/acme", s.data)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	s.holder.Store(reg)
}

// raw sends a request line as written, so that no client cleans its path.
func (s *channelStack) raw(t *testing.T, method, target string, headers []string, body string) (int, string) {
	t.Helper()
	host := strings.TrimPrefix(s.url, "http://")
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, target, host)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	if body != "" {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	keys := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	head := ""
	for _, k := range keys {
		head += k + ": " + strings.Join(resp.Header[k], ",") + "\n"
	}
	return resp.StatusCode, head + "\n" + string(out)
}

// TestChannelIsolation attacks the customer API as another customer, or nobody, would:
// every endpoint, with each customer's token and with broken, expired, foreign and
// removed ones, through spellings of the path, queries, headers and bodies that name
// another customer. It counts, in every response, the bytes of any customer other than
// the token's, and requires none; and the plans that reach the topic carry only the
// customers whose tokens sent them.
func TestChannelIsolation(t *testing.T) {
	s := newChannelStack(t)
	key := s.data[KeySigningKey]
	now := time.Now()
	aliceSigned, _, err := Mint(key, "default/acme", "acme-a", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	otherLoop, _, err := Mint(key, "default/other", "acme-b", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	type caller struct {
		name, token, customer string // customer "" : refused
	}
	callers := []caller{
		{"alice", "alice-token-0123456789", "acme-a"},
		{"bob", "bob-token-0123456789", "acme-b"},
		{"alice signed", aliceSigned, "acme-a"},
		{"alice expired", "alice-old-token-0123456789", ""},
		{"another loop's signed token", otherLoop, ""},
		{"tampered signed token", aliceSigned[:len(aliceSigned)-2] + "AA", ""},
		{"malformed", "not a token", ""},
		{"oversized", strings.Repeat("a", 5000), ""},
		{"empty", "", ""},
		{"SQL", "' OR 1=1 --", ""},
	}
	good := "/v1/loops/default/acme/"
	paths := []struct {
		target string
		ok     bool // the path names the endpoint exactly
	}{
		{good + "statement", true},
		{good + "page", true},
		{good + "page?customer=acme-b", false},
		{"/v1/loops/default/acme/PAGE", false},
		{good + "statement?customer=acme-b", false},
		{good + "statement?customer_id=acme-b%27%20OR%201%3D1--", false},
		{"/v1/loops/default/acme/../acme/statement", false},
		{"/v1/loops/default/acme/%2e%2e/acme/statement", false},
		{"/v1/loops/default/acme/st%61tement", false},
		{"/V1/loops/default/acme/statement", false},
		{"/v1/loops/Default/acme/statement", false},
		{"/v1/loops/default/acme/statement/", false},
		{"/v1/loops/default//acme/statement", false},
		{"/v1/loops/default/acme%2fstatement", false},
		{"/v1/loops/default/acme/statement%20", false},
		{"/v1/loops/default/acme-b/statement", false},
		{"/v1/loops/default/acme/statement;customer=acme-b", false},
		{good + "consent", false}, // the loop has no consent stream
		{good + "deadletters", true},
		{good + "deadletters?customer=acme-b", false},
		{good + "deadletters/", false},
		{"/v1/loops/default/acme/deadLetters", false},
		{"/v1/loops/default/acme/dead%6cetters", false},
	}
	extra := [][]string{
		nil,
		{"X-Customer-Id: acme-b"},
		{"Forwarded: for=10.0.0.1;customer=acme-b"},
		{"Cookie: customer=acme-b"},
	}
	checked, served := 0, 0
	for _, c := range callers {
		for _, p := range paths {
			for _, h := range extra {
				headers := append([]string{"Authorization: Bearer " + c.token}, h...)
				status, body := s.raw(t, http.MethodGet, p.target, headers, "")
				checked++
				leak(t, c.name+" GET "+p.target, c.customer, body)
				if status == http.StatusOK {
					served++
					if c.customer == "" || !p.ok {
						t.Errorf("%s GET %s %v: 200, want a refusal", c.name, p.target, h)
					}
					own := `"customer":"` + c.customer + `"`
					if strings.HasSuffix(p.target, "/page") {
						own = `<h1 id="customer">` + c.customer + `</h1>`
					}
					if !strings.Contains(body, own) {
						t.Errorf("%s GET %s: the statement is not %s's: %.300s", c.name, p.target, c.customer, body)
					}
					// The customer's own dead letters are there, in full.
					if !strings.Contains(body, c.customer+"-events") || strings.Contains(body, "nobody-events") {
						t.Errorf("%s GET %s: not the customer's own dead letters alone: %.600s", c.name, p.target, body)
					}
				} else if c.customer != "" && p.ok && h == nil {
					t.Errorf("%s GET %s: %d, want 200: %.300s", c.name, p.target, status, body)
				}
				if c.customer == "" && p.ok && status != http.StatusUnauthorized {
					t.Errorf("%s GET %s: %d, want 401", c.name, p.target, status)
				}
			}
		}
		// Two tokens at once: refused, whoever's they are.
		status, body := s.raw(t, http.MethodGet, good+"statement",
			[]string{"Authorization: Bearer " + c.token, "Authorization: Bearer bob-token-0123456789"}, "")
		checked++
		leak(t, c.name+" with two tokens", "", body)
		if status != http.StatusUnauthorized {
			t.Errorf("%s with two Authorization headers: %d, want 401", c.name, status)
		}
	}
	// Alice's dead letters, as the endpoint answers them.
	status, body := s.raw(t, http.MethodGet, good+"deadletters", []string{"Authorization: Bearer alice-token-0123456789"}, "")
	var dl DeadLetters
	if status != http.StatusOK || json.Unmarshal([]byte(body[strings.Index(body, "\n\n")+2:]), &dl) != nil || dl.Customer != "acme-a" || dl.Loop != "default/acme" ||
		len(dl.DeadLetters) != 1 || dl.DeadLetters[0].Count != 3 || len(dl.DeadLetters[0].Reasons) != 1 || len(dl.DeadLetters[0].Reasons[0].First) != 3 ||
		dl.DeadLetters[0].Reasons[0].First[2].Offset != 2 || dl.DeadLetters[0].Reasons[0].First[2].Topic != "acme-a-events" {
		t.Errorf("alice's dead letters: %d %s", status, body)
	}
	// Every refusal reads the same, whatever its cause.
	_, unknown := s.raw(t, http.MethodGet, good+"statement", []string{"Authorization: Bearer nobody-0123456789"}, "")
	_, expired := s.raw(t, http.MethodGet, good+"statement", []string{"Authorization: Bearer alice-old-token-0123456789"}, "")
	_, noLoop := s.raw(t, http.MethodGet, "/v1/loops/default/nothing/statement", []string{"Authorization: Bearer alice-token-0123456789"}, "")
	if stripDate(unknown) != stripDate(expired) || stripDate(unknown) != stripDate(noLoop) {
		t.Errorf("refusals differ:\n%s\n---\n%s\n---\n%s", unknown, expired, noLoop)
	}

	// Plans: the customer is the token's, never the body's.
	plan := func(token, body string) (int, string) {
		return s.raw(t, http.MethodPost, good+"plans", []string{"Authorization: Bearer " + token}, body)
	}
	period := time.Now().UTC().AddDate(0, 2, 0).Format("2006-01") + "-01"
	for _, b := range []string{
		`{"product":"compute","period":"` + period + `","quantity":42,"customer":"acme-b"}`,
		`{"product":"compute","period":"` + period + `","quantity":42,"customerId":"acme-b"}`,
		`{"product":"compute","period":"` + period + `","quantity":42,"customer_id":"acme-b"}`,
		`{"product":"compute","period":"` + period + `","quantity":-1}`,
		`{"product":"compute","period":"soon","quantity":1}`,
		`{"product":"compute","period":"` + period + `","quantity":1}{"product":"x"}`,
		`{"product":"compute","period":"` + period + `","quantity":"1e400"}`,
		`[` + strings.Repeat(`{"a":1},`, 1000) + `{}]`,
	} {
		status, body := plan("alice-token-0123456789", b)
		leak(t, "alice's plan "+b[:min(60, len(b))], "acme-a", body)
		if status != http.StatusBadRequest {
			t.Errorf("plan %.80s: %d, want 400: %s", b, status, body)
		}
	}
	for _, c := range []struct{ token, customer string }{{"alice-token-0123456789", "acme-a"}, {aliceSigned, "acme-a"}, {"bob-token-0123456789", "acme-b"}} {
		for range 2 { // a retry is the same plan
			status, body := plan(c.token, `{"product":"compute","period":"`+period+`","quantity":42,"planId":"p'); DROP TABLE x; --"}`)
			leak(t, "plan of "+c.customer, c.customer, body)
			if status != http.StatusAccepted {
				t.Errorf("%s's plan: %d, want 202: %s", c.customer, status, body)
			}
		}
	}
	status, _ = plan("alice-old-token-0123456789", `{"product":"compute","period":"`+period+`","quantity":1}`)
	if status != http.StatusUnauthorized {
		t.Errorf("a plan with an expired token: %d, want 401", status)
	}

	// A token removed from the Secret, and a signed token revoked, stop at once.
	delete(s.data, "bob")
	revoked, jti, err := Mint(key, "default/acme", "acme-a", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := s.raw(t, http.MethodGet, good+"statement", []string{"Authorization: Bearer " + revoked}, ""); st != http.StatusOK {
		t.Fatalf("a fresh signed token: %d", st)
	}
	s.data[KeyRevoked] = []byte(`["` + jti + `"]`)
	s.reload(t)
	for name, tok := range map[string]string{"removed": "bob-token-0123456789", "revoked": revoked} {
		st, body := s.raw(t, http.MethodGet, good+"statement", []string{"Authorization: Bearer " + tok}, "")
		leak(t, name, "", body)
		if st != http.StatusUnauthorized {
			t.Errorf("a %s token: %d, want 401", name, st)
		}
	}

	// What reached the plan topic: the three accepted customers' plans, each sent twice,
	// under their own ids, and nothing else.
	msgs := testkit.ReadTopic(t, s.brokers, s.topic)
	got := map[string]int{}
	for _, m := range msgs {
		var v map[string]any
		if err := json.Unmarshal(m.Value, &v); err != nil {
			t.Fatal(err)
		}
		got[fmt.Sprint(v["customer"])]++
		if string(m.Key) != v["customer"] {
			t.Errorf("a plan of %v is keyed %q", v["customer"], m.Key)
		}
	}
	if got["acme-a"] != 4 || got["acme-b"] != 2 || len(got) != 2 {
		t.Errorf("plans on the topic by customer: %v, want acme-a 4, acme-b 2", got)
	}
	if served == 0 || checked < 400 {
		t.Errorf("only %d requests checked, %d served: the test reads nothing", checked, served)
	}
	t.Logf("%d requests checked, %d served a statement; %d plans on the topic", checked, served, len(msgs))
}

// leak fails the test when body holds the id of a customer other than own (or any,
// with own empty), counting their bytes.
func leak(t *testing.T, what, own, body string) {
	t.Helper()
	n := 0
	for _, c := range channelCustomers {
		if c != own {
			n += strings.Count(body, c) * len(c)
		}
	}
	if n > 0 {
		t.Errorf("%s: %d bytes of other customers in the response: %.400s", what, n, body)
	}
}

func stripDate(resp string) string {
	var out []string
	for _, l := range strings.Split(resp, "\n") {
		if !strings.HasPrefix(l, "Date: ") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
