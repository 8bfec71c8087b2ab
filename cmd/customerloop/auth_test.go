package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/cmd/internal/cli"
	"customerloop.dev/customerloop/config/samples"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ingest"
	"customerloop.dev/customerloop/test/testkit"
)

// authStack is a real kube-apiserver (envtest, RBAC on) with two teams' namespaces, a
// loop in each, and ServiceAccounts whose tokens come from the TokenRequest API.
type authStack struct {
	cfg    *rest.Config
	k8s    client.Client
	tokens map[string]string // by ServiceAccount name
	logs   *syncBuffer
}

const (
	nsA, loopA = "team-alpha", "alpha-usage"
	nsB, loopB = "team-bravo", "bravo-usage"
)

// TestEndpointsAuthenticate runs the manager (cli.NewManager, as `customerloop manager`
// does) against a real API server, ClickHouse and Kafka-protocol broker, and reads its
// dashboard and metrics as several ServiceAccounts:
//   - reader-a may get customerloops in team-alpha only, reader-b in team-bravo only;
//   - nobody may do nothing; everywhere may get customerloops in every namespace;
//   - scraper may get the /metrics URL.
func TestEndpointsAuthenticate(t *testing.T) {
	s := startAuthStack(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	dashAddr, metricsAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	log := logr.FromSlogHandler(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.Level(-8)}))
	mgr, err := cli.NewManager(ctx, s.cfg, cli.ManagerOptions{
		Runner: "inprocess", MetricsAddr: metricsAddr, MetricsSecure: true, ProbeAddr: "0",
		DashboardAddr: dashAddr, DashboardAuth: true, Log: log, Refresh: time.Second, Several: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	defer func() { cancel(); <-done }()

	dash := "http://" + dashAddr
	get := func(t *testing.T, path, token string, header ...string) (int, string) {
		t.Helper()
		return fetch(t, http.DefaultClient, dash+path, token, header...)
	}
	// Admin-equivalent: the loops are reconciled and their views read.
	testkit.Eventually(t, 2*time.Minute, "the loops' dashboards", func() (bool, string) {
		ca, _ := get(t, "/loops/"+nsA+"/"+loopA, s.tokens["everywhere"])
		cb, _ := get(t, "/loops/"+nsB+"/"+loopB, s.tokens["everywhere"])
		return ca == http.StatusOK && cb == http.StatusOK, fmt.Sprintf("%d %d", ca, cb)
	})

	t.Run("dashboard without a valid token", func(t *testing.T) {
		for _, path := range []string{"/", "/loops/" + nsA + "/" + loopA, "/api/loops/" + nsA + "/" + loopA} {
			if code, body := get(t, path, ""); code != http.StatusUnauthorized || strings.Contains(body, loopA) {
				t.Errorf("GET %s without a token: %d\n%.300s", path, code, body)
			}
			if code, _ := get(t, path, "not-a-token"); code != http.StatusUnauthorized {
				t.Errorf("GET %s with a garbage token: %d, want 401", path, code)
			}
		}
		if code, body := get(t, "/", "", "Accept", "text/html"); code != http.StatusUnauthorized || !strings.Contains(body, `action="/login"`) {
			t.Errorf("a browser without a token: %d, want 401 with the sign-in form:\n%.500s", code, body)
		}
	})

	t.Run("each reader sees the loops of its namespaces", func(t *testing.T) {
		for _, c := range []struct {
			who         string
			sees, hides []string
		}{
			{"reader-a", []string{nsA + "/" + loopA}, []string{loopB, nsB}},
			{"reader-b", []string{nsB + "/" + loopB}, []string{loopA, nsA}},
			{"nobody", nil, []string{loopA, loopB}},
			{"everywhere", []string{nsA + "/" + loopA, nsB + "/" + loopB}, nil},
		} {
			code, body := get(t, "/", s.tokens[c.who])
			if code != http.StatusOK {
				t.Errorf("%s: GET / answered %d", c.who, code)
				continue
			}
			for _, want := range c.sees {
				if !strings.Contains(body, want) {
					t.Errorf("%s does not see %s:\n%s", c.who, want, body)
				}
			}
			for _, not := range c.hides {
				if strings.Contains(body, not) {
					t.Errorf("%s sees %s:\n%s", c.who, not, body)
				}
			}
		}
	})

	t.Run("another namespace's loop is not found", func(t *testing.T) {
		for _, c := range []struct{ who, ns, name string }{
			{"reader-a", nsB, loopB}, {"reader-b", nsA, loopA}, {"nobody", nsA, loopA},
		} {
			for _, prefix := range []string{"/loops/", "/api/loops/"} {
				if code, body := get(t, prefix+c.ns+"/"+c.name, s.tokens[c.who]); code != http.StatusNotFound || strings.Contains(body, "customersWithPlans") {
					t.Errorf("%s GET %s%s/%s: %d, want 404\n%.300s", c.who, prefix, c.ns, c.name, code, body)
				}
			}
		}
		code, body := get(t, "/api/loops/"+nsA+"/"+loopA, s.tokens["reader-a"])
		if code != http.StatusOK || !strings.Contains(body, `"name": "`+loopA+`"`) {
			t.Errorf("reader-a GET its own loop's figures: %d\n%.300s", code, body)
		}
	})

	t.Run("sign-in form sets a strict cookie", func(t *testing.T) {
		noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		post := func(token string) *http.Response {
			resp, err := noRedirect.PostForm(dash+"/login", url.Values{"token": {token}})
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp
		}
		if resp := post("not-a-token"); resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
			t.Errorf("a garbage token signed in: %d, cookies %v", resp.StatusCode, resp.Cookies())
		}
		resp := post(s.tokens["reader-b"])
		if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 {
			t.Fatalf("signing in: %d, cookies %v", resp.StatusCode, resp.Cookies())
		}
		c := resp.Cookies()[0]
		if c.Name != controllers.DashboardCookie || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure {
			t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, not Secure over plain HTTP", c)
		}
		req, _ := http.NewRequest(http.MethodGet, dash+"/", nil)
		req.AddCookie(c)
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != http.StatusOK || !strings.Contains(string(body), loopB) || strings.Contains(string(body), loopA) {
			t.Errorf("with reader-b's cookie: %d\n%s", r.StatusCode, body)
		}
	})

	t.Run("dashboard with auth off shows every loop to anyone", func(t *testing.T) {
		h, err := cli.DashboardHandler(mgr, controllers.DashboardSource{Client: mgr.GetClient()}, false, log)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		defer srv.Close()
		code, body := fetch(t, http.DefaultClient, srv.URL+"/", "")
		if code != http.StatusOK || !strings.Contains(body, loopA) || !strings.Contains(body, loopB) {
			t.Errorf("GET / without a token, auth off: %d\n%s", code, body)
		}
	})

	tlsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	t.Run("manager metrics", func(t *testing.T) {
		checkMetrics(t, tlsClient, "https://"+metricsAddr+"/metrics", s.tokens, "controller_runtime_reconcile_total")
		if code, _ := fetch(t, http.DefaultClient, "http://"+metricsAddr+"/metrics", s.tokens["scraper"]); code == http.StatusOK {
			t.Error("the secure metrics endpoint answered plain HTTP")
		}
	})

	t.Run("manager metrics with --metrics-secure=false", func(t *testing.T) {
		addr := testkit.FreeAddr(t)
		httpClient, err := rest.HTTPClientFor(s.cfg)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := metricsserver.NewServer(cli.ManagerMetrics(addr, false, ""), s.cfg, httpClient)
		if err != nil {
			t.Fatal(err)
		}
		mctx, stop := context.WithCancel(ctx)
		defer stop()
		go func() { _ = srv.Start(mctx) }()
		testkit.Eventually(t, 10*time.Second, "the plain metrics endpoint", func() (bool, string) {
			code, _ := fetch(t, http.DefaultClient, "http://"+addr+"/metrics", "")
			return code == http.StatusOK, fmt.Sprint(code)
		})
	})

	t.Run("worker metrics", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		ingest.NewMetrics(reg).ReceivedEvents.WithLabelValues(nsA+"/"+loopA, "usage").Inc()
		httpClient, err := rest.HTTPClientFor(s.cfg)
		if err != nil {
			t.Fatal(err)
		}
		filter, err := controllers.MetricsFilter(s.cfg, httpClient)
		if err != nil {
			t.Fatal(err)
		}
		addr := testkit.FreeAddr(t)
		stop, err := serveWorkerMetrics(addr, filter, reg, log)
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		checkMetrics(t, tlsClient, "https://"+addr+"/metrics", s.tokens, "customerloop_received_events_total")
		if code, _ := fetch(t, tlsClient, "https://"+addr+"/healthz", ""); code != http.StatusOK {
			t.Errorf("the kubelet's probe of /healthz without a token: %d, want 200", code)
		}

		plain := testkit.FreeAddr(t)
		stop2, err := serveWorkerMetrics(plain, nil, reg, log)
		if err != nil {
			t.Fatal(err)
		}
		defer stop2()
		if code, body := fetch(t, http.DefaultClient, "http://"+plain+"/metrics", ""); code != http.StatusOK || !strings.Contains(body, "customerloop_received_events_total") {
			t.Errorf("worker metrics with --metrics-secure=false, no token: %d", code)
		}
	})

	for who, token := range s.tokens {
		if strings.Contains(s.logs.String(), token) {
			t.Errorf("the manager's log holds %s's token", who)
		}
	}
}

