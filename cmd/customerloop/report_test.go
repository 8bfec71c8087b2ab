package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/cmd/internal/cli"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// TestPrintReport writes the gap report of a small dataset on the real ClickHouse in
// each format, with filters, and checks the figures.
func TestPrintReport(t *testing.T) {
	addr := os.Getenv("CLICKHOUSE_ADDR")
	if addr == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CLICKHOUSE_ADDR is not set; run the tests with make test")
		}
		t.Skip("CLICKHOUSE_ADDR is not set")
	}
	ctx := context.Background()
	db := fmt.Sprintf("report_test_%d", time.Now().UnixNano())
	cfg := pipeline.Config{
		Kafka:      pipeline.KafkaConfig{Brokers: []string{"x:1"}, Group: "g"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: addr, Database: db},
		Streams: []pipeline.StreamConfig{
			{Name: "usage", Kind: pipeline.KindUsage, Topic: "u", DeadLetterTopic: "u.dlq",
				Mapping: pipeline.Mapping{EventID: "id", CustomerID: "c", Product: "p", Timestamp: "ts", Quantity: "q"}},
			{Name: "plans", Kind: pipeline.KindPlan, Topic: "p", DeadLetterTopic: "p.dlq",
				Mapping: pipeline.Mapping{PlanID: "id", CustomerID: "c", Product: "p", Period: "period", Quantity: "q"}},
		},
	}
	conn, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	defer conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db))
	if _, err := ddl.Migrate(ctx, conn, cfg); err != nil {
		t.Fatal(err)
	}
	fc := pipeline.FeedbackConfig{Database: db, UsageTable: "usage_raw", PlanTable: "plans_raw", Grain: pipeline.GrainMonth}
	ddltest.Feedback(t, conn, cfg, fc)
	now := time.Now().UTC().Truncate(time.Second)
	at := func(s string) time.Time { t, _ := time.Parse(time.DateTime, s); return t }
	ddltest.Insert(t, conn, db, cfg.Streams[0],
		[]any{"e1", "acme", "compute", at("2025-03-05 10:00:00"), 60.0, "u", int32(0), int64(1), now, now.UnixMilli()},
		[]any{"e2", "acme", "compute", at("2025-03-20 10:00:00"), 30.0, "u", int32(0), int64(2), now, now.UnixMilli()},
		[]any{"e3", "globex", "storage", at("2025-03-07 10:00:00"), 5.0, "u", int32(0), int64(3), now, now.UnixMilli()})
	ddltest.Insert(t, conn, db, cfg.Streams[1],
		[]any{"p1", "acme", "compute", at("2025-03-01 00:00:00"), 100.0, at("2025-02-10 00:00:00"), (*float64)(nil), "p", int32(0), int64(1), now, now.UnixMilli()},
		[]any{"p2", "acme", "compute", at("2025-03-01 00:00:00"), 120.0, at("2025-03-02 00:00:00"), (*float64)(nil), "p", int32(0), int64(2), now, now.UnixMilli()})

	var out bytes.Buffer
	if err := cli.PrintReport(ctx, &out, conn, db, cli.ReportOptions{Format: "json", View: "all"}); err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Gaps       []feedback.GapRow
		Accuracy   []feedback.AccuracyRow
		ValueAdded []feedback.ValueAddedRow
		Tracking   struct {
			Limit   float64
			Outside []feedback.TrackingRow
		}
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out.String())
	}
	if len(rep.Gaps) != 2 || rep.Gaps[0].Customer != "acme" || *rep.Gaps[0].PlannedLatest != 120 || *rep.Gaps[0].PlannedAtStart != 100 ||
		rep.Gaps[0].Actual != 90 || *rep.Gaps[0].Gap != -30 || *rep.Gaps[0].GapRatio != -0.25 || rep.Gaps[1].PlannedLatest != nil {
		t.Errorf("json gaps:\n%s", out.String())
	}
	// horizon 1 (p1): plan 100 for an actual of 90; horizon 0 (p2): 120.
	if len(rep.Accuracy) != 2 || rep.Accuracy[0].Horizon != 0 || *rep.Accuracy[0].WAPE != 30.0/90 || *rep.Accuracy[1].Bias != 10.0/90 {
		t.Errorf("json accuracy:\n%s", out.String())
	}
	// No usage in February: the naive forecast is 0, its WAPE 90/90; the plans beat it.
	near := func(p *float64, want float64) bool { return p != nil && math.Abs(*p-want) < 1e-12 }
	if va := rep.ValueAdded; len(va) != 2 || !near(va[0].NaiveWAPE, 1) || !near(va[0].FVA, 1-30.0/90) || !va[1].BeatsNaive || !near(va[1].FVA, 1-10.0/90) {
		t.Errorf("json value added:\n%s", out.String())
	}
	// One period with a plan made before it (100 for 90): a tracking signal of -1,
	// inside the default band of 4.
	if rep.Tracking.Limit != 4 || len(rep.Tracking.Outside) != 0 {
		t.Errorf("json tracking:\n%s", out.String())
	}

	out.Reset()
	if err := cli.PrintReport(ctx, &out, conn, db, cli.ReportOptions{Format: "csv", View: "all", Filter: feedback.GapFilter{Customer: "globex", Feedback: &fc}}); err != nil {
		t.Fatal(err)
	}
	records, err := csv.NewReader(&out).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != 2 || records[0][0] != "period" || records[1][1] != "globex" || records[1][3] != "" || records[1][6] != "5" {
		t.Errorf("csv for customer globex: %v", records)
	}

	out.Reset()
	if err := cli.PrintReport(ctx, &out, conn, db, cli.ReportOptions{Format: "table", View: "all",
		Filter: feedback.GapFilter{Product: "compute", From: time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2025, 3, 31, 0, 0, 0, 0, time.UTC)}}); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "-25.0%") || strings.Contains(s, "globex") || !strings.Contains(s, "accuracy by horizon") ||
		!strings.Contains(s, "forecast value added") || !strings.Contains(s, "88.9%") || !strings.Contains(s, "(none)") {
		t.Errorf("table for product compute:\n%s", s)
	}

	// With a band of 0.5, acme is outside it.
	out.Reset()
	if err := cli.PrintReport(ctx, &out, conn, db, cli.ReportOptions{Format: "table", View: "tracking", TrackingLimit: 0.5}); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "band ±0.5") || !strings.Contains(s, "acme") || !strings.Contains(s, "-1.00") || strings.Contains(s, "accuracy") {
		t.Errorf("tracking table with a band of 0.5:\n%s", s)
	}
	out.Reset()
	if err := cli.PrintReport(ctx, &out, conn, db, cli.ReportOptions{Format: "csv", View: "fva"}); err != nil {
		t.Fatal(err)
	}
	if records, err := csv.NewReader(&out).ReadAll(); err != nil || len(records) != 3 || records[0][5] != "fva" || records[2][6] != "true" {
		t.Errorf("csv of fva: %v %v", records, err)
	}
}

