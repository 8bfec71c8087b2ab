package pipeline

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// sampleConfig is a loop with one stream of each kind and dimensions of every type.
func sampleConfig() Config {
	return Config{
		Loop:       "demo/acme",
		Kafka:      KafkaConfig{Brokers: []string{"127.0.0.1:9092"}, Group: "customerloop.demo.acme"},
		ClickHouse: ClickHouseConfig{Addr: "127.0.0.1:9000", Database: "acme"},
		Streams: []StreamConfig{
			{
				Name: "usage", Kind: KindUsage, Topic: "acme.usage", DeadLetterTopic: "acme.usage.dlq",
				Mapping: Mapping{EventID: "id", CustomerID: "customer.id", Product: "product", Timestamp: "ts", Quantity: "qty"},
				Dimensions: []Dimension{
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
				Name: "plans", Kind: KindPlan, Topic: "acme.plans", DeadLetterTopic: "acme.plans.dlq",
				Mapping: Mapping{PlanID: "plan_id", CustomerID: "customer", Product: "product", Period: "period",
					Quantity: "quantity", SubmittedAt: "submitted_at", Confidence: "confidence"},
			},
		},
	}
}

func TestPlanSchemaGolden(t *testing.T) {
	stmts, err := PlanSchema(sampleConfig())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, s := range stmts {
		b.WriteString("-- " + s.Object + "\n" + s.SQL + ";\n\n")
	}
	cfg := sampleConfig()
	for _, s := range cfg.Streams {
		b.WriteString("-- insert " + s.Name + "\n" + InsertSQL(cfg.ClickHouse.Database, s) + ";\n\n")
	}
	golden(t, filepath.Join("testdata", "schema.golden.sql"), b.String())
}

func TestPlanSchemaRefusesInvalidConfig(t *testing.T) {
	cases := map[string]func(*Config){
		"database injection": func(c *Config) { c.ClickHouse.Database = "acme`; DROP TABLE x; --" },
		"stream name quote":  func(c *Config) { c.Streams[0].Name = "us'age" },
		"dimension newline":  func(c *Config) { c.Streams[0].Dimensions[0].Name = "region\nx" },
		"dimension reserved": func(c *Config) { c.Streams[0].Dimensions[0].Name = "_offset" },
		"dimension core":     func(c *Config) { c.Streams[0].Dimensions[0].Name = "customer_id" },
		"unknown type":       func(c *Config) { c.Streams[0].Dimensions[0].Type = "Array(String)" },
		"duplicate stream":   func(c *Config) { c.Streams[1].Name = c.Streams[0].Name },
		"shared topic":       func(c *Config) { c.Streams[1].Topic = c.Streams[0].Topic },
		"plan no period":     func(c *Config) { c.Streams[1].Mapping.Period = "" },
		"usage no event id":  func(c *Config) { c.Streams[0].Mapping.EventID = "" },
		"dlq is topic":       func(c *Config) { c.Streams[0].DeadLetterTopic = c.Streams[0].Topic },
		"unknown kind":       func(c *Config) { c.Streams[0].Kind = "Forecast" },
		"no streams":         func(c *Config) { c.Streams = nil },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := sampleConfig()
			mutate(&cfg)
			if _, err := PlanSchema(cfg); err == nil {
				t.Fatal("PlanSchema accepted an invalid config")
			}
		})
	}
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s is out of date (go test ./pipeline -run %s -update); got:\n%s", path, t.Name(), got)
	}
}