// checkMetrics reads a secure metrics endpoint: only the scraper's token gets it.
func checkMetrics(t *testing.T, c *http.Client, u string, tokens map[string]string, metric string) {
	t.Helper()
	for _, tc := range []struct {
		who  string
		want int
	}{{"", http.StatusUnauthorized}, {"garbage", http.StatusUnauthorized}, {"reader-a", http.StatusForbidden}, {"scraper", http.StatusOK}} {
		token := tokens[tc.who]
		if tc.who == "garbage" {
			token = "not-a-token"
		}
		code, body := fetch(t, c, u, token)
		if code != tc.want {
			t.Errorf("GET %s as %q: %d, want %d\n%.300s", u, tc.who, code, tc.want, body)
		}
		if (code == http.StatusOK) != strings.Contains(body, metric) {
			t.Errorf("GET %s as %q: %d with metric %s: %v", u, tc.who, code, metric, strings.Contains(body, metric))
		}
	}
}

func fetch(t *testing.T, c *http.Client, u, token string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func startAuthStack(t *testing.T) *authStack {
	t.Helper()
	chAddr := os.Getenv("CLICKHOUSE_ADDR")
	if chAddr == "" || os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CLICKHOUSE_ADDR and KUBEBUILDER_ASSETS must be set; run the tests with make test")
		}
		t.Skip("CLICKHOUSE_ADDR and KUBEBUILDER_ASSETS are not set")
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)

	s := &authStack{cfg: cfg, tokens: map[string]string{}, logs: &syncBuffer{}}
	scheme, err := cli.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	if s.k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	create := func(o client.Object) {
		t.Helper()
		if err := s.k8s.Create(ctx, o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
	loopGets := []rbacv1.PolicyRule{{APIGroups: []string{loopsv1alpha1.GroupVersion.Group}, Resources: []string{"customerloops"}, Verbs: []string{"get", "list"}}}
	sa := func(ns, name string) rbacv1.Subject {
		create(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
		return rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}
	}
	for _, team := range []struct{ ns, loop, reader string }{{nsA, loopA, "reader-a"}, {nsB, loopB, "reader-b"}} {
		create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: team.ns}})
		create(&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: team.ns, Name: "loop-reader"}, Rules: loopGets})
		create(&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: team.ns, Name: "loop-reader"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "loop-reader"},
			Subjects: []rbacv1.Subject{sa(team.ns, team.reader)}})
		create(authLoop(t, team.ns, team.loop, chAddr, broker.ListenAddrs(), create))
	}
	sa(nsA, "nobody")
	everywhere, scraper := sa(nsA, "everywhere"), sa(nsA, "scraper")
	create(&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "test-loop-reader"}, Rules: loopGets})
	create(&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "test-loop-reader"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "test-loop-reader"}, Subjects: []rbacv1.Subject{everywhere}})
	create(&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "test-metrics-reader"},
		Rules: []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}})
	create(&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "test-metrics-reader"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "test-metrics-reader"}, Subjects: []rbacv1.Subject{scraper}})

	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []struct{ ns, name string }{{nsA, "reader-a"}, {nsB, "reader-b"}, {nsA, "nobody"}, {nsA, "everywhere"}, {nsA, "scraper"}} {
		tr, err := cs.CoreV1().ServiceAccounts(who.ns).CreateToken(ctx, who.name, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("a token of %s: %v", who.name, err)
		}
		s.tokens[who.name] = tr.Status.Token
	}
	return s
}

