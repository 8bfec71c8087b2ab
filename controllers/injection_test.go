package controllers

import (
	"fmt"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
)

// injectionCorpus holds strings that would change a statement if formatted into SQL
// unquoted, or break out of a quoted identifier or literal: quotes of every kind,
// comments, statement separators, control characters and look-alike Unicode.
var injectionCorpus = []string{
	"x`; DROP DATABASE system; --",
	"x'); DROP TABLE t; --",
	`x"y`,
	"x\ny",
	"x\x00y",
	"x\\",
	"x/*y*/",
	"x y",
	"ｘ", // fullwidth x
	"x\u202ey",
	"é",
	"x;y",
	"x(y)",
}

// injectionTargets are the spec's strings that name something in ClickHouse or Kafka
// or that the worker looks fields up by.
var injectionTargets = []struct {
	path string
	set  func(*loopsv1alpha1.CustomerLoop, string)
}{
	{"spec.clickhouse.database", func(l *loopsv1alpha1.CustomerLoop, v string) { l.Spec.ClickHouse.Database = v }},
	{"spec.streams[0].name", func(l *loopsv1alpha1.CustomerLoop, v string) { l.Spec.Streams[0].Name = v }},
	{"spec.streams[0].topic", func(l *loopsv1alpha1.CustomerLoop, v string) { l.Spec.Streams[0].Topic = v }},
	{"spec.streams[0].deadLetterTopic", func(l *loopsv1alpha1.CustomerLoop, v string) { l.Spec.Streams[0].DeadLetterTopic = v }},
	{"spec.streams[0].dimensions[0].name", func(l *loopsv1alpha1.CustomerLoop, v string) { l.Spec.Streams[0].Dimensions[0].Name = v }},
	{"spec.streams[0].dimensions[0].field", func(l *loopsv1alpha1.CustomerLoop, v string) { l.Spec.Streams[0].Dimensions[0].Field = v }},
	{"spec.streams[0].mapping.customerId", func(l *loopsv1alpha1.CustomerLoop, v string) { l.Spec.Streams[0].Mapping.CustomerID = v }},
	{"spec.kafka.consumerGroup", func(l *loopsv1alpha1.CustomerLoop, v string) { l.Spec.Kafka.ConsumerGroup = v }},
	{"spec.rollups[0].name", func(l *loopsv1alpha1.CustomerLoop, v string) {
		l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Name = v })}
	}},
	{"spec.rollups[0].dimensions[0]", func(l *loopsv1alpha1.CustomerLoop, v string) {
		l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Dimensions = []string{v} })}
	}},
	{"spec.rollups[0].measures[1].name", func(l *loopsv1alpha1.CustomerLoop, v string) {
		l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Measures[1].Name = v })}
	}},
	{"spec.rollups[0].measures[1].field", func(l *loopsv1alpha1.CustomerLoop, v string) {
		l.Spec.Rollups = []loopsv1alpha1.RollupSpec{rollup(func(r *loopsv1alpha1.RollupSpec) { r.Measures[1].Field = v })}
	}},
	{"spec.feedback.publish.topic", func(l *loopsv1alpha1.CustomerLoop, v string) {
		l.Spec.Feedback = &loopsv1alpha1.FeedbackSpec{UsageStream: "usage", PlanStream: "plans", Publish: &loopsv1alpha1.PublishSpec{Topic: v}}
	}},
	{"spec.privacy.hmacKeySecretRef.name", func(l *loopsv1alpha1.CustomerLoop, v string) {
		l.Spec.Privacy = &loopsv1alpha1.PrivacySpec{HMACKeySecretRef: loopsv1alpha1.HMACKeySecretRef{Name: v}}
	}},
}

// injectionCases are cases of TestInvalidSpecsRefused: every corpus string in every
// target is refused by the API server, naming the field.
func injectionCases() []struct {
	name   string
	mutate func(*loopsv1alpha1.CustomerLoop)
	want   string
} {
	var out []struct {
		name   string
		mutate func(*loopsv1alpha1.CustomerLoop)
		want   string
	}
	for _, tg := range injectionTargets {
		for _, v := range injectionCorpus {
			out = append(out, struct {
				name   string
				mutate func(*loopsv1alpha1.CustomerLoop)
				want   string
			}{fmt.Sprintf("injection %q in %s", v, tg.path), func(l *loopsv1alpha1.CustomerLoop) { tg.set(l, v) }, tg.path})
		}
	}
	return out
}
