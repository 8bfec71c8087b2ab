package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/segmentio/kafka-go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/customer"
	"customerloop.dev/customerloop/pipeline/feedback"
	"customerloop.dev/customerloop/test/testkit"
)

// TestCustomerChannel serves a loop's customer channel as the manager does, from its
// spec and its tokens Secret: a customer reads their statement, a token added to the
// Secret counts at once and one removed stops at once, a plan submitted through the API
// is ingested by the loop's workers and shows in the customer's next statement, and a
// channel without feedback is refused by the API server.
func TestCustomerChannel(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	useClickHouseSecret(t, loop)
	tokens := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-tokens", Namespace: loop.Namespace},
		Data: map[string][]byte{"alice": tokenJSON("acme-a", "alice-token-0123456789")}}
	if err := k8s.Create(ctx, tokens); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), tokens) })
	loop.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "plans"}
	loop.Spec.CustomerChannel = &loopsv1alpha1.CustomerChannelSpec{TokensSecretRef: loopsv1alpha1.ChannelSecretRef{Name: tokens.Name},
		Statements: &loopsv1alpha1.ChannelStatementsSpec{Topic: loop.Name + ".customer.{customer}.statements", Interval: "10s"}}

	// A channel needs feedback: refused by the API server without it.
	bad := loop.DeepCopy()
	bad.Name += "-nofeedback"
	bad.Spec.Feedback = nil
	if err := k8s.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "customerChannel needs feedback") {
		_ = k8s.Delete(ctx, bad)
		t.Errorf("a channel without feedback: %v, want refused", err)
	}
	// Statement topics: {customer} once, followed by a dot.
	for topic, msg := range map[string]string{
		"acme.customer.{customer}":              "must be followed by a dot",
		"acme.{customer}.{customer}.statements": "may appear once",
		"acme customer.{customer}.s":            "spec.customerChannel.statements.topic",
	} {
		bad := loop.DeepCopy()
		bad.Name += "-badtopic"
		bad.Spec.CustomerChannel.Statements = &loopsv1alpha1.ChannelStatementsSpec{Topic: topic}
		if err := k8s.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), msg) {
			_ = k8s.Delete(ctx, bad)
			t.Errorf("statement topic %q: %v, want refused with %q", topic, err, msg)
		}
	}

	month := time.Now().UTC().Format("2006-01") + "-01"
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	produceJSON(t, loop.Spec.Streams[1].Topic, []string{
		`{"id":"p1","customer":"acme-a","product":"compute","period":"` + month + `","qty":100}`,
		`{"id":"p2","customer":"acme-b","product":"compute","period":"` + month + `","qty":200}`,
	})
	produceJSON(t, loop.Spec.Streams[0].Topic, []string{
		fmt.Sprintf(`{"id":"e1","customer":"acme-a","product":"compute","ts":%d,"qty":7}`, time.Now().Add(-time.Minute).Unix()),
		fmt.Sprintf(`{"id":"e2","customer":"acme-b","product":"compute","ts":%d,"qty":9}`, time.Now().Add(-time.Minute).Unix()),
	})
	testkit.Eventually(t, 2*time.Minute, "the loop ingests its rows", func() (bool, string) {
		l := get(t, loop)
		return l.Status.RowsIngested == 4, fmt.Sprintf("rows %d", l.Status.RowsIngested)
	})

	call := serveChannels(t, loop)
	statement := func(token string) (int, *feedback.Statement) {
		status, body := call(http.MethodGet, "statement", token, "")
		if status != http.StatusOK {
			return status, nil
		}
		var st feedback.Statement
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("statement %s: %v", body, err)
		}
		return status, &st
	}

	status, st := statement("alice-token-0123456789")
	if status != http.StatusOK || st.Customer != "acme-a" || len(st.Products) != 1 || st.Consent.State != "granted" {
		t.Fatalf("alice's statement: %d %+v", status, st)
	}
	if p := st.Products[0].Periods; len(p) != 1 || p[0].PlannedLatest == nil || *p[0].PlannedLatest != 100 || p[0].Actual == nil || *p[0].Actual != 7 {
		t.Errorf("alice's month: %+v, want planned 100 and actual 7", p)
	}
	if status, _ := statement("bob-token-0123456789"); status != http.StatusUnauthorized {
		t.Errorf("bob before his token is in the Secret: %d, want 401", status)
	}

	// A token added to the Secret counts at once; so does one removed.
	tokens.Data["bob"] = tokenJSON("acme-b", "bob-token-0123456789")
	if err := k8s.Update(ctx, tokens); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "bob's token counts", func() (bool, string) {
		status, st := statement("bob-token-0123456789")
		return status == http.StatusOK && st.Customer == "acme-b", fmt.Sprint(status)
	})
	delete(tokens.Data, "alice")
	if err := k8s.Update(ctx, tokens); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "alice's token stops", func() (bool, string) {
		status, _ := statement("alice-token-0123456789")
		return status == http.StatusUnauthorized, fmt.Sprint(status)
	})

	// Bob's statement of the month arrives on his own topic.
	bobTopic := loop.Name + ".customer.acme-b.statements"
	bobOnTopic := func() (*feedback.StatementPeriod, int) {
		var latest feedback.Statement
		n := 0
		for _, m := range testkit.ReadTopic(t, brokers, bobTopic) {
			var st feedback.Statement
			if err := json.Unmarshal(m.Value, &st); err != nil {
				t.Fatalf("%s: %v", bobTopic, err)
			}
			if st.Customer != "acme-b" || string(m.Key) != "acme-b" {
				t.Fatalf("bob's topic carries %q keyed %q", st.Customer, m.Key)
			}
			n++
			if st.Version > latest.Version {
				latest = st
			}
		}
		if len(latest.Products) != 1 || len(latest.Products[0].Periods) != 1 || latest.Products[0].Periods[0].Period.Format(time.DateOnly) != month {
			return nil, n
		}
		return &latest.Products[0].Periods[0], n
	}
	testkit.Eventually(t, time.Minute, "bob's statement on his topic", func() (bool, string) {
		p, n := bobOnTopic()
		return p != nil && p.PlannedLatest != nil && *p.PlannedLatest == 200 && *p.Actual == 9, fmt.Sprintf("%d statements, latest %+v", n, p)
	})

	// Bob revises his plan through the API; the loop's workers store it, and his next
	// statement has it.
	status, body := call(http.MethodPost, "plans", "bob-token-0123456789", `{"product":"compute","period":"`+month+`","quantity":250}`)
	if status != http.StatusAccepted {
		t.Fatalf("bob's plan: %d %s", status, body)
	}
	testkit.Eventually(t, time.Minute, "bob's revised plan in his statement", func() (bool, string) {
		_, st := statement("bob-token-0123456789")
		if st == nil || len(st.Products) != 1 {
			return false, fmt.Sprintf("%+v", st)
		}
		p := st.Products[0].Periods[0]
		return p.PlannedLatest != nil && *p.PlannedLatest == 250 && p.Versions == 2, fmt.Sprintf("%+v", p)
	})
	// The manager publishes the revised statement to bob's own topic, under a higher
	// version than the one before; alice's topic holds only hers.
	testkit.Eventually(t, time.Minute, "bob's revised statement on his topic", func() (bool, string) {
		p, n := bobOnTopic()
		return p != nil && *p.PlannedLatest == 250 && n >= 2, fmt.Sprintf("%d statements, latest %+v", n, p)
	})
	for _, m := range testkit.ReadTopic(t, brokers, loop.Name+".customer.acme-a.statements") {
		if strings.Contains(string(m.Value), "acme-b") || string(m.Key) != "acme-a" {
			t.Errorf("alice's topic carries %s keyed %q", m.Value, m.Key)
		}
	}
	if cc := get(t, loop).Status.CustomerChannel; cc == nil || cc.StatementsPublished < 3 || cc.LastRoundTime == nil || cc.Message != "" {
		t.Errorf("status.customerChannel = %+v, want at least 3 statements published and a round", cc)
	}

	// Without the Secret, nobody is served.
	if err := k8s.Delete(ctx, tokens); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "no Secret, no channel", func() (bool, string) {
		status, _ := statement("bob-token-0123456789")
		return status == http.StatusUnauthorized, fmt.Sprint(status)
	})
}

