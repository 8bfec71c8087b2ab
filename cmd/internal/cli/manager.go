// Package cli holds what the customerloop command and the development command
// customerloop-dev share: the operator's manager, the logger of the long-running commands
// and the plan-against-actual report. It links no test framework, so the production
// binary can import it.
package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/customer"
	"customerloop.dev/customerloop/pipeline/dashboard"
	"customerloop.dev/customerloop/pipeline/feedback"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// ManagerOptions configure NewManager.
type ManagerOptions struct {
	Runner      string
	WorkerImage string
	MetricsAddr string
	// MetricsSecure serves metrics over HTTPS to authorized tokens only, the manager's
	// and the worker pods'.
	MetricsSecure  bool
	MetricsCertDir string
	ProbeAddr      string
	LeaderElect    bool
	// DashboardAddr serves the dashboard; "" or "0" does not.
	DashboardAddr string
	// DashboardAuth lets in only readers with a token, each to the loops it may get.
	DashboardAuth bool
	// CustomerAPIAddr serves the customers' own API (the loops' customer channels); ""
	// or "0" does not. CustomerAPICertDir, when set, holds tls.crt and tls.key (a
	// cert-manager Secret mounted there): the API is then served over TLS, the pair read
	// again when it changes.
	CustomerAPIAddr    string
	CustomerAPICertDir string
	// WorkerResources are the Deployment runner's default worker resources.
	WorkerResources corev1.ResourceRequirements
	Batch           pipeline.BatchConfig
	// WatchNamespaces limits what the manager watches and reads; empty is every namespace.
	WatchNamespaces []string
	// Several lets more than one manager run in one process, as tests do: controller
	// names must otherwise be unique per process, and only the first manager's in-process
	// workers export their metrics.
	Several bool
	Refresh time.Duration
	Log     logr.Logger
}

// NewManager builds the controller manager with the CustomerLoop reconciler and the
// chosen worker runner.
func NewManager(ctx context.Context, restCfg *rest.Config, o ManagerOptions) (ctrl.Manager, error) {
	scheme, err := NewScheme()
	if err != nil {
		return nil, err
	}
	var runner controllers.Runner
	switch o.Runner {
	case "inprocess":
		// Workers' metrics are served with the manager's, on its metrics endpoint.
		// Another manager of the same process (tests run several) has registered them.
		var reg prometheus.Registerer = ctrlmetrics.Registry
		if o.Several {
			reg = nil
		}
		runner = controllers.NewInProcessRunner(o.Log.WithName("worker"), ingest.NewMetrics(reg))
	case "deployment":
		// The client is the manager's, set below once it exists.
		runner = &controllers.DeploymentRunner{Image: o.WorkerImage, DefaultResources: o.WorkerResources, SecureMetrics: o.MetricsSecure}
	default:
		return nil, fmt.Errorf("--runner=%q: want inprocess or deployment", o.Runner)
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                ManagerMetrics(o.MetricsAddr, o.MetricsSecure, o.MetricsCertDir),
		HealthProbeBindAddress: o.ProbeAddr,
		LeaderElection:         o.LeaderElect,
		LeaderElectionID:       "customerloop-manager.loops.customerloop.dev",
		Logger:                 o.Log,
		Cache:                  cacheOptions(o.WatchNamespaces),
		Controller:             ctrlconfig.Controller{SkipNameValidation: &o.Several},
	})
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	if o.ProbeAddr != "0" {
		if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
			return nil, err
		}
	}
	if d, ok := runner.(*controllers.DeploymentRunner); ok {
		d.Client = mgr.GetClient()
	}
	r := &controllers.CustomerLoopReconciler{
		Client:          mgr.GetClient(),
		Runner:          runner,
		Recorder:        mgr.GetEventRecorder("customerloop-controller"),
		Batch:           o.Batch,
		RefreshInterval: o.Refresh,
	}
	if err := r.SetupWithManager(ctx, mgr); err != nil {
		return nil, fmt.Errorf("setting up the controller: %w", err)
	}
	if o.MetricsAddr != "0" && !o.MetricsSecure && !Loopback(o.MetricsAddr) {
		o.Log.Info("WARNING: metrics are served over plain HTTP to anyone who reaches the port (--metrics-secure=false)", "address", o.MetricsAddr)
	}
	if o.DashboardAddr != "" && o.DashboardAddr != "0" {
		log := o.Log.WithName("dashboard")
		h, err := DashboardHandler(mgr, controllers.DashboardSource{Client: mgr.GetClient(), Caches: &feedback.Caches{}}, o.DashboardAuth, log)
		if err != nil {
			return nil, err
		}
		if !o.DashboardAuth && !Loopback(o.DashboardAddr) {
			log.Info("WARNING: the dashboard shows every loop to anyone who reaches the port (--dashboard-auth=false)", "address", o.DashboardAddr)
		}
		if err := mgr.Add(&httpRunnable{name: "dashboard", addr: o.DashboardAddr, handler: h, log: log}); err != nil {
			return nil, err
		}
	}
	if o.CustomerAPIAddr != "" && o.CustomerAPIAddr != "0" {
		log := o.Log.WithName("customer-api")
		src := &controllers.CustomerChannels{Client: mgr.GetClient(), Log: log}
		if o.CustomerAPICertDir == "" && !Loopback(o.CustomerAPIAddr) {
			log.Info("WARNING: the customer API is served over plain HTTP: customers' tokens cross the network in clear (--customer-api-cert-dir)", "address", o.CustomerAPIAddr)
		}
		if err := mgr.Add(&httpRunnable{name: "customer API", addr: o.CustomerAPIAddr, certDir: o.CustomerAPICertDir,
			handler: customer.NewServer(src, log), log: log}); err != nil {
			return nil, err
		}
	}
	return mgr, nil
}

