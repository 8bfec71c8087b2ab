package ddl

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2"
)

// RollupError is a rollup whose definition does not fit its stream (a field that is not
// a numeric column, an unknown dimension): no object of it is created or changed.
type RollupError struct {
	Rollup string
	Msg    string
}

func (e *RollupError) Error() string { return "rollup " + e.Rollup + ": " + e.Msg }

// rollupFormat versions how definitions are rendered into SQL: it is part of every
// rollup's version hash, so that a change of the rendering rebuilds the rollups.
const rollupFormat = 1

// RollupPlan is the planned state of one rollup at its definition version: an
// AggregatingMergeTree table rollup_<name>_v<version>, a materialized view
// rollup_<name>_v<version>_mv that feeds it from the stream's raw table, and the read
// view rollup_<name> that merges the states into plain columns.
//
// On a cluster the version table is a pair (cluster.go): the states live in
// rollup_<name>_v<version>_local, a ReplicatedAggregatingMergeTree on every node, behind
// the Distributed table rollup_<name>_v<version>. The materialized view exists on every
// node and reads the raw table's local table, so each shard aggregates the rows inserted
// into it, into its own local table; the read view reads the Distributed table, and its
// -Merge combinators merge the states of every shard.
type RollupPlan struct {
	Name    string
	Version string
	// View, Table and MV are the objects' unqualified names.
	View, Table, MV string
	// Columns are the read view's columns, in order.
	Columns []string
	// Source is the raw table the rollup reads, unqualified.
	Source string

	db string
	ch pipeline.ClickHouseConfig
	// createTable is the version table, or its pair on a cluster.
	createTable          []pipeline.Statement
	createMV, createView string
	// The backfill is INSERT INTO <table> (<columns>) SELECT <exprs> FROM <source>
	// [WHERE <partition key> = <partition>] GROUP BY <keys>.
	insertHead, selectHead, groupBy, partitionKey string
}

// RollupView is the name of a rollup's read view.
func RollupView(name string) string { return "rollup_" + name }

// Objects are the plan's objects, database-qualified, for status.
func (p RollupPlan) Objects() []string {
	objs := []string{p.db + "." + p.View, p.db + "." + p.Table, p.db + "." + p.MV}
	if p.ch.Clustered() {
		objs = append(objs, p.db+"."+p.StateTable())
	}
	return objs
}

// StateTable is the table that holds the rollup's states on each node: the version
// table on a single server, its local table on a cluster (the Distributed table holds
// nothing). A mutation that deletes groups (ALTER ... DELETE, ON CLUSTER) targets it.
func (p RollupPlan) StateTable() string {
	if p.ch.Clustered() {
		return pipeline.LocalTable(p.Table)
	}
	return p.Table
}

// BackfillContext carries the settings the statements of Rebuild run with. On a cluster
// every backfill INSERT goes into the Distributed version table and must be synchronous
// (insert_distributed_sync): the read view is switched right after it, and an
// asynchronous insert would still sit in a node's spool. It is also not deduplicated
// (insert_deduplicate = 0): two backfill blocks can be identical (the same week's states
// from two monthly partitions), and a Replicated table would keep only one of them; a
// failed rebuild starts over from a dropped table, so nothing is inserted twice.
// Settings sent to 18.16 are integers.
func (p RollupPlan) BackfillContext(ctx context.Context) context.Context {
	if !p.ch.Clustered() {
		return ctx
	}
	return clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
		"insert_distributed_sync": 1,
		"insert_deduplicate":      0,
	}))
}

