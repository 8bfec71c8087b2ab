package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"customerloop.dev/customerloop/pipeline/customer"
)

const channelLoop = `
metadata: {name: shop}
spec:
  kafka: {brokers: []}
  clickhouse: {address: x, database: x}
  feedback: {usageStream: usage, planStream: plans}
  customerChannel: {tokensSecretRef: {name: shop-tokens}, statements: {topic: "shop.customer.{customer}.statements"}}
  streams:
    - name: usage
      kind: Usage
      topic: cli.shop.usage
      mapping: {eventId: event_id, customerId: customer_id, product: product, timestamp: ts, quantity: quantity}
    - name: plans
      kind: Plan
      topic: cli.shop.plans
      mapping: {planId: plan_id, customerId: customer_id, product: product, period: period, quantity: quantity}
`

// TestTokenCommands mints a signed token for a customer of a loop's channel, checks that
// the loop's tokens authenticate it as that customer of that loop, revokes it, and
// checks that the Secret's revoked list then refuses it.
func TestTokenCommands(t *testing.T) {
	s := needStack(t)
	ctx := context.Background()
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "shop-tokens", Namespace: cliNamespace},
		Data: map[string][]byte{customer.KeySigningKey: []byte(strings.Repeat("s", 40))}}
	if err := s.k8s.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.k8s.Delete(context.Background(), secret) })
	s.createLoop(t, channelLoop)

	if _, err := s.run(t, "token", "mint", "shop", "acme-01", "--ttl", "25h"); err == nil || !strings.Contains(err.Error(), "at most 24h") {
		t.Errorf("a 25h token: %v, want refused", err)
	}
	var minted struct {
		Token, ID, Customer, StatementTopic string
		Expires                             time.Time
	}
	out := s.mustRun(t, "token", "mint", "shop", "acme-01", "--ttl", "2h", "-o", "json")
	if err := json.Unmarshal([]byte(out), &minted); err != nil || minted.Customer != "acme-01" || minted.ID == "" {
		t.Fatalf("token mint -o json: %v\n%s", err, out)
	}
	if minted.StatementTopic != "shop.customer.acme-01.statements" {
		t.Errorf("token mint names the statement topic %q, want shop.customer.acme-01.statements", minted.StatementTopic)
	}
	if d := time.Until(minted.Expires); d < 119*time.Minute || d > 2*time.Hour {
		t.Errorf("the token expires in %s, want 2h", d)
	}
	tokens := func() *customer.Registry {
		got := &corev1.Secret{}
		if err := s.k8s.Get(ctx, types.NamespacedName{Namespace: cliNamespace, Name: "shop-tokens"}, got); err != nil {
			t.Fatal(err)
		}
		reg, errs := customer.Parse(cliNamespace+"/shop", got.Data)
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		return reg
	}
	p, err := tokens().Authenticate(minted.Token, time.Now())
	if err != nil || p.Customer != "acme-01" || p.TokenID != minted.ID {
		t.Fatalf("the minted token: %+v, %v", p, err)
	}
	// Another loop with the same key refuses it.
	other, _ := customer.Parse(cliNamespace+"/other", map[string][]byte{customer.KeySigningKey: []byte(strings.Repeat("s", 40))})
	if _, err := other.Authenticate(minted.Token, time.Now()); err == nil {
		t.Error("the token authenticates for another loop")
	}

	if out := s.mustRun(t, "token", "revoke", "shop", minted.ID); !strings.Contains(out, "revoked") {
		t.Errorf("token revoke: %s", out)
	}
	if _, err := tokens().Authenticate(minted.Token, time.Now()); err == nil {
		t.Error("a revoked token still authenticates")
	}
	if out := s.mustRun(t, "token", "revoke", "shop", minted.ID); !strings.Contains(out, "already revoked") {
		t.Errorf("revoking twice: %s", out)
	}
	// A loop without a channel has no tokens to sign with.
	plain := strings.NewReplacer("name: shop}", "name: plain}", "cli.shop.", "cli.plain.",
		"  customerChannel: {tokensSecretRef: {name: shop-tokens}, statements: {topic: \"shop.customer.{customer}.statements\"}}\n", "").Replace(channelLoop)
	s.createLoop(t, plain)
	if _, err := s.run(t, "token", "mint", "plain", "acme-01"); err == nil || !strings.Contains(err.Error(), "has no spec.customerChannel") {
		t.Errorf("minting for a loop without a channel: %v, want refused for want of a channel", err)
	}
}
