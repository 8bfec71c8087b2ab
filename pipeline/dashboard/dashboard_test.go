package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/feedback"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

// chromium returns a headless-capable browser: $CHROMIUM, one on PATH, or (with
// CUSTOMERLOOP_REQUIRE_STACK set, as make test does) the one hack/chromium.sh installs.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") == "" {
		t.Skip("no chromium on PATH: run hack/chromium.sh (installs Debian's chromium), or set CHROMIUM; make test does this")
	}
	out, err := exec.Command("../../hack/chromium.sh").Output()
	if err != nil {
		t.Fatalf("hack/chromium.sh could not provide chromium: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// browse runs headless Chromium on url with extra flags and returns what it printed.
func browse(t *testing.T, bin, url string, flags ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir()}, flags...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(flags, " "), err, stderr.String())
	}
	return stdout.String()
}

func f2(x float64) string { return fmt.Sprintf("%.2f", x) }

func p2(p *float64) string {
	if p == nil {
		return "–"
	}
	return f2(*p)
}

func pc(num, den float64, ok bool) string {
	if !ok || den == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f%%", num/den*100)
}

// section returns the part of dom from the first occurrence of start to the next end.
func section(t *testing.T, dom, start, end string) string {
	t.Helper()
	i := strings.Index(dom, start)
	if i < 0 {
		t.Fatalf("%q is not in the page", start)
	}
	j := strings.Index(dom[i:], end)
	if j < 0 {
		t.Fatalf("no %q after %q", end, start)
	}
	return dom[i : i+j]
}

// TestDashboardInChromium loads a known dataset into the real ClickHouse, serves the
// dashboard, and reads the page as headless Chromium renders it: every chart's figures,
// the largest gaps in order, and accuracy by horizon must be the ones computed here. A
// screenshot is kept in test/artifacts/.
func TestDashboardInChromium(t *testing.T) {
	addr := stacktest.ClickhouseAddr(t)
	bin := chromium(t)
	db := fmt.Sprintf("test_dashboard_%d", time.Now().UnixNano())
	data := generate(11)
	conn := data.load(t, addr, db)

	ref := LoopRef{Namespace: "default", Name: "acme"}
	srv := httptest.NewServer(New(StaticSource{ref: {Conn: conn, Feedback: feedbackOf(db, 0)}}, testr.New(t)))
	defer srv.Close()

	dom := browse(t, bin, srv.URL+"/loops/default/acme", "--dump-dom")
	if !strings.Contains(dom, "<h1>default/acme</h1>") {
		t.Fatalf("the page is not the loop's:\n%.2000s", dom)
	}

	// Charts: one per product, with a point per period for planned and actual, and the
	// figures in the table under it.
	series := data.series()
	for product, points := range series {
		sec := section(t, dom, `id="product-`+product+`"`, "</section>")
		if n := strings.Count(sec, "<polyline"); n != 2 {
			t.Errorf("%s: %d polylines, want planned and actual", product, n)
		}
		for _, p := range points {
			at := p.period.Format(time.DateOnly)
			if !strings.Contains(sec, "<title>"+at+" actual "+f2(p.actual)+"</title>") {
				t.Errorf("%s %s: no chart point for actual %s", product, at, f2(p.actual))
			}
			if p.planned != nil && !strings.Contains(sec, "<title>"+at+" planned "+f2(*p.planned)+"</title>") {
				t.Errorf("%s %s: no chart point for planned %s", product, at, f2(*p.planned))
			}
			var gap, ratio = "–", "–"
			if p.gap != nil {
				gap = f2(*p.gap)
				ratio = pc(*p.gap, *p.planned, true)
			}
			// Every period of the data is over: no projection.
			row := fmt.Sprintf(`<tr><td class="l">%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>–</td><td>–</td><td>%d</td></tr>`,
				at, p2(p.planned), p2(p.atStart), f2(p.actual), f2(p.unplanned), gap, ratio, p.customers)
			if !strings.Contains(sec, row) {
				t.Errorf("%s: row missing from the series table:\n%s\nin\n%s", product, row, sec)
			}
		}
	}
	if n := strings.Count(dom, `<section class="product"`); n != len(series) {
		t.Errorf("%d product charts, want %d", n, len(series))
	}

	// Largest gaps, in order.
	gaps := section(t, dom, `id="largest-gaps"`, "</table>")
	pos := 0
	for i, g := range data.largestGaps(LargestGaps) {
		row := fmt.Sprintf(`<tr><td class="l">%s</td><td class="l">%s</td><td class="l">%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%d</td></tr>`,
			g.period.Format(time.DateOnly), g.customer, g.product, f2(g.planned), p2(g.atStart), f2(g.actual), f2(g.gap),
			pc(g.gap, g.planned, true), pc(g.actual, g.planned, true), g.versions)
		j := strings.Index(gaps[pos:], row)
		if j < 0 {
			t.Errorf("largest gap %d missing or out of order:\n%s\nin\n%s", i+1, row, gaps)
			break
		}
		pos += j + len(row)
	}
	if n := strings.Count(gaps, "<tr>") - 1; n != min(LargestGaps, len(data.largestGaps(1000))) {
		t.Errorf("%d rows of largest gaps, want %d", n, LargestGaps)
	}

	// Accuracy by horizon.
	acc := section(t, dom, `id="accuracy"`, "</table>")
	want := data.accuracy()
	for _, a := range want {
		row := fmt.Sprintf(`<tr><td class="l">%s</td><td>%d</td><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>`,
			a.product, a.horizon, a.n, f2(a.planned), f2(a.actual), pc(a.planned-a.actual, a.actual, true), pc(a.abErr, a.actual, true))
		if !strings.Contains(acc, row) {
			t.Errorf("accuracy row missing:\n%s\nin\n%s", row, acc)
		}
	}
	if n := strings.Count(acc, "<tr>") - 1; n != len(want) {
		t.Errorf("%d accuracy rows, want %d", n, len(want))
	}

	// The kept artifact: what a person would see.
	dir, err := filepath.Abs("../../test/artifacts")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "dashboard.png")
	_ = os.Remove(shot)
	browse(t, bin, srv.URL+"/loops/default/acme", "--screenshot="+shot, "--window-size=1280,1600", "--hide-scrollbars")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.DecodeConfig(f)
	if err != nil || img.Width != 1280 || img.Height != 1600 {
		t.Errorf("screenshot %s: %dx%d (%v), want 1280x1600", shot, img.Width, img.Height, err)
	}
	t.Logf("screenshot: %s", shot)
}