// Rebuild returns the statements that build the plan's version from scratch and point
// the read view at it: drop what a crashed attempt may have left of the version, create
// its table and materialized view, backfill the table from the raw table, then replace
// the read view. Totals are exact only if nothing inserts into the raw table meanwhile:
// the caller stops the loop's workers first (ClickHouse 18.16 has no transactions, and a
// materialized view sees only inserts that begin after it exists).
//
// partitions are the raw table's partitions (toYYYYMM of its time column): the backfill
// runs one INSERT per partition, so that no single statement outlasts the client's read
// timeout on a large table. Without partitions it is one INSERT of the whole table.
//
// On a cluster every statement but the backfill runs ON CLUSTER, and the backfill
// inserts into the Distributed version table from the Distributed raw table: the read
// takes every shard once (one replica each) and the insert puts each state on one shard,
// so every raw row is counted exactly once. Run the statements with BackfillContext.
func (p RollupPlan) Rebuild(partitions []uint32) []pipeline.Statement {
	on := p.ch.OnCluster()
	view, mv := pipeline.QualifiedTable(p.db, p.View), pipeline.QualifiedTable(p.db, p.MV)
	stmts := []pipeline.Statement{{Object: p.db + "." + p.MV, SQL: "DROP TABLE IF EXISTS " + mv + on}}
	// The Distributed table goes before the table it reads; dropping the last replica of
	// the local table removes its ZooKeeper path, so a later version of the same
	// definition starts from an empty path (and no remembered insert blocks).
	for i := len(p.createTable) - 1; i >= 0; i-- {
		o := p.createTable[i].Object
		stmts = append(stmts, pipeline.Statement{Object: o, SQL: "DROP TABLE IF EXISTS " + qualified(o) + on})
	}
	stmts = append(append(stmts, p.createTable...), pipeline.Statement{Object: p.db + "." + p.MV, SQL: p.createMV})
	if len(partitions) == 0 {
		stmts = append(stmts, pipeline.Statement{Object: p.db + "." + p.Table, SQL: p.insertHead + p.selectHead + p.groupBy})
	}
	for _, part := range partitions {
		stmts = append(stmts, pipeline.Statement{Object: p.db + "." + p.Table,
			SQL: fmt.Sprintf("%s%sWHERE %s = %d\n%s", p.insertHead, p.selectHead, p.partitionKey, part, p.groupBy)})
	}
	return append(stmts,
		pipeline.Statement{Object: p.db + "." + p.View, SQL: "DROP TABLE IF EXISTS " + view + on},
		pipeline.Statement{Object: p.db + "." + p.View, SQL: p.createView})
}

// qualified quotes a "db.name" object name of the loop (both parts are identifiers).
func qualified(object string) string {
	db, name, _ := strings.Cut(object, ".")
	return pipeline.QualifiedTable(db, name)
}

// rollupColumn is a column of a rollup table and the expression over the raw table that
// fills it.
type rollupColumn struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Expr string `json:"expr"`
}

var quantilePattern = regexp.MustCompile(`^0\.[0-9]{0,3}[1-9]$`)

// numericTypes are the column types Sum, Min, Max and Quantiles accept (Bool is UInt8).
var numericTypes = map[string]bool{
	"Int32": true, "Int64": true, "UInt8": true, "UInt32": true, "UInt64": true, "Float32": true, "Float64": true,
}

// PlanRollups plans every rollup of the config. It is a pure function of the config;
// a definition that does not fit its stream is a *RollupError naming the rollup and the
// field.
func PlanRollups(cfg pipeline.Config) ([]RollupPlan, error) {
	if err := pipeline.ValidIdent(cfg.ClickHouse.Database); err != nil {
		return nil, fmt.Errorf("clickhouse.database: %w", err)
	}
	seen := map[string]bool{}
	var plans []RollupPlan
	rollups := cfg.Rollups
	if cfg.Feedback != nil {
		r, err := feedbackActuals(cfg)
		if err != nil {
			return nil, err
		}
		rollups = append(append([]pipeline.RollupConfig(nil), rollups...), r)
		if slices.ContainsFunc(cfg.Rollups, func(r pipeline.RollupConfig) bool { return r.Name == pipeline.FeedbackPlansRollup }) {
			return nil, &RollupError{Rollup: pipeline.FeedbackPlansRollup, Msg: "with feedback, this name is taken by the feedback's own plans: choose another"}
		}
	}
	for _, r := range rollups {
		if seen[r.Name] {
			return nil, &RollupError{Rollup: r.Name, Msg: "two rollups have this name"}
		}
		seen[r.Name] = true
		p, err := planRollup(cfg.ClickHouse, cfg.Streams, r)
		if err != nil {
			return nil, err
		}
		plans = append(plans, p)
	}
	if cfg.Feedback != nil {
		// The plans' rollup has measures no spec can declare; it is planned on its own.
		p, err := feedbackPlans(cfg)
		if err != nil {
			return nil, err
		}
		plans = append(plans, p)
	}
	return plans, nil
}