// serveChannels serves the customer channels as the manager does, for the test's
// length, and returns a call of the loop's API: method, path under the loop, token and
// body give the status and the body.
func serveChannels(t *testing.T, loop *loopsv1alpha1.CustomerLoop) func(method, path, token, body string) (int, string) {
	srv := httptest.NewServer(customer.NewServer(&CustomerChannels{Client: k8s, Log: testr.New(t)}, testr.New(t)))
	t.Cleanup(srv.Close)
	base := srv.URL + "/v1/loops/" + loop.Namespace + "/" + loop.Name + "/"
	return func(method, path, token, body string) (int, string) {
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}

func tokenJSON(customer, token string) []byte {
	sum := sha256.Sum256([]byte(token))
	b, _ := json.Marshal(map[string]string{"customer": customer, "sha256": hex.EncodeToString(sum[:])})
	return b
}

// TestCustomerChannelHashedIDs serves the channel of a loop that stores customer ids as
// their HMAC: the token names the clear id, the statement is read under the stored one
// and shows the clear one to its customer, a plan through the API is keyed by the
// stored id, and ClickHouse holds no clear id.
func TestCustomerChannelHashedIDs(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	useClickHouseSecret(t, loop)
	key := []byte("hashed-ids-key-0123456789abcdef0")
	secrets := []*corev1.Secret{
		{ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-hmac", Namespace: loop.Namespace}, Data: map[string][]byte{"hmac-key": key}},
		{ObjectMeta: metav1.ObjectMeta{Name: loop.Name + "-tokens", Namespace: loop.Namespace},
			Data: map[string][]byte{"alice": tokenJSON("acme-a", "alice-token-0123456789")}},
	}
	for _, s := range secrets {
		if err := k8s.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), s) })
	}
	loop.Spec.Privacy = &loopsv1alpha1.PrivacySpec{HMACKeySecretRef: loopsv1alpha1.HMACKeySecretRef{Name: secrets[0].Name}}
	for i := range loop.Spec.Streams {
		loop.Spec.Streams[i].PII = &loopsv1alpha1.StreamPII{CustomerID: "Hash"}
	}
	loop.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "plans"}
	loop.Spec.CustomerChannel = &loopsv1alpha1.CustomerChannelSpec{TokensSecretRef: loopsv1alpha1.ChannelSecretRef{Name: secrets[1].Name},
		Statements: &loopsv1alpha1.ChannelStatementsSpec{Topic: loop.Name + ".customer.{customer}.statements", Interval: "10s"}}
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	month := time.Now().UTC().Format("2006-01") + "-01"
	produceJSON(t, loop.Spec.Streams[1].Topic, []string{
		`{"id":"p1","customer":"acme-a","product":"compute","period":"` + month + `","qty":100}`,
		`{"id":"p2","customer":"acme-b","product":"compute","period":"` + month + `","qty":200}`,
	})
	produceJSON(t, loop.Spec.Streams[0].Topic, []string{
		fmt.Sprintf(`{"id":"e1","customer":"acme-a","product":"compute","ts":%d,"qty":7}`, time.Now().Add(-time.Minute).Unix()),
		fmt.Sprintf(`{"id":"e2","customer":"acme-a","product":"compute","ts":%d,"qty":"many"}`, time.Now().Add(-time.Minute).Unix()),
	})
	testkit.Eventually(t, 2*time.Minute, "the loop ingests its rows", func() (bool, string) {
		l := get(t, loop)
		return l.Status.RowsIngested == 3, fmt.Sprintf("rows %d", l.Status.RowsIngested)
	})

	serve := serveChannels(t, loop)
	call := func(method, path, body string) (int, string) {
		return serve(method, path, "alice-token-0123456789", body)
	}
	status, body := call(http.MethodGet, "statement", "")
	var st feedback.Statement
	if status != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil || st.Customer != "acme-a" || len(st.Products) != 1 {
		t.Fatalf("alice's statement: %d %s", status, body)
	}
	if p := st.Products[0].Periods; len(p) != 1 || p[0].PlannedLatest == nil || *p[0].PlannedLatest != 100 || p[0].Actual == nil || *p[0].Actual != 7 {
		t.Errorf("alice's month: %+v, want planned 100 and actual 7", p)
	}
	if strings.Contains(body, pipeline.HashPII(key, []byte("acme-a"))) || strings.Contains(body, "acme-b") {
		t.Errorf("the statement shows a stored id or another customer: %s", body)
	}
	// Her malformed event is among her dead letters, found under her stored id.
	testkit.Eventually(t, time.Minute, "alice's dead letter", func() (bool, string) {
		status, body := call(http.MethodGet, "deadletters", "")
		var dl customer.DeadLetters
		if status != http.StatusOK || json.Unmarshal([]byte(body), &dl) != nil || dl.Customer != "acme-a" {
			return false, fmt.Sprint(status, body)
		}
		if strings.Contains(body, pipeline.HashPII(key, []byte("acme-a"))) || strings.Contains(body, "acme-b") {
			t.Fatalf("the dead letters show a stored id or another customer: %s", body)
		}
		return len(dl.DeadLetters) == 1 && dl.DeadLetters[0].Count == 1 && dl.DeadLetters[0].Reasons[0].Reason == string(pipeline.ReasonWrongType), body
	})
	if status, body := call(http.MethodPost, "plans", `{"product":"compute","period":"`+month+`","quantity":250}`); status != http.StatusAccepted {
		t.Fatalf("alice's plan: %d %s", status, body)
	}
	testkit.Eventually(t, time.Minute, "alice's plan in her statement", func() (bool, string) {
		_, body := call(http.MethodGet, "statement", "")
		var st feedback.Statement
		if json.Unmarshal([]byte(body), &st) != nil || len(st.Products) != 1 {
			return false, body
		}
		p := st.Products[0].Periods[0]
		return p.PlannedLatest != nil && *p.PlannedLatest == 250, body
	})
	// The plan is keyed by the stored id, and ClickHouse holds no clear id.
	stored := pipeline.HashPII(key, []byte("acme-a"))
	keyed := 0
	for _, m := range testkit.ReadTopic(t, brokers, loop.Spec.Streams[1].Topic) {
		if strings.Contains(string(m.Value), `"qty":250`) {
			keyed++
			if string(m.Key) != stored {
				t.Errorf("the channel's plan is keyed %q, want the stored id", m.Key)
			}
		}
	}
	if keyed != 1 {
		t.Errorf("%d plans of 250 on the topic, want the channel's one", keyed)
	}
	// Alice's statements go to a topic named by her stored id; no topic name, key or
	// statement on it holds a clear id.
	aliceTopic := loop.Name + ".customer." + stored + ".statements"
	testkit.Eventually(t, time.Minute, "alice's statement on her topic", func() (bool, string) {
		msgs := testkit.ReadTopic(t, brokers, aliceTopic)
		for _, m := range msgs {
			if string(m.Key) != stored || strings.Contains(string(m.Value), "acme-") {
				t.Fatalf("alice's topic carries %s keyed %q", m.Value, m.Key)
			}
		}
		return len(msgs) > 0, fmt.Sprintf("%d messages", len(msgs))
	})
	conn, err := kafka.Dial("tcp", brokers[0])
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions()
	_ = conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		// This loop's topics: the test broker holds other tests' too.
		if strings.HasPrefix(p.Topic, loop.Name+".") && strings.Contains(p.Topic, "acme-") {
			t.Errorf("topic %q names a clear customer id", p.Topic)
		}
	}
	for _, table := range []string{"usage_raw", "plans_raw", pipeline.DeadLettersTable, pipeline.ChannelTable} {
		var n uint64
		if err := ch.QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(loop.Spec.ClickHouse.Database, table)+
			" WHERE customer_id IN ('acme-a', 'acme-b')").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%s holds %d rows under a clear customer id", table, n)
		}
	}
}
