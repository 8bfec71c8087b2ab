package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"customerloop.dev/customerloop/pipeline/feedback"
	"customerloop.dev/customerloop/pipeline/ingest"
)

func newConsentCommand(config *genericclioptions.ConfigFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "consent LOOP CUSTOMER",
		Short: "Show a customer's consent trail: each withdrawal and grant, and how it was applied",
		Long: `Shows the consent messages of one customer that the loop consumed (spec.consent), in the
order they apply, and for each applied one when it was complete, the rows deleted per
raw table and the ClickHouse mutations that deleted them. When every stream of the loop
hashes customer ids (pii.customerId: Hash) the consent tables hold the customer's hash:
CUSTOMER is the clear id, hashed here with the loop's key (read from its Secret) before
the tables are queried.`,
		Example: `  customerloop consent acme acme-01 -n default
  customerloop consent acme acme-01 -o json`,
		Args: cobra.ExactArgs(2),
	}
	k := addKubeFlags(config)
	k.addClickHouseFlag(cmd)
	cmd.ValidArgsFunction = k.completeLoops
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json (default: a table)")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if output != "" && output != "json" {
			return fmt.Errorf("--output %q: want json, or nothing for a table", output)
		}
		ctx := cmd.Context()
		loop, cfg, err := k.loopConfig(ctx, args[0])
		if err != nil {
			return err
		}
		if cfg.Consent == nil {
			return fmt.Errorf("CustomerLoop %s/%s has no spec.consent: it consumes no consent messages", loop.Namespace, loop.Name)
		}
		conn, err := k.openClickHouse(ctx, cfg)
		if err != nil {
			return err
		}
		defer conn.Close()
		trail, err := feedback.ConsentTrail(ctx, conn, cfg.ClickHouse.Database, cfg.ConsentCustomer(args[1]))
		if err != nil {
			return err
		}
		if output == "json" {
			return printConsentJSON(cmd.OutOrStdout(), trail)
		}
		return printConsent(cmd.OutOrStdout(), args[1], trail)
	}
	return cmd
}

// consentState is how far a consent message got.
func consentState(r feedback.ConsentRecord) string {
	switch {
	case r.Event.Err != "":
		return "invalid: " + r.Event.Err
	case r.Audit == nil:
		return "pending: applied with the workers stopped at the next reconcile"
	case r.AuditError != "":
		return "failed: " + r.AuditError
	}
	return "applied " + r.Audit.CompletedAt.UTC().Format(time.RFC3339)
}

func scope(s []string) string {
	if len(s) == 0 {
		return "all streams"
	}
	return strings.Join(s, ",")
}

func printConsent(w io.Writer, customer string, trail []feedback.ConsentRecord) error {
	if len(trail) == 0 {
		fmt.Fprintf(w, "No consent message of customer %s.\n", customer)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIMESTAMP\tID\tACTION\tSCOPE\tRECEIVED\tSTATE\tROWS DELETED\tSOURCE")
	for _, r := range trail {
		e := r.Event
		deleted := "-"
		if r.Audit != nil && len(r.Audit.Tables) > 0 {
			var parts []string
			for i, t := range r.Audit.Tables {
				n := uint64(0)
				if i < len(r.Audit.RowsDeleted) {
					n = r.Audit.RowsDeleted[i]
				}
				parts = append(parts, fmt.Sprintf("%s=%d", t, n))
			}
			deleted = strings.Join(parts, ",")
		}
		ts := "-"
		if !e.At.IsZero() {
			ts = e.At.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s/%d:%d\n", ts, orDash(e.ID), orDash(e.Action), scope(e.Scope),
			e.Received.UTC().Format(time.RFC3339), oneLine(consentState(r)), deleted, e.Topic, e.Partition, e.Offset)
	}
	return tw.Flush()
}

type consentJSON struct {
	ID          string            `json:"id"`
	Action      string            `json:"action"`
	Scope       []string          `json:"scope"`
	Timestamp   time.Time         `json:"timestamp"`
	Received    time.Time         `json:"received"`
	State       string            `json:"state"`
	Error       string            `json:"error,omitempty"`
	CompletedAt *time.Time        `json:"completedAt,omitempty"`
	Tables      []string          `json:"tables,omitempty"`
	RowsDeleted []uint64          `json:"rowsDeleted,omitempty"`
	MutationIDs []string          `json:"mutationIds,omitempty"`
	Source      ingest.MessageRef `json:"source"`
}

func printConsentJSON(w io.Writer, trail []feedback.ConsentRecord) error {
	out := []consentJSON{}
	for _, r := range trail {
		e := r.Event
		j := consentJSON{ID: e.ID, Action: e.Action, Scope: e.Scope, Timestamp: e.At.UTC(), Received: e.Received.UTC(),
			Source: ingest.MessageRef{Topic: e.Topic, Partition: e.Partition, Offset: e.Offset}}
		switch {
		case e.Err != "":
			j.State, j.Error = "invalid", e.Err
		case r.Audit == nil:
			j.State = "pending"
		case r.AuditError != "":
			j.State, j.Error = "failed", r.AuditError
		default:
			j.State = "applied"
		}
		if a := r.Audit; a != nil {
			t := a.CompletedAt.UTC()
			j.CompletedAt, j.Tables, j.RowsDeleted, j.MutationIDs = &t, a.Tables, a.RowsDeleted, a.MutationIDs
		}
		out = append(out, j)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
