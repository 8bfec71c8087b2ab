package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline/ingest"
)

func newStatusCommand(config *genericclioptions.ConfigFlags) *cobra.Command {
	var allNamespaces bool
	cmd := &cobra.Command{
		Use:   "status [LOOP]",
		Short: "Show a loop's conditions, streams, lag, dead letters, freshness, workers and digests",
		Long: `Shows a CustomerLoop as its status reports it (the controller reads the figures from
ClickHouse, the ingestion ledger and Kafka), and the ledger's entries per partition read
from ClickHouse now, when it answers. Without LOOP, lists the loops of the namespace
(or of every namespace with -A).`,
		Example: `  customerloop status acme -n default
  customerloop status -A`,
		Args: cobra.MaximumNArgs(1),
	}
	k := addKubeFlags(config)
	k.addClickHouseFlag(cmd)
	cmd.ValidArgsFunction = k.completeLoops
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "list the loops of every namespace")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if len(args) == 0 {
			return listLoops(ctx, cmd.OutOrStdout(), k, allNamespaces)
		}
		if allNamespaces {
			return errors.New("-A lists loops: name no LOOP with it, or use -n to choose the loop's namespace")
		}
		c, loop, err := k.loop(ctx, args[0])
		if err != nil {
			return err
		}
		l := readLedger(ctx, k, c, loop)
		return printStatus(cmd.OutOrStdout(), loop, l, time.Now())
	}
	return cmd
}

// ledgerView is what the status command read of the ledger; err says why it has
// nothing.
type ledgerView struct {
	partitions map[string][]ingest.LedgerPartition // by stream
	err        error
}

// readLedger reads the loop's ledger per partition, within a few seconds: the status
// is printed with or without it.
func readLedger(ctx context.Context, k *kubeFlags, c client.Client, loop *loopsv1alpha1.CustomerLoop) ledgerView {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg, err := k.renderConfig(ctx, c, loop)
	if err != nil {
		return ledgerView{err: err}
	}
	conn, err := k.openClickHouse(ctx, cfg)
	if err != nil {
		return ledgerView{err: err}
	}
	defer conn.Close()
	v := ledgerView{partitions: map[string][]ingest.LedgerPartition{}}
	for _, s := range cfg.Streams {
		parts, err := ingest.ReadLedgerPartitions(ctx, conn, cfg.ClickHouse.Database, s.Topic)
		if err != nil {
			return ledgerView{err: err}
		}
		v.partitions[s.Name] = parts
	}
	return v
}

