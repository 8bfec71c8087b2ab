package customer

import (
	"errors"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
)

// Holder holds the current Registry, so that a change of the Secret takes effect on the
// next request: Store a new one, and pass Load to Authenticated. Its zero value holds
// none, and refuses every token.
type Holder struct{ atomic.Pointer[Registry] }

// Refusal bodies: the whole of what a refused caller reads.
const (
	bodyUnauthorized = "unauthorized"
	bodyForbidden    = "forbidden"
	bodyTooMany      = "too many requests"
)

// Option changes how Authenticated serves.
type Option func(*guard)

// Allow sets which authenticated principals the channel serves; the others are refused
// with 403. Without it every authenticated principal is served.
func Allow(allowed func(r *http.Request, p Principal) bool) Option {
	return func(g *guard) { g.allow = allowed }
}

// ClientIP sets how a request's client is told for the limit on failures. The default
// is the address the connection comes from (RemoteAddr), IPv6 addresses by their /64:
// behind a proxy, every caller is then the proxy, and a caller that fails often blocks
// all; set a function that reads the client from the header the proxy writes, and only
// when every request comes through it.
func ClientIP(client func(r *http.Request) string) Option {
	return func(g *guard) { g.client = client }
}

// Log sets where refusals are logged, at V(1): the status, why in one word, the client
// and the token's id when the token was accepted; never a token or a hash. Without it
// nothing is logged.
func Log(log logr.Logger) Option {
	return func(g *guard) { g.log = log }
}

// withClock sets the time the guard reads, for tests.
func withClock(now func() time.Time) Option {
	return func(g *guard) { g.now = now }
}

// guard is the handler Authenticated returns.
type guard struct {
	reg     func() *Registry
	limiter *Limiter
	next    func(http.ResponseWriter, *http.Request, Principal)
	allow   func(*http.Request, Principal) bool
	client  func(*http.Request) string
	log     logr.Logger
	now     func() time.Time
}

// Authenticated returns a handler that serves next for the principal of the request's
// bearer token (Authorization: Bearer <token>), as the registry reg returns at the time
// of the request knows it, and refuses every other request (see the package
// documentation):
//
//   - a client past its failed authentications in limiter: 429, before its token is read;
//   - no token, a malformed one or one reg refuses: 401, and one failure of the client;
//   - a token past its rate in limiter: 429;
//   - a principal Allow refuses: 403.
//
// reg, limiter and next are required; it panics without them.
func Authenticated(reg func() *Registry, limiter *Limiter, next func(w http.ResponseWriter, r *http.Request, p Principal), opts ...Option) http.Handler {
	if reg == nil || limiter == nil || next == nil {
		panic("customer.Authenticated: reg, limiter and next are required")
	}
	g := &guard{reg: reg, limiter: limiter, next: next, client: remoteClient, log: logr.Discard(), now: time.Now}
	for _, o := range opts {
		o(g)
	}
	return g
}

// ServeHTTP refuses or serves the request.
func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := g.now()
	client := g.client(r)
	if ok, wait := g.limiter.clientMayTry(client, now); !ok {
		g.refuse(w, http.StatusTooManyRequests, wait, "client failures", client, "")
		return
	}
	token, ok := bearer(r)
	if !ok {
		g.limiter.clientFailed(client, now)
		g.refuse(w, http.StatusUnauthorized, 0, "no bearer token", client, "")
		return
	}
	p, err := g.reg().Authenticate(token, now)
	if err != nil {
		g.limiter.clientFailed(client, now)
		g.refuse(w, http.StatusUnauthorized, 0, reason(err), client, "")
		return
	}
	if ok, wait := g.limiter.allowToken(p.limitKey(), now); !ok {
		g.refuse(w, http.StatusTooManyRequests, wait, "token rate", client, p.TokenID)
		return
	}
	if g.allow != nil && !g.allow(r, p) {
		g.refuse(w, http.StatusForbidden, 0, "not allowed", client, p.TokenID)
		return
	}
	g.next(w, r, p)
}

// bearer returns the token of the request's one Authorization header.
func bearer(r *http.Request) (string, bool) {
	vals := r.Header.Values("Authorization")
	if len(vals) != 1 {
		return "", false
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}

// reason is why a token was refused, in a word for the log.
func reason(err error) string {
	for _, e := range []struct {
		err  error
		word string
	}{{ErrMalformed, "malformed"}, {ErrUnknown, "unknown"}, {ErrExpired, "expired"}, {ErrRevoked, "revoked"}, {ErrOtherLoop, "other loop"}} {
		if errors.Is(err, e.err) {
			return e.word
		}
	}
	return "refused"
}

// refuse writes one of the three refusals, with nothing in it of why.
func (g *guard) refuse(w http.ResponseWriter, status int, wait time.Duration, why, client, tokenID string) {
	kv := []any{"status", status, "reason", why, "client", client}
	if tokenID != "" {
		kv = append(kv, "tokenID", tokenID)
	}
	g.log.V(1).Info("customer channel refused a request", kv...)
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	body := bodyForbidden
	switch status {
	case http.StatusUnauthorized:
		h.Set("WWW-Authenticate", "Bearer")
		body = bodyUnauthorized
	case http.StatusTooManyRequests:
		h.Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
		body = bodyTooMany
	}
	http.Error(w, body, status)
}

// remoteClient is the connection's address without its port, an IPv6 address by its
// /64 (one host commonly holds all of it).
func remoteClient(r *http.Request) string {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	addr := ap.Addr().Unmap()
	if addr.Is6() {
		if p, err := addr.Prefix(64); err == nil {
			return p.String()
		}
	}
	return addr.String()
}
