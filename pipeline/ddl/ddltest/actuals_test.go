package ddltest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

// recorder keeps what CheckActualsOnce reports instead of failing the test.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Logf(string, ...any)       {}
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(f, a...)) }

// TestCheckActualsOnce: the check passes on a loop whose rows count once, and names the
// cell when an event is inserted twice (the rollup counts it twice, the raw table by
// event id once) or when an event that was produced is missing.
func TestCheckActualsOnce(t *testing.T) {
	addr := stacktest.ClickhouseAddr(t)
	db := stacktest.UniqueName("test_actuals_once")
	cfg, fc := stacktest.FeedbackConfig(db)
	cfg.ClickHouse.Addr = addr
	ch := ApplyFeedback(t, cfg, fc)

	now := time.Now().UTC().Truncate(time.Second)
	oct, nov := time.Date(2026, 10, 30, 12, 0, 0, 0, time.UTC), time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	type event struct {
		id, customer, product string
		ts                    time.Time
		qty                   float64
	}
	events := []event{{"e1", "c1", "p", oct, 3}, {"e2", "c1", "p", nov, 4}, {"e3", "c2", "q", oct, 5}, {"e4", "c2", "q", oct, 0}}
	usage := func(i int, e event) []any {
		return []any{e.id, e.customer, e.product, e.ts, e.qty, "u", int32(0), int64(i), now, now.UnixMilli()}
	}
	produced := Actuals{}
	var rows [][]any
	for i, e := range events {
		rows = append(rows, usage(i, e))
		produced.Add(fc.Grain, e.customer, e.product, e.ts, e.qty)
	}
	Insert(t, ch, db, cfg.Streams[0], rows...)
	conf := 0.5
	Insert(t, ch, db, cfg.Streams[1], // a plan with usage, and one for a period without
		[]any{"pl1", "c1", "p", time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC), 10.0, oct, &conf, "p", int32(0), int64(0), now, now.UnixMilli()},
		[]any{"pl2", "c3", "p", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), 10.0, oct, &conf, "p", int32(0), int64(1), now, now.UnixMilli()})

	check := func() []string {
		r := &recorder{TB: t}
		CheckActualsOnce(r, ch, fc, produced)
		return r.errs
	}
	if errs := check(); len(errs) > 0 {
		t.Fatalf("rows that count once were reported: %v", errs)
	}

	Insert(t, ch, db, cfg.Streams[0], usage(9, events[3])) // e4 again: its quantity is 0, its count shows it
	errs := check()
	if len(errs) != 1 || !strings.Contains(errs[0], "c2 q 2026-10-01: produced 5/2, raw by event id 5/2, rollup 5/3, gaps 5/3") ||
		strings.Contains(errs[0], "c1 p") {
		t.Errorf("an event inserted twice: reported %q, want c2 q 2026-10-01 alone with the rollup and gaps at 3 events", errs)
	}

	produced.Add(fc.Grain, "c1", "p", nov, 2) // produced, never stored
	errs = check()
	if len(errs) != 1 || !strings.Contains(errs[0], "2 of 3 cells differ") || !strings.Contains(errs[0], "c1 p 2026-11-01: produced 6/2, raw by event id 4/1") {
		t.Errorf("an event lost: reported %q, want c1 p 2026-11-01 among 2 of 3 cells", errs)
	}
}

func TestPeriodStart(t *testing.T) {
	for ts, want := range map[string][2]string{
		"2026-10-31T23:59:59Z":      {"2026-10-01", "2026-10-26"}, // a Saturday
		"2026-11-01T00:00:00Z":      {"2026-11-01", "2026-10-26"}, // a Sunday
		"2026-11-02T00:00:00Z":      {"2026-11-01", "2026-11-02"}, // a Monday
		"2026-11-02T01:00:00+03:00": {"2026-11-01", "2026-10-26"},
	} {
		at, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			t.Fatal(err)
		}
		m, w := PeriodStart(pipeline.GrainMonth, at).Format(time.DateOnly), PeriodStart(pipeline.GrainWeek, at).Format(time.DateOnly)
		if m != want[0] || w != want[1] {
			t.Errorf("%s: month %s, week %s; want %s, %s", ts, m, w, want[0], want[1])
		}
	}
}