func listLoops(ctx context.Context, w io.Writer, k *kubeFlags, all bool) error {
	c, err := k.client()
	if err != nil {
		return err
	}
	var opts []client.ListOption
	if !all {
		ns, err := k.namespace()
		if err != nil {
			return err
		}
		opts = append(opts, client.InNamespace(ns))
	}
	var list loopsv1alpha1.CustomerLoopList
	if err := c.List(ctx, &list, opts...); err != nil {
		return fmt.Errorf("listing CustomerLoops: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tREADY\tREASON\tSTREAMS\tROWS\tLAG\tDEAD LETTERS\tWORKERS\tAGE")
	now := time.Now()
	for _, l := range list.Items {
		ready, reason := "Unknown", ""
		if c := meta.FindStatusCondition(l.Status.Conditions, loopsv1alpha1.ConditionReady); c != nil {
			ready, reason = string(c.Status), c.Reason
		}
		var dead int64
		for _, s := range l.Status.Streams {
			dead += s.RowsDeadLettered
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d/%d\t%s\n", l.Namespace, l.Name, ready, reason, len(l.Spec.Streams),
			l.Status.RowsIngested, l.Status.Lag, dead, l.Status.Replicas, wantedWorkers(&l), age(now, l.CreationTimestamp.Time))
	}
	if len(list.Items) == 0 {
		fmt.Fprintln(tw, "(no CustomerLoops)")
	}
	return tw.Flush()
}

// wantedWorkers is the number of workers the spec asks for.
func wantedWorkers(l *loopsv1alpha1.CustomerLoop) int32 {
	if l.Spec.Paused {
		return 0
	}
	return l.GetReplicas()
}

// printStatus writes a loop's status, and the ledger as read now.
func printStatus(w io.Writer, loop *loopsv1alpha1.CustomerLoop, ledger ledgerView, now time.Time) error {
	st := loop.Status
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "CustomerLoop:\t%s/%s\n", loop.Namespace, loop.Name)
	observed := ""
	if st.ObservedGeneration != loop.Generation {
		observed = fmt.Sprintf(" (the status is of generation %d: the controller has not caught up)", st.ObservedGeneration)
	}
	fmt.Fprintf(tw, "Generation:\t%d%s\n", loop.Generation, observed)
	db := loop.Spec.ClickHouse.Database
	if loop.Spec.ClickHouse.Cluster != "" {
		db += ", cluster " + loop.Spec.ClickHouse.Cluster
	}
	fmt.Fprintf(tw, "ClickHouse:\t%s, database %s\n", loop.Spec.ClickHouse.Address, db)
	fmt.Fprintf(tw, "Kafka:\t%s, consumer group %s\n", strings.Join(loop.Spec.Kafka.Brokers, ","), loop.GetConsumerGroup())
	workers := fmt.Sprintf("%d running of %d wanted", st.Replicas, wantedWorkers(loop))
	if loop.Spec.Paused {
		workers += " (paused)"
	}
	fmt.Fprintf(tw, "Workers:\t%s\n", workers)
	fmt.Fprintf(tw, "Rows ingested:\t%d\n", st.RowsIngested)
	fmt.Fprintf(tw, "Lag:\t%d messages\n", st.Lag)
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nConditions:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  TYPE\tSTATUS\tREASON\tSINCE\tMESSAGE")
	for _, t := range []string{loopsv1alpha1.ConditionReady, loopsv1alpha1.ConditionReconciling, loopsv1alpha1.ConditionStalled,
		loopsv1alpha1.ConditionSchemaReady, loopsv1alpha1.ConditionWorkersReady} {
		if c := meta.FindStatusCondition(st.Conditions, t); c != nil {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, age(now, c.LastTransitionTime.Time), oneLine(c.Message))
		}
	}
	if len(st.Conditions) == 0 {
		fmt.Fprintln(tw, "  (none yet: the controller has not reconciled the loop)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nStreams:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tKIND\tTOPIC\tROWS\tLAG\tDEAD LETTERS\tDUPLICATES\tWITHHELD\tLAST INGEST\tFRESHNESS")
	byName := map[string]loopsv1alpha1.StreamStatus{}
	for _, s := range st.Streams {
		byName[s.Name] = s
	}
	for _, s := range loop.Spec.Streams {
		ss, ok := byName[s.Name]
		if !ok {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\n", s.Name, s.Kind, s.Topic)
			continue
		}
		last, fresh := "-", "-"
		if ss.LastIngestTime != nil {
			last, fresh = ss.LastIngestTime.UTC().Format(time.RFC3339), age(now, ss.LastIngestTime.Time)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Name, s.Kind, s.Topic, ss.RowsIngested, ss.Lag,
			ss.RowsDeadLettered, ss.DuplicatesDropped, ss.MessagesWithheld, last, fresh)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nLedger (read from ClickHouse now):")
	if ledger.err != nil {
		fmt.Fprintf(w, "  not read: %s\n", oneLine(ledger.err.Error()))
	} else {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  STREAM\tPARTITION\tNEXT OFFSET\tMESSAGES\tDEAD LETTERS\tDUPLICATES\tWITHHELD\tLAST BATCH")
		n := 0
		for _, s := range loop.Spec.Streams {
			for _, p := range ledger.partitions[s.Name] {
				n++
				fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%d\t%d\t%s (%s ago)\n", s.Name, p.Partition, p.Next, p.Messages, p.DeadLettered,
					p.Duplicates, p.Withheld, p.LastWritten.Format(time.RFC3339), age(now, p.LastWritten))
			}
		}
		if n == 0 {
			fmt.Fprintln(tw, "  (no batch recorded yet)")
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	if f := st.Feedback; f != nil {
		fmt.Fprintln(w, "\nDigests:")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		last := "-"
		if f.LastPublishedTime != nil {
			last = fmt.Sprintf("%s (%s ago)", f.LastPublishedTime.UTC().Format(time.RFC3339), age(now, f.LastPublishedTime.Time))
		}
		fmt.Fprintf(tw, "  Last published:\t%s, period %s\n", last, orDash(f.LastPublishedPeriod))
		fmt.Fprintf(tw, "  Digests published:\t%d\n", f.DigestsPublished)
		fmt.Fprintf(tw, "  Customers with plans:\t%d (current period)\n", f.CustomersWithPlans)
		fmt.Fprintf(tw, "  WAPE:\t%s (completed periods)\n", orDash(f.WAPE))
		if f.Message != "" {
			fmt.Fprintf(tw, "  Last error:\t%s\n", oneLine(f.Message))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// age is how long ago t was, as kubectl prints ages.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 3*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
