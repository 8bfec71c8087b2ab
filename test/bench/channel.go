package main

// The customer channel's figures: one customer's statement through the API, and a plan
// submitted through it, over the feedback section's history.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-logr/logr"
	"github.com/segmentio/kafka-go"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/customer"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// channelRequests is how many requests each channel figure times.
const channelRequests = 200

type benchChannels map[string]*customer.Channel

func (b benchChannels) Channel(_ context.Context, namespace, name string) (*customer.Channel, error) {
	return b[namespace+"/"+name], nil
}

// channelFigures serves the loop's customer channel on loopback, as the manager does,
// and times channelRequests statements of random customers (p50 and p95) and, with
// plans, as many plans submitted by them to the plan topic.
func channelFigures(ctx context.Context, ch driver.Conn, cfg pipeline.Config, fc pipeline.FeedbackConfig, suffix string, plans bool) ([]figure, error) {
	data := map[string][]byte{}
	token := func(i int) string { return fmt.Sprintf("bench-token-%06d", i) }
	for i := range fbCustomers {
		sum := sha256.Sum256([]byte(token(i)))
		b, _ := json.Marshal(map[string]string{"customer": fbCustomer(i), "sha256": hex.EncodeToString(sum[:])})
		data[fmt.Sprintf("t%d", i)] = b
	}
	reg, errs := customer.Parse(cfg.Loop, data)
	if len(errs) > 0 {
		return nil, errs[0]
	}
	holder := &customer.Holder{}
	holder.Store(reg)
	w := &kafka.Writer{Addr: kafka.TCP(cfg.Kafka.Brokers...), Topic: cfg.Streams[1].Topic, Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, AllowAutoTopicCreation: true}
	defer w.Close()
	planner, err := customer.NewPlanner(cfg.Streams[1], w, nil)
	if err != nil {
		return nil, err
	}
	c := &customer.Channel{Loop: cfg.Loop, Tokens: holder, Limiter: customer.NewLimiter(1e6, 1e6), Planner: planner,
		Statement: func(ctx context.Context, id string) (*feedback.Statement, error) {
			return feedback.ReadStatement(ctx, ch, fc, cfg.Loop, id, time.Now())
		}}
	srv := httptest.NewServer(customer.NewServer(benchChannels{cfg.Loop: c}, logr.Discard()))
	defer srv.Close()
	base := srv.URL + "/v1/loops/" + cfg.Loop + "/"
	rng := rand.New(rand.NewPCG(7, 11))
	call := func(method, path string, i int, body string) (float64, error) {
		req, err := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+token(i))
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ms := float64(time.Since(t0).Microseconds()) / 1000
		if resp.StatusCode/100 != 2 {
			return 0, fmt.Errorf("%s %s: %s: %.200s", method, path, resp.Status, b)
		}
		return ms, nil
	}
	var out []figure
	percentiles := func(key, sfx, label string, ms []float64) {
		slices.Sort(ms)
		p50, p95 := ms[len(ms)/2], ms[len(ms)*95/100]
		out = append(out, figure{key: key + "_p50_ms" + sfx, label: label + ", p50 (ms)", value: p50},
			figure{key: key + "_p95_ms" + sfx, label: label + ", p95 (ms)", value: p95})
		step("feedback: %s: p50 %.1f ms, p95 %.1f ms over %d requests", label, p50, p95, len(ms))
	}
	// A warm-up request, then the timed ones.
	if _, err := call(http.MethodGet, "statement", 0, ""); err != nil {
		return nil, err
	}
	var ms []float64
	for range channelRequests {
		t, err := call(http.MethodGet, "statement", rng.IntN(fbCustomers), "")
		if err != nil {
			return nil, err
		}
		ms = append(ms, t)
	}
	percentiles("customer_api", suffix, "one customer's statement through the customer API at "+strings.TrimPrefix(suffix, "_"), ms)
	if !plans {
		return out, nil
	}
	next := time.Now().UTC().AddDate(0, 1, 0).Format("2006-01") + "-01"
	ms = ms[:0]
	for range channelRequests {
		body := fmt.Sprintf(`{"product":"product-%d","period":%q,"quantity":%d}`, rng.IntN(fbProducts), next, 500+rng.IntN(1000))
		t, err := call(http.MethodPost, "plans", rng.IntN(fbCustomers), body)
		if err != nil {
			return nil, err
		}
		ms = append(ms, t)
	}
	percentiles("customer_plan_submit", "", "a plan submitted through the customer API", ms)
	return out, nil
}
