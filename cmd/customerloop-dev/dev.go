package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/cmd/internal/cli"
	"customerloop.dev/customerloop/config/samples"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/dashboard"
	"customerloop.dev/customerloop/pipeline/feedback"
)

type devOptions struct {
	clickhouseAddr string
	assets         string
	kafkaAddr      string
	database       string
	workdir        string
	keepRunning    bool
	customers      int
	products       int
	timeout        time.Duration
	dashboardAddr  string
}

func newDevCommand() *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole stack locally (control plane, broker, manager) with a demo workload",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.assets == "" {
				return errors.New("no control-plane binaries: pass --control-plane-bin or set KUBEBUILDER_ASSETS (hack/envtest.sh prints the directory; make demo does all this)")
			}
			if err := os.MkdirAll(o.workdir, 0o755); err != nil {
				return err
			}
			return (&devStack{o: o}).run(cmd.Context())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.clickhouseAddr, "clickhouse-addr", envOr("CLICKHOUSE_ADDR", "127.0.0.1:19000"), "ClickHouse native address (hack/clickhouse.sh starts one)")
	fs.StringVar(&o.assets, "control-plane-bin", os.Getenv("KUBEBUILDER_ASSETS"), "directory with kube-apiserver, etcd and kubectl (hack/envtest.sh provides it)")
	fs.StringVar(&o.kafkaAddr, "kafka-addr", "127.0.0.1:9092", "address of the embedded Kafka-protocol broker")
	fs.StringVar(&o.database, "database", "", "ClickHouse database of the demo loop (default: the sample's); it is emptied first")
	fs.StringVar(&o.workdir, "workdir", filepath.Join(os.TempDir(), "customerloop-dev"), "where the kubeconfig and the manager log are written")
	fs.BoolVar(&o.keepRunning, "keep-running", false, "keep the stack running after the demo, until interrupted")
	fs.IntVar(&o.customers, "customers", 4, "customers in the synthetic workload")
	fs.IntVar(&o.products, "products", 3, "products per customer in the synthetic workload")
	fs.DurationVar(&o.timeout, "timeout", 3*time.Minute, "how long to wait for the workload to land")
	fs.StringVar(&o.dashboardAddr, "dashboard-addr", "127.0.0.1:8090", "where to serve the read-only plan-against-actual dashboard, without authentication, on a loopback address (empty: none)")
	return cmd
}

type devStack struct {
	o        devOptions
	brokers  []string
	k8s      client.Client
	loop     *loopsv1alpha1.CustomerLoop
	stopMgr  context.CancelFunc
	mgrDone  chan error
	teardown []func()
	// dashboardURL is the demo loop's dashboard page; empty when none is served.
	dashboardURL string
	// signingKey signs the customer channel's short-lived tokens.
	signingKey []byte
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func (d *devStack) run(ctx context.Context) (err error) {
	defer func() {
		for i := len(d.teardown) - 1; i >= 0; i-- {
			d.teardown[i]()
		}
	}()
	if err := d.checkClickHouse(ctx); err != nil {
		return err
	}
	if err := d.startBroker(); err != nil {
		return err
	}
	if err := d.startControlPlane(ctx); err != nil {
		return err
	}
	if err := d.applySample(ctx); err != nil {
		return err
	}
	w := newWorkload(d.o.customers, d.o.products, time.Now().UTC(), uint64(time.Now().UnixNano()))
	if err := d.produce(ctx, w); err != nil {
		return err
	}
	if err := d.waitIngested(ctx, w); err != nil {
		return err
	}
	if err := d.report(ctx, w); err != nil {
		return err
	}
	if err := d.gapReport(ctx); err != nil {
		return err
	}
	if err := d.publishDigests(ctx); err != nil {
		return err
	}
	if err := d.customerChannel(ctx); err != nil {
		return err
	}
	if err := d.serveDashboard(ctx); err != nil {
		return err
	}
	if d.o.keepRunning {
		d.printHowTo()
		<-ctx.Done()
		fmt.Println()
	}
	return d.deleteLoop()
}

func (d *devStack) checkClickHouse(ctx context.Context) error {
	conn, err := connect.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: d.o.clickhouseAddr})
	if err != nil {
		return fmt.Errorf("%w\nstart a local server with hack/clickhouse.sh (make demo does), or pass --clickhouse-addr", err)
	}
	defer conn.Close()
	var v string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&v); err != nil {
		return err
	}
	// The demo database belongs to the demo: start from empty so the counts mean something.
	loop, err := d.sample()
	if err != nil {
		return err
	}
	if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(loop.Spec.ClickHouse.Database)); err != nil {
		return err
	}
	step("ClickHouse %s at %s (database %s reset for the demo)", v, d.o.clickhouseAddr, loop.Spec.ClickHouse.Database)
	return nil
}

