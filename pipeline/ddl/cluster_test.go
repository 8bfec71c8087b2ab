package ddl

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

// clusterConfig is stacktest.SampleConfig with consent and a rollup, on the cluster "customerloop".
func clusterConfig() pipeline.Config {
	cfg := stacktest.SampleConfig()
	cfg.ClickHouse.Cluster = "customerloop"
	cfg.Consent = &pipeline.ConsentConfig{Topic: "acme.consent"}
	cfg.Rollups = []pipeline.RollupConfig{{Name: "daily_usage", Stream: "usage", Dimensions: []string{"customer_id", "product"}, Granularity: pipeline.RollupDay,
		Measures: []pipeline.MeasureConfig{{Name: "used", Function: pipeline.FuncSum, Field: "quantity"}}}}
	return cfg
}

func writeStatements(b *strings.Builder, stmts ...pipeline.Statement) {
	for _, s := range stmts {
		b.WriteString("-- " + s.Object + "\n" + s.SQL + ";\n\n")
	}
}

func TestPlanSchemaClusterGolden(t *testing.T) {
	cfg := clusterConfig()
	stmts, err := PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	writeStatements(&b, stmts...)
	for _, s := range cfg.Streams {
		b.WriteString("-- insert " + s.Name + "\n" + InsertSQL(cfg.ClickHouse.Database, s) + ";\n\n")
	}
	stacktest.Golden(t, filepath.Join("testdata", "schema.cluster.golden.sql"), b.String())
}

// TestPlanMigrationClusterGolden is TestPlanMigrationGolden's evolution on a cluster: the
// columns go to the local tables ON CLUSTER, the Distributed tables that lack them are
// created again.
func TestPlanMigrationClusterGolden(t *testing.T) {
	old := clusterConfig()
	old.Streams[0].Dimensions = append(old.Streams[0].Dimensions[:1:1], old.Streams[0].Dimensions[2:]...) // without seats
	old.Streams[0].Dimensions = append(old.Streams[0].Dimensions, pipeline.Dimension{Name: "legacy", Field: "legacy", Type: "String"})
	existing := clusterColumnsOf(old)
	var ledger []pipeline.Column
	for _, c := range existing[pipeline.LocalTable(pipeline.LedgerTable)] {
		if c.Name != "dead_lettered" && c.Name != "duplicates" {
			ledger = append(ledger, c)
		}
	}
	existing[pipeline.LocalTable(pipeline.LedgerTable)] = ledger
	existing[pipeline.LedgerTable] = ledger
	delete(existing, "plans_raw")
	delete(existing, pipeline.LocalTable("plans_raw"))

	cfg := clusterConfig()
	cfg.Streams[0].Dimensions = append(cfg.Streams[0].Dimensions, pipeline.Dimension{Name: "plan_tier", Field: "tier", Type: "String", Nullable: true})
	stmts, err := PlanMigration(cfg.ClickHouse, ManagedTables(cfg), existing)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	writeStatements(&b, stmts...)
	stacktest.Golden(t, filepath.Join("testdata", "migration.cluster.golden.sql"), b.String())

	if again, err := PlanMigration(cfg.ClickHouse, ManagedTables(cfg), clusterColumnsOf(cfg)); err != nil || len(again) != 0 {
		t.Errorf("migrating matching tables: %v, %v", again, err)
	}
	// Only the Distributed table lacks a column (a node recreated it from an old plan):
	// it alone is created again.
	front := clusterColumnsOf(cfg)
	front["usage_raw"] = front["usage_raw"][:3]
	again, err := PlanMigration(cfg.ClickHouse, ManagedTables(cfg), front)
	if err != nil || len(again) != 2 || !strings.HasPrefix(again[0].SQL, "DROP TABLE IF EXISTS `acme`.`usage_raw` ON CLUSTER") {
		t.Errorf("migrating a Distributed table only: %v, %v", again, err)
	}
}

// clusterColumnsOf returns a config's tables, local and Distributed, as ClickHouse would
// list them.
func clusterColumnsOf(cfg pipeline.Config) map[string][]pipeline.Column {
	out := map[string][]pipeline.Column{}
	for _, t := range ManagedTables(cfg) {
		out[t.Name] = append([]pipeline.Column(nil), t.Columns...)
		out[pipeline.LocalTable(t.Name)] = append([]pipeline.Column(nil), t.Columns...)
	}
	return out
}

