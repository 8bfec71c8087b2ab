package ddl

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

func stmt(object, sql string) []pipeline.Statement {
	return []pipeline.Statement{{Object: object, SQL: sql}}
}

// TestDiff plans a declared set against what two servers hold.
func TestDiff(t *testing.T) {
	view := func(fp string) definition {
		return definition{engine: "View", query: "CREATE VIEW d.v AS SELECT 1 WHERE '" + fp + "' != ''"}
	}
	table := definition{engine: "MergeTree", query: "CREATE TABLE d.t (`ts` DateTime) ENGINE = MergeTree ORDER BY ts TTL ts + toIntervalDay(3)"}
	both := func(d definition) []definition { return []definition{d, d} }
	cases := []struct {
		name  string
		obj   Object
		on    []definition // what each server holds of it, nil if missing; none: missing everywhere
		want  Action
		stmts []string
	}{
		{"missing is created", Object{Create: stmt("d.x", "CREATE x")}, nil, Created, []string{"CREATE x"}},
		{"present is unchanged", Object{Create: stmt("d.x", "CREATE x")}, both(table), Unchanged, nil},
		{"missing on one server is created", Object{Create: stmt("d.x", "CREATE x")}, []definition{table, {}}, Created, []string{"CREATE x"}},
		{"current fingerprint is unchanged", Object{Create: stmt("d.v", "CREATE v"), Fingerprint: "fp:1", Drop: stmt("d.v", "DROP v")},
			both(view("fp:1")), Unchanged, nil},
		{"stale fingerprint is replaced", Object{Create: stmt("d.v", "CREATE v"), Fingerprint: "fp:2", Drop: stmt("d.v", "DROP v")},
			both(view("fp:1")), Replaced, []string{"DROP v", "CREATE v"}},
		{"stale on one server is replaced", Object{Create: stmt("d.v", "CREATE v"), Fingerprint: "fp:2", Drop: stmt("d.v", "DROP v")},
			[]definition{view("fp:2"), view("fp:1")}, Replaced, []string{"DROP v", "CREATE v"}},
		{"stale on one, missing on the other is replaced", Object{Create: stmt("d.v", "CREATE v"), Fingerprint: "fp:2", Drop: stmt("d.v", "DROP v")},
			[]definition{view("fp:1"), {}}, Replaced, []string{"DROP v", "CREATE v"}},
		{"migration is altered", Object{Create: stmt("d.t", "CREATE t"), Alter: stmt("d.t.c", "ALTER t ADD c")},
			both(table), Altered, []string{"ALTER t ADD c"}},
		{"missing with a migration is created only", Object{Create: stmt("d.t", "CREATE t"), Alter: stmt("d.t.c", "ALTER t ADD c")},
			nil, Created, []string{"CREATE t"}},
		{"current TTL, quoted differently, is unchanged", Object{Fingerprint: "TTL `ts` + toIntervalDay(3)", Alter: stmt("d.t", "MODIFY TTL 3")},
			both(table), Unchanged, nil},
		{"other TTL is altered", Object{Fingerprint: "TTL `ts` + toIntervalDay(4)", Alter: stmt("d.t", "MODIFY TTL 4")},
			both(table), Altered, []string{"MODIFY TTL 4"}},
		{"absent found is dropped", Object{Drop: stmt("d.x", "DROP x"), Absent: true}, []definition{{}, table}, Dropped, []string{"DROP x"}},
		{"absent not found is unchanged", Object{Drop: stmt("d.x", "DROP x"), Absent: true}, nil, Unchanged, nil},
	}
	for _, c := range cases {
		c.obj.Name = "d.o"
		f := found{{}, {}}
		for i, d := range c.on {
			if d != (definition{}) {
				f[i]["d.o"] = d
			}
		}
		steps, err := diff([]Object{c.obj}, f)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		var sqls []string
		for _, s := range steps[0].stmts {
			sqls = append(sqls, s.SQL)
		}
		if steps[0].Change != (Change{Object: "d.o", Action: c.want}) || !slices.Equal(sqls, c.stmts) {
			t.Errorf("%s: %v %q, want %s %q", c.name, steps[0].Change, sqls, c.want, c.stmts)
		}
	}

	// What cannot be brought to its declared state is an error before anything runs.
	for name, o := range map[string]Object{
		"missing without Create": {Name: "d.o", Alter: stmt("d.o", "ALTER")},
		"stale without Drop":     {Name: "d.o", Create: stmt("d.o", "CREATE"), Fingerprint: "fp:2"},
	} {
		f := found{{}}
		if o.Fingerprint != "" {
			f[0]["d.o"] = view("fp:1")
		}
		if _, err := diff([]Object{{Name: "d.ok", Create: stmt("d.ok", "CREATE ok")}, o}, f); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestRunOrder: creations, replacements and drops run first, in the order declared,
// then the alters (which may rely on what was created).
func TestRunOrder(t *testing.T) {
	objs := []Object{
		{Name: "d.a", Create: stmt("d.a", "CREATE a"), Alter: stmt("d.a.c", "ALTER a")},
		{Name: "d.b", Create: stmt("d.b", "CREATE b")},
		{Name: "d.c", Create: stmt("d.c", "CREATE c")},
		{Name: "d.old", Drop: stmt("d.old", "DROP old"), Absent: true},
	}
	f := found{{"d.a": {engine: "MergeTree"}, "d.c": {engine: "MergeTree"}, "d.old": {engine: "View"}}}
	steps, err := diff(objs, f)
	if err != nil {
		t.Fatal(err)
	}
	var ran []string
	for _, i := range runOrder(steps) {
		for _, s := range steps[i].stmts {
			ran = append(ran, s.SQL)
		}
	}
	if want := []string{"CREATE b", "DROP old", "ALTER a"}; !slices.Equal(ran, want) {
		t.Errorf("ran %q, want %q", ran, want)
	}
}

// declaredSet is a table and a view over it in db, the view carrying fingerprint fp, ON
// CLUSTER when cluster is set (the table then replicated within each shard).
func declaredSet(db, cluster, fp string) []Object {
	ch := pipeline.ClickHouseConfig{Database: db, Cluster: cluster}
	on := ch.OnCluster()
	engine := "MergeTree"
	if ch.Clustered() {
		engine = "ReplicatedMergeTree(" + replicatedPath(db, "apply_t") + ", '{replica}')"
	}
	t, v := pipeline.QualifiedTable(db, "apply_t"), pipeline.QualifiedTable(db, "apply_v")
	return []Object{
		{Name: db + ".apply_t", Create: stmt(db+".apply_t", "CREATE TABLE IF NOT EXISTS "+t+on+" (a Int32) ENGINE = "+engine+" ORDER BY a")},
		{Name: db + ".apply_v", Fingerprint: fp,
			Create: stmt(db+".apply_v", "CREATE VIEW IF NOT EXISTS "+v+on+" AS SELECT a FROM "+t+" WHERE '"+fp+"' != ''"),
			Drop:   stmt(db+".apply_v", "DROP TABLE IF EXISTS "+v+on)},
	}
}

// applyTwice applies a declared set on a real server (conn, reading nodes) and follows
// what Apply reports: created, then unchanged, then replaced, altered and dropped, then
// unchanged again. It returns the set as last applied.
func applyTwice(t *testing.T, conn driver.Conn, nodes []driver.Conn, db, cluster string) []Object {
	t.Helper()
	ctx := context.Background()
	apply := func(objs []Object, want ...Action) {
		t.Helper()
		changes, err := Apply(ctx, conn, nodes, objs)
		if err != nil {
			t.Fatal(err)
		}
		var got []Action
		for i, c := range changes {
			if c.Object != objs[i].Name {
				t.Fatalf("change %d is about %s, want %s", i, c.Object, objs[i].Name)
			}
			got = append(got, c.Action)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("Apply reported %v, want %v", got, want)
		}
	}
	v1 := declaredSet(db, cluster, "customerloop:v1")
	apply(v1, Created, Created)
	apply(v1, Unchanged, Unchanged)

	// A new fingerprint replaces the view; a migration alters the table; a leftover is
	// dropped. Then nothing is left to do.
	on := pipeline.ClickHouseConfig{Cluster: cluster}.OnCluster()
	left := pipeline.QualifiedTable(db, "apply_left")
	if err := ApplySchema(ctx, conn, stmt(db+".apply_left", "CREATE VIEW IF NOT EXISTS "+left+on+" AS SELECT 1")); err != nil {
		t.Fatal(err)
	}
	v2 := declaredSet(db, cluster, "customerloop:v2")
	v2[0].Alter = stmt(db+".apply_t.b", "ALTER TABLE "+pipeline.QualifiedTable(db, "apply_t")+on+" ADD COLUMN b String")
	v2 = append(v2, Object{Name: db + ".apply_left", Absent: true, Drop: stmt(db+".apply_left", "DROP TABLE IF EXISTS "+left+on)})
	apply(v2, Altered, Replaced, Dropped)
	v2[0].Alter = nil
	apply(v2, Unchanged, Unchanged, Unchanged)

	servers := nodes
	if len(servers) == 0 {
		servers = []driver.Conn{conn}
	}
	for i, n := range servers {
		views, err := nodeViews(ctx, n, db)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(views["apply_v"], "customerloop:v2") {
			t.Errorf("server %d: apply_v is %q, want the v2 definition", i+1, views["apply_v"])
		}
		if _, ok := views["apply_left"]; ok {
			t.Errorf("server %d still has apply_left", i+1)
		}
		var b uint64
		if err := n.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = 'apply_t' AND name = 'b'", db).Scan(&b); err != nil || b != 1 {
			t.Errorf("server %d: apply_t has %d columns b (%v), want 1", i+1, b, err)
		}
	}
	return v2
}

// TestApplyOnServer applies a declared set twice on the test server.
func TestApplyOnServer(t *testing.T) {
	cfg := stacktest.SampleConfig()
	cfg.ClickHouse.Addr = stacktest.ClickhouseAddr(t)
	cfg.ClickHouse.Database = stacktest.UniqueName("test_apply")
	ch := applySchema(t, cfg)
	applyTwice(t, ch, nil, cfg.ClickHouse.Database, "")
}

// TestApplyOnCluster applies a declared set ON CLUSTER, reading every node; a view
// missing on one node is created again, one left stale on one node is replaced.
func TestApplyOnCluster(t *testing.T) {
	cfg := clusterTestConfig(t)
	ch := applySchema(t, cfg)
	nodes := stacktest.NodeConns(t)
	ctx := context.Background()
	db := cfg.ClickHouse.Database
	objs := applyTwice(t, ch, nodes, db, cfg.ClickHouse.Cluster)
	view := pipeline.QualifiedTable(db, "apply_v")

	for _, c := range []struct {
		action Action
		on3    []string // what node3 alone runs first
	}{
		{Created, []string{"DROP TABLE " + view}},
		{Replaced, []string{"DROP TABLE " + view, "CREATE VIEW " + view + " AS SELECT a FROM " + pipeline.QualifiedTable(db, "apply_t") + " WHERE 'customerloop:v1' != ''"}},
	} {
		for _, sql := range c.on3 {
			if err := nodes[2].Exec(ctx, sql); err != nil {
				t.Fatal(err)
			}
		}
		changes, err := Apply(ctx, ch, nodes, objs)
		if err != nil && !errors.Is(err, connect.ErrDDLPending) {
			t.Fatal(err)
		}
		if want := (Change{Object: db + ".apply_v", Action: c.action}); len(changes) < 2 || changes[1] != want {
			t.Fatalf("after %q on node3 Apply reported %v, want %v", c.on3, changes, want)
		}
		for i, n := range nodes {
			views, err := nodeViews(ctx, n, db)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(views["apply_v"], "customerloop:v2") {
				t.Errorf("node%d: apply_v is %q, want the v2 definition", i+1, views["apply_v"])
			}
		}
	}
}

// TestMigrateChanges: migrating a schema in place changes nothing; a new dimension
// alters its stream's table and leaves the others.
func TestMigrateChanges(t *testing.T) {
	cfg := stacktest.SampleConfig()
	cfg.ClickHouse.Addr = stacktest.ClickhouseAddr(t)
	cfg.ClickHouse.Database = stacktest.UniqueName("test_migrate_changes")
	ch := applySchema(t, cfg)
	ctx := context.Background()
	usage := cfg.ClickHouse.Database + "." + cfg.Streams[0].Table()

	_, changes, err := MigrateChanges(ctx, ch, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != len(ManagedTables(cfg)) || slices.ContainsFunc(changes, func(c Change) bool { return c.Action != Unchanged }) {
		t.Errorf("migrating in place reported %v, want every table unchanged", changes)
	}

	evolved := cfg
	evolved.Streams = slices.Clone(cfg.Streams)
	evolved.Streams[0].Dimensions = append(slices.Clone(cfg.Streams[0].Dimensions), pipeline.Dimension{Name: "tier", Field: "tier", Type: "String"})
	_, changes, err = MigrateChanges(ctx, ch, evolved)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range changes {
		want := Unchanged
		if c.Object == usage {
			want = Altered
		}
		if c.Action != want {
			t.Errorf("%s: %s, want %s", c.Object, c.Action, want)
		}
	}
	if !slices.Contains(changes, Change{Object: usage, Action: Altered}) {
		t.Errorf("changes %v do not name %s", changes, usage)
	}
}
