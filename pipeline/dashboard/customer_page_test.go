package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline/feedback"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
)

// TestCustomerPageInChromium renders one customer's statement as the customer channel
// serves it, and reads the page as headless Chromium renders it under the channel's
// Content-Security-Policy: the customer's id, a chart per product with a point per
// period for their plans and their usage, the figures period by period and their
// accuracy by horizon, all equal to the statement's, and no other customer's id.
func TestCustomerPageInChromium(t *testing.T) {
	addr := stacktest.ClickhouseAddr(t)
	bin := chromium(t)
	db := fmt.Sprintf("test_customer_page_%d", time.Now().UnixNano())
	data := generate(11)
	conn := data.load(t, addr, db)
	st, err := feedback.ReadStatement(context.Background(), conn, feedbackOf(db, 0), "default/acme", "c1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Products) != 2 {
		t.Fatalf("c1's statement has %d products, want 2", len(st.Products))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", CustomerPageCSP)
		if err := CustomerPage(w, st); err != nil {
			t.Error(err)
		}
	}))
	defer srv.Close()

	dom := browse(t, bin, srv.URL, "--dump-dom")
	if !strings.Contains(dom, `<h1 id="customer">c1</h1>`) {
		t.Fatalf("the page is not c1's:\n%.2000s", dom)
	}
	for _, other := range []string{"c0", "c2", "c3", "c4"} {
		for _, spelled := range []string{">" + other + "<", `"` + other + `"`, " " + other + " "} {
			if strings.Contains(dom, spelled) {
				t.Errorf("the page names %s", other)
			}
		}
	}
	// Nothing from elsewhere: the SVG namespace is the only URL in the page.
	if rest := strings.ReplaceAll(dom, `xmlns="http://www.w3.org/2000/svg"`, ""); strings.Contains(rest, "http:") || strings.Contains(rest, "https:") {
		t.Error("the page refers to something elsewhere")
	}
	for _, p := range st.Products {
		sec := section(t, dom, `id="product-`+p.Product+`"`, "</section>")
		if n := strings.Count(sec, "<polyline"); n != 2 {
			t.Errorf("%s: %d polylines, want planned and actual", p.Product, n)
		}
		for _, pt := range p.Periods {
			at := pt.Period.Format(time.DateOnly)
			if pt.Actual != nil && !strings.Contains(sec, "<title>"+at+" actual "+f2(*pt.Actual)+"</title>") {
				t.Errorf("%s %s: no chart point for actual %s", p.Product, at, f2(*pt.Actual))
			}
			if pt.PlannedLatest != nil && !strings.Contains(sec, "<title>"+at+" planned "+f2(*pt.PlannedLatest)+"</title>") {
				t.Errorf("%s %s: no chart point for planned %s", p.Product, at, f2(*pt.PlannedLatest))
			}
			row := `<td class="l">` + at + `</td><td>` + p2(pt.PlannedLatest) + `</td><td>` + p2(pt.PlannedAtStart) + `</td><td>` + p2(pt.Actual) + `</td>`
			if !strings.Contains(sec, row) {
				t.Errorf("%s %s: no row %s", p.Product, at, row)
			}
		}
		if n := strings.Count(section(t, sec, `<table class="accuracy">`, "</table>"), "<tr>") - 1; n != len(p.Accuracy) {
			t.Errorf("%s: %d accuracy rows, want %d", p.Product, n, len(p.Accuracy))
		}
	}
}

// TestCustomerPageDeadLetters: the page lists the customer's dead letters per period
// and reason with their first positions, and has no such section without any.
func TestCustomerPageDeadLetters(t *testing.T) {
	month := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	st := &feedback.Statement{Customer: "c1", Granularity: "Month", Products: []feedback.StatementProduct{}, DeadLetters: []feedback.StatementDeadLetters{}}
	var b strings.Builder
	if err := CustomerPage(&b, st); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "dead-letters") {
		t.Error("a page without dead letters has a section for them")
	}
	st.DeadLetters = feedback.StatementDeadLettersOf([]feedback.DeadLetterSummary{
		{Period: feedback.Date{Time: month}, Reason: "wrong_type", Count: 7, First: []feedback.DeadLetterSource{{Topic: "u", Partition: 1, Offset: 0}, {Topic: "u", Partition: 0, Offset: 3}}},
	})
	b.Reset()
	if err := CustomerPage(&b, st); err != nil {
		t.Fatal(err)
	}
	if want := `<tr><td class="l">2026-10-01</td><td class="l">wrong_type</td><td>7</td><td class="l">u/1:0, u/0:3</td></tr>`; !strings.Contains(b.String(), want) {
		t.Errorf("the page's dead letters:\n%s\nwant a row %s", b.String(), want)
	}
}
