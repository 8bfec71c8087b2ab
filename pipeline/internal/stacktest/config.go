package stacktest

import (
	"customerloop.dev/customerloop/pipeline"
)

// SampleConfig is a loop with one stream of each kind and dimensions of every type.
func SampleConfig() pipeline.Config {
	return pipeline.Config{
		Loop:       "demo/acme",
		Kafka:      pipeline.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}, Group: "customerloop.demo.acme"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: "127.0.0.1:9000", Database: "acme"},
		Streams: []pipeline.StreamConfig{
			{
				Name: "usage", Kind: pipeline.KindUsage, Topic: "acme.usage", DeadLetterTopic: "acme.usage.dlq",
				Mapping: pipeline.Mapping{EventID: "id", CustomerID: "customer.id", Product: "product", Timestamp: "ts", Quantity: "qty"},
				Dimensions: []pipeline.Dimension{
					{Name: "region", Field: "region", Type: "String"},
					{Name: "seats", Field: "seats", Type: "Int32", Nullable: true},
					{Name: "bytes", Field: "bytes", Type: "UInt64"},
					{Name: "ratio", Field: "ratio", Type: "Float32", Nullable: true},
					{Name: "trial", Field: "trial", Type: "Bool"},
					{Name: "signup", Field: "signup", Type: "Date", Nullable: true},
					{Name: "seen_at", Field: "seen", Type: "DateTime", Nullable: true},
				},
			},
			{
				Name: "plans", Kind: pipeline.KindPlan, Topic: "acme.plans", DeadLetterTopic: "acme.plans.dlq",
				Mapping: pipeline.Mapping{PlanID: "plan_id", CustomerID: "customer", Product: "product", Period: "period",
					Quantity: "quantity", SubmittedAt: "submitted_at", Confidence: "confidence"},
			},
		},
	}
}

func FeedbackConfig(db string) (pipeline.Config, pipeline.FeedbackConfig) {
	cfg := pipeline.Config{
		Loop:       "test/feedback",
		Kafka:      pipeline.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}, Group: "g"},
		ClickHouse: pipeline.ClickHouseConfig{Database: db},
		Streams: []pipeline.StreamConfig{
			{Name: "usage", Kind: pipeline.KindUsage, Topic: "u", DeadLetterTopic: "u.dlq",
				Mapping: pipeline.Mapping{EventID: "id", CustomerID: "customer", Product: "product", Timestamp: "ts", Quantity: "qty"}},
			{Name: "plans", Kind: pipeline.KindPlan, Topic: "p", DeadLetterTopic: "p.dlq",
				Mapping: pipeline.Mapping{PlanID: "id", CustomerID: "customer", Product: "product", Period: "period", Quantity: "qty"}},
		},
	}
	return cfg, pipeline.FeedbackConfig{Database: db, UsageTable: "usage_raw", PlanTable: "plans_raw", Grain: pipeline.GrainMonth}
}
