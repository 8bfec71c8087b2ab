package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
)

// Loop metrics mirror each loop's status on the manager's metrics endpoint, beside
// controller-runtime's own reconcile metrics, so that alerts need no kube-state-metrics
// configuration for a custom resource.
var (
	loopCondition = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "customerloop_loop_condition",
		Help: "1 when the loop's condition of this type has this status.",
	}, []string{"namespace", "name", "type", "status"})
	loopStreamRows = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "customerloop_loop_stream_rows",
		Help: "Rows in the stream's raw table, as last read by the controller.",
	}, []string{"namespace", "name", "stream"})
	loopStreamDeadLettered = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "customerloop_loop_stream_dead_lettered",
		Help: "Messages of the stream the ledger records as dead-lettered.",
	}, []string{"namespace", "name", "stream"})
	loopStreamLag = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "customerloop_loop_stream_lag_messages",
		Help: "Messages of the stream's topic not yet ingested, by the ledger.",
	}, []string{"namespace", "name", "stream"})
	// A failed round is only a Warning event and a status message otherwise, which no
	// alert can see.
	digestRounds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "customerloop_digest_publish_rounds_total",
		Help: "Digest publication rounds of the loop, by result (success, failure).",
	}, []string{"namespace", "name", "result"})
)

// Results of a digest publication round.
const (
	digestSuccess = "success"
	digestFailure = "failure"
)

func init() {
	ctrlmetrics.Registry.MustRegister(MetricCollectors()...)
}

// MetricCollectors are the manager's own loop metrics, which it serves from
// controller-runtime's registry.
func MetricCollectors() []prometheus.Collector {
	return []prometheus.Collector{loopCondition, loopStreamRows, loopStreamDeadLettered, loopStreamLag, digestRounds}
}

// recordLoopMetrics sets the loop's gauges from its status.
func recordLoopMetrics(l *loopsv1alpha1.CustomerLoop) {
	forgetStatusMetrics(l.Namespace, l.Name)
	for _, c := range l.Status.Conditions {
		loopCondition.WithLabelValues(l.Namespace, l.Name, c.Type, string(c.Status)).Set(1)
	}
	for _, s := range l.Status.Streams {
		loopStreamRows.WithLabelValues(l.Namespace, l.Name, s.Name).Set(float64(s.RowsIngested))
		loopStreamDeadLettered.WithLabelValues(l.Namespace, l.Name, s.Name).Set(float64(s.RowsDeadLettered))
		loopStreamLag.WithLabelValues(l.Namespace, l.Name, s.Name).Set(float64(s.Lag))
	}
}

// startDigestMetrics makes both results of the loop's digest rounds exist at 0, so that
// the first failure is an increase Prometheus can see.
func startDigestMetrics(namespace, name string) {
	digestRounds.WithLabelValues(namespace, name, digestSuccess)
	digestRounds.WithLabelValues(namespace, name, digestFailure)
}

// recordDigestRound counts one publication round of the loop's digests.
func recordDigestRound(namespace, name string, err error) {
	result := digestSuccess
	if err != nil {
		result = digestFailure
	}
	digestRounds.WithLabelValues(namespace, name, result).Inc()
}

// forgetStatusMetrics removes the gauges recordLoopMetrics sets, before they are set anew.
func forgetStatusMetrics(namespace, name string) {
	labels := prometheus.Labels{"namespace": namespace, "name": name}
	loopCondition.DeletePartialMatch(labels)
	loopStreamRows.DeletePartialMatch(labels)
	loopStreamDeadLettered.DeletePartialMatch(labels)
	loopStreamLag.DeletePartialMatch(labels)
}

// forgetLoopMetrics removes every series of a loop that is gone. Counters are kept while
// the loop lives: rate() reads a counter that vanishes and comes back as a reset.
func forgetLoopMetrics(namespace, name string) {
	forgetStatusMetrics(namespace, name)
	digestRounds.DeletePartialMatch(prometheus.Labels{"namespace": namespace, "name": name})
}