// TestOverrideAddr: --clickhouse reads through one address, and over TLS still checks the
// loop's own server name rather than the forward's.
func TestOverrideAddr(t *testing.T) {
	ch := pipeline.ClickHouseConfig{Addr: "clickhouse-0.clickhouse:9440", Failover: []string{"clickhouse-1.clickhouse:9440"},
		TLS: &pipeline.TLSConfig{CAPEM: []byte("ca")}}
	overrideAddr(&ch, "127.0.0.1:9440")
	if got := ch.Addresses(); len(got) != 1 || got[0] != "127.0.0.1:9440" {
		t.Errorf("addresses = %v, want only the forward", got)
	}
	if ch.TLS.ServerName != "clickhouse-0.clickhouse" || string(ch.TLS.CAPEM) != "ca" {
		t.Errorf("TLS = %+v, want the CA kept and the loop's first host as the server name", ch.TLS)
	}
	named := pipeline.ClickHouseConfig{Addr: "10.0.0.1:9440", TLS: &pipeline.TLSConfig{ServerName: "clickhouse.example.com"}}
	overrideAddr(&named, "127.0.0.1:9440")
	if named.TLS.ServerName != "clickhouse.example.com" {
		t.Errorf("the loop's own server name became %q", named.TLS.ServerName)
	}
	plain := pipeline.ClickHouseConfig{Addr: "clickhouse:9000"}
	overrideAddr(&plain, "127.0.0.1:9000")
	if plain.TLS != nil || plain.Addr != "127.0.0.1:9000" {
		t.Errorf("plain connection = %+v", plain)
	}
}
