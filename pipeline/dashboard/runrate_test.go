package dashboard

import (
	"context"
	"math"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

// TestRunRateInChromium serves a loop with plans and usage in the month before this one
// and in the month under way, and plans alone for the next month, and reads the page as
// headless Chromium renders it. The month under way shows its actual so far and, from
// that point, a dashed projection to the month's end at the rate so far: the value is the
// one computed here with the clock read around the page load, and lies between what
// feedback_gaps says just before and just after. The next month shows its plan and no
// actual, gap or projection. Any day of the month gives the same verdict.
func TestRunRateInChromium(t *testing.T) {
	addr := stacktest.ClickhouseAddr(t)
	bin := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db := stacktest.UniqueName("test_dashboard_run_rate")
	now := time.Now().UTC()
	cur := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	prev, next := cur.AddDate(0, -1, 0), cur.AddDate(0, 1, 0)
	d := &dataset{
		plans: []plan{ // every one made a month ahead, so each period's plans are also its plans at start
			{"plan-1", "c0", "compute", prev, prev.AddDate(0, -1, 0), 100},
			{"plan-2", "c0", "compute", cur, prev, 120},
			{"plan-3", "c1", "compute", cur, prev, 80},
			{"plan-4", "c0", "compute", next, cur, 150},
			{"plan-5", "c1", "compute", next, cur, 60},
		},
		actual: map[cell]float64{
			{"c0", "compute", prev}: 90,
			{"c0", "compute", cur}:  30, {"c1", "compute", cur}: 10,
			{"c2", "compute", cur}: 5, // without a plan: unplanned, not projected
		},
	}
	conn := d.load(t, addr, db)
	ref := LoopRef{Namespace: "default", Name: "acme"}
	// A month not begun has no gap to rank: the largest gaps leave it out (its plans
	// alone would read as gaps of -100%).
	figs, err := Load(context.Background(), ref, Loop{Conn: conn, Feedback: feedbackOf(db, 0)})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range figs.LargestGaps {
		if !r.Period.Before(next) {
			t.Errorf("largest gaps list %s of %s, a month not begun", r.Customer, r.Period.Format(time.DateOnly))
		}
	}
	if len(figs.LargestGaps) == 0 {
		t.Error("no largest gaps at all")
	}
	srv := httptest.NewServer(New(StaticSource{ref: {Conn: conn, Feedback: feedbackOf(db, 0)}}, testr.New(t)))
	defer srv.Close()

	// The projection falls as the month goes on: what the page shows lies between the
	// view's figure before the page was read and after, and between the figures the run
	// rate gives at the clock's seconds around it.
	gapsProjected := func() float64 {
		var p float64
		if err := conn.QueryRow(ctx, "SELECT sum(ifNull(projected, 0)) FROM "+pipeline.QualifiedTable(db, pipeline.ViewGaps)+
			" WHERE versions > 0 AND period = toDate('"+cur.Format(time.DateOnly)+"')").Scan(&p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const actualSoFar, planned = 40.0, 200.0 // c0 and c1, who planned the month
	runRate := func(at time.Time) float64 {
		return actualSoFar * next.Sub(cur).Seconds() / math.Max(float64(at.Unix()-cur.Unix()), 1)
	}
	viewBefore, clockBefore := gapsProjected(), time.Now()
	dom := browse(t, bin, srv.URL+"/loops/default/acme", "--dump-dom")
	clockAfter := time.Now()
	viewAfter := gapsProjected()
	if clockAfter.UTC().Month() != cur.Month() {
		t.Skip("the month turned while the page was read")
	}
	sec := section(t, dom, `id="product-compute"`, "</section>")
	at := func(p time.Time) string { return p.Format(time.DateOnly) }
	num := func(s string) float64 {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("%q in the page is not a number", s)
		}
		return f
	}

	// The month under way: the actual so far, then a dashed line from it to the
	// projection's point.
	marker := regexp.MustCompile(`<circle cx="([0-9.]+)" cy="([0-9.]+)" r="3" fill="#bc4c00"><title>` + at(cur) + ` actual 40.00</title>`).FindStringSubmatch(sec)
	if marker == nil {
		t.Fatalf("no chart point for the actual so far, 40.00, of %s:\n%s", at(cur), sec)
	}
	lines := regexp.MustCompile(`<line class="projected" x1="([0-9.]+)" x2="([0-9.]+)" y1="([0-9.]+)" y2="([0-9.]+)"[^>]* stroke-dasharray="3 3"`).FindAllStringSubmatch(sec, -1)
	point := regexp.MustCompile(`<circle cx="([0-9.]+)" cy="([0-9.]+)" r="4"[^>]*><title>` + at(cur) + ` projected at the rate so far ([0-9.]+)</title>`).FindStringSubmatch(sec)
	if len(lines) != 1 || point == nil {
		t.Fatalf("want one dashed projection line and its point for %s; found %d lines, point %v:\n%s", at(cur), len(lines), point, sec)
	}
	line := lines[0]
	if line[1] != marker[1] || line[2] != marker[1] || line[3] != marker[2] || line[4] != point[2] || point[1] != marker[1] ||
		num(line[4]) > num(line[3]) || num(line[4]) < 16 {
		t.Errorf("the projection runs from (%s,%s) to (%s,%s), its point at (%s,%s); want it upwards, within the plot, from the actual so far at (%s,%s)",
			line[1], line[3], line[2], line[4], point[1], point[2], marker[1], marker[2])
	}
	projected := num(point[3])
	lo, hi := math.Min(viewAfter, runRate(clockAfter)), math.Max(viewBefore, runRate(clockBefore))
	if projected < lo-0.005 || projected > hi+0.005 {
		t.Errorf("projected %s: want between %.4f and %.4f (feedback_gaps %.4f then %.4f, the run rate %.4f then %.4f)",
			point[3], lo, hi, viewBefore, viewAfter, runRate(clockBefore), runRate(clockAfter))
	}
	row := regexp.MustCompile(`<tr><td class="l">` + at(cur) + `</td><td>200.00</td><td>200.00</td><td>40.00</td><td>5.00</td><td>-160.00</td><td>-80.0%</td>` +
		`<td>([0-9.]+)</td><td>(-?[0-9.]+)</td><td>2</td></tr>`).FindStringSubmatch(sec)
	if row == nil {
		t.Errorf("no row for %s with its actual so far, gap so far and a projection:\n%s", at(cur), sec)
	} else if row[1] != point[3] || math.Abs(num(row[2])-(projected-planned)) > 0.0101 {
		t.Errorf("%s: projected %s and projected gap %s in the table; want the chart's %s and that less %v", at(cur), row[1], row[2], point[3], planned)
	}

	// The month before: over, no projection. The next month: its plan, nothing else.
	for _, want := range []string{
		`<tr><td class="l">` + at(prev) + `</td><td>100.00</td><td>100.00</td><td>90.00</td><td>0.00</td><td>-10.00</td><td>-10.0%</td><td>–</td><td>–</td><td>1</td></tr>`,
		`<tr><td class="l">` + at(next) + `</td><td>210.00</td><td>210.00</td><td>–</td><td>0.00</td><td>–</td><td>–</td><td>–</td><td>–</td><td>2</td></tr>`,
		`<title>` + at(next) + ` planned 210.00</title>`,
		`<title>` + at(prev) + ` actual 90.00</title>`,
	} {
		if !strings.Contains(sec, want) {
			t.Errorf("missing from the chart or its table:\n%s\nin\n%s", want, sec)
		}
	}
	for _, unwanted := range []string{at(next) + " actual", at(next) + " projected", at(prev) + " projected"} {
		if strings.Contains(sec, unwanted) {
			t.Errorf("the chart has %q: only the month under way is projected, and a month not begun has no actual", unwanted)
		}
	}
	if pts := regexp.MustCompile(`<polyline class="actual"[^>]* points="([^"]*)"`).FindStringSubmatch(sec); pts == nil || len(strings.Fields(pts[1])) != 2 {
		t.Errorf("the actual line: %v; want two points, the month before and the month under way", pts)
	}

	// What a person would see, kept in test/artifacts/.
	dir, err := filepath.Abs("../../test/artifacts")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "dashboard-run-rate.png")
	browse(t, bin, srv.URL+"/loops/default/acme", "--screenshot="+shot, "--window-size=1280,900", "--hide-scrollbars")
	t.Logf("projected %s (between %.4f and %.4f); screenshot: %s", point[3], lo, hi, shot)
}