func planRollup(ch pipeline.ClickHouseConfig, streams []pipeline.StreamConfig, r pipeline.RollupConfig) (RollupPlan, error) {
	fail := func(format string, args ...any) (RollupPlan, error) {
		return RollupPlan{}, &RollupError{Rollup: r.Name, Msg: fmt.Sprintf(format, args...)}
	}
	if err := pipeline.ValidIdent(r.Name); err != nil || strings.HasPrefix(r.Name, "_") {
		return fail("name %q is not a plain identifier", r.Name)
	}
	i := slices.IndexFunc(streams, func(s pipeline.StreamConfig) bool { return s.Name == r.Stream })
	if i < 0 {
		return fail("stream %q is not a stream of the loop", r.Stream)
	}
	s := streams[i]
	types := map[string]string{}
	var fields []string
	for _, c := range s.Columns() {
		if !strings.HasPrefix(c.Name, "_") {
			types[c.Name] = c.Type
			fields = append(fields, c.Name)
		}
	}

	period, err := periodExpr(s.Kind, r.Granularity)
	if err != nil {
		return fail("%v", err)
	}
	keys := []rollupColumn{period}
	read := []string{pipeline.QuoteIdent(period.Name) + " AS " + pipeline.QuoteIdent("period")}
	columns := []string{"period"}
	taken := map[string]string{"period": "the period"}

	dims := map[string]bool{"customer_id": true, "product": true}
	for _, d := range s.Dimensions {
		dims[d.Name] = true
	}
	for _, d := range r.Dimensions {
		if err := pipeline.ValidIdent(d); err != nil || !dims[d] {
			return fail("dimension %q is not customer_id, product or a dimension declared on stream %s", d, s.Name)
		}
		if by, ok := taken[d]; ok {
			return fail("dimension %q is named like %s", d, by)
		}
		taken[d] = "a dimension"
		columns = append(columns, d)
		q := pipeline.QuoteIdent(d)
		if inner, ok := strings.CutPrefix(types[d], "Nullable("); ok {
			// A sort key cannot hold NULL (18.16): keep the value and whether it was NULL.
			inner = strings.TrimSuffix(inner, ")")
			value, isNull := pipeline.QuoteIdent("_value_"+d), pipeline.QuoteIdent("_null_"+d)
			keys = append(keys,
				rollupColumn{"_value_" + d, inner, "ifNull(" + q + ", defaultValueOfArgumentType(assumeNotNull(" + q + ")))"},
				rollupColumn{"_null_" + d, "UInt8", "isNull(" + q + ")"})
			read = append(read, "if("+isNull+" = 1, NULL, "+value+") AS "+q)
			continue
		}
		keys = append(keys, rollupColumn{d, types[d], q})
		read = append(read, q)
	}

	var states []rollupColumn
	for _, m := range r.Measures {
		at := fmt.Sprintf("measure %q", m.Name)
		if err := pipeline.ValidIdent(m.Name); err != nil || strings.HasPrefix(m.Name, "_") {
			return fail("%s: name is not a plain identifier", at)
		}
		state := "_state_" + m.Name
		out := []string{m.Name}
		var fieldType, argType string
		if m.Function != pipeline.FuncCount {
			if m.Field == "" {
				return fail("%s: %s needs a field", at, m.Function)
			}
			t, ok := types[m.Field]
			if !ok {
				return fail("%s: field %q is not a column of stream %s (columns: %s)", at, m.Field, s.Name, strings.Join(fields, ", "))
			}
			fieldType = strings.TrimSuffix(strings.TrimPrefix(t, "Nullable("), ")")
			// The state's argument type is what the -State function makes of the
			// column on this server (ServerFeatures.NullableStates).
			argType = fieldType
			if ch.Features.NullableStates {
				argType = t
			}
			// Min and Max also take a date or time that is never NULL (the latest event, say).
			dated := (m.Function == pipeline.FuncMin || m.Function == pipeline.FuncMax) && (t == "Date" || t == "DateTime")
			if m.Function != pipeline.FuncUniq && !numericTypes[fieldType] && !dated {
				var numeric []string
				for _, f := range fields {
					if numericTypes[strings.TrimSuffix(strings.TrimPrefix(types[f], "Nullable("), ")")] {
						numeric = append(numeric, f)
					}
				}
				return fail("%s: %s needs a numeric field, and %q is not a numeric column of stream %s (numeric columns: %s)",
					at, m.Function, m.Field, s.Name, strings.Join(numeric, ", "))
			}
		}
		if m.Function != pipeline.FuncQuantiles && len(m.Quantiles) > 0 {
			return fail("%s: quantiles are only for function Quantiles", at)
		}
		field := ""
		if m.Field != "" {
			field = pipeline.QuoteIdent(m.Field)
		}
		switch m.Function {
		case pipeline.FuncCount:
			if m.Field != "" {
				return fail("%s: Count counts rows and takes no field", at)
			}
			states = append(states, rollupColumn{state, "AggregateFunction(count)", "countState()"})
			read = append(read, "countMerge("+pipeline.QuoteIdent(state)+") AS "+pipeline.QuoteIdent(m.Name))
		case pipeline.FuncSum, pipeline.FuncMin, pipeline.FuncMax, pipeline.FuncUniq:
			fn := strings.ToLower(string(m.Function))
			states = append(states, rollupColumn{state, "AggregateFunction(" + fn + ", " + argType + ")", fn + "State(" + field + ")"})
			merge := fn + "Merge(" + pipeline.QuoteIdent(state) + ")"
			if argType != fieldType && m.Function != pipeline.FuncUniq {
				// A Nullable state merges to NULL for a group whose field is always
				// NULL; such a group reads 0, as on 18.16 (and as the README says).
				merge = "ifNull(" + merge + ", 0)"
			}
			read = append(read, merge+" AS "+pipeline.QuoteIdent(m.Name))
		case pipeline.FuncQuantiles:
			if len(m.Quantiles) == 0 {
				return fail("%s: Quantiles needs quantiles", at)
			}
			out = nil
			for _, q := range m.Quantiles {
				if !quantilePattern.MatchString(q) {
					return fail("%s: quantile %q is not a decimal between 0 and 1 like \"0.99\"", at, q)
				}
			}
			levels := strings.Join(m.Quantiles, ", ")
			states = append(states, rollupColumn{state, "AggregateFunction(quantiles(" + levels + "), " + argType + ")",
				"quantilesState(" + levels + ")(" + field + ")"})
			for j, q := range m.Quantiles {
				name := m.Name + "_p" + quantileSuffix(q)
				out = append(out, name)
				merge := fmt.Sprintf("quantilesMerge(%s)(%s)[%d]", levels, pipeline.QuoteIdent(state), j+1)
				if argType != fieldType {
					merge = "ifNull(" + merge + ", nan)" // 18.16's figure for a group of NULLs
				}
				read = append(read, merge+" AS "+pipeline.QuoteIdent(name))
			}
		default:
			return fail("%s: unknown function %q", at, m.Function)
		}
		for _, c := range out {
			if by, ok := taken[c]; ok {
				return fail("%s: column %q is named like %s", at, c, by)
			}
			taken[c] = "measure " + m.Name
			columns = append(columns, c)
		}
	}

	if r.PointReads {
		keys = append(keys[1:], keys[0])
	}
	return assembleRollup(ch, r.Name, s, keys, states, read, columns, r.Dimensions), nil
}