// TestDashboardHTTP checks the JSON endpoint's figures, the list of loops, an unknown
// loop, and that pages may load nothing from elsewhere.
func TestDashboardHTTP(t *testing.T) {
	addr := stacktest.ClickhouseAddr(t)
	db := fmt.Sprintf("test_dashboard_http_%d", time.Now().UnixNano())
	data := generate(12)
	conn := data.load(t, addr, db)
	ref := LoopRef{Namespace: "team-a", Name: "acme"}
	srv := httptest.NewServer(New(StaticSource{ref: {Conn: conn, Feedback: feedbackOf(db, 0)}}, testr.New(t)))
	defer srv.Close()

	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp, b.String()
	}

	resp, body := get("/")
	if resp.StatusCode != 200 || !strings.Contains(body, `href="/loops/team-a/acme"`) {
		t.Errorf("index: %d\n%s", resp.StatusCode, body)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}
	if resp, _ := get("/loops/team-a/other"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown loop: %d, want 404", resp.StatusCode)
	}

	resp, body = get("/api/loops/team-a/acme")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("api: %d %s\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var f Figures
	if err := json.Unmarshal([]byte(body), &f); err != nil {
		t.Fatal(err)
	}
	series := data.series()
	if f.Loop != ref || f.Database != db || len(f.Products) != len(series) {
		t.Fatalf("api: loop %v database %s %d products; want %v %s %d", f.Loop, f.Database, len(f.Products), ref, db, len(series))
	}
	for _, s := range f.Products {
		want := series[s.Product]
		if len(s.Points) != len(want) {
			t.Errorf("%s: %d points, want %d", s.Product, len(s.Points), len(want))
			continue
		}
		for i, p := range s.Points {
			w := want[i]
			if !p.Period.Equal(w.period) || p2(p.PlannedLatest) != p2(w.planned) || p2(p.PlannedAtStart) != p2(w.atStart) ||
				p.Actual == nil || f2(*p.Actual) != f2(w.actual) || p.Projected != nil || f2(p.UnplannedActual) != f2(w.unplanned) || p2(p.Gap) != p2(w.gap) || p.Customers != uint64(w.customers) {
				t.Errorf("%s point %d = %+v, want %+v", s.Product, i, p, w)
			}
		}
	}
	wg := data.largestGaps(LargestGaps)
	if len(f.LargestGaps) != len(wg) {
		t.Fatalf("%d largest gaps, want %d", len(f.LargestGaps), len(wg))
	}
	for i, g := range f.LargestGaps {
		if g.Customer != wg[i].customer || g.Product != wg[i].product || !g.Period.Equal(wg[i].period) || p2(g.Gap) != f2(wg[i].gap) {
			t.Errorf("largest gap %d = %s %s %v %s, want %s %s %v %s", i, g.Customer, g.Product, g.Period, p2(g.Gap),
				wg[i].customer, wg[i].product, wg[i].period, f2(wg[i].gap))
		}
	}
	if len(f.Accuracy) != len(data.accuracy()) {
		t.Errorf("%d accuracy rows, want %d", len(f.Accuracy), len(data.accuracy()))
	}
}

