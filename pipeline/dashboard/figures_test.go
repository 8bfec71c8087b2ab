package dashboard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"customerloop.dev/customerloop/pipeline/feedback"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

type wantValueAdded struct {
	product            string
	horizon, n         int
	wape, naive, fva   *float64
	beats              bool
	absErr, naiveError float64
}

// valueAdded returns feedback_value_added's rows: accuracy's points, each against the
// customer's actual of the month before (0 without usage then).
func (d *dataset) valueAdded() []wantValueAdded {
	type point struct {
		k cell
		h int
	}
	latest := map[point]plan{}
	for _, v := range d.plans {
		if h := monthIndex(v.period) - monthIndex(v.submitted); h >= 0 {
			p := point{cell{v.customer, v.product, v.period}, h}
			if o, ok := latest[p]; !ok || later(v, o) {
				latest[p] = v
			}
		}
	}
	rows := map[[2]any]*wantValueAdded{}
	actual := map[[2]any]float64{}
	for p, v := range latest {
		key := [2]any{p.k.product, p.h}
		if rows[key] == nil {
			rows[key] = &wantValueAdded{product: p.k.product, horizon: p.h}
		}
		r, a := rows[key], d.actual[p.k]
		naive := d.actual[cell{p.k.customer, p.k.product, p.k.period.AddDate(0, -1, 0)}]
		r.n++
		r.absErr += math.Abs(v.qty - a)
		r.naiveError += math.Abs(naive - a)
		actual[key] += a
	}
	var out []wantValueAdded
	for key, r := range rows {
		if a := actual[key]; a > 0 {
			w, n := r.absErr/a, r.naiveError/a
			f := n - w
			r.wape, r.naive, r.fva, r.beats = &w, &n, &f, f > 0
		}
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].product < out[j].product || out[i].product == out[j].product && out[i].horizon < out[j].horizon
	})
	return out
}

type wantTracking struct {
	customer, product string
	n                 int
	cumulative, mad   float64
	ts                float64
}

// outsideBand returns feedback_tracking's rows beyond limit, largest |signal| first: per
// customer and product, the errors actual - the plan made before the month began.
func (d *dataset) outsideBand(limit float64) []wantTracking {
	atStart := d.latest(func(v plan) bool { return monthIndex(v.period)-monthIndex(v.submitted) >= 1 })
	rows := map[[2]string]*wantTracking{}
	for k, v := range atStart {
		key := [2]string{k.customer, k.product}
		if rows[key] == nil {
			rows[key] = &wantTracking{customer: k.customer, product: k.product}
		}
		e := d.actual[k] - v.qty
		rows[key].n++
		rows[key].cumulative += e
		rows[key].mad += math.Abs(e)
	}
	var out []wantTracking
	for _, r := range rows {
		r.mad /= float64(r.n)
		if r.mad > 0 {
			r.ts = r.cumulative / r.mad
		}
		if math.Abs(r.ts) > limit {
			out = append(out, *r)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if a, b := math.Abs(out[i].ts), math.Abs(out[j].ts); a != b {
			return a > b
		}
		return out[i].customer < out[j].customer || out[i].customer == out[j].customer && out[i].product < out[j].product
	})
	return out
}

// TestDashboardValueAddedAndTracking checks, in the JSON and on the page, forecast value
// added by product and horizon and the customers outside the loop's tracking band, against
// figures computed here from the generated rows.
func TestDashboardValueAddedAndTracking(t *testing.T) {
	addr := stacktest.ClickhouseAddr(t)
	db := fmt.Sprintf("test_dashboard_fva_%d", time.Now().UnixNano())
	data := generate(13)
	conn := data.load(t, addr, db)
	const limit = 1.5
	ref := LoopRef{Namespace: "team-a", Name: "acme"}
	srv := httptest.NewServer(New(StaticSource{ref: {Conn: conn, Feedback: feedbackOf(db, limit), Cache: feedback.NewCache()}}, testr.New(t)))
	defer srv.Close()
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d\n%s", path, resp.StatusCode, b.String())
		}
		return b.String()
	}
	var f Figures
	if err := json.Unmarshal([]byte(get("/api/loops/team-a/acme")), &f); err != nil {
		t.Fatal(err)
	}
	page := get("/loops/team-a/acme")

	fva := data.valueAdded()
	if len(f.ValueAdded) != len(fva) {
		t.Errorf("%d value-added rows, want %d", len(f.ValueAdded), len(fva))
	}
	table := section(t, page, `id="value-added"`, "</table>")
	for i, w := range fva {
		beats := "no"
		if w.beats {
			beats = "yes"
		}
		row := fmt.Sprintf(`<tr><td class="l">%s</td><td>%d</td><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>`,
			w.product, w.horizon, w.n, pct(w.wape), pct(w.naive), pct(w.fva), beats)
		if !strings.Contains(table, row) {
			t.Errorf("value-added row missing:\n%s\nin\n%s", row, table)
		}
		if i < len(f.ValueAdded) {
			g := f.ValueAdded[i]
			if g.Product != w.product || int(g.Horizon) != w.horizon || g.N != uint64(w.n) || p2(g.FVA) != p2(w.fva) || g.BeatsNaive != w.beats {
				t.Errorf("value added %d = %+v, want %+v", i, g, w)
			}
		}
	}

	out := data.outsideBand(limit)
	if len(out) == 0 {
		t.Fatal("no customer of the generated data is outside the band: the list is not tested")
	}
	if f.Tracking.Limit != limit || len(f.Tracking.Outside) != len(out) {
		t.Fatalf("tracking: band %v, %d outside; want %v, %d: %+v", f.Tracking.Limit, len(f.Tracking.Outside), limit, len(out), f.Tracking.Outside)
	}
	if !strings.Contains(page, "Beyond ±1.5,") {
		t.Error("the page does not name the band")
	}
	table = section(t, page, `id="tracking"`, "</table>")
	for i, w := range out {
		g := f.Tracking.Outside[i]
		if g.Customer != w.customer || g.Product != w.product || g.N != uint64(w.n) || f2(g.CumulativeError) != f2(w.cumulative) || p2(g.TrackingSignal) != f2(w.ts) {
			t.Errorf("outside the band %d = %+v, want %+v", i, g, w)
		}
		row := fmt.Sprintf(`<tr><td class="l">%s</td><td class="l">%s</td><td>%d</td><td>%s</td><td>%s</td><td>%s</td></tr>`,
			w.customer, w.product, w.n, f2(w.cumulative), f2(w.mad), f2(w.ts))
		if !strings.Contains(table, row) {
			t.Errorf("tracking row missing:\n%s\nin\n%s", row, table)
		}
	}
	if n := strings.Count(table, "<tr>") - 1; n != len(out) {
		t.Errorf("%d rows outside the band on the page, want %d", n, len(out))
	}
}