// assembleRollup makes the plan of a rollup of stream s from its group keys (the table's
// order: the period, _period, first, or last for point reads), its state columns and the
// read view's expressions and column names. dimensions are the rollup's dimensions, for
// its sharding key on a cluster.
func assembleRollup(ch pipeline.ClickHouseConfig, name string, s pipeline.StreamConfig, keys, states []rollupColumn, read, columns, dimensions []string) RollupPlan {
	db, period := ch.Database, keys[0]
	// Groups ordered by customer before the period are read one customer at a time:
	// granules of 1024 groups instead of 8192 keep such a read to about its own groups.
	settings := ""
	if period.Name != "_period" {
		period = keys[len(keys)-1]
		settings = "\nSETTINGS index_granularity = 1024"
	}
	source := pipeline.QualifiedTable(db, s.Table())
	sum := sha256.Sum256(mustJSON(struct {
		Format       int
		Source       string
		Keys, States []rollupColumn
		Read         []string
	}{rollupFormat, s.Table(), keys, states, read}))
	version := hex.EncodeToString(sum[:4])
	p := RollupPlan{
		Name: name, Version: version, db: db, ch: ch, Columns: columns, Source: s.Table(),
		View: RollupView(name), Table: RollupView(name) + "_v" + version,
	}
	p.MV = p.Table + "_mv"
	table := pipeline.QualifiedTable(db, p.Table)

	all := append(append([]rollupColumn(nil), keys...), states...)
	cols := make([]pipeline.Column, len(all))
	names, exprs, keyNames := make([]string, len(all)), make([]string, len(all)), make([]string, len(keys))
	for j, c := range all {
		cols[j] = pipeline.Column{Name: c.Name, Type: c.Type}
		names[j] = pipeline.QuoteIdent(c.Name)
		exprs[j] = c.Expr
		if c.Expr != pipeline.QuoteIdent(c.Name) {
			exprs[j] += " AS " + pipeline.QuoteIdent(c.Name)
		}
	}
	copy(keyNames, names[:len(keys)])
	p.createTable = tableStatements(ch, db, p.Table, cols, "AggregatingMergeTree",
		"PARTITION BY toYYYYMM("+pipeline.QuoteIdent(period.Name)+")\nORDER BY ("+strings.Join(keyNames, ", ")+")"+settings,
		rollupShardKey(dimensions, keyNames))
	p.selectHead = "SELECT\n    " + strings.Join(exprs, ",\n    ") + "\nFROM " + source + "\n"
	p.groupBy = "GROUP BY " + strings.Join(keyNames, ", ")
	// On a cluster the materialized view reads the raw table's local table, whose inserts
	// are the shard's own, and writes the shard's local version table.
	mvSource, mvTarget := source, table
	if ch.Clustered() {
		mvSource, mvTarget = pipeline.QualifiedTable(db, pipeline.LocalTable(s.Table())), pipeline.QualifiedTable(db, pipeline.LocalTable(p.Table))
	}
	p.createMV = "CREATE MATERIALIZED VIEW IF NOT EXISTS " + pipeline.QualifiedTable(db, p.MV) + ch.OnCluster() + " TO " + mvTarget + " AS\n" +
		"SELECT\n    " + strings.Join(exprs, ",\n    ") + "\nFROM " + mvSource + "\n" + p.groupBy
	p.insertHead = "INSERT INTO " + table + " (" + strings.Join(names, ", ") + ")\n"
	// The raw table's partition key (schema.go), in the server's time zone like it.
	p.partitionKey = "toYYYYMM(" + pipeline.QuoteIdent("ts") + ")"
	if s.Kind == pipeline.KindPlan {
		p.partitionKey = "toYYYYMM(" + pipeline.QuoteIdent("period") + ")"
	}
	p.createView = "CREATE VIEW IF NOT EXISTS " + pipeline.QualifiedTable(db, p.View) + ch.OnCluster() + " AS\nSELECT\n    " +
		strings.Join(read, ",\n    ") + "\nFROM " + table + "\nGROUP BY " + strings.Join(keyNames, ", ")
	return p
}

