package customer

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
)

// channel is a guarded handler on a clock the test moves.
type channel struct {
	now     time.Time
	served  []Principal
	handler http.Handler
}

func newChannel(reg func() *Registry, lim *Limiter, opts ...Option) *channel {
	c := &channel{now: t0}
	opts = append(opts, withClock(func() time.Time { return c.now }))
	c.handler = Authenticated(reg, lim, func(w http.ResponseWriter, r *http.Request, p Principal) {
		c.served = append(c.served, p)
		fmt.Fprintf(w, "hello %s\n", p.Customer)
	}, opts...)
	return c
}

// do sends a request from client with the given Authorization header ("" for none).
func (c *channel) do(client, authorization string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "/statement", nil)
	r.RemoteAddr = client
	if authorization != "" {
		r.Header.Set("Authorization", authorization)
	}
	w := httptest.NewRecorder()
	c.handler.ServeHTTP(w, r)
	return w
}

func fixed(reg *Registry) func() *Registry { return func() *Registry { return reg } }

func TestRefusalsSayNothing(t *testing.T) {
	valid, _ := mint(t, signingKey, testLoop, "acme", time.Hour, t0)
	revoked, revokedID := mint(t, signingKey, testLoop, "acme", time.Hour, t0)
	expiredSigned, _ := mint(t, signingKey, testLoop, "acme", time.Hour, t0.Add(-2*time.Hour))
	otherLoop, _ := mint(t, signingKey, "default/globex", "acme", time.Hour, t0)
	reg := signedRegistry(t, map[string][]byte{
		KeyRevoked: []byte(`["` + revokedID + `"]`),
		"acme-1":   entryJSON("acme", "long-lived", time.Time{}),
		"old":      entryJSON("acme", "expired-long-lived", t0.Add(-time.Minute)),
	})
	var logged strings.Builder
	logger := funcr.New(func(prefix, args string) { logged.WriteString(args + "\n") }, funcr.Options{Verbosity: 1})
	c := newChannel(fixed(reg), NewLimiter(100, 100).LimitFailures(100, 100), Log(logger))

	if w := c.do("192.0.2.1:4000", "Bearer "+valid); w.Code != http.StatusOK || w.Body.String() != "hello acme\n" {
		t.Fatalf("valid token: %d %q", w.Code, w.Body)
	}
	if w := c.do("192.0.2.1:4000", "bearer long-lived"); w.Code != http.StatusOK {
		t.Fatalf("long-lived token, scheme in lower case: %d %q", w.Code, w.Body)
	}
	var first http.Header
	for name, authorization := range map[string]string{
		"unknown":            "Bearer no-such-token",
		"expired long-lived": "Bearer expired-long-lived",
		"expired signed":     "Bearer " + expiredSigned,
		"revoked":            "Bearer " + revoked,
		"another loop":       "Bearer " + otherLoop,
		"tampered":           "Bearer " + valid[:len(valid)-2] + "AA",
		"no header":          "",
		"basic":              "Basic YWNtZTpzM2NyZXQ=",
		"no token":           "Bearer ",
		"two spaces":         "Bearer  long-lived",
		"no space":           "Bearerlong-lived",
	} {
		w := c.do("192.0.2.1:4000", authorization)
		if w.Code != http.StatusUnauthorized || w.Body.String() != "unauthorized\n" || w.Header().Get("WWW-Authenticate") != "Bearer" {
			t.Errorf("%s: %d %q, WWW-Authenticate %q", name, w.Code, w.Body, w.Header().Get("WWW-Authenticate"))
		}
		if first == nil {
			first = w.Header()
		} else if !reflect.DeepEqual(w.Header(), first) {
			t.Errorf("%s: headers %v differ from %v", name, w.Header(), first)
		}
	}
	r := httptest.NewRequest(http.MethodGet, "/statement", nil)
	r.Header.Add("Authorization", "Bearer long-lived")
	r.Header.Add("Authorization", "Bearer long-lived")
	w := httptest.NewRecorder()
	c.handler.ServeHTTP(w, r)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("two Authorization headers: %d", w.Code)
	}
	if len(c.served) != 2 {
		t.Errorf("served %d requests, want the 2 valid ones", len(c.served))
	}
	for _, secret := range []string{valid, revoked, "long-lived", hashHex("long-lived"), hashHex("no-such-token"), "no-such-token"} {
		if strings.Contains(logged.String(), secret) {
			t.Errorf("the log holds a token or a hash: %s", logged.String())
		}
	}
	if !strings.Contains(logged.String(), `"reason"="revoked"`) {
		t.Errorf("the log does not say why: %s", logged.String())
	}
}

