package feedback

import (
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
)

func TestDigestContentHash(t *testing.T) {
	one, two := 1.0, 0.1+0.2
	d := Digest{Product: "p", Period: Date{time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)}, PlannedLatest: &one, Actual: 0.3,
		TopGaps: []CustomerGap{{Customer: "c", PlannedLatest: 1, Actual: 0.3, Gap: -0.7}}}
	base := d.contentHash()
	e := d
	e.Actual = two // 0.30000000000000004: the same figure summed in another order
	e.Version, e.PublishedAt, e.Accuracy = 9, time.Now(), &ProductAccuracy{Points: 3}
	if e.contentHash() != base {
		t.Error("rounding noise, version, time or accuracy changed the content hash")
	}
	e.Actual = 0.31
	if e.contentHash() == base {
		t.Error("a changed actual kept the content hash")
	}
	e = d
	e.TopGaps = []CustomerGap{{Customer: "c2", PlannedLatest: 1, Actual: 0.3, Gap: -0.7}}
	if e.contentHash() == base {
		t.Error("a changed top customer kept the content hash")
	}
}

func TestDigestConfigValidate(t *testing.T) {
	neg := -0.1
	good := pipeline.DigestConfig{Loop: "default/acme", Kafka: pipeline.KafkaConfig{Brokers: []string{"b:9092"}}, Topic: "t",
		Feedback: pipeline.FeedbackConfig{Database: "db", PlanTable: "plans_raw", Grain: pipeline.GrainWeek}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*pipeline.DigestConfig){
		"no loop":            func(c *pipeline.DigestConfig) { c.Loop = "" },
		"no brokers":         func(c *pipeline.DigestConfig) { c.Kafka.Brokers = nil },
		"no topic":           func(c *pipeline.DigestConfig) { c.Topic = "" },
		"bad database":       func(c *pipeline.DigestConfig) { c.Feedback.Database = "a`b" },
		"no plan table":      func(c *pipeline.DigestConfig) { c.Feedback.PlanTable = "" },
		"bad grain":          func(c *pipeline.DigestConfig) { c.Feedback.Grain = "Day" },
		"negative threshold": func(c *pipeline.DigestConfig) { c.Threshold = &neg },
		"negative top":       func(c *pipeline.DigestConfig) { c.TopCustomers = -1 },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPeriodStart(t *testing.T) {
	ts := time.Date(2026, 11, 29, 13, 5, 0, 0, time.UTC) // a Sunday
	if got := PeriodStart(pipeline.GrainWeek, ts); !got.Equal(time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("week of %v starts %v, want Monday 2026-11-23", ts, got)
	}
	if got := PeriodStart(pipeline.GrainMonth, ts); !got.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("month of %v starts %v", ts, got)
	}
	if got := PeriodEnd(pipeline.GrainMonth, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)); !got.Equal(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("December ends %v", got)
	}
}

// TestFlagRule: a complete period is flagged by its gap, or by customers outside the
// tracking signal's band as of its end (with or without a threshold); the period under
// way by usage already over the plans, or, from a quarter of the period on, by its run
// rate either way, never by the tracking signal (which covers completed periods); a
// period not begun never.
func TestFlagRule(t *testing.T) {
	v := func(f float64) *float64 { return &f }
	for _, c := range []struct {
		name               string
		threshold          *float64
		complete, underWay bool
		elapsed            float64
		ratio, projected   *float64
		outside            uint64
		want               bool
	}{
		{"complete, over", v(0.3), true, false, 1, v(0.4), nil, 0, true},
		{"complete, under", v(0.3), true, false, 1, v(-0.4), nil, 0, true},
		{"complete, within", v(0.3), true, false, 1, v(0.2), nil, 0, false},
		{"complete, no plan", v(0.3), true, false, 1, nil, nil, 0, false},
		{"under way, already over", v(0.3), false, true, 0.1, v(0.5), v(14), 0, true},
		{"under way, run rate under, early", v(0.3), false, true, 0.2, v(-0.9), v(-0.5), 0, false},
		{"under way, run rate under", v(0.3), false, true, 0.25, v(-0.9), v(-0.5), 0, true},
		{"under way, run rate over", v(0.3), false, true, 0.6, v(-0.2), v(0.33), 0, true},
		{"under way, run rate within", v(0.3), false, true, 0.6, v(-0.5), v(-0.1), 0, false},
		{"under way, no plan", v(0.3), false, true, 0.6, nil, nil, 0, false},
		{"not begun", v(0.3), false, false, 0, v(-1), nil, 0, false},
		{"complete, within, a customer outside the band", v(0.3), true, false, 1, v(0.2), nil, 1, true},
		{"complete, no plan, customers outside the band", v(0.3), true, false, 1, nil, nil, 3, true},
		{"complete, no threshold, a customer outside the band", nil, true, false, 1, v(0.9), nil, 1, true},
		{"complete, no threshold, none outside", nil, true, false, 1, v(0.9), nil, 0, false},
		{"under way, within, outside counts only complete periods", v(0.3), false, true, 0.6, v(-0.5), v(-0.1), 2, false},
		{"under way, no threshold", nil, false, true, 0.6, v(0.9), v(2), 0, false},
	} {
		if got := flagged(c.threshold, c.complete, c.underWay, c.elapsed, c.ratio, c.projected, c.outside); got != c.want {
			t.Errorf("%s: flagged %t, want %t", c.name, got, c.want)
		}
	}
}
