package controllers

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDigestRoundMetrics: both results of a loop's digest rounds exist from its first
// round at 0, each round counts under its result, a status refresh leaves the counts
// alone, and they go with the loop.
func TestDigestRoundMetrics(t *testing.T) {
	const ns, name = "metrics-test", "digests"
	count := func(result string) float64 {
		return testutil.ToFloat64(digestRounds.WithLabelValues(ns, name, result))
	}
	series := func() int { return testutil.CollectAndCount(digestRounds, "customerloop_digest_publish_rounds_total") }
	before := series()

	startDigestMetrics(ns, name)
	if got := series() - before; got != 2 {
		t.Fatalf("after the publisher started: %d new series, want 2 (success and failure at 0)", got)
	}
	recordDigestRound(ns, name, nil)
	recordDigestRound(ns, name, errors.New("broker refused"))
	recordDigestRound(ns, name, errors.New("broker refused"))
	if s, f := count(digestSuccess), count(digestFailure); s != 1 || f != 2 {
		t.Errorf("success %v, failure %v; want 1 and 2", s, f)
	}

	forgetStatusMetrics(ns, name) // what every status patch does
	if s, f := count(digestSuccess), count(digestFailure); s != 1 || f != 2 {
		t.Errorf("after a status refresh: success %v, failure %v; want 1 and 2 kept", s, f)
	}

	forgetLoopMetrics(ns, name)
	if got := series(); got != before {
		t.Errorf("after the loop is gone: %d series, want %d", got, before)
	}
}