func TestForbiddenCustomer(t *testing.T) {
	reg := mustParse(t, map[string][]byte{
		"acme-1":   entryJSON("acme", "tok-acme", time.Time{}),
		"globex-1": entryJSON("globex", "tok-globex", time.Time{}),
	})
	c := newChannel(fixed(reg), NewLimiter(10, 10), Allow(func(_ *http.Request, p Principal) bool { return p.Customer != "globex" }))
	w := c.do("192.0.2.1:4000", "Bearer tok-globex")
	if w.Code != http.StatusForbidden || w.Body.String() != "forbidden\n" || w.Header().Get("WWW-Authenticate") != "" {
		t.Errorf("customer not allowed: %d %q %v", w.Code, w.Body, w.Header())
	}
	if w := c.do("192.0.2.1:4000", "Bearer tok-acme"); w.Code != http.StatusOK {
		t.Errorf("customer allowed: %d", w.Code)
	}
}

func TestTokenRateLimit(t *testing.T) {
	reg := mustParse(t, map[string][]byte{
		"acme-1":   entryJSON("acme", "tok-acme", time.Time{}),
		"globex-1": entryJSON("globex", "tok-globex", time.Time{}),
	})
	c := newChannel(fixed(reg), NewLimiter(0.5, 3))
	for i := range 3 {
		if w := c.do("192.0.2.1:4000", "Bearer tok-acme"); w.Code != http.StatusOK {
			t.Fatalf("request %d of the burst: %d", i, w.Code)
		}
	}
	w := c.do("192.0.2.1:4000", "Bearer tok-acme")
	if w.Code != http.StatusTooManyRequests || w.Body.String() != "too many requests\n" || w.Header().Get("Retry-After") != "2" {
		t.Fatalf("past the burst: %d %q, Retry-After %q; want 429 and 2 seconds", w.Code, w.Body, w.Header().Get("Retry-After"))
	}
	if w := c.do("192.0.2.9:4000", "Bearer tok-globex"); w.Code != http.StatusOK {
		t.Errorf("another token: %d", w.Code)
	}
	c.now = c.now.Add(1500 * time.Millisecond)
	if w := c.do("192.0.2.1:4000", "Bearer tok-acme"); w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" {
		t.Errorf("1.5s later: %d, Retry-After %q; want 429 and 1 second", w.Code, w.Header().Get("Retry-After"))
	}
	c.now = c.now.Add(500 * time.Millisecond)
	if w := c.do("192.0.2.1:4000", "Bearer tok-acme"); w.Code != http.StatusOK {
		t.Errorf("2s later: %d, want the token served again", w.Code)
	}
	if len(c.served) != 5 {
		t.Errorf("served %d, want 5", len(c.served))
	}
}

func TestClientFailuresAreThrottledBeforeTokenWork(t *testing.T) {
	reg := mustParse(t, map[string][]byte{"acme-1": entryJSON("acme", "tok-acme", time.Time{})})
	lookups := 0
	c := newChannel(func() *Registry { lookups++; return reg }, NewLimiter(100, 100).LimitFailures(1, 3))
	for i := range 2 {
		if w := c.do("192.0.2.1:4000", fmt.Sprintf("Bearer guess-%d", i)); w.Code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i, w.Code)
		}
	}
	if w := c.do("192.0.2.1:4000", ""); w.Code != http.StatusUnauthorized {
		t.Fatalf("request without a token: %d", w.Code)
	}
	lookups = 0
	w := c.do("192.0.2.1:4000", "Bearer tok-acme")
	if w.Code != http.StatusTooManyRequests || w.Body.String() != "too many requests\n" || w.Header().Get("Retry-After") == "" || lookups != 0 {
		t.Fatalf("client past its failures: %d %q, Retry-After %q, %d lookups; want 429 before any lookup", w.Code, w.Body, w.Header().Get("Retry-After"), lookups)
	}
	if w := c.do("192.0.2.2:4000", "Bearer tok-acme"); w.Code != http.StatusOK {
		t.Errorf("another client: %d", w.Code)
	}
	c.now = c.now.Add(time.Second)
	if w := c.do("192.0.2.1:4000", "Bearer tok-acme"); w.Code != http.StatusOK {
		t.Errorf("a second later: %d", w.Code)
	}
	// Successes cost the client nothing.
	for i := range 5 {
		if w := c.do("192.0.2.1:4000", "Bearer tok-acme"); w.Code != http.StatusOK {
			t.Fatalf("success %d: %d", i, w.Code)
		}
	}
}

