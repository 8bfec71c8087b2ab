package customer

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"

	"github.com/go-logr/logr"

	"customerloop.dev/customerloop/pipeline/dashboard"
	"customerloop.dev/customerloop/pipeline/feedback"
)

// Channel is what the customer API serves of one loop: its tokens and limits, how a
// customer's statement and consent trail are read, and where their plans go.
type Channel struct {
	// Loop is namespace/name; its API lives under /v1/loops/{namespace}/{name}/.
	Loop    string
	Tokens  *Holder
	Limiter *Limiter
	// Statement reads the customer's statement; customer is the token's id, in clear.
	Statement func(ctx context.Context, customer string) (*feedback.Statement, error)
	// Consent reads the customer's consent messages and their receipts; nil when the
	// loop has no consent stream.
	Consent func(ctx context.Context, customer string) (any, error)
	// DeadLetters reads the customer's dead letters per period and reason (see
	// feedback.ReadDeadLetters); nil serves none.
	DeadLetters func(ctx context.Context, customer string) ([]feedback.StatementDeadLetters, error)
	// Planner takes the customer's plans; nil when the loop has no plan stream.
	Planner *Planner
}

// Source finds the channel of a loop, as its spec and Secret stand at the time of the
// request (the manager's reads them from its cache), so that a change of the tokens
// takes effect without a restart on every replica. Channel returns nil for a loop that
// does not exist or declares no channel.
type Source interface {
	Channel(ctx context.Context, namespace, name string) (*Channel, error)
}

// Server serves the customer API of every loop that declares a customer channel, on
// the manager's own port, apart from the product teams' dashboard:
//
//	GET  /v1/loops/{namespace}/{name}/statement   the customer's current statement
//	GET  /v1/loops/{namespace}/{name}/page        the same as an HTML page with charts
//	GET  /v1/loops/{namespace}/{name}/consent     their consent messages and receipts
//	GET  /v1/loops/{namespace}/{name}/deadletters their dead-lettered messages per period
//	POST /v1/loops/{namespace}/{name}/plans       submit or revise a plan
//
// Every request carries the customer's token (Authorization: Bearer). A path that is not
// one of these, spelled exactly, is 404 before any token is read; a loop that does not
// exist, or has no channel, is refused as an unknown token is (401), so that the API
// tells nobody which loops exist.
type Server struct {
	src Source
	log logr.Logger
	// failures limits the failed authentications of each client across every loop, so
	// that a client guessing tokens gets no fresh budget per loop, and one that names a
	// loop that does not exist is refused as at a loop that does.
	failures *Limiter
}

// NewServer returns a server of the channels src finds.
func NewServer(src Source, log logr.Logger) *Server {
	return &Server{src: src, log: log, failures: NewLimiter(1, 1)}
}

// LimitFailures sets how many failed authentications per second each client may
// sustain across the server's loops, in bursts of up to burst (by default
// DefaultFailureRate and DefaultFailureBurst), and returns s. Call it before serving.
func (s *Server) LimitFailures(rate float64, burst int) *Server {
	s.failures.LimitFailures(rate, burst)
	return s
}

// label is a Kubernetes namespace or object name as the paths may spell them.
var label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// endpoints are the API's last path segments and their methods.
var endpoints = map[string]string{"statement": http.MethodGet, "page": http.MethodGet, "consent": http.MethodGet,
	"deadletters": http.MethodGet, "plans": http.MethodPost}

// ServeHTTP routes the request to its loop.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The path as sent, undecoded: percent-encodings, dot segments, doubled slashes and
	// other spellings of a path are not paths of the API.
	if r.URL.RawPath != "" {
		http.NotFound(w, r)
		return
	}
	parts := strings.Split(r.URL.Path, "/")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "v1" || parts[2] != "loops" || !label.MatchString(parts[3]) || !label.MatchString(parts[4]) {
		http.NotFound(w, r)
		return
	}
	method, ok := endpoints[parts[5]]
	if !ok {
		http.NotFound(w, r)
		return
	}
	if r.Method != method {
		w.Header().Set("Allow", method)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	ch, err := s.src.Channel(r.Context(), parts[3], parts[4])
	if err != nil {
		s.log.Error(err, "customer channel: finding the loop", "loop", parts[3]+"/"+parts[4])
	}
	if err != nil || ch == nil {
		Authenticated(func() *Registry { return nil }, s.failures, func(http.ResponseWriter, *http.Request, Principal) {
			panic("customer: a nil registry authenticated a token")
		}).ServeHTTP(w, r)
		return
	}
	// The channel's budgets per token, the server's per client.
	limits := &Limiter{tokens: ch.Limiter.tokens, clients: s.failures.clients}
	Authenticated(ch.Tokens.Load, limits, func(w http.ResponseWriter, r *http.Request, p Principal) {
		serveChannel(w, r, ch, p, s.log)
	}, Log(s.log)).ServeHTTP(w, r)
}

