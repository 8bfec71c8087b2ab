package feedback

import (
	"context"
	"slices"
	"sort"
	"strings"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"golang.org/x/sync/errgroup"
)

// changedStatements reads the statements of every customer and period whose figures may
// have changed: on a full read every customer's every period; otherwise the periods
// changed, for the customers with rows in them, and the period under way of every
// customer whose statement of a complete period changed (their accuracy is read again:
// their actuals or plans moved, and the actuals are the next period's naive forecast
// too). It returns them per customer, and how many periods it read (0: all).
func (p *ChannelPublisher) changedStatements(ctx context.Context, full bool, changed []time.Time, dead map[string]map[time.Time]StatementDeadLetters,
	current, now time.Time) (map[string][]*Statement, int, error) {
	cfg := p.cfg.Feedback
	g := cfg.Grain
	out := map[string][]*Statement{}
	if !full && len(changed) == 0 {
		return out, 0, nil
	}
	cond := "1"
	if !full {
		days := make([]string, len(changed))
		for i, c := range changed {
			days[i] = "toDate('" + c.Format(time.DateOnly) + "')"
		}
		cond = "period IN (" + strings.Join(days, ", ") + ")"
	}
	plans, actuals, err := readCells(ctx, p, cond, nil)
	if err != nil {
		return nil, 0, err
	}
	customers := map[string]bool{}
	for c := range plans {
		customers[c] = true
	}
	for c := range actuals {
		customers[c] = true
	}
	// Customers with dead letters in a period read, and no figures there.
	read0 := map[time.Time]bool{}
	for _, c := range changed {
		read0[c] = true
	}
	deadPeriods := func(c string) []time.Time {
		var out []time.Time
		for period := range dead[c] {
			if full || read0[period] {
				out = append(out, period)
			}
		}
		return out
	}
	for c := range dead {
		if len(deadPeriods(c)) > 0 {
			customers[c] = true
		}
	}
	// Each customer's statements of the periods read, and whose accuracy is read again;
	// complete keeps the statements of complete periods made on the way.
	read := map[string]*Statement{}
	complete := map[cellKey]*Statement{}
	var again []string
	if full {
		p.acc = map[string]map[string][]StatementAccuracy{}
	}
	for c := range customers {
		st, err := buildStatement(g, p.cfg.Loop, c, now, joinGaps(g, plans[c], actuals[c], now), nil)
		if err != nil {
			return nil, 0, err
		}
		read[c] = st
		moved := full
		for _, period := range rowPeriods(st) {
			if !moved && period.Before(current) {
				ps := p.periodStatement(st, period, current, dead[c])
				complete[cellKey{c, period}] = ps
				moved = p.state[cellKey{c, period}].hash != ps.contentHash()
			}
		}
		if moved {
			again = append(again, c)
		}
	}
	sort.Strings(again)
	// Accuracy needs the customer's actuals of every period, and their plans' points.
	var points map[time.Time][]point
	histPlans, histActuals := plans, actuals
	switch {
	case full:
		if points, err = queryPoints(ctx, p.ch, cfg, "1", nil); err != nil {
			return nil, 0, err
		}
	case len(again) > 0:
		cond := "customer_id IN (SELECT arrayJoin(?))"
		eg, ectx := errgroup.WithContext(ctx)
		eg.Go(func() (err error) { histPlans, histActuals, err = readCells(ectx, p, cond, []any{again}); return err })
		eg.Go(func() (err error) { points, err = queryPoints(ectx, p.ch, cfg, cond, []any{again}); return err })
		if err := eg.Wait(); err != nil {
			return nil, 0, err
		}
	}
	byCustomer := map[string]map[time.Time][]point{}
	for period, pts := range points {
		for _, pt := range pts {
			m := byCustomer[pt.customer]
			if m == nil {
				m = map[time.Time][]point{}
				byCustomer[pt.customer] = m
			}
			m[period] = append(m[period], pt)
		}
	}
	history := map[string]*Statement{}
	for _, c := range again {
		h, err := buildStatement(g, p.cfg.Loop, c, now, joinGaps(g, histPlans[c], histActuals[c], now), byCustomer[c])
		if err != nil {
			return nil, 0, err
		}
		acc := map[string][]StatementAccuracy{}
		for _, pr := range h.Products {
			if len(pr.Accuracy) > 0 {
				acc[pr.Product] = pr.Accuracy
			}
		}
		p.acc[c], history[c] = acc, h
	}
	for c, st := range read {
		periods := rowPeriods(st)
		for _, period := range deadPeriods(c) {
			if !slices.ContainsFunc(periods, period.Equal) {
				periods = append(periods, period)
			}
		}
		for _, period := range periods {
			ps := complete[cellKey{c, period}]
			if ps == nil {
				ps = p.periodStatement(st, period, current, dead[c])
			}
			if len(ps.Products) > 0 || len(ps.DeadLetters) > 0 {
				out[c] = append(out[c], ps)
			}
		}
		if !slices.ContainsFunc(periods, current.Equal) && slices.Contains(again, c) {
			// The period under way was not read, but the accuracy it carries moved.
			if ps := p.periodStatement(history[c], current, current, dead[c]); len(ps.Products) > 0 || len(ps.DeadLetters) > 0 {
				out[c] = append(out[c], ps)
			}
		}
	}
	return out, len(changed), nil
}

