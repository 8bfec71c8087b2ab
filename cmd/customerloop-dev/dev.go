package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/spf13/cobra"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/cmd/internal/cli"
	"customerloop.dev/customerloop/config/crd"
	"customerloop.dev/customerloop/config/samples"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/dashboard"
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
	conn, err := pipeline.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: d.o.clickhouseAddr})
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
	if d.o.database != "" {
		if err := pipeline.ValidIdent(d.o.database); err != nil {
			return nil, fmt.Errorf("--database: %w", err)
		}
		loop.Spec.ClickHouse.Database = d.o.database
	}
	return loop, nil
}

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

func (d *devStack) applySample(ctx context.Context) error {
	loop, err := d.sample()
	if err != nil {
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

// report prints what ClickHouse holds next to what was produced, and fails on any
// difference.
func (d *devStack) report(ctx context.Context, w *workload) error {
	conn, err := pipeline.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: d.o.clickhouseAddr})
	if err != nil {
		return err
	}
	defer conn.Close()
	db := d.loop.Spec.ClickHouse.Database
	got := map[cell]*tally{}
	at := func(c, p string) *tally {
		k := cell{c, p}
		if got[k] == nil {
			got[k] = &tally{}
		}
		return got[k]
	}
	rows, err := conn.Query(ctx, "SELECT customer_id, product, count(), sum(quantity) FROM "+
		pipeline.QualifiedTable(db, "usage_raw")+" GROUP BY customer_id, product")
	if err != nil {
		return err
	}
	for rows.Next() {
		var c, p string
		var n uint64
		var q float64
		if err := rows.Scan(&c, &p, &n, &q); err != nil {
			return err
		}
		t := at(c, p)
		t.events, t.quantity = int(n), q
	}
	rows.Close()
	rows, err = conn.Query(ctx, "SELECT customer_id, product, count() FROM "+
		pipeline.QualifiedTable(db, "plans_raw")+" GROUP BY customer_id, product")
	if err != nil {
		return err
	}
	for rows.Next() {
		var c, p string
		var n uint64
		if err := rows.Scan(&c, &p, &n); err != nil {
			return err
		}
		at(c, p).plans = int(n)
	}
	rows.Close()

	keys := make([]cell, 0, len(w.expected))
	for k := range w.expected {
		keys = append(keys, k)
	}
	for k := range got {
		if w.expected[k] == nil {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].customer != keys[j].customer {
			return keys[i].customer < keys[j].customer
		}
		return keys[i].product < keys[j].product
	})
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "customer\tproduct\tevents sent\tevents stored\tquantity sent\tquantity stored\tplans sent\tplans stored\t")
	mismatches := 0
	for _, k := range keys {
		want, have := w.expected[k], got[k]
		if want == nil {
			want = &tally{}
		}
		if have == nil {
			have = &tally{}
		}
		mark := ""
		if *want != *have {
			mismatches++
			mark = "  <- differs"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.0f\t%.0f\t%d\t%d\t%s\n", k.customer, k.product,
			want.events, have.events, want.quantity, have.quantity, want.plans, have.plans, mark)
	}
	_ = tw.Flush()
	fmt.Println()

	dead := 0
	for _, s := range d.loop.Spec.Streams {
		n, err := topicEnd(d.brokers, s.GetDeadLetterTopic())
		if err != nil {
			return err
		}
		dead += int(n)
	}
	step("Dead-letter topics hold %d messages (%d malformed were sent)", dead, w.bad)
	if mismatches > 0 || dead != w.bad {
		return fmt.Errorf("%d customer/product cells differ and %d of %d malformed messages were dead-lettered", mismatches, dead, w.bad)
	}
	if err := d.checkRollups(ctx, conn, w); err != nil {
		return err
	}
	step("Every count matches what was produced")
	return nil
}

