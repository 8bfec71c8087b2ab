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
)

func init() {
	ctrlmetrics.Registry.MustRegister(loopCondition, loopStreamRows, loopStreamDeadLettered, loopStreamLag)
}

// recordLoopMetrics sets the loop's gauges from its status.
func recordLoopMetrics(l *loopsv1alpha1.CustomerLoop) {
	forgetLoopMetrics(l.Namespace, l.Name)
	for _, c := range l.Status.Conditions {
		loopCondition.WithLabelValues(l.Namespace, l.Name, c.Type, string(c.Status)).Set(1)
	}
	for _, s := range l.Status.Streams {
		loopStreamRows.WithLabelValues(l.Namespace, l.Name, s.Name).Set(float64(s.RowsIngested))
		loopStreamDeadLettered.WithLabelValues(l.Namespace, l.Name, s.Name).Set(float64(s.RowsDeadLettered))
		loopStreamLag.WithLabelValues(l.Namespace, l.Name, s.Name).Set(float64(s.Lag))
	}
}

// forgetLoopMetrics removes a loop's gauges, when it is gone or before they are set anew.
func forgetLoopMetrics(namespace, name string) {
	labels := prometheus.Labels{"namespace": namespace, "name": name}
	loopCondition.DeletePartialMatch(labels)
	loopStreamRows.DeletePartialMatch(labels)
	loopStreamDeadLettered.DeletePartialMatch(labels)
	loopStreamLag.DeletePartialMatch(labels)
}