// serveChannel serves an authenticated customer's request: what they read is theirs
// alone, found by the token's customer and nothing of the request.
func serveChannel(w http.ResponseWriter, r *http.Request, ch *Channel, p Principal, log logr.Logger) {
	w.Header().Set("Cache-Control", "no-store")
	ctx := r.Context()
	endpoint := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	if r.URL.RawQuery != "" || r.URL.ForceQuery {
		// Nothing of the request chooses whose figures are read: no endpoint takes
		// parameters.
		writeJSON(w, http.StatusBadRequest, &PlanError{"invalid_request", "the API takes no query parameters"})
		return
	}
	switch endpoint {
	case "statement", "page":
		st, err := ch.Statement(ctx, p.Customer)
		if err != nil {
			fail(w, log, ch.Loop, p, "reading the statement", err)
			return
		}
		if endpoint == "statement" {
			writeJSON(w, http.StatusOK, st)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", dashboard.CustomerPageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		// CustomerPage writes nothing unless the whole page rendered.
		if err := dashboard.CustomerPage(w, st); err != nil {
			fail(w, log, ch.Loop, p, "rendering the page", err)
		}
	case "consent":
		if ch.Consent == nil {
			http.NotFound(w, r)
			return
		}
		trail, err := ch.Consent(ctx, p.Customer)
		if err != nil {
			fail(w, log, ch.Loop, p, "reading the consent trail", err)
			return
		}
		writeJSON(w, http.StatusOK, trail)
	case "deadletters":
		if ch.DeadLetters == nil {
			http.NotFound(w, r)
			return
		}
		dead, err := ch.DeadLetters(ctx, p.Customer)
		if err != nil {
			fail(w, log, ch.Loop, p, "reading the dead letters", err)
			return
		}
		writeJSON(w, http.StatusOK, &DeadLetters{Loop: ch.Loop, Customer: p.Customer, DeadLetters: nonNilDeadLetters(dead)})
	case "plans":
		if ch.Planner == nil {
			http.NotFound(w, r)
			return
		}
		req, err := DecodePlanRequest(r.Body)
		if err == nil {
			var ok PlanAccepted
			if ok, err = ch.Planner.Submit(ctx, p.Customer, req); err == nil {
				writeJSON(w, http.StatusAccepted, ok)
				return
			}
		}
		var pe *PlanError
		if errors.As(err, &pe) {
			writeJSON(w, http.StatusBadRequest, pe)
			return
		}
		fail(w, log, ch.Loop, p, "submitting a plan", err)
	}
}

// fail answers 503 and logs what failed, with the token's id and never the customer's.
func fail(w http.ResponseWriter, log logr.Logger, loop string, p Principal, what string, err error) {
	log.Error(err, "customer channel: "+what, "loop", loop, "tokenID", p.TokenID)
	http.Error(w, "the loop's figures cannot be read now; try again later", http.StatusServiceUnavailable)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// DeadLetters is what GET .../deadletters answers: the customer's dead-lettered
// messages, per period of the loop's grain (oldest first) and reason, as their statement
// carries them.
type DeadLetters struct {
	Loop string `json:"loop"`
	// Customer is the id the token names.
	Customer    string                          `json:"customer"`
	DeadLetters []feedback.StatementDeadLetters `json:"deadLetters"`
}

func nonNilDeadLetters(d []feedback.StatementDeadLetters) []feedback.StatementDeadLetters {
	if d == nil {
		return []feedback.StatementDeadLetters{}
	}
	return d
}