// authLoop is the sample loop in namespace ns, on a fresh database of the test's
// ClickHouse, with the test's credentials from a Secret.
func authLoop(t *testing.T, ns, name, chAddr string, brokers []string, create func(client.Object)) *loopsv1alpha1.CustomerLoop {
	t.Helper()
	loop := &loopsv1alpha1.CustomerLoop{}
	if err := yaml.UnmarshalStrict(samples.CustomerLoop, loop); err != nil {
		t.Fatal(err)
	}
	loop.Namespace, loop.Name = ns, name
	loop.Spec.Kafka.Brokers = brokers
	loop.Spec.ClickHouse.Address = chAddr
	loop.Spec.ClickHouse.Database = fmt.Sprintf("auth_%s_%d", strings.ReplaceAll(ns, "-", "_"), time.Now().UnixNano())
	loop.Spec.Feedback.Publish.Topic = ns + ".feedback"
	for i := range loop.Spec.Streams {
		loop.Spec.Streams[i].Topic = ns + "." + loop.Spec.Streams[i].Topic
	}
	if user := os.Getenv("CLICKHOUSE_USER"); user != "" {
		create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "clickhouse"},
			Data: map[string][]byte{"username": []byte(user), "password": []byte(os.Getenv("CLICKHOUSE_PASSWORD"))}})
		loop.Spec.ClickHouse.CredentialsSecretRef = &loopsv1alpha1.CredentialsSecretRef{Name: "clickhouse"}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := connect.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: chAddr,
			Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD")})
		if err == nil {
			_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(loop.Spec.ClickHouse.Database))
			_ = conn.Close()
		}
	})
	return loop
}

func ptr[T any](v T) *T { return &v }