// rowPeriods are the periods a statement has rows of, oldest first.
func rowPeriods(st *Statement) []time.Time {
	seen := map[time.Time]bool{}
	var out []time.Time
	for _, pr := range st.Products {
		for _, r := range pr.Periods {
			if !seen[r.Period.Time] {
				seen[r.Period.Time] = true
				out = append(out, r.Period.Time)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// periodStatement is the customer's statement of one period: each product's row of the
// period, their dead letters of the period, and, for the period under way, their
// accuracy by product.
func (p *ChannelPublisher) periodStatement(st *Statement, period, current time.Time, dead map[time.Time]StatementDeadLetters) *Statement {
	out := *st
	out.hash = ""
	out.Period = Date{period}
	out.Products = []StatementProduct{}
	out.DeadLetters = []StatementDeadLetters{}
	if d, ok := dead[period]; ok {
		out.DeadLetters = append(out.DeadLetters, d)
	}
	acc := map[string][]StatementAccuracy{}
	if period.Equal(current) {
		acc = p.acc[st.Customer]
	}
	names := map[string]bool{}
	for _, pr := range st.Products {
		rows := []StatementPeriod{}
		for _, r := range pr.Periods {
			if r.Period.Equal(period) {
				rows = append(rows, r)
			}
		}
		if len(rows) == 0 && len(acc[pr.Product]) == 0 {
			continue
		}
		names[pr.Product] = true
		a := acc[pr.Product]
		if a == nil {
			a = []StatementAccuracy{}
		}
		out.Products = append(out.Products, StatementProduct{Product: pr.Product, Periods: rows, Accuracy: a})
	}
	for name, a := range acc {
		if !names[name] {
			out.Products = append(out.Products, StatementProduct{Product: name, Periods: []StatementPeriod{}, Accuracy: a})
		}
	}
	sort.Slice(out.Products, func(i, j int) bool { return out.Products[i].Product < out.Products[j].Product })
	out.Consent = StatementConsent{State: "granted"}
	return &out
}

// readCells reads the groups of both feedback rollups that meet cond, per customer.
func readCells(ctx context.Context, p *ChannelPublisher, cond string, args []any) (map[string][]GapRow, map[string]map[cellKey]GapRow, error) {
	var (
		plans   map[string][]GapRow
		actuals map[string]map[cellKey]GapRow
	)
	db := p.cfg.Feedback.Database
	eg, ectx := errgroup.WithContext(ctx)
	eg.Go(func() (err error) { plans, err = planCells(ectx, p.ch, db, cond, args, false); return err })
	eg.Go(func() (err error) { actuals, err = actualCells(ectx, p.ch, db, cond, args, false); return err })
	return plans, actuals, eg.Wait()
}

// channelConsent is what the consent trail says for a round: the customers whose
// latest consent action is a withdrawal (their statements are withheld), and the
// receipts of applied messages not sent yet.
type channelConsent struct {
	withdrawn map[string]bool
	receipts  []ChannelReceipt
}

// consent reads every customer's consent trail; customers are named as the feedback
// tables store them.
func (p *ChannelPublisher) consent(ctx context.Context) (channelConsent, error) {
	out := channelConsent{withdrawn: map[string]bool{}}
	if !p.cfg.Consent {
		return out, nil
	}
	trails, err := consentTrails(ctx, p.ch, p.cfg.Feedback.Database, "1", nil)
	if err != nil {
		return out, err
	}
	ids := make([]string, 0, len(trails))
	for id := range trails {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		trail := trails[id]
		stored := id
		if p.cfg.HashConsentIDs {
			stored = pipeline.HashPII(p.cfg.HMACKey, []byte(id))
		}
		if ConsentStateOf(trail) == "withdrawn" {
			out.withdrawn[stored] = true
		}
		for _, r := range Receipts(trail) {
			if r.Applied == nil || r.Error != "" || p.receipts[r.Applied.AuditID] {
				continue
			}
			out.receipts = append(out.receipts, ChannelReceipt{Schema: StatementSchema, Kind: KindReceipt, Loop: p.cfg.Loop, Customer: stored, Receipt: r})
		}
	}
	return out, nil
}

// ConsentStateOf is a customer's consent after their consent messages: "withdrawn" when
// the last one without an error withdraws, "granted" otherwise (also with none).
func ConsentStateOf(trail []ConsentRecord) string {
	state := "granted"
	for _, r := range trail {
		if r.Event.Err != "" {
			continue
		}
		switch r.Event.Action {
		case pipeline.ConsentWithdraw:
			state = "withdrawn"
		case pipeline.ConsentGrant:
			state = "granted"
		}
	}
	return state
}
