package dashboard

import (
	"math"
	"strconv"
	"time"

	"customerloop.dev/customerloop/pipeline"
)

// Numbers are shown with two decimals and ratios as percentages with one, so that a
// figure reads the same in every table and chart label.
func qty(x float64) string { return strconv.FormatFloat(x, 'f', 2, 64) }

func qtyPtr(p *float64) string {
	if p == nil {
		return "–"
	}
	return qty(*p)
}

func pct(p *float64) string {
	if p == nil {
		return "–"
	}
	return strconv.FormatFloat(*p*100, 'f', 1, 64) + "%"
}

func dateLabel(t time.Time) string { return t.Format(time.DateOnly) }

type loopPage struct {
	*Figures
	Charts []chart
}

func newLoopPage(f *Figures) loopPage {
	p := loopPage{Figures: f}
	for _, s := range f.Products {
		p.Charts = append(p.Charts, newChart(s, f.Granularity))
	}
	return p
}

// chart is a product's plan-against-actual line chart, laid out in SVG user units.
type chart struct {
	Product        string
	Points         []SeriesPoint
	Width, Height  int
	Left, Bottom   float64 // the plot area's left and bottom edges
	Right, Top     float64
	YTicks         []tick
	XTicks         []tick
	Planned        string // polyline points
	Actual         string
	PlannedMarkers []marker
	ActualMarkers  []marker
	// Projection is the period under way's run rate: a dashed line from its actual so
	// far up (or down) to where the actual would end at that rate.
	Projection *projection
}

type projection struct {
	X, From, To float64
	Title       string
}

type tick struct {
	Pos   float64
	Label string
}

type marker struct {
	X, Y  float64
	Title string
}

func newChart(s ProductSeries, g pipeline.Grain) chart {
	c := chart{Product: s.Product, Points: s.Points, Width: 560, Height: 240, Left: 56, Right: 544, Top: 16, Bottom: 200}
	top := 0.0
	for _, p := range s.Points {
		if p.Actual != nil {
			top = math.Max(top, *p.Actual)
		}
		if p.Projected != nil {
			top = math.Max(top, *p.Projected)
		}
		if p.PlannedLatest != nil {
			top = math.Max(top, *p.PlannedLatest)
		}
	}
	step := niceStep(top / 4)
	top = step * math.Ceil(top/step)
	if top == 0 {
		top, step = 1, 0.25
	}
	y := func(v float64) float64 { return round1(c.Bottom - v/top*(c.Bottom-c.Top)) }
	for v := 0.0; v <= top+step/2; v += step {
		c.YTicks = append(c.YTicks, tick{y(v), strconv.FormatFloat(v, 'f', -1, 64)})
	}
	n := len(s.Points)
	x := func(i int) float64 {
		if n == 1 {
			return round1((c.Left + c.Right) / 2)
		}
		return round1(c.Left + 16 + float64(i)*(c.Right-c.Left-32)/float64(n-1))
	}
	every := max(1, (n+7)/8) // at most 8 period labels
	for i, p := range s.Points {
		label := p.Period.Format("2006-01")
		if g == pipeline.GrainWeek {
			label = p.Period.Format("01-02")
		}
		if i%every == 0 {
			c.XTicks = append(c.XTicks, tick{x(i), label})
		}
		at := p.Period.Format(time.DateOnly)
		if p.Actual != nil { // a period that has not begun has no actual to draw
			ya := y(*p.Actual)
			c.Actual += ftoa(x(i)) + "," + ftoa(ya) + " "
			c.ActualMarkers = append(c.ActualMarkers, marker{x(i), ya, at + " actual " + qty(*p.Actual)})
			if p.Projected != nil {
				c.Projection = &projection{x(i), ya, y(*p.Projected), at + " projected at the rate so far " + qty(*p.Projected)}
			}
		}
		if p.PlannedLatest != nil {
			yp := y(*p.PlannedLatest)
			c.Planned += ftoa(x(i)) + "," + ftoa(yp) + " "
			c.PlannedMarkers = append(c.PlannedMarkers, marker{x(i), yp, at + " planned " + qty(*p.PlannedLatest)})
		}
	}
	return c
}

// niceStep rounds a raw tick step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

