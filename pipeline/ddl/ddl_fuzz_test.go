package ddl

import (
	"fmt"
	"strings"
	"testing"

	"customerloop.dev/customerloop/pipeline"
)

var (
	fuzzTypes = []string{"String", "Int32", "Int64", "UInt32", "UInt64", "Float32", "Float64", "Bool", "Date", "DateTime"}
	fuzzFuncs = []pipeline.RollupFunction{pipeline.FuncCount, pipeline.FuncSum, pipeline.FuncMin, pipeline.FuncMax, pipeline.FuncUniq, pipeline.FuncQuantiles}
)

// ddlNames are the names a spec gives that reach the DDL planners.
type ddlNames struct{ db, stream, dim, rollup, measure, field, cluster string }

// ddlConfig is a loop with a Usage stream (one dimension), a Plan stream, consent and a
// rollup of the Usage stream, named by n, on n.cluster when it is not empty.
func ddlConfig(n ddlNames, typ, fn uint8) pipeline.Config {
	m := pipeline.MeasureConfig{Name: n.measure, Function: fuzzFuncs[int(fn)%len(fuzzFuncs)], Field: n.field}
	switch m.Function {
	case pipeline.FuncCount:
		m.Field = ""
	case pipeline.FuncQuantiles:
		m.Quantiles = []string{"0.5", "0.99"}
	}
	return pipeline.Config{
		Kafka:      pipeline.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}, Group: "g"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: "127.0.0.1:9000", Database: n.db, Cluster: n.cluster},
		Consent:    &pipeline.ConsentConfig{Topic: "t.consent"},
		Streams: []pipeline.StreamConfig{
			{Name: n.stream, Kind: pipeline.KindUsage, Topic: "t.usage", DeadLetterTopic: "t.usage.dlq",
				Mapping:    pipeline.Mapping{EventID: "id", CustomerID: "c", Product: "p", Timestamp: "ts"},
				Dimensions: []pipeline.Dimension{{Name: n.dim, Field: "f", Type: fuzzTypes[int(typ)%len(fuzzTypes)]}}},
			{Name: "plans", Kind: pipeline.KindPlan, Topic: "t.plans", DeadLetterTopic: "t.plans.dlq",
				Mapping: pipeline.Mapping{PlanID: "id", CustomerID: "c", Product: "p", Period: "period", Quantity: "q"}},
		},
		Rollups: []pipeline.RollupConfig{{Name: n.rollup, Stream: n.stream, Dimensions: []string{n.dim}, Granularity: pipeline.RollupDay, Measures: []pipeline.MeasureConfig{m}}},
	}
}

// plannedSQL runs every DDL planner on cfg: schema, an additive migration from a raw
// table that has only its first column, rollups (built from scratch, by partition),
// feedback views, the digest table, retention, consent deletion and the drop plan.
func plannedSQL(t *testing.T, cfg pipeline.Config) []string {
	t.Helper()
	var out []string
	stmts, err := PlanSchema(cfg)
	if err != nil {
		t.Fatalf("PlanSchema refused a valid config: %v", err)
	}
	for _, s := range stmts {
		out = append(out, s.SQL)
	}
	s := cfg.Streams[0]
	mig, err := PlanMigration(cfg.ClickHouse, ManagedTables(cfg), map[string][]pipeline.Column{s.Table(): s.Columns()[:1], pipeline.LocalTable(s.Table()): s.Columns()[:1]})
	if err != nil {
		t.Fatalf("PlanMigration: %v", err)
	}
	for _, s := range mig {
		out = append(out, s.SQL)
	}
	if plans, err := PlanRollups(cfg); err == nil { // a measure that does not fit its field is refused: fine
		for _, p := range plans {
			for _, s := range p.Rebuild([]uint32{202611}) {
				out = append(out, s.SQL)
			}
		}
	}
	fb, err := PlanFeedback(pipeline.FeedbackConfig{Database: cfg.ClickHouse.Database, UsageTable: s.Table(), PlanTable: cfg.Streams[1].Table(), Grain: pipeline.GrainMonth})
	if err != nil {
		t.Fatalf("PlanFeedback: %v", err)
	}
	for _, s := range fb {
		out = append(out, s.SQL)
	}
	dt, err := DigestTableStatement(cfg.ClickHouse)
	if err != nil {
		t.Fatalf("DigestTableStatement: %v", err)
	}
	tt, err := TrackingTableStatement(cfg.ClickHouse)
	if err != nil {
		t.Fatalf("TrackingTableStatement: %v", err)
	}
	out = append(out, dt.SQL, tt.SQL)
	for _, st := range cfg.Streams {
		out = append(out, RetentionTTLStatement(cfg.ClickHouse, st, 30).SQL, DropPartitionStatement(cfg.ClickHouse, st, 202611).SQL,
			DeleteCustomerStatement(cfg.ClickHouse, st.Table()).SQL)
	}
	for _, s := range PlanDrop(cfg) {
		out = append(out, s.SQL)
	}
	return out
}

