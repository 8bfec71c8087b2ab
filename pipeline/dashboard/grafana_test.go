package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

const grafanaDashboard = "../../charts/customerloop/dashboards/customerloop.json"

type grafanaPanel struct {
	Title   string         `json:"title"`
	Type    string         `json:"type"`
	Panels  []grafanaPanel `json:"panels"` // inside a row
	Targets []struct {
		RefID      string `json:"refId"`
		RawSQL     string `json:"rawSql"`
		Datasource struct {
			Type string `json:"type"`
		} `json:"datasource"`
	} `json:"targets"`
}

type grafanaQuery struct{ name, sql string }

// grafanaQueries returns every SQL query of the dashboard: its panels' and its query
// variables'.
func grafanaQueries(t *testing.T) []grafanaQuery {
	t.Helper()
	b, err := os.ReadFile(grafanaDashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels     []grafanaPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", grafanaDashboard, err)
	}
	var out []grafanaQuery
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			walk(p.Panels)
			for _, tg := range p.Targets {
				if tg.Datasource.Type != "grafana-clickhouse-datasource" {
					t.Errorf("panel %q target %s: data source %q, want grafana-clickhouse-datasource", p.Title, tg.RefID, tg.Datasource.Type)
				}
				if strings.TrimSpace(tg.RawSQL) == "" {
					t.Errorf("panel %q target %s has no rawSql", p.Title, tg.RefID)
				}
				out = append(out, grafanaQuery{p.Title + "/" + tg.RefID, tg.RawSQL})
			}
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(string); ok && v.Type == "query" {
			out = append(out, grafanaQuery{"variable $" + v.Name, q})
		}
	}
	return out
}

var (
	macroArg = regexp.MustCompile(`\$__(timeFilter|dateFilter)\(([^)]*)\)`)
	anyVar   = regexp.MustCompile(`\$\{?\w+`)
)

// expand substitutes the variables and the data source's macros the way the
// grafana-clickhouse-datasource plugin does.
func expand(t *testing.T, q grafanaQuery, db string, from, to time.Time, interval time.Duration) string {
	t.Helper()
	sql := strings.NewReplacer("${database}", db, "$database", db, "$__interval_s", fmt.Sprint(int(interval.Seconds()))).Replace(q.sql)
	sql = macroArg.ReplaceAllStringFunc(sql, func(m string) string {
		parts := macroArg.FindStringSubmatch(m)
		col := strings.TrimSpace(parts[2])
		if parts[1] == "timeFilter" {
			return fmt.Sprintf("%s >= toDateTime(%d) AND %s <= toDateTime(%d)", col, from.Unix(), col, to.Unix())
		}
		return fmt.Sprintf("%s >= toDate('%s') AND %s <= toDate('%s')", col, from.Format(time.DateOnly), col, to.Format(time.DateOnly))
	})
	if v := anyVar.FindString(sql); v != "" {
		t.Fatalf("%s: %s is neither a variable nor a macro this test knows:\n%s", q.name, v, q.sql)
	}
	return sql
}