// checkRollups compares each Count/Sum-of-quantity rollup of the usage stream with the
// workload's totals: the materialized views counted every event once.
func (d *devStack) checkRollups(ctx context.Context, conn driver.Conn, w *workload) error {
	var events int
	var quantity float64
	for _, t := range w.expected {
		events += t.events
		quantity += t.quantity
	}
	db := d.loop.Spec.ClickHouse.Database
	for _, r := range d.loop.Spec.Rollups {
		var count, sum string
		for _, m := range r.Measures {
			switch {
			case m.Function == "Count":
				count = m.Name
			case m.Function == "Sum" && m.Field == "quantity":
				sum = m.Name
			}
		}
		if r.Stream != "usage" || count == "" || sum == "" {
			continue
		}
		var n uint64
		var q float64
		view := pipeline.QualifiedTable(db, "rollup_"+r.Name)
		if err := conn.QueryRow(ctx, "SELECT toUInt64(sum("+pipeline.QuoteIdent(count)+")), sum("+pipeline.QuoteIdent(sum)+") FROM "+view).Scan(&n, &q); err != nil {
			return fmt.Errorf("reading rollup %s: %w", r.Name, err)
		}
		step("Rollup %s (read view %s): %d events, quantity %.0f; produced %d events, quantity %.0f", r.Name, view, n, q, events, quantity)
		if int(n) != events || math.Abs(q-quantity) > 1e-6*math.Max(1, quantity) {
			return fmt.Errorf("rollup %s holds %d events and quantity %v, want %d and %v", r.Name, n, q, events, quantity)
		}
	}
	return nil
}

// topicEnd returns the number of messages ever written to a topic (the sum of its
// partitions' end offsets); 0 when it does not exist.
func topicEnd(brokers []string, topic string) (int64, error) {
	conn, err := kafka.Dial("tcp", brokers[0])
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		if errors.Is(err, kafka.UnknownTopicOrPartition) {
			return 0, nil
		}
		return 0, err
	}
	var total int64
	for _, p := range parts {
		pc, err := kafka.DialLeader(context.Background(), "tcp", brokers[0], topic, p.ID)
		if err != nil {
			return 0, err
		}
		end, err := pc.ReadLastOffset()
		_ = pc.Close()
		if err != nil {
			return 0, err
		}
		total += end
	}
	return total, nil
}

// gapReport prints what product teams get back: plan against actual for the workload,
// as `customerloop report` shows it.
func (d *devStack) gapReport(ctx context.Context) error {
	conn, err := pipeline.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: d.o.clickhouseAddr})
	if err != nil {
		return err
	}
	defer conn.Close()
	step("Plan against actual, as product teams see it (customerloop report %s):", d.loop.Name)
	fmt.Println()
	if err := cli.PrintReport(ctx, os.Stdout, conn, d.loop.Spec.ClickHouse.Database, cli.ReportOptions{Format: "table", View: "all"}); err != nil {
		return err
	}
	fmt.Println()
	return nil
}

// digestTopic is where the demo loop's digests go: its spec.feedback.publish topic.
func (d *devStack) digestTopic() string {
	if f := d.loop.Spec.Feedback; f != nil && f.Publish != nil {
		return f.Publish.Topic
	}
	return ""
}

