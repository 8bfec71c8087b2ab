package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/customer"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// demoCustomer is the customer whose channel the demo shows.
const demoCustomer = "acme-01"

// channelSpec is the customer channel the demo adds to the sample: tokens from a Secret
// with a signing key, statements to a topic per customer every 10 s (the shortest
// interval the API allows).
func channelSpec(loop *loopsv1alpha1.CustomerLoop) *loopsv1alpha1.CustomerChannelSpec {
	return &loopsv1alpha1.CustomerChannelSpec{
		TokensSecretRef: loopsv1alpha1.ChannelSecretRef{Name: loop.Name + "-customer-tokens"},
		Statements:      &loopsv1alpha1.ChannelStatementsSpec{Topic: loop.Name + ".customer.{customer}.statements", Interval: "10s"},
	}
}

// createTokensSecret creates the channel's tokens Secret, holding only a signing key:
// the demo mints a short-lived token, as a vendor's portal would.
func (d *devStack) createTokensSecret(ctx context.Context, loop *loopsv1alpha1.CustomerLoop) ([]byte, error) {
	key := []byte(fmt.Sprintf("demo-signing-key-%d-0123456789abcdef", time.Now().UnixNano()))
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: loop.Spec.CustomerChannel.TokensSecretRef.Name, Namespace: loop.Namespace},
		Data: map[string][]byte{customer.KeySigningKey: key}}
	if err := d.k8s.Create(ctx, s); err != nil {
		return nil, fmt.Errorf("creating the customer channel's tokens Secret: %w", err)
	}
	d.teardown = append(d.teardown, func() { _ = d.k8s.Delete(context.Background(), s) })
	return key, nil
}

// customerChannel serves the customer API as the manager does, on loopback, and shows
// one customer's side of the loop: their statement through the API (with the curl line
// and their token), the same figures as they arrive on their own topic, and a revised
// plan through the API moving them in both.
func (d *devStack) customerChannel(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.o.timeout)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: customer.NewServer(&controllers.CustomerChannels{Client: d.k8s, Log: ctrl.Log.WithName("customer-api")},
		ctrl.Log.WithName("customer-api")), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	d.teardown = append(d.teardown, func() { _ = srv.Close() })
	loopName := d.loop.Namespace + "/" + d.loop.Name
	token, _, err := customer.Mint(d.signingKey, loopName, demoCustomer, 2*time.Hour, time.Now())
	if err != nil {
		return err
	}
	base := fmt.Sprintf("http://%s/v1/loops/%s/%s/", ln.Addr(), d.loop.Namespace, d.loop.Name)
	call := func(method, path, body string) (int, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	step("Customer API of %s (served as the manager serves it on --customer-api-bind-address); a token minted for %s, valid 2h:", loopName, demoCustomer)
	fmt.Printf("    token=%s\n    curl -s -H \"Authorization: Bearer $token\" %sstatement\n", token, base)
	status, body, err := call(http.MethodGet, "statement", "")
	if err != nil || status != http.StatusOK {
		return fmt.Errorf("the customer API answered %d (%v): %s", status, err, body)
	}
	var st feedback.Statement
	if err := json.Unmarshal(body, &st); err != nil {
		return err
	}
	var pretty bytes.Buffer
	_ = json.Indent(&pretty, body, "    ", "  ")
	fmt.Printf("    %s\n", pretty.String())
	row := currentRow(&st)
	if row == nil || row.PlannedLatest == nil {
		return fmt.Errorf("%s's statement has no plan of the period under way: %s", demoCustomer, body)
	}
	product := currentProduct(&st)

	// The same customer's statement of the period under way, on their own topic.
	topic, err := pipeline.StatementConfig{Topic: d.loop.Spec.CustomerChannel.Statements.Topic}.TopicFor(demoCustomer)
	if err != nil {
		return err
	}
	onTopic, err := d.awaitStatement(ctx, topic, product, st.Period.Time, func(p *feedback.StatementPeriod) bool {
		return p.PlannedLatest != nil && *p.PlannedLatest == *row.PlannedLatest
	})
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(onTopic, "    ", "  ")
	step("%s's statement of %s as it arrived on their topic %s (kcat -C -b %s -t %s -e), version %d:", demoCustomer,
		onTopic.Period.Format(time.DateOnly), topic, d.brokers[0], topic, onTopic.Version)
	fmt.Printf("    %s\n", b)

	// A revised plan through the API moves the figure in both.
	revised := *row.PlannedLatest + 100
	plan := fmt.Sprintf(`{"product":%q,"period":%q,"quantity":%g}`, product, st.Period.Format(time.DateOnly), revised)
	step("%s revises its plan of %s for %s from %g to %g through the API:", demoCustomer, product, st.Period.Format(time.DateOnly), *row.PlannedLatest, revised)
	fmt.Printf("    curl -s -H \"Authorization: Bearer $token\" -d '%s' %splans\n", plan, base)
	status, body, err = call(http.MethodPost, "plans", plan)
	if err != nil || status != http.StatusAccepted {
		return fmt.Errorf("submitting a plan: %d (%v): %s", status, err, body)
	}
	fmt.Printf("    %d %s\n", status, bytes.TrimSpace(body))
	moved, err := d.awaitStatement(ctx, topic, product, st.Period.Time, func(p *feedback.StatementPeriod) bool {
		return p.PlannedLatest != nil && *p.PlannedLatest == revised
	})
	if err != nil {
		return err
	}
	_, body, err = call(http.MethodGet, "statement", "")
	if err != nil {
		return err
	}
	var after feedback.Statement
	if err := json.Unmarshal(body, &after); err != nil {
		return err
	}
	if r := currentRow(&after); r == nil || r.PlannedLatest == nil || *r.PlannedLatest != revised {
		return fmt.Errorf("the API's statement does not show the revised plan %g: %s", revised, body)
	}
	p := moved.Products[0].Periods[0]
	step("The figure moved: plannedLatest %g -> %g, gap %s -> %s; on %s as version %d (was %d), and in the API's statement",
		*row.PlannedLatest, *p.PlannedLatest, figure(row.Gap), figure(p.Gap), topic, moved.Version, onTopic.Version)
	return nil
}

