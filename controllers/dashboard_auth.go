package controllers

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	authorizationv1 "k8s.io/client-go/kubernetes/typed/authorization/v1"
	"k8s.io/client-go/rest"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline/dashboard"
)

const (
	// DashboardCookie holds the bearer token a reader signed in with through the
	// dashboard's form.
	DashboardCookie = "customerloop-token"
	// dashboardAuthTTL is how long a token's user, and that user's answer for a
	// namespace, are reused: a revoked token or a removed RoleBinding takes effect
	// within it. The answers are kept in a bounded LRU (the webhook authorizer's, 8192
	// entries); token answers expire after it.
	dashboardAuthTTL = 15 * time.Second
)

// DashboardAuth lets the dashboard's readers in through the Kubernetes API: a bearer
// token is checked with a TokenReview, and a reader sees the loops of the namespaces
// where a SubjectAccessReview says they may get customerloops. A loop of any other
// namespace is not found, on lists and on its own URL alike, so that its existence is
// not told either.
type DashboardAuth struct {
	tokens *tokenReviewer
	authz  authorizer.Authorizer
	log    logr.Logger
}

// NewDashboardAuth reviews tokens and access with the API server cfg reaches.
func NewDashboardAuth(cfg *rest.Config, httpClient *http.Client, log logr.Logger) (*DashboardAuth, error) {
	tokens, err := newTokenReviewer(cfg, httpClient, dashboardAuthTTL, log)
	if err != nil {
		return nil, err
	}
	authzClient, err := authorizationv1.NewForConfigAndClient(cfg, httpClient)
	if err != nil {
		return nil, err
	}
	authz, err := authorizerfactory.DelegatingAuthorizerConfig{
		SubjectAccessReviewClient: authzClient,
		AllowCacheTTL:             dashboardAuthTTL,
		DenyCacheTTL:              dashboardAuthTTL,
		WebhookRetryBackoff:       &reviewBackoff,
	}.New()
	if err != nil {
		return nil, fmt.Errorf("dashboard authorization: %w", err)
	}
	return &DashboardAuth{tokens: tokens, authz: authz, log: log}, nil
}

// Handler serves the dashboard of src to authenticated readers, each seeing only the
// loops they may get. A request without a valid token is answered 401: a browser asking
// for a page gets the sign-in form, which sets DashboardCookie (HttpOnly,
// SameSite=Strict, Secure when served over TLS).
func (a *DashboardAuth) Handler(src dashboard.Source) http.Handler {
	h := dashboard.New(permittedSource{src: src, authz: a.authz}, a.log)
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+dashboard.LoginPath, func(w http.ResponseWriter, _ *http.Request) {
		dashboard.Login(w, http.StatusOK, "")
	})
	mux.HandleFunc("POST "+dashboard.LoginPath, a.login)
	mux.Handle("/", a.authenticated(h))
	return mux
}

// authenticated passes requests with a valid token on, with their user in the context.
func (a *DashboardAuth) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := r
		if r.Header.Get("Authorization") == "" {
			if c, err := r.Cookie(DashboardCookie); err == nil && c.Value != "" {
				req = r.Clone(r.Context())
				req.Header.Set("Authorization", "Bearer "+c.Value)
			}
		}
		u, ok := a.tokens.authenticate(req)
		if !ok {
			unauthorized(w, r)
			return
		}
		// The token stays with this request only: the handler behind sees the user.
		req = r.Clone(withReader(r.Context(), u))
		req.Header.Del("Authorization")
		next.ServeHTTP(w, req)
	})
}

// unauthorized answers 401; with the sign-in form to a browser asking for a page.
func unauthorized(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="customerloop"`)
	if r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/api/") && strings.Contains(r.Header.Get("Accept"), "text/html") {
		dashboard.Login(w, http.StatusUnauthorized, "")
		return
	}
	http.Error(w, "Unauthorized: send a Kubernetes bearer token in the Authorization header", http.StatusUnauthorized)
}

// login checks the posted token and keeps it in a cookie for the browser's session.
func (a *DashboardAuth) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	token := strings.TrimSpace(r.PostFormValue("token"))
	if token == "" || strings.ContainsAny(token, " \t\r\n;,\"\\") {
		dashboard.Login(w, http.StatusUnauthorized, "Paste a bearer token.")
		return
	}
	probe := r.Clone(r.Context())
	probe.Header = http.Header{"Authorization": {"Bearer " + token}}
	if _, ok := a.tokens.authenticate(probe); !ok {
		dashboard.Login(w, http.StatusUnauthorized, "The Kubernetes API did not accept this token.")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: DashboardCookie, Value: token, Path: "/",
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

type readerKey struct{}

func withReader(ctx context.Context, u user.Info) context.Context {
	return context.WithValue(ctx, readerKey{}, u)
}

func readerFrom(ctx context.Context) (user.Info, bool) {
	u, ok := ctx.Value(readerKey{}).(user.Info)
	return u, ok
}

// permittedSource is src as the request's reader may see it. A request without a reader
// sees nothing.
type permittedSource struct {
	src   dashboard.Source
	authz authorizer.Authorizer
}

// Loops returns the loops of the namespaces where the reader may get customerloops.
func (s permittedSource) Loops(ctx context.Context) ([]dashboard.LoopRef, error) {
	all, err := s.src.Loops(ctx)
	if err != nil {
		return nil, err
	}
	// One review answers for every namespace when the reader may get loops anywhere.
	everywhere, err := s.mayGet(ctx, "")
	if err != nil {
		return nil, err
	}
	if everywhere {
		return all, nil
	}
	allowed := map[string]bool{}
	out := []dashboard.LoopRef{}
	for _, ref := range all {
		ok, seen := allowed[ref.Namespace]
		if !seen {
			if ok, err = s.mayGet(ctx, ref.Namespace); err != nil {
				return nil, err
			}
			allowed[ref.Namespace] = ok
		}
		if ok {
			out = append(out, ref)
		}
	}
	return out, nil
}

// Open opens a loop of a namespace where the reader may get customerloops; any other is
// not found.
func (s permittedSource) Open(ctx context.Context, ref dashboard.LoopRef) (dashboard.Loop, error) {
	ok, err := s.mayGet(ctx, ref.Namespace)
	if err != nil {
		return dashboard.Loop{}, err
	}
	if !ok {
		return dashboard.Loop{}, fmt.Errorf("%s: %w", ref, dashboard.ErrNotFound)
	}
	return s.src.Open(ctx, ref)
}

// mayGet asks whether the reader may get customerloops in namespace ("" for all).
func (s permittedSource) mayGet(ctx context.Context, namespace string) (bool, error) {
	u, ok := readerFrom(ctx)
	if !ok {
		return false, nil
	}
	d, _, err := s.authz.Authorize(ctx, authorizer.AttributesRecord{
		User: u, Verb: "get", Namespace: namespace, ResourceRequest: true,
		APIGroup: loopsv1alpha1.GroupVersion.Group, APIVersion: loopsv1alpha1.GroupVersion.Version, Resource: "customerloops",
	})
	if err != nil {
		return false, fmt.Errorf("reviewing access to the loops of namespace %q: %w", namespace, err)
	}
	return d == authorizer.DecisionAllow, nil
}
