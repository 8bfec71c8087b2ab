package ddl

import (
	"path/filepath"
	"strings"
	"testing"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

func TestPlanSchemaGolden(t *testing.T) {
	stmts, err := PlanSchema(stacktest.SampleConfig())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, s := range stmts {
		b.WriteString("-- " + s.Object + "\n" + s.SQL + ";\n\n")
	}
	cfg := stacktest.SampleConfig()
	for _, s := range cfg.Streams {
		b.WriteString("-- insert " + s.Name + "\n" + InsertSQL(cfg.ClickHouse.Database, s) + ";\n\n")
	}
	stacktest.Golden(t, filepath.Join("testdata", "schema.golden.sql"), b.String())
}

func TestPlanSchemaRefusesInvalidConfig(t *testing.T) {
	cases := map[string]func(*pipeline.Config){
		"database injection": func(c *pipeline.Config) { c.ClickHouse.Database = "acme`; DROP TABLE x; --" },
		"stream name quote":  func(c *pipeline.Config) { c.Streams[0].Name = "us'age" },
		"dimension newline":  func(c *pipeline.Config) { c.Streams[0].Dimensions[0].Name = "region\nx" },
		"dimension reserved": func(c *pipeline.Config) { c.Streams[0].Dimensions[0].Name = "_offset" },
		"dimension core":     func(c *pipeline.Config) { c.Streams[0].Dimensions[0].Name = "customer_id" },
		"unknown type":       func(c *pipeline.Config) { c.Streams[0].Dimensions[0].Type = "Array(String)" },
		"duplicate stream":   func(c *pipeline.Config) { c.Streams[1].Name = c.Streams[0].Name },
		"shared topic":       func(c *pipeline.Config) { c.Streams[1].Topic = c.Streams[0].Topic },
		"plan no period":     func(c *pipeline.Config) { c.Streams[1].Mapping.Period = "" },
		"usage no event id":  func(c *pipeline.Config) { c.Streams[0].Mapping.EventID = "" },
		"dlq is topic":       func(c *pipeline.Config) { c.Streams[0].DeadLetterTopic = c.Streams[0].Topic },
		"unknown kind":       func(c *pipeline.Config) { c.Streams[0].Kind = "Forecast" },
		"no streams":         func(c *pipeline.Config) { c.Streams = nil },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := stacktest.SampleConfig()
			mutate(&cfg)
			if _, err := PlanSchema(cfg); err == nil {
				t.Fatal("PlanSchema accepted an invalid config")
			}
		})
	}
}
