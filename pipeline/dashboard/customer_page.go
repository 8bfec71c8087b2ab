package dashboard

import (
	"bytes"
	"io"

	"customerloop.dev/customerloop/pipeline/feedback"
)

// customerPage is one customer's statement as the customer channel's page shows it.
type customerPage struct {
	*feedback.Statement
	Products []customerProduct
}

type customerProduct struct {
	feedback.StatementProduct
	Chart chart
}

// CustomerPage writes a customer's statement as one HTML page, for the customer channel:
// per product the chart of their plans against their usage (the period under way with
// its run rate), the figures period by period, and their plans' accuracy by horizon
// against the naive forecast, and their dead letters per period and reason. It is
// rendered here, loads nothing from elsewhere, and
// holds nothing but the statement's own figures.
func CustomerPage(w io.Writer, st *feedback.Statement) error {
	p := customerPage{Statement: st}
	for _, sp := range st.Products {
		series := ProductSeries{Product: sp.Product}
		for _, pt := range sp.Periods {
			series.Points = append(series.Points, SeriesPoint{Period: pt.Period, PlannedLatest: pt.PlannedLatest,
				PlannedAtStart: pt.PlannedAtStart, Actual: pt.Actual, Gap: pt.Gap, GapRatio: pt.GapRatio,
				Projected: pt.Projected, ProjectedGap: pt.ProjectedGap})
		}
		p.Products = append(p.Products, customerProduct{StatementProduct: sp, Chart: newChart(series, st.Granularity)})
	}
	var b bytes.Buffer
	if err := pages.ExecuteTemplate(&b, "customer", p); err != nil {
		return err
	}
	_, err := w.Write(b.Bytes())
	return err
}

// CustomerPageCSP is the Content-Security-Policy the page is served with: nothing but its
// own inline styles.
const CustomerPageCSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

const customerTemplate = `{{define "customer"}}{{template "head" .Customer}}
<h1 id="customer">{{.Customer}}</h1>
<p class="meta">{{.Loop}} · {{.Granularity}} periods (UTC) · period under way {{date .Period.Time}} · as of {{.GeneratedAt.Format "2006-01-02 15:04:05"}} UTC · consent: <span id="consent">{{.Consent.State}}</span></p>
<p class="meta">Planned: your latest plan for the period; at start: your plan made before it began. Actual: your usage. Projected: the period under way's usage at its rate so far, to the period's end (dashed). Periods not begun have no actual.</p>
{{if not .Products}}<p>No plans or usage yet.</p>{{end}}
{{range .Products}}<section class="product" id="product-{{.Product}}"><h2>{{.Product}}</h2>
{{template "chart" .Chart}}
<table class="periods"><tr><th class="l">period</th><th>planned</th><th>at start</th><th>actual</th><th>gap</th><th>gap %</th><th>projected</th><th>projected gap</th><th>plans</th></tr>
{{range .Periods}}<tr><td class="l">{{date .Period.Time}}</td><td>{{qtyp .PlannedLatest}}</td><td>{{qtyp .PlannedAtStart}}</td><td>{{qtyp .Actual}}</td><td>{{qtyp .Gap}}</td><td>{{pct .GapRatio}}</td><td>{{qtyp .Projected}}</td><td>{{qtyp .ProjectedGap}}</td><td>{{.Versions}}</td></tr>
{{end}}</table>
{{if .Accuracy}}<h3>How accurate your plans were</h3>
<p class="meta">Over completed periods, by how many periods ahead the plan was made. WAPE: the plans' absolute error over your usage; naive: the same for "as much as the period before"; FVA: how much your plans beat it.</p>
<table class="accuracy"><tr><th>horizon</th><th>plans</th><th>planned</th><th>actual</th><th>bias</th><th>WAPE</th><th>naive WAPE</th><th>FVA</th><th>beats naive</th></tr>
{{range .Accuracy}}<tr><td>{{.Horizon}}</td><td>{{.N}}</td><td>{{qty .Planned}}</td><td>{{qty .Actual}}</td><td>{{pct .Bias}}</td><td>{{pct .WAPE}}</td><td>{{pct .NaiveWAPE}}</td><td>{{pct .FVA}}</td><td>{{if .BeatsNaive}}yes{{else}}no{{end}}</td></tr>
{{end}}</table>{{end}}</section>
{{end}}
{{if .DeadLetters}}<section class="dead-letters" id="dead-letters"><h2>Messages we could not store</h2>
<p class="meta">Per period of the messages' own time, by reason, with where the first few are in the topics you send to (topic/partition:offset).</p>
<table class="dead-letters"><tr><th class="l">period</th><th class="l">reason</th><th>messages</th><th class="l">first</th></tr>
{{range .DeadLetters}}{{$period := .Period}}{{range .Reasons}}<tr><td class="l">{{date $period.Time}}</td><td class="l">{{.Reason}}</td><td>{{.Count}}</td><td class="l">{{range $i, $f := .First}}{{if $i}}, {{end}}{{$f.Topic}}/{{$f.Partition}}:{{$f.Offset}}{{end}}</td></tr>
{{end}}{{end}}</table></section>
{{end}}</body></html>{{end}}
`