// rollupShardKey is the sharding key of a rollup's Distributed version table on a
// cluster, which only the backfill inserts through (the materialized views write local
// tables). With customer_id among the dimensions it is the raw tables' key, so that a
// customer's backfilled groups land on the shard its raw rows and later states are on.
// Without it, every group gathers states from every shard through the materialized views
// anyway: the key hashes the group's keys, so that a group's backfilled state goes to
// one shard and groups spread evenly. Where a state lands never changes a total: the read
// view merges the states of all shards.
func rollupShardKey(dimensions, keyNames []string) string {
	if slices.Contains(dimensions, "customer_id") {
		return "cityHash64(" + pipeline.QuoteIdent("customer_id") + ")"
	}
	return "cityHash64(" + strings.Join(keyNames, ", ") + ")"
}

// periodExpr is the period key of a rollup: a Usage stream's periods follow ts (in
// UTC), a Plan stream's follow period, the first day of the period planned for.
func periodExpr(kind pipeline.Kind, g pipeline.RollupGranularity) (rollupColumn, error) {
	src, tz := pipeline.QuoteIdent("ts"), ", 'UTC'"
	if kind == pipeline.KindPlan {
		src, tz = pipeline.QuoteIdent("period"), ""
	}
	c := rollupColumn{Name: "_period", Type: "Date"}
	switch g {
	case pipeline.RollupHour:
		if kind == pipeline.KindPlan {
			return c, fmt.Errorf("granularity Hour needs a Usage stream: a Plan stream's periods are days")
		}
		c.Type, c.Expr = "DateTime", "toStartOfHour("+src+tz+")"
	case pipeline.RollupDay:
		c.Expr = src
		if kind != pipeline.KindPlan {
			c.Expr = "toDate(" + src + tz + ")"
		}
	case pipeline.RollupWeek:
		c.Expr = "toMonday(" + src + tz + ")"
	case pipeline.RollupMonth:
		c.Expr = "toStartOfMonth(" + src + tz + ")"
	default:
		return c, fmt.Errorf("granularity %q: want Hour, Day, Week or Month", g)
	}
	return c, nil
}

// quantileSuffix names a quantile's column: "0.5" is p50, "0.99" p99, "0.999" p999.
func quantileSuffix(q string) string {
	d := strings.TrimPrefix(q, "0.")
	if len(d) < 2 {
		d += strings.Repeat("0", 2-len(d))
	}
	return d
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// distributedCluster finds the cluster in a Distributed table's CREATE query.
var distributedCluster = regexp.MustCompile(`ENGINE = Distributed\('([A-Za-z_][A-Za-z0-9_]*)'`)

var versionObject = regexp.MustCompile(`^rollup_([a-z][a-z0-9_]*)_v([0-9a-f]{8})(_mv|_local)?$`)

// versionEngines are the engines of a version's objects, by name suffix.
var versionEngines = map[string][]string{
	"":       {"AggregatingMergeTree", "Distributed"},
	"_mv":    {"MaterializedView"},
	"_local": {"ReplicatedAggregatingMergeTree"},
}