// awaitStatement waits until the customer's topic holds, as its latest statement of the
// period current, one whose row of product meets ok.
func (d *devStack) awaitStatement(ctx context.Context, topic, product string, current time.Time, ok func(*feedback.StatementPeriod) bool) (*feedback.Statement, error) {
	for {
		msgs, err := readTopic(ctx, d.brokers, topic)
		if err != nil {
			return nil, err
		}
		var latest *feedback.Statement
		for _, m := range msgs {
			var st feedback.Statement
			if err := json.Unmarshal(m.Value, &st); err != nil || st.Kind != feedback.KindStatement || !st.Period.Equal(current) {
				continue
			}
			if latest == nil || st.Version > latest.Version {
				latest = &st
			}
		}
		if latest != nil {
			only := *latest
			only.Products = nil
			for _, p := range latest.Products {
				if p.Product == product && len(p.Periods) == 1 && ok(&p.Periods[0]) {
					only.Products = append(only.Products, p)
				}
			}
			if len(only.Products) == 1 {
				return &only, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s does not hold the expected statement of %s within %s", topic, product, d.o.timeout)
		case <-time.After(time.Second):
		}
	}
}

// currentProduct is the first product of the statement with a plan for the period under
// way; currentRow its row.
func currentProduct(st *feedback.Statement) string {
	for _, p := range st.Products {
		for _, r := range p.Periods {
			if r.Period.Equal(st.Period.Time) && r.PlannedLatest != nil {
				return p.Product
			}
		}
	}
	return ""
}

func currentRow(st *feedback.Statement) *feedback.StatementPeriod {
	name := currentProduct(st)
	for _, p := range st.Products {
		for i, r := range p.Periods {
			if p.Product == name && r.Period.Equal(st.Period.Time) {
				return &p.Periods[i]
			}
		}
	}
	return nil
}

func figure(v *float64) string {
	if v == nil {
		return "none"
	}
	return fmt.Sprintf("%g", *v)
}
