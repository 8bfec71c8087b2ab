package cli

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	certutil "k8s.io/client-go/util/cert"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"customerloop.dev/customerloop/controllers"
)

// Secure endpoints (the default) let in only bearer tokens the API server accepts, and
// only for what their user may do; insecure ones let in anyone who reaches the port, so
// they are meant for loopback addresses on a developer's machine.
const (
	MetricsSecureUsage = "serve metrics over HTTPS to bearer tokens allowed to get the path (e.g. a ClusterRole with nonResourceURLs [/metrics], verbs [get]); false serves plain HTTP to anyone, for local use on a loopback address only"
	DashboardAuthUsage = "let in only bearer tokens the Kubernetes API accepts, each seeing the loops of the namespaces where it may get customerloops; false shows every loop to anyone, for local use on a loopback address only"
)

// ManagerMetrics are the manager's metrics server options: controller-runtime's server,
// over HTTPS with its authenticating and authorizing filter when secure. Without
// certificates in certDir (tls.crt, tls.key) it makes itself a self-signed one.
func ManagerMetrics(addr string, secure bool, certDir string) metricsserver.Options {
	o := metricsserver.Options{BindAddress: addr}
	if secure {
		o.SecureServing = true
		o.FilterProvider = controllers.MetricsFilter
		o.CertDir = certDir
	}
	return o
}

// WorkerMetricsHandler serves reg on /metrics, behind filter when there is one, and
// /healthz to anyone: the kubelet's probes carry no token.
func WorkerMetricsHandler(reg prometheus.Gatherer, filter metricsserver.Filter, log logr.Logger) (http.Handler, error) {
	var metrics http.Handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	if filter != nil {
		var err error
		if metrics, err = filter(log.WithValues("path", "/metrics"), metrics); err != nil {
			return nil, err
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics)
	// The worker is alive while it serves; a failing ClickHouse or Kafka shows in its
	// metrics and logs, not in restarts that would not help.
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return mux, nil
}

// ListenMetrics listens on addr; over TLS with a self-signed certificate when secure, as
// controller-runtime's metrics server does without one given: the scraper's token must
// not cross the network in the clear, and it trusts the pod by its address.
func ListenMetrics(addr string, secure bool) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil || !secure {
		return ln, err
	}
	cert, key, err := certutil.GenerateSelfSignedCertKeyWithFixtures("localhost", []net.IP{{127, 0, 0, 1}}, nil, "")
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("self-signed metrics certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	return tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}), nil
}

// Loopback tells whether addr listens on a loopback address only.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
