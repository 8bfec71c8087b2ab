package ddltest

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Cell is one (customer, product, period) of a loop's feedback actuals; Period is the
// period's first day, as 2006-01-02.
type Cell struct{ Customer, Product, Period string }

// Tally is a cell's usage: the sum of its events' quantities and how many there are.
type Tally struct {
	Quantity float64
	Events   uint64
}

// Actuals are the tallies of a loop's cells: what a test produced, or what one of the
// loop's tables or views holds.
type Actuals map[Cell]Tally

// Add counts one usage event of a customer and product at ts into its period of grain g.
func (a Actuals) Add(g pipeline.Grain, customer, product string, ts time.Time, qty float64) {
	k := Cell{customer, product, PeriodStart(g, ts).Format(time.DateOnly)}
	t := a[k]
	t.Quantity += qty
	t.Events++
	a[k] = t
}

// PeriodStart is the first day of the period of grain g holding ts, in UTC, as the
// feedback views align it.
func PeriodStart(g pipeline.Grain, ts time.Time) time.Time {
	ts = ts.UTC()
	if g == pipeline.GrainWeek {
		day := time.Date(ts.Year(), ts.Month(), ts.Day(), 0, 0, 0, 0, time.UTC)
		return day.AddDate(0, 0, -(int(day.Weekday())+6)%7)
	}
	return time.Date(ts.Year(), ts.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// CheckActualsOnce fails the test unless every usage event counts exactly once in what
// the loop aggregates: for every (customer, product, period), the feedback_actuals
// rollup's quantity and events, the feedback_gaps view's actual and events, and the raw
// usage table deduplicated by event id all equal produced, what the test sent (without
// malformed messages and producer retries). A cell that is in one and not another counts
// as zero there; a cell listed twice by the rollup or the view fails too. The failure
// names the first cells that differ with each source's figures.
func CheckActualsOnce(t testing.TB, ch driver.Conn, fc pipeline.FeedbackConfig, produced Actuals) {
	t.Helper()
	if len(produced) == 0 {
		t.Fatal("CheckActualsOnce: the test produced no usage, so the comparison says nothing")
	}
	period, _ := fc.Grain.PeriodSQL("t", false)
	sources := []struct {
		name string
		q    string
	}{
		{"raw by event id", `SELECT c, p, toString(` + period + `) AS period, sum(q), count()
FROM (SELECT any(customer_id) AS c, any(product) AS p, any(ts) AS t, any(quantity) AS q
    FROM ` + pipeline.QualifiedTable(fc.Database, fc.UsageTable) + ` GROUP BY event_id)
GROUP BY c, p, period`},
		{"rollup", "SELECT customer_id, product, toString(period), actual, events FROM " +
			pipeline.QualifiedTable(fc.Database, ddl.RollupView(pipeline.FeedbackActualsRollup))},
		// Cells with a plan and no usage are the view's too, at zero: left out.
		{"gaps", "SELECT customer_id, product, toString(period), actual, events FROM " +
			pipeline.QualifiedTable(fc.Database, pipeline.ViewGaps) + " WHERE events > 0 OR actual != 0"},
	}
	names := []string{"produced"}
	got := []Actuals{produced}
	var problems []string
	for _, s := range sources {
		a, twice := readActuals(t, ch, s.q)
		for _, k := range twice {
			problems = append(problems, fmt.Sprintf("%s lists %v more than once", s.name, k))
		}
		names, got = append(names, s.name), append(got, a)
	}
	cells := map[Cell]bool{}
	for _, a := range got {
		for k := range a {
			cells[k] = true
		}
	}
	keys := make([]Cell, 0, len(cells))
	for k := range cells {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b Cell) int {
		return strings.Compare(a.Customer+"\x00"+a.Product+"\x00"+a.Period, b.Customer+"\x00"+b.Product+"\x00"+b.Period)
	})
	var differ []string
	for _, k := range keys {
		want, same := got[0][k], true
		for _, a := range got[1:] {
			same = same && a[k].Events == want.Events && near(a[k].Quantity, want.Quantity)
		}
		if same {
			continue
		}
		line := fmt.Sprintf("%s %s %s:", k.Customer, k.Product, k.Period)
		for i, a := range got {
			line += fmt.Sprintf(" %s %v/%d,", names[i], a[k].Quantity, a[k].Events)
		}
		differ = append(differ, strings.TrimSuffix(line, ","))
	}
	if len(differ) > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d cells differ (quantity/events), first:\n  %s",
			len(differ), len(keys), strings.Join(differ[:min(10, len(differ))], "\n  ")))
	}
	if len(problems) > 0 {
		t.Errorf("usage does not count once per (customer, product, period) in %s:\n%s", fc.Database, strings.Join(problems, "\n"))
		return
	}
	t.Logf("%d cells: the rollup, feedback_gaps and the raw usage by event id each equal what was produced", len(keys))
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// readActuals reads rows of (customer, product, period as text, quantity, events) into
// tallies, with the cells that came more than once.
func readActuals(t testing.TB, ch driver.Conn, q string) (Actuals, []Cell) {
	t.Helper()
	rows, err := ch.Query(context.Background(), q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	out := Actuals{}
	var twice []Cell
	for rows.Next() {
		var k Cell
		var v Tally
		if err := rows.Scan(&k.Customer, &k.Product, &k.Period, &v.Quantity, &v.Events); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if o, ok := out[k]; ok {
			twice = append(twice, k)
			v.Quantity, v.Events = v.Quantity+o.Quantity, v.Events+o.Events
		}
		out[k] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out, twice
}