// lexSQL splits ClickHouse SQL into bare words and quoted identifiers, skipping string
// literals, numbers and comments. An unterminated quote is an error: a name broke out.
func lexSQL(sql string) (words map[string]bool, quoted []string, err error) {
	words = map[string]bool{}
	word := func(c byte) bool {
		return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
	}
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == '\'':
			j := i + 1
			for ; j < len(sql) && sql[j] != '\''; j++ {
				if sql[j] == '\\' {
					j++
				}
			}
			if j >= len(sql) {
				return nil, nil, fmt.Errorf("unterminated string literal at %d", i)
			}
			i = j + 1
		case c == '`' || c == '"':
			j := strings.IndexByte(sql[i+1:], c)
			if j < 0 {
				return nil, nil, fmt.Errorf("unterminated quoted identifier at %d", i)
			}
			quoted = append(quoted, sql[i+1:i+1+j])
			i += j + 2
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				j = len(sql) - i
			}
			i += j
		case word(c):
			j := i
			for j < len(sql) && word(sql[j]) {
				j++
			}
			if c < '0' || c > '9' {
				words[sql[i:j]] = true
			}
			i = j
		default:
			i++
		}
	}
	return words, quoted, nil
}

// FuzzDDLPlanners gives the DDL planners fuzzed names for the database, a stream, a
// dimension, a rollup, its measure, the measure's field and the cluster. Whatever passes Validate
// must plan into SQL that lexes cleanly, whose quoted identifiers are all valid names,
// and where no fuzzed name appears as a bare word unless the same plan with neutral
// names has that word too (a keyword or function the planner writes itself, like sum).
func FuzzDDLPlanners(f *testing.F) {
	f.Add("acme", "usage", "region", "daily", "events", "region", "", uint8(0), uint8(0))
	f.Add("a", "s", "d", "r", "m", "quantity", "customerloop", uint8(3), uint8(1))
	f.Add("_x", "SELECT", "FROM", "rollup", "sum", "d", "ON", uint8(6), uint8(5))
	f.Add("default", "system", "ts", "period", "customer_id", "customer_id", "shard", uint8(9), uint8(4))
	f.Add("x`y", "a b", "d;DROP", "r'", "m\n", "f\x00", "c') --", uint8(1), uint8(2))
	f.Add("acme", "usage", "region", "daily", "events", "region", "c`; DROP DATABASE acme ON CLUSTER `c", uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, db, stream, dim, rollup, measure, field, cluster string, typ, fn uint8) {
		n := ddlNames{db, stream, dim, rollup, measure, field, cluster}
		cfg := ddlConfig(n, typ, fn)
		if cfg.Validate() != nil {
			return
		}
		neutral := ddlNames{"n_db", "n_stream", "n_dim", "n_rollup", "n_measure", field, ""}
		if cluster != "" {
			neutral.cluster = "n_cluster"
		}
		if field == dim {
			neutral.field = neutral.dim
		}
		base := map[string]bool{}
		for _, sql := range plannedSQL(t, ddlConfig(neutral, typ, fn)) {
			w, _, err := lexSQL(sql)
			if err != nil {
				t.Fatalf("%v in the neutral plan:\n%s", err, sql)
			}
			for k := range w {
				base[k] = true
			}
		}
		for _, sql := range plannedSQL(t, cfg) {
			words, quoted, err := lexSQL(sql)
			if err != nil {
				t.Fatalf("%v:\n%s", err, sql)
			}
			for _, q := range quoted {
				if pipeline.ValidIdent(q) != nil {
					t.Fatalf("quoted identifier %q is not a valid name:\n%s", q, sql)
				}
			}
			for _, name := range []string{db, stream, dim, rollup, measure, field, cluster} {
				if words[name] && !base[name] {
					t.Fatalf("name %q appears unquoted:\n%s", name, sql)
				}
			}
		}
	})
}