// DashboardHandler is the dashboard of src: with auth, to readers with a token the API
// server accepts, each seeing the loops it may get; without, every loop to anyone.
func DashboardHandler(mgr ctrl.Manager, src dashboard.Source, auth bool, log logr.Logger) (http.Handler, error) {
	if !auth {
		return dashboard.New(src, log), nil
	}
	a, err := controllers.NewDashboardAuth(mgr.GetConfig(), mgr.GetHTTPClient(), log)
	if err != nil {
		return nil, err
	}
	return a.Handler(src), nil
}

// NewScheme holds Kubernetes' built-in types and CustomerLoop's.
func NewScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := loopsv1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return scheme, nil
}

// httpRunnable serves a handler for as long as the manager runs, on every replica: it
// needs no leader. With certDir it serves TLS with the tls.crt and tls.key found there,
// read again when either changes (a renewed cert-manager Secret).
type httpRunnable struct {
	name    string
	addr    string
	certDir string
	handler http.Handler
	log     logr.Logger
}

func (h *httpRunnable) NeedLeaderElection() bool { return false }

func (h *httpRunnable) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", h.addr)
	if err != nil {
		return fmt.Errorf("%s: %w", h.name, err)
	}
	srv := &http.Server{Handler: h.handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	if h.certDir != "" {
		certs := &certReloader{dir: h.certDir}
		if _, err := certs.get(nil); err != nil {
			_ = ln.Close()
			return fmt.Errorf("%s: %w", h.name, err)
		}
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	h.log.Info("serving the "+h.name, "address", ln.Addr().String(), "tls", h.certDir != "")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// certReloader serves the key pair of a directory, loading it again when either file's
// modification time changes.
type certReloader struct {
	dir   string
	mu    sync.Mutex
	mtime [2]time.Time
	cert  *tls.Certificate
}

func (c *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	crt, key := filepath.Join(c.dir, "tls.crt"), filepath.Join(c.dir, "tls.key")
	var mt [2]time.Time
	for i, f := range []string{crt, key} {
		st, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("the TLS key pair: %w", err)
		}
		mt[i] = st.ModTime()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && mt == c.mtime {
		return c.cert, nil
	}
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		if c.cert != nil {
			return c.cert, nil // a half-written renewal: keep serving the last pair
		}
		return nil, fmt.Errorf("the TLS key pair in %s: %w", c.dir, err)
	}
	c.cert, c.mtime = &pair, mt
	return c.cert, nil
}

// cacheOptions limits the manager's informers to the watched namespaces, so that it lists
// and watches CustomerLoops, Secrets and worker objects only there and needs no
// cluster-wide right to read Secrets.
func cacheOptions(namespaces []string) cache.Options {
	if len(namespaces) == 0 {
		return cache.Options{}
	}
	o := cache.Options{DefaultNamespaces: map[string]cache.Config{}}
	for _, ns := range namespaces {
		o.DefaultNamespaces[ns] = cache.Config{}
	}
	return o
}