// sample returns the embedded sample loop, pointed at the local stack.
func (d *devStack) sample() (*loopsv1alpha1.CustomerLoop, error) {
	loop := &loopsv1alpha1.CustomerLoop{}
	if err := yaml.UnmarshalStrict(samples.CustomerLoop, loop); err != nil {
		return nil, fmt.Errorf("the embedded sample is invalid: %w", err)
	}
	loop.Namespace = "default"
	loop.Spec.Kafka.Brokers = d.brokers
	loop.Spec.ClickHouse.Address = d.o.clickhouseAddr
	if f := loop.Spec.Feedback; f != nil && f.Publish != nil {
		// The shortest interval the API allows, so that the demo sees the digests of its
		// complete workload soon after it lands.
		f.Publish.Interval = "10s"
	}
	if loop.Spec.CustomerChannel == nil {
		loop.Spec.CustomerChannel = channelSpec(loop)
	}
	if d.o.database != "" {
		if err := pipeline.ValidIdent(d.o.database); err != nil {
			return nil, fmt.Errorf("--database: %w", err)
		}
		loop.Spec.ClickHouse.Database = d.o.database
	}
	return loop, nil
}

func (d *devStack) applySample(ctx context.Context) error {
	loop, err := d.sample()
	if err != nil {
		return err
	}
	if d.signingKey, err = d.createTokensSecret(ctx, loop); err != nil {
		return err
	}
	if err := d.k8s.Create(ctx, loop); err != nil {
		return fmt.Errorf("applying the sample CustomerLoop: %w", err)
	}
	d.loop = loop
	step("Applied CustomerLoop %s/%s (streams: usage, plans)", loop.Namespace, loop.Name)
	return nil
}

func (d *devStack) produce(ctx context.Context, w *workload) error {
	topics := map[string][]kafka.Message{}
	for _, s := range d.loop.Spec.Streams {
		switch s.Kind {
		case loopsv1alpha1.StreamUsage:
			topics[s.Topic] = w.usage
		case loopsv1alpha1.StreamPlan:
			topics[s.Topic] = w.plans
		}
	}
	for topic, msgs := range topics {
		wr := &kafka.Writer{
			Addr: kafka.TCP(d.brokers...), Topic: topic, Balancer: &kafka.Hash{},
			RequiredAcks: kafka.RequireAll, AllowAutoTopicCreation: true, BatchTimeout: 5 * time.Millisecond,
		}
		err := wr.WriteMessages(ctx, msgs...)
		_ = wr.Close()
		if err != nil {
			return fmt.Errorf("producing to %s: %w", topic, err)
		}
	}
	events, plans := w.totals()
	step("Produced %d usage events and %d plans for %d customers x %d products, plus %d malformed messages",
		events, plans, d.o.customers, d.o.products, w.bad)
	return nil
}