// The Distributed table a migration creates again is the one PlanSchema creates: the
// same columns, the same shard key.
func TestMigrationRecreatesThePlannedDistributedTable(t *testing.T) {
	cfg := clusterConfig()
	planned := map[string]string{}
	stmts, err := PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stmts {
		planned[s.Object] = s.SQL
	}
	for _, tbl := range ManagedTables(cfg) {
		existing := clusterColumnsOf(cfg)
		existing[tbl.Name] = existing[tbl.Name][:1]
		mig, err := PlanMigration(cfg.ClickHouse, ManagedTables(cfg), existing)
		if err != nil {
			t.Fatal(err)
		}
		if len(mig) != 2 {
			t.Fatalf("%s: want a drop and a create, got %v", tbl.Name, mig)
		}
		if want := planned[mig[1].Object]; mig[1].SQL != want {
			t.Errorf("%s created again as\n%s\nwant\n%s", tbl.Name, mig[1].SQL, want)
		}
	}
}

func TestClusterMaintenanceGolden(t *testing.T) {
	cfg := clusterConfig()
	ch := cfg.ClickHouse
	var b strings.Builder
	for _, s := range cfg.Streams {
		writeStatements(&b, RetentionTTLStatement(ch, s, 30), DropPartitionStatement(ch, s, 202611))
	}
	stacktest.Golden(t, filepath.Join("testdata", "retention.cluster.golden.sql"), b.String())

	b.Reset()
	for _, s := range cfg.Streams {
		writeStatements(&b, DeleteCustomerStatement(ch, s.Table()))
	}
	writeStatements(&b, DeleteDeadLettersStatement(ch))
	stacktest.Golden(t, filepath.Join("testdata", "consent.cluster.golden.sql"), b.String())

	b.Reset()
	st, err := DigestTableStatement(ch)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := TrackingTableStatement(ch)
	if err != nil {
		t.Fatal(err)
	}
	writeStatements(&b, st, tr)
	stacktest.Golden(t, filepath.Join("testdata", "digest.cluster.golden.sql"), b.String())

	b.Reset()
	writeStatements(&b, PlanDrop(cfg)...)
	stacktest.Golden(t, filepath.Join("testdata", "drop.cluster.golden.sql"), b.String())
}

// Without a cluster the maintenance statements are what CustomerLoop always ran.
func TestMaintenanceStatementsSingleServer(t *testing.T) {
	cfg := stacktest.SampleConfig()
	ch, s := cfg.ClickHouse, cfg.Streams[0]
	for got, want := range map[string]string{
		RetentionTTLStatement(ch, s, 30).SQL:       "ALTER TABLE `acme`.`usage_raw` MODIFY TTL `ts` + toIntervalDay(30)",
		DropPartitionStatement(ch, s, 202611).SQL:  "ALTER TABLE `acme`.`usage_raw` DROP PARTITION 202611",
		DeleteCustomerStatement(ch, s.Table()).SQL: "ALTER TABLE `acme`.`usage_raw` DELETE WHERE customer_id = ?",
		DeleteDeadLettersStatement(ch).SQL:         "ALTER TABLE `acme`.`dead_letters` DELETE WHERE customer_id = ? AND has(?, stream)",
		PlanDrop(cfg)[len(PlanDrop(cfg))-1].SQL:    "DROP TABLE IF EXISTS `acme`.`plans_raw`",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	st, err := DigestTableStatement(ch)
	if err != nil || !strings.HasSuffix(st.SQL, "ENGINE = MergeTree\nORDER BY (loop, product, period, version)") || strings.Contains(st.SQL, "CLUSTER") {
		t.Errorf("digest table on a single server: %v\n%s", err, st.SQL)
	}
}

func TestDDLPendingError(t *testing.T) {
	e := &connect.DDLPendingError{}
	e.Add("acme.t_local", []string{"node2:9000"})
	e.Add("acme.t", []string{"node3:9000", "node2:9000"})
	var err error = e
	if !errors.Is(err, connect.ErrDDLPending) {
		t.Fatal("a DDLPendingError is not ErrDDLPending")
	}
	want := "ON CLUSTER DDL not yet run by every host: acme.t_local, acme.t not yet applied on node2:9000, node3:9000 (they run it from the distributed DDL queue when back)"
	if err.Error() != want {
		t.Errorf("got %q\nwant %q", err.Error(), want)
	}
}
