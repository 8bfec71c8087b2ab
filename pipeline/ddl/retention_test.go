package ddl

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

func TestExpiredPartitions(t *testing.T) {
	now := time.Date(2026, 11, 29, 13, 0, 0, 0, time.UTC)
	parts := []uint32{202607, 202608, 202609, 202610, 202611, 202612}
	for days, want := range map[int][]uint32{
		1:   {202607, 202608, 202609, 202610}, // October ended 28 days ago
		28:  {202607, 202608, 202609, 202610}, // cutoff 1 November: October is all older
		29:  {202607, 202608, 202609},         // cutoff 31 October: October is only partly
		61:  {202607, 202608},
		400: nil,
	} {
		if got := ExpiredPartitions(parts, now, days); !slices.Equal(got, want) {
			t.Errorf("%d days: %v, want %v", days, got, want)
		}
	}
}

func TestParseServerVersion(t *testing.T) {
	for s, ttl := range map[string]bool{"18.16.1": false, "19.5.4.22": false, "19.6.2.11": true, "24.3.2.23": true} {
		v, err := pipeline.ParseServerVersion(s)
		if err != nil || v.HasTTL() != ttl {
			t.Errorf("%s: %+v %v, HasTTL %v, want %v", s, v, err, v.HasTTL(), ttl)
		}
	}
	if _, err := pipeline.ParseServerVersion("devel"); err == nil {
		t.Error("a version without major.minor was accepted")
	}
}

// TestRetentionDropsExpiredMonths runs retention on the test server with rows in old
// month partitions: on a server without TTL only the months entirely past the retention
// go, a month straddling the cutoff stays whole, and plans follow their period. On a
// server with TTL the table gets one instead.
func TestRetentionDropsExpiredMonths(t *testing.T) {
	cfg := stacktest.SampleConfig()
	cfg.ClickHouse.Addr = stacktest.ClickhouseAddr(t)
	cfg.ClickHouse.Database = stacktest.UniqueName("test_retention")
	ch := applySchema(t, cfg)
	ctx := context.Background()
	v, err := pipeline.ReadServerVersion(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 29, 13, 0, 0, 0, time.UTC)
	usage, plans := cfg.Streams[0], cfg.Streams[1]
	ub, err := ch.PrepareBatch(ctx, "INSERT INTO "+pipeline.QualifiedTable(cfg.ClickHouse.Database, usage.Table())+" (event_id, customer_id, product, ts)")
	if err != nil {
		t.Fatal(err)
	}
	pb, err := ch.PrepareBatch(ctx, "INSERT INTO "+pipeline.QualifiedTable(cfg.ClickHouse.Database, plans.Table())+" (plan_id, customer_id, product, period)")
	if err != nil {
		t.Fatal(err)
	}
	for _, day := range []string{"2026-07-15", "2026-08-01", "2026-08-31", "2026-10-30", "2026-10-31", "2026-11-28"} {
		d, _ := time.Parse(time.DateOnly, day)
		if err := errors.Join(ub.Append("e-"+day, "c", "p", d.Add(12*time.Hour)), pb.Append("p-"+day, "c", "p", d)); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(ub.Send(), pb.Send()); err != nil {
		t.Fatal(err)
	}
	count := func(s pipeline.StreamConfig) (n uint64) {
		if err := ch.QueryRow(ctx, "SELECT count() FROM "+pipeline.QualifiedTable(cfg.ClickHouse.Database, s.Table())).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	dropped, err := ApplyRetention(ctx, ch, v, cfg.ClickHouse, usage, 29, now)
	if err != nil {
		t.Fatal(err)
	}
	if v.HasTTL() {
		t.Logf("server %d.%d has TTL: checked that it is accepted, not the partition path", v.Major, v.Minor)
		return
	}
	// Cutoff 31 October 13:00: July and August are all older, October is not.
	if !slices.Equal(dropped, []uint32{202607, 202608}) || count(usage) != 3 {
		t.Errorf("usage: dropped %v leaving %d rows, want 202607 and 202608 dropped and 3 rows left", dropped, count(usage))
	}
	if dropped, err := ApplyRetention(ctx, ch, v, cfg.ClickHouse, usage, 29, now); err != nil || len(dropped) != 0 {
		t.Errorf("applying retention again dropped %v (%v), want nothing", dropped, err)
	}
	dropped, err = ApplyRetention(ctx, ch, v, cfg.ClickHouse, plans, 1, now)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dropped, []uint32{202607, 202608, 202610}) || count(plans) != 1 {
		t.Errorf("plans: dropped %v leaving %d rows, want every month before November dropped and 1 row left", dropped, count(plans))
	}
}