func (d *devStack) waitIngested(ctx context.Context, w *workload) error {
	events, plans := w.totals()
	want := int64(events + plans)
	ctx, cancel := context.WithTimeout(ctx, d.o.timeout)
	defer cancel()
	key := types.NamespacedName{Namespace: d.loop.Namespace, Name: d.loop.Name}
	start, last := time.Now(), ""
	for {
		loop := &loopsv1alpha1.CustomerLoop{}
		if err := d.k8s.Get(ctx, key, loop); err == nil {
			ready := meta.FindStatusCondition(loop.Status.Conditions, loopsv1alpha1.ConditionReady)
			state := fmt.Sprintf("rows %d/%d", loop.Status.RowsIngested, want)
			if ready != nil {
				state = fmt.Sprintf("Ready=%s (%s), %s", ready.Status, ready.Reason, state)
			}
			if state != last {
				fmt.Printf("    %s\n", state)
				last = state
			}
			if ready != nil && ready.Status == "True" && loop.Status.RowsIngested >= want {
				step("Loop Ready; status reports %d rows ingested after %s", loop.Status.RowsIngested, time.Since(start).Round(100*time.Millisecond))
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the workload did not land within %s (last: %s); see %s", d.o.timeout, last, filepath.Join(d.o.workdir, "manager.log"))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// serveDashboard serves the read-only dashboard of the demo loop until the demo ends. A
// busy address is reported and skipped: the dashboard is a convenience of the demo, not
// what it checks. It is served without authentication, as the manager's is with
// --dashboard-auth=false, so only on a loopback address.
func (d *devStack) serveDashboard(ctx context.Context) error {
	if d.o.dashboardAddr == "" {
		return nil
	}
	if !cli.Loopback(d.o.dashboardAddr) {
		return fmt.Errorf("--dashboard-addr=%s: the demo's dashboard has no authentication and is served on loopback addresses only", d.o.dashboardAddr)
	}
	ln, err := net.Listen("tcp", d.o.dashboardAddr)
	if err != nil {
		step("No dashboard: %v (pass --dashboard-addr to use another address)", err)
		return nil
	}
	// The manager's own dashboard source: the loops with feedback, read with the
	// credentials their specs name.
	ref := dashboard.LoopRef{Namespace: d.loop.Namespace, Name: d.loop.Name}
	src := controllers.DashboardSource{Client: d.k8s, Caches: &feedback.Caches{}}
	srv := &http.Server{Handler: dashboard.New(src, ctrl.Log.WithName("dashboard")), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	d.teardown = append(d.teardown, func() { _ = srv.Close() })
	d.dashboardURL = fmt.Sprintf("http://%s/loops/%s/%s", ln.Addr(), ref.Namespace, ref.Name)
	// Read it once as a browser would: it must answer with the loop's products.
	resp, err := http.Get(d.dashboardURL)
	if err != nil {
		return fmt.Errorf("reading the dashboard: %w", err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "compute") {
		return fmt.Errorf("the dashboard at %s answered %s without the workload's first product", d.dashboardURL, resp.Status)
	}
	step("Dashboard of plan against actual: %s (no authentication: served on loopback only, like the manager's --dashboard-auth=false)", d.dashboardURL)
	return nil
}

// deleteLoop deletes the sample and waits until the finalizer has stopped its worker.
func (d *devStack) deleteLoop() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.k8s.Delete(ctx, d.loop); client.IgnoreNotFound(err) != nil {
		return err
	}
	key := client.ObjectKeyFromObject(d.loop)
	for !apierrors.IsNotFound(d.k8s.Get(ctx, key, &loopsv1alpha1.CustomerLoop{})) {
		if ctx.Err() != nil {
			return fmt.Errorf("the CustomerLoop was not released within a minute")
		}
		time.Sleep(200 * time.Millisecond)
	}
	kc := &kafka.Client{Addr: kafka.TCP(d.brokers...)}
	group := d.loop.GetConsumerGroup()
	resp, err := kc.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return fmt.Errorf("describing consumer group %s: %w", group, err)
	}
	for _, g := range resp.Groups {
		if len(g.Members) > 0 {
			return fmt.Errorf("consumer group %s still has %d members after the loop was deleted", group, len(g.Members))
		}
	}
	step("Deleted the CustomerLoop; its worker stopped and consumer group %s has no members left", group)
	return nil
}