// publishDigests waits until the manager's digest publisher has published, for every
// product and period, a digest with the figures the views hold now (its first rounds may
// have run before every row landed), prints them, and checks the loop's status.
func (d *devStack) publishDigests(ctx context.Context) error {
	topic := d.digestTopic()
	if topic == "" {
		return nil
	}
	conn, err := pipeline.OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: d.o.clickhouseAddr})
	if err != nil {
		return err
	}
	defer conn.Close()
	want, err := pipeline.BuildDigests(ctx, conn, pipeline.DigestConfig{
		Loop: d.loop.Namespace + "/" + d.loop.Name, Kafka: pipeline.KafkaConfig{Brokers: d.brokers}, Topic: topic,
		Feedback: pipeline.FeedbackConfig{Database: d.loop.Spec.ClickHouse.Database, Grain: d.grain()},
	}, time.Now())
	if err != nil {
		return err
	}
	key := func(product string, period time.Time) string { return product + "/" + period.Format(time.DateOnly) }
	ctx, cancel := context.WithTimeout(ctx, d.o.timeout)
	defer cancel()
	var latest map[string]pipeline.Digest
	for {
		latest, err = readDigests(ctx, d.brokers, topic)
		if err != nil {
			return err
		}
		missing := 0
		for _, g := range want {
			got, ok := latest[key(g.Product, g.Period.Time)]
			if !ok || !sameFigure(got.PlannedLatest, g.PlannedLatest) || !sameFigure(&got.Actual, &g.Actual) {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not hold the current figures of %d of %d products and periods within %s", topic, missing, len(want), d.o.timeout)
		case <-time.After(time.Second):
		}
	}
	loop := &loopsv1alpha1.CustomerLoop{}
	if err := d.k8s.Get(ctx, types.NamespacedName{Namespace: d.loop.Namespace, Name: d.loop.Name}, loop); err != nil {
		return err
	}
	fs := loop.Status.Feedback
	if fs == nil || fs.DigestsPublished == 0 {
		return fmt.Errorf("the loop's status reports no digests published")
	}
	step("The manager published %d digests to %s (every product and period current); status: last period %s, %d customers with plans, WAPE %s",
		fs.DigestsPublished, topic, fs.LastPublishedPeriod, fs.CustomersWithPlans, fs.WAPE)
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "product\tperiod\tplanned\tactual\tgap %\tcustomers\tWAPE\tflagged\tversion\t")
	for _, w := range want {
		g := latest[key(w.Product, w.Period.Time)]
		var wape *float64
		if g.Accuracy != nil {
			wape = g.Accuracy.WAPE
		}
		flag := ""
		if g.Flagged {
			flag = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t\n", g.Product, g.Period.Format(time.DateOnly), cli.Round(g.PlannedLatest),
			cli.Round(&g.Actual), cli.Percent(g.GapRatio), g.CustomersWithPlans, cli.Percent(wape), flag, g.Version)
	}
	_ = tw.Flush()
	fmt.Println()
	return nil
}

// readDigests returns the highest version of each product and period on the topic.
func readDigests(ctx context.Context, brokers []string, topic string) (map[string]pipeline.Digest, error) {
	out := map[string]pipeline.Digest{}
	end, err := topicEnd(brokers, topic)
	if err != nil || end == 0 {
		return out, err
	}
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		return nil, err
	}
	for _, p := range parts {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		last, err := partitionEnd(ctx, brokers[0], topic, p.ID)
		if err != nil {
			r.Close()
			return nil, err
		}
		for off := int64(0); off < last; off++ {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				return nil, err
			}
			var g pipeline.Digest
			if err := json.Unmarshal(m.Value, &g); err != nil {
				r.Close()
				return nil, fmt.Errorf("a digest on %s is not JSON: %w", topic, err)
			}
			k := g.Product + "/" + g.Period.Format(time.DateOnly)
			if g.Version > out[k].Version {
				out[k] = g
			}
		}
		r.Close()
	}
	return out, nil
}

func partitionEnd(ctx context.Context, broker, topic string, partition int) (int64, error) {
	c, err := kafka.DialLeader(ctx, "tcp", broker, topic, partition)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.ReadLastOffset()
}

// sameFigure compares two figures as the digest's rounding leaves them.
func sameFigure(a, b *float64) bool {
	if a == nil || b == nil {
		return a == b
	}
	return math.Abs(*a-*b) <= 1e-9*math.Max(1, math.Abs(*b))
}

func (d *devStack) grain() pipeline.Grain {
	if f := d.loop.Spec.Feedback; f != nil && f.Granularity == loopsv1alpha1.Granularity(pipeline.GrainWeek) {
		return pipeline.GrainWeek
	}
	return pipeline.GrainMonth
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
	src := controllers.DashboardSource{Client: d.k8s}
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