// queryAll runs sql and returns its rows as column name -> value.
func queryAll(ctx context.Context, conn driver.Conn, sql string) ([]map[string]any, error) {
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	types := rows.ColumnTypes()
	var out []map[string]any
	for rows.Next() {
		dest := make([]any, len(types))
		for i, ct := range types {
			dest[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		row := map[string]any{}
		for i, ct := range types {
			row[ct.Name()] = reflect.ValueOf(dest[i]).Elem().Interface()
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

func asFloat(v any) float64 {
	switch x := reflect.ValueOf(v); x.Kind() {
	case reflect.Float32, reflect.Float64:
		return x.Float()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(x.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return float64(x.Uint())
	case reflect.Pointer:
		if x.IsNil() {
			return 0
		}
		return asFloat(x.Elem().Interface())
	}
	return 0
}

// TestGrafanaDashboardQueries runs every query of the shipped Grafana dashboard, with its
// variables and macros expanded, against the real ClickHouse holding a known dataset, and
// checks what the panels would show.
func TestGrafanaDashboardQueries(t *testing.T) {
	addr := stacktest.ClickhouseAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db := fmt.Sprintf("test_grafana_%d", time.Now().UnixNano())
	data := generate(13)
	conn := data.load(t, addr, db)

	// Ingestion: two batches of the usage topic and one of plans, an hour apart.
	now := time.Now().UTC().Truncate(time.Second)
	ledger := []struct {
		topic                      string
		messages, dead, duplicates uint64
		at                         time.Time
	}{{"u", 100, 3, 2, now.Add(-2 * time.Hour)}, {"u", 50, 0, 0, now.Add(-time.Hour)}, {"p", 20, 1, 0, now.Add(-time.Hour)}}
	// Name the columns: the ledger gains columns over versions.
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+pipeline.QualifiedTable(db, pipeline.LedgerTable)+
		" (topic, partition, first_offset, last_offset, messages, dead_lettered, duplicates, batch_id, worker, written_at)")
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range ledger {
		if err := b.Append(l.topic, int32(0), int64(i*1000), int64(i*1000)+int64(l.messages)-1, l.messages, l.dead, l.duplicates, fmt.Sprint("b", i), "w", l.at); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}

	from, to := time.Date(2024, 12, 1, 0, 0, 0, 0, time.UTC), now.Add(time.Hour)
	queries := grafanaQueries(t)
	if len(queries) < 5 {
		t.Fatalf("%d queries in %s, want the four panels' and the $database variable's", len(queries), grafanaDashboard)
	}
	results := map[string][]map[string]any{}
	for _, q := range queries {
		rows, err := queryAll(ctx, conn, expand(t, q, db, from, to, time.Hour))
		if err != nil {
			t.Errorf("%s: %v\n%s", q.name, err, q.sql)
			continue
		}
		if len(rows) == 0 {
			t.Errorf("%s returned no rows on the dataset", q.name)
		}
		results[q.name] = rows
	}

	// The $database variable offers the loop's database.
	found := false
	for _, r := range results["variable $database"] {
		found = found || r["database"] == db
	}
	if !found {
		t.Errorf("variable $database does not offer %s: %v", db, results["variable $database"])
	}

	// Plan against actual: the figures of every product and period with plans.
	series := data.series()
	want := 0
	got := map[string][2]float64{}
	for _, r := range results["Plan against actual by product/A"] {
		got[fmt.Sprint(r["product"], " ", r["time"].(time.Time).UTC().Format(time.DateOnly))] = [2]float64{asFloat(r["planned"]), asFloat(r["used"])}
	}
	for product, points := range series {
		for _, p := range points {
			if p.planned == nil {
				continue
			}
			want++
			k := product + " " + p.period.Format(time.DateOnly)
			if g, ok := got[k]; !ok || f2(g[0]) != f2(*p.planned) || f2(g[1]) != f2(p.actual) {
				t.Errorf("plan against actual %s = %v (found %t), want planned %s used %s", k, g, ok, f2(*p.planned), f2(p.actual))
			}
		}
	}
	if len(got) != want {
		t.Errorf("plan against actual: %d points, want %d", len(got), want)
	}

	// Largest gaps: the largest first.
	gaps := results["Largest gaps/A"]
	wg := data.largestGaps(20)
	if len(gaps) != len(wg) {
		t.Errorf("largest gaps: %d rows, want %d", len(gaps), len(wg))
	} else if r := gaps[0]; r["customer"] != wg[0].customer || r["product"] != wg[0].product || f2(asFloat(r["gap"])) != f2(wg[0].gap) {
		t.Errorf("largest gap = %v, want %s %s %s", r, wg[0].customer, wg[0].product, f2(wg[0].gap))
	}

	// Accuracy by horizon: one row per product and horizon, WAPE in percent.
	acc := results["Accuracy by horizon/A"]
	wa := data.accuracy()
	if len(acc) != len(wa) {
		t.Errorf("accuracy: %d rows, want %d", len(acc), len(wa))
	} else {
		for i, r := range acc {
			if r["product"] != wa[i].product || asFloat(r["horizon"]) != float64(wa[i].horizon) || fmt.Sprintf("%.3f", asFloat(r["WAPE %"])) != fmt.Sprintf("%.3f", wa[i].abErr/wa[i].actual*100) {
				t.Errorf("accuracy row %d = %v, want %+v", i, r, wa[i])
			}
		}
	}

	// Ingestion: rows per topic, without dead letters and duplicates.
	ingested := map[any]float64{}
	for _, r := range results["Ingestion rows/A"] {
		ingested[r["topic"]] += asFloat(r["ingested"])
	}
	if ingested["u"] != 145 || ingested["p"] != 19 {
		t.Errorf("ingestion rows per topic = %v, want u 145 and p 19", ingested)
	}
}