func TestNiceStep(t *testing.T) {
	for raw, want := range map[float64]float64{0: 1, 0.3: 0.5, 1: 1, 1.2: 2, 3: 5, 7: 10, 42: 50, 180: 200} {
		if got := niceStep(raw); got != want {
			t.Errorf("niceStep(%v) = %v, want %v", raw, got, want)
		}
	}
}

// TestChartEdgeCases renders charts with one period, without plans and with zeros only:
// no coordinate may be NaN or fall outside the plot.
func TestChartEdgeCases(t *testing.T) {
	day := func(m int) feedback.Date {
		return feedback.Date{Time: time.Date(2026, time.Month(m), 1, 0, 0, 0, 0, time.UTC)}
	}
	ten := 10.0
	v := func(f float64) *float64 { return &f }
	for name, s := range map[string]ProductSeries{
		"one period": {Product: "p", Points: []SeriesPoint{{Period: day(1), PlannedLatest: &ten, Actual: v(12)}}},
		"no plans":   {Product: "p", Points: []SeriesPoint{{Period: day(1), Actual: v(3)}, {Period: day(2), Actual: v(4)}}},
		"zeros":      {Product: "p", Points: []SeriesPoint{{Period: day(1), Actual: v(0)}, {Period: day(2), Actual: v(0)}}},
		"under way and not begun": {Product: "p", Points: []SeriesPoint{{Period: day(1), PlannedLatest: &ten, Actual: v(9)},
			{Period: day(2), PlannedLatest: &ten, Actual: v(1), Projected: v(14)}, {Period: day(3), PlannedLatest: &ten}}},
		"many months": {Product: "p", Points: func() []SeriesPoint {
			var ps []SeriesPoint
			for m := 1; m <= 12; m++ {
				ps = append(ps, SeriesPoint{Period: day(m), PlannedLatest: &ten, Actual: v(float64(m))})
			}
			return ps
		}()},
	} {
		c := newChart(s, pipeline.GrainMonth)
		var b bytes.Buffer
		if err := pages.ExecuteTemplate(&b, "loop", newLoopPage(&Figures{Products: []ProductSeries{s}})); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if strings.Contains(b.String(), "NaN") || strings.Contains(b.String(), "Inf") {
			t.Errorf("%s: NaN or Inf in the page", name)
		}
		for _, m := range append(c.ActualMarkers, c.PlannedMarkers...) {
			if m.X < c.Left || m.X > c.Right || m.Y < c.Top || m.Y > c.Bottom {
				t.Errorf("%s: marker %+v outside the plot", name, m)
			}
		}
		begun, projected := 0, false
		for _, p := range s.Points {
			if p.Actual != nil {
				begun++
			}
			projected = projected || p.Projected != nil
		}
		if len(c.ActualMarkers) != begun || len(c.XTicks) > 8 {
			t.Errorf("%s: %d actual markers for %d periods begun, %d period labels", name, len(c.ActualMarkers), begun, len(c.XTicks))
		}
		if p := c.Projection; (p != nil) != projected || p != nil && (p.To < c.Top || p.To > c.Bottom || !strings.Contains(b.String(), `class="projected"`)) {
			t.Errorf("%s: projection %+v, want one in the plot exactly when a period is under way", name, p)
		}
	}
}