func ftoa(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

const pageTemplates = `
{{define "head"}}<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.}} · CustomerLoop</title>
<style>
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 4px} .meta{color:#59636e;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 12px} th,td{padding:3px 7px;border-bottom:1px solid #eaeef2;text-align:right}
th{background:#f6f8fa;font-weight:600} td.l,th.l{text-align:left}
.products{display:flex;flex-wrap:wrap;gap:12px 24px} .product{flex:0 0 auto}
svg text{font-size:11px;fill:#59636e} .planned{stroke:#0969da;stroke-dasharray:6 4} .actual{stroke:#bc4c00}
.neg{color:#cf222e} .pos{color:#1a7f37} a{color:#0969da}
</style></head><body>{{end}}

{{define "index"}}{{template "head" "Loops"}}
<h1>CustomerLoop</h1><p class="meta">Plan against actual, per loop.</p>
<h2>Loops</h2>
{{if .Loops}}<ul>{{range .Loops}}<li><a href="/loops/{{.Namespace}}/{{.Name}}">{{.Namespace}}/{{.Name}}</a></li>{{end}}</ul>
{{else}}<p>No loop to show: none has feedback views yet, or none is in a namespace you may read.</p>{{end}}
</body></html>{{end}}

{{define "login"}}{{template "head" "Sign in"}}
<h1>CustomerLoop</h1><p class="meta">Sign in with a Kubernetes bearer token, e.g. from <code>kubectl create token</code>. You see the loops of the namespaces where you may get customerloops.</p>
{{if .Message}}<p class="neg">{{.Message}}</p>{{end}}
<form method="post" action="{{.Action}}"><p><label for="token">Token</label><br>
<textarea id="token" name="token" rows="6" cols="72" autocomplete="off" spellcheck="false" required></textarea></p>
<p><button type="submit">Sign in</button></p></form>
</body></html>{{end}}

{{define "error"}}{{template "head" "Error"}}
<h1>Cannot show {{.What}}</h1><p>{{.Error}}</p><p><a href="/">All loops</a></p>
</body></html>{{end}}

{{define "chart"}}<svg xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}" viewBox="0 0 {{.Width}} {{.Height}}" role="img" aria-label="{{.Product}}: planned and actual per period">
{{$c := .}}{{range .YTicks}}<line x1="{{$c.Left}}" x2="{{$c.Right}}" y1="{{.Pos}}" y2="{{.Pos}}" stroke="#eaeef2"/><text x="{{$c.Left}}" dx="-6" y="{{.Pos}}" dy="4" text-anchor="end">{{.Label}}</text>
{{end}}{{range .XTicks}}<text x="{{.Pos}}" y="{{$c.Bottom}}" dy="16" text-anchor="middle">{{.Label}}</text>
{{end}}<line x1="{{.Left}}" x2="{{.Right}}" y1="{{.Bottom}}" y2="{{.Bottom}}" stroke="#8c959f"/>
<polyline class="planned" fill="none" stroke-width="2" points="{{.Planned}}"/>
<polyline class="actual" fill="none" stroke-width="2" points="{{.Actual}}"/>
{{range .PlannedMarkers}}<circle cx="{{.X}}" cy="{{.Y}}" r="3" fill="#0969da"><title>{{.Title}}</title></circle>
{{end}}{{range .ActualMarkers}}<circle cx="{{.X}}" cy="{{.Y}}" r="3" fill="#bc4c00"><title>{{.Title}}</title></circle>
{{end}}{{with .Projection}}<line class="projected" x1="{{.X}}" x2="{{.X}}" y1="{{.From}}" y2="{{.To}}" stroke="#bc4c00" stroke-width="2" stroke-dasharray="3 3"/><circle cx="{{.X}}" cy="{{.To}}" r="4" fill="#fff" stroke="#bc4c00" stroke-width="2"><title>{{.Title}}</title></circle>
{{end}}<line x1="{{.Left}}" x2="{{.Left}}" y1="{{.Top}}" y2="{{.Bottom}}" stroke="#8c959f"/>
<line class="planned" x1="80" x2="104" y1="228" y2="228" stroke-width="2"/><text x="110" y="232">planned (latest)</text>
<line class="actual" x1="220" x2="244" y1="228" y2="228" stroke-width="2"/><text x="250" y="232">actual</text>
</svg>{{end}}

{{define "loop"}}{{template "head" .Loop.String}}
<h1>{{.Loop.Namespace}}/{{.Loop.Name}}</h1>
<p class="meta">Database {{.Database}} · {{.Granularity}} periods (UTC) · read {{.GeneratedAt.Format "2006-01-02 15:04:05"}} UTC ·
<a href="/api/loops/{{.Loop.Namespace}}/{{.Loop.Name}}">JSON</a> · <a href="/">all loops</a></p>

<h2>Plan against actual by product</h2>
<p class="meta">Planned: the latest plans of the customers who planned the period. Actual: their usage. Unplanned: usage of customers without a plan. Projected: the period under way's actual at its rate so far, to the period's end (dashed). Periods not begun have no actual.</p>
{{if not .Charts}}<p>No plans or usage yet.</p>{{end}}
<div class="products">
{{range .Charts}}<section class="product" id="product-{{.Product}}"><h3>{{.Product}}</h3>
{{template "chart" .}}
<table class="series"><tr><th class="l">period</th><th>planned</th><th>at start</th><th>actual</th><th>unplanned</th><th>gap</th><th>gap %</th><th>projected</th><th>projected gap</th><th>customers</th></tr>
{{range .Points}}<tr><td class="l">{{date .Period.Time}}</td><td>{{qtyp .PlannedLatest}}</td><td>{{qtyp .PlannedAtStart}}</td><td>{{qtyp .Actual}}</td><td>{{qty .UnplannedActual}}</td><td>{{qtyp .Gap}}</td><td>{{pct .GapRatio}}</td><td>{{qtyp .Projected}}</td><td>{{qtyp .ProjectedGap}}</td><td>{{.Customers}}</td></tr>
{{end}}</table></section>
{{end}}</div>

<h2>Largest gaps</h2>
<p class="meta">Customers and periods where usage differs most from the latest plan.</p>
{{if .LargestGaps}}<table id="largest-gaps"><tr><th class="l">period</th><th class="l">customer</th><th class="l">product</th><th>planned</th><th>planned at start</th><th>actual</th><th>gap</th><th>gap %</th><th>used %</th><th>versions</th></tr>
{{range .LargestGaps}}<tr><td class="l">{{date .Period}}</td><td class="l">{{.Customer}}</td><td class="l">{{.Product}}</td><td>{{qtyp .PlannedLatest}}</td><td>{{qtyp .PlannedAtStart}}</td><td>{{qty .Actual}}</td><td>{{qtyp .Gap}}</td><td>{{pct .GapRatio}}</td><td>{{pct .ConsumedShare}}</td><td>{{.Versions}}</td></tr>
{{end}}</table>{{else}}<p>No plans yet.</p>{{end}}

<h2>Accuracy by horizon</h2>
<p class="meta">Completed periods only. Horizon: periods between a plan and its period (0 = made during it). WAPE = sum |plan − actual| / sum actual; bias above 0 means customers over-plan.</p>
{{if .Accuracy}}<table id="accuracy"><tr><th class="l">product</th><th>horizon</th><th>points</th><th>planned</th><th>actual</th><th>bias</th><th>WAPE</th></tr>
{{range .Accuracy}}<tr><td class="l">{{.Product}}</td><td>{{.Horizon}}</td><td>{{.N}}</td><td>{{qty .Planned}}</td><td>{{qty .Actual}}</td><td>{{pct .Bias}}</td><td>{{pct .WAPE}}</td></tr>
{{end}}</table>{{else}}<p>No completed period with a plan yet.</p>{{end}}

<h2>Forecast value added by horizon</h2>
<p class="meta">The points of accuracy by horizon, against a naive forecast: the customer's actual of the period before (0 without usage then). FVA = naive WAPE − WAPE; above 0, the plans beat the naive forecast.</p>
{{if .ValueAdded}}<table id="value-added"><tr><th class="l">product</th><th>horizon</th><th>points</th><th>WAPE</th><th>naive WAPE</th><th>FVA</th><th>beats naive</th></tr>
{{range .ValueAdded}}<tr><td class="l">{{.Product}}</td><td>{{.Horizon}}</td><td>{{.N}}</td><td>{{pct .WAPE}}</td><td>{{pct .NaiveWAPE}}</td><td>{{pct .FVA}}</td><td>{{if .BeatsNaive}}yes{{else}}no{{end}}</td></tr>
{{end}}</table>{{else}}<p>No completed period with a plan yet.</p>{{end}}

<h2>Customers outside the tracking signal band</h2>
<p class="meta">Tracking signal = sum of the errors (actual − the plan made before the period) / their mean absolute value, over the completed periods with such a plan. Beyond ±{{num .Tracking.Limit}}, a customer's plans keep missing one way: below 0, usage falls short of them; above 0, it exceeds them.</p>
{{if gt .Tracking.Count (len .Tracking.Outside)}}<p class="meta" id="tracking-count">{{.Tracking.Count}} customers and products are outside the band; the {{len .Tracking.Outside}} with the largest |signal| are shown. <code>customerloop report --view tracking</code> lists them all.</p>
{{end}}{{if .Tracking.Outside}}<table id="tracking"><tr><th class="l">customer</th><th class="l">product</th><th>periods</th><th>cumulative error</th><th>MAD</th><th>tracking signal</th></tr>
{{range .Tracking.Outside}}<tr><td class="l">{{.Customer}}</td><td class="l">{{.Product}}</td><td>{{.N}}</td><td>{{qty .CumulativeError}}</td><td>{{qty .MAD}}</td><td>{{qtyp .TrackingSignal}}</td></tr>
{{end}}</table>{{else}}<p>No customer outside the band.</p>{{end}}
</body></html>{{end}}
`
