package main

// The local stack the demo provisions: its broker and control plane, and how to reach
// them when it keeps running.

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"customerloop.dev/customerloop/cmd/internal/cli"
	"customerloop.dev/customerloop/config/crd"
	"customerloop.dev/customerloop/pipeline"
)

func (d *devStack) startBroker() error {
	port, err := portOf(d.o.kafkaAddr)
	if err != nil {
		return err
	}
	c, err := startBroker(port, 3, "")
	if err != nil {
		return err
	}
	d.teardown = append(d.teardown, c.Close)
	d.brokers = c.ListenAddrs()
	step("Kafka-protocol broker (kfake) on %s", strings.Join(d.brokers, ","))
	return nil
}

func (d *devStack) startControlPlane(ctx context.Context) error {
	crds, err := loadCRDs()
	if err != nil {
		return err
	}
	env := &envtest.Environment{BinaryAssetsDirectory: d.o.assets, CRDs: crds}
	restCfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting the control plane from %s: %w", d.o.assets, err)
	}
	d.teardown = append(d.teardown, func() { _ = env.Stop() })
	user, err := env.ControlPlane.AddUser(envtest.User{Name: "developer", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return err
	}
	if err := os.WriteFile(d.kubeconfigPath(), kubeconfig, 0o600); err != nil {
		return err
	}
	step("Control plane (etcd + kube-apiserver) up; CRD customerloops.loops.customerloop.dev installed")

	logFile, err := os.Create(filepath.Join(d.o.workdir, "manager.log"))
	if err != nil {
		return err
	}
	d.teardown = append(d.teardown, func() { _ = logFile.Close() })
	log, err := cli.NewLogger(logFile, "info", "text")
	if err != nil {
		return err
	}
	ctrl.SetLogger(log)
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	mgr, err := cli.NewManager(mctx, restCfg, cli.ManagerOptions{
		Runner: "inprocess", MetricsAddr: "0", ProbeAddr: "0", Log: log,
		Batch:   pipeline.BatchConfig{MaxRows: 10_000, MaxWait: pipeline.Duration{Duration: 300 * time.Millisecond}},
		Refresh: 2 * time.Second,
	})
	if err != nil {
		cancel()
		return err
	}
	d.stopMgr, d.mgrDone = cancel, make(chan error, 1)
	go func() { d.mgrDone <- mgr.Start(mctx) }()
	d.teardown = append(d.teardown, func() { cancel(); <-d.mgrDone })
	d.k8s, err = client.New(restCfg, client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return err
	}
	step("Manager running with in-process workers (log: %s)", logFile.Name())
	return nil
}

func loadCRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	var out []*apiextensionsv1.CustomResourceDefinition
	err := fs.WalkDir(crd.Bases, ".", func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := crd.Bases.ReadFile(path)
		if err != nil {
			return err
		}
		c := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal(b, c); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, c)
		return nil
	})
	return out, err
}

func (d *devStack) kubeconfigPath() string { return filepath.Join(d.o.workdir, "kubeconfig") }

func (d *devStack) printHowTo() {
	chHost, chPort, _ := net.SplitHostPort(d.o.clickhouseAddr) // checked when the server answered
	db := d.loop.Spec.ClickHouse.Database
	fmt.Printf(`
The stack keeps running until you press Ctrl-C. From another terminal:

  # the control plane
  export KUBECONFIG=%[1]s
  kubectl get customerloops -A

  # send a usage event as a customer would
  echo '{"event_id":"e-manual-1","customer_id":"acme-01","product":"compute","ts":"%[2]s","quantity":3,"region":"eu-west"}' \
    | kcat -b %[3]s -t acme.usage -k acme-01 -P

  # plan against actual, per customer, product and month, and plan accuracy by horizon
  %[7]s report acme --kubeconfig %[1]s --format csv

  # plan against actual in a browser: %[8]s

  # the digests product teams receive, one per product and period
  kcat -b %[3]s -t %[9]s -C -e -f '%%k %%s\n'

  # read what a product team sees
  clickhouse-client --host %[4]s --port %[5]s --query \
    'SELECT customer_id, product, count() AS events, sum(quantity) AS used FROM %[6]s.usage_raw GROUP BY customer_id, product ORDER BY customer_id, product'

`, d.kubeconfigPath(), time.Now().UTC().Format(time.RFC3339), strings.Join(d.brokers, ","), chHost, chPort, db, customerloopCommand(), dashboardHint(d.dashboardURL), d.digestTopic())
}

// customerloopCommand is how to run the customerloop command from here: the binary beside
// this one (make build builds both into bin/), else the one on PATH.
func customerloopCommand() string {
	beside := filepath.Join(filepath.Dir(os.Args[0]), "customerloop")
	if st, err := os.Stat(beside); err == nil && !st.IsDir() {
		return beside
	}
	return "customerloop"
}

func dashboardHint(url string) string {
	if url == "" {
		return "(no dashboard: see --dashboard-addr)"
	}
	return url
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