func TestRegistrySwapTakesEffect(t *testing.T) {
	var h Holder
	c := newChannel(h.Load, NewLimiter(100, 100).LimitFailures(100, 100))
	if w := c.do("192.0.2.1:4000", "Bearer tok-1"); w.Code != http.StatusUnauthorized {
		t.Errorf("empty holder: %d", w.Code)
	}
	h.Store(mustParse(t, map[string][]byte{"t1": entryJSON("acme", "tok-1", time.Time{})}))
	if w := c.do("192.0.2.1:4000", "Bearer tok-1"); w.Code != http.StatusOK {
		t.Errorf("after the first Store: %d", w.Code)
	}
	h.Store(mustParse(t, map[string][]byte{"t2": entryJSON("acme", "tok-2", time.Time{})}))
	if w := c.do("192.0.2.1:4000", "Bearer tok-1"); w.Code != http.StatusUnauthorized {
		t.Errorf("a token the new Secret dropped: %d", w.Code)
	}
	if w := c.do("192.0.2.1:4000", "Bearer tok-2"); w.Code != http.StatusOK {
		t.Errorf("a token the new Secret added: %d", w.Code)
	}
}

func TestLimiterForgetsIdleKeys(t *testing.T) {
	l := NewLimiter(1, 5)
	l.allowToken("a", t0)
	l.clientFailed("192.0.2.1", t0)
	l.allowToken("b", t0.Add(5*time.Minute))
	l.allowToken("c", t0.Add(IdleEviction))
	if n := l.tokens.len(); n != 2 {
		t.Errorf("after 10 minutes: %d token limiters, want b and c", n)
	}
	if ok, _ := l.clientMayTry("192.0.2.9", t0.Add(IdleEviction)); !ok || l.clients.len() != 0 {
		t.Errorf("client limiters %d, want none: the idle one forgotten, the peeked one never made", l.clients.len())
	}
	// A limiter whose burst takes longer than IdleEviction to refill is kept until it has.
	slow := newBuckets(1.0/120, 10) // 20 minutes
	slow.take("a", t0)
	slow.take("x", t0.Add(15*time.Minute))
	if slow.len() != 2 {
		t.Errorf("slow limiter forgotten before its burst refilled")
	}
	slow.take("x", t0.Add(21*time.Minute))
	if slow.len() != 1 {
		t.Errorf("slow limiter kept after its burst refilled")
	}
}

func TestLimiterBoundsItsKeys(t *testing.T) {
	b := newBuckets(1, 1)
	for i := range maxKeys {
		b.take(fmt.Sprint(i), t0)
	}
	if ok, _ := b.take("new-1", t0); !ok {
		t.Fatal("the first key past the bound was refused")
	}
	if ok, _ := b.take("new-2", t0); ok {
		t.Error("keys past the bound do not share a limiter")
	}
	if b.len() != maxKeys+1 {
		t.Errorf("%d keys, want %d and the shared one", b.len(), maxKeys)
	}
	b.take("new-3", t0.Add(IdleEviction))
	if b.len() != 1 {
		t.Errorf("after eviction: %d keys", b.len())
	}
}

func TestNewLimiterRefusesLimitsThatRefuseEverything(t *testing.T) {
	for _, c := range []struct {
		rate  float64
		burst int
	}{{0, 1}, {-1, 1}, {1, 0}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewLimiter(%v, %d) did not panic", c.rate, c.burst)
				}
			}()
			NewLimiter(c.rate, c.burst)
		}()
	}
}

func TestRemoteClient(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.1:4000":                 "192.0.2.1",
		"[::ffff:192.0.2.1]:4000":        "192.0.2.1",
		"[2001:db8:1:2:3:4:5:6]:4000":    "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1%eth0]:80": "2001:db8:1:2::/64",
		"pipe":                           "pipe",
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = addr
		if got := remoteClient(r); got != want {
			t.Errorf("remoteClient(%s) = %s, want %s", addr, got, want)
		}
	}
}
