package controllers

import (
	"fmt"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authentication/user"
	authenticationv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// The manager reviews the tokens and access of the dashboard's and the metrics
// endpoint's readers.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// reviewBackoff retries a TokenReview or SubjectAccessReview the API server did not
// answer, as kube-apiserver's delegated authentication does.
var reviewBackoff = wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Steps: 5}

// tokenReviewer authenticates a request's bearer token with a TokenReview, remembering
// the answer for a while.
type tokenReviewer struct {
	authn authenticator.Request
	log   logr.Logger
}

func newTokenReviewer(cfg *rest.Config, httpClient *http.Client, ttl time.Duration, log logr.Logger) (*tokenReviewer, error) {
	c, err := authenticationv1.NewForConfigAndClient(cfg, httpClient)
	if err != nil {
		return nil, err
	}
	authn, _, err := authenticatorfactory.DelegatingAuthenticatorConfig{
		Anonymous:                &apiserver.AnonymousAuthConfig{Enabled: false},
		CacheTTL:                 ttl,
		TokenAccessReviewClient:  c,
		TokenAccessReviewTimeout: 10 * time.Second,
		WebhookRetryBackoff:      &reviewBackoff,
	}.New()
	if err != nil {
		return nil, fmt.Errorf("token authentication: %w", err)
	}
	return &tokenReviewer{authn: authn, log: log}, nil
}

// authenticate returns the user of r's bearer token, leaving r as it is. A token the API
// server rejects and a review that failed are alike to the reader: not authenticated.
func (t *tokenReviewer) authenticate(r *http.Request) (user.Info, bool) {
	if r.Header.Get("Authorization") == "" {
		return nil, false
	}
	// The authenticator removes the header it accepted; keep the caller's.
	probe := r.Clone(r.Context())
	res, ok, err := t.authn.AuthenticateRequest(probe)
	if !ok {
		if err != nil {
			// The API server's reason, never the token.
			t.log.V(1).Info("token not accepted", "reason", err.Error())
		}
		return nil, false
	}
	return res.User, true
}

// MetricsFilter is controller-runtime's metrics filter
// (filters.WithAuthenticationAndAuthorization: a TokenReview, then a SubjectAccessReview
// for the request's verb on its path, e.g. get /metrics) behind a token check of its own,
// for metricsserver.Options.FilterProvider and the worker's endpoint. The filter alone
// answers a token the API server rejects with 500, as if it had failed itself; here it
// is 401, as for no token at all.
func MetricsFilter(cfg *rest.Config, httpClient *http.Client) (metricsserver.Filter, error) {
	inner, err := filters.WithAuthenticationAndAuthorization(cfg, httpClient)
	if err != nil {
		return nil, err
	}
	return func(log logr.Logger, next http.Handler) (http.Handler, error) {
		tokens, err := newTokenReviewer(cfg, httpClient, time.Minute, log)
		if err != nil {
			return nil, err
		}
		h, err := inner(log, next)
		if err != nil {
			return nil, err
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, ok := tokens.authenticate(r); !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="customerloop"`)
				http.Error(w, "Unauthorized", http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		}), nil
	}, nil
}
