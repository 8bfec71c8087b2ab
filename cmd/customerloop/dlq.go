package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// dlqFilter chooses dead letters.
type dlqFilter struct {
	stream, reason string
	since          time.Duration
}

func (f *dlqFilter) add(cmd *cobra.Command, k *kubeFlags, streamHelp string) {
	fs := cmd.Flags()
	fs.StringVar(&f.stream, "stream", "", streamHelp)
	fs.StringVar(&f.reason, "reason", "", "only dead letters of this reason (invalid_json, missing_field, wrong_type, out_of_range, oversize, unknown_customer)")
	fs.DurationVar(&f.since, "since", 0, "only dead letters written within this long, e.g. 1h, 30m (default: all the topic holds)")
	_ = cmd.RegisterFlagCompletionFunc("stream", k.completeStreams)
	_ = cmd.RegisterFlagCompletionFunc("reason", cobra.FixedCompletions([]string{
		string(pipeline.ReasonInvalidJSON), string(pipeline.ReasonMissingField), string(pipeline.ReasonWrongType),
		string(pipeline.ReasonOutOfRange), string(pipeline.ReasonOversize), string(pipeline.ReasonUnknownCustomer)}, cobra.ShellCompDirectiveNoFileComp))
}

// streamLetters is a stream's dead letters.
type streamLetters struct {
	stream  pipeline.StreamConfig
	letters []ingest.DeadLetter
}

// read reads the dead letters of the chosen streams (every stream without --stream),
// oldest first. A dead-letter topic shared by streams is read once.
func (f *dlqFilter) read(ctx context.Context, cfg pipeline.Config, now time.Time) ([]streamLetters, error) {
	streams := cfg.Streams
	if f.stream != "" {
		s, err := streamNamed(cfg, f.stream)
		if err != nil {
			return nil, err
		}
		streams = []pipeline.StreamConfig{s}
	}
	var since time.Time
	if f.since > 0 {
		since = now.Add(-f.since)
	}
	topics := map[string][]ingest.DeadLetter{}
	var out []streamLetters
	for _, s := range streams {
		all, ok := topics[s.DeadLetterTopic]
		if !ok {
			var err error
			if all, err = ingest.ReadDeadLetters(ctx, cfg.Kafka, s.DeadLetterTopic, since); err != nil {
				return nil, err
			}
			topics[s.DeadLetterTopic] = all
		}
		sl := streamLetters{stream: s}
		for _, d := range all {
			if d.Source.Topic != "" && d.Source.Topic != s.Topic {
				continue
			}
			if f.reason != "" && d.Reason != f.reason {
				continue
			}
			sl.letters = append(sl.letters, d)
		}
		out = append(out, sl)
	}
	return out, nil
}

func newDLQCommand(config *genericclioptions.ConfigFlags) *cobra.Command {
	var (
		f      dlqFilter
		limit  int
		output string
	)
	cmd := &cobra.Command{
		Use:   "dlq LOOP",
		Short: "Show a loop's dead letters: a summary by reason, then the messages",
		Long: `Reads the dead-letter topics of a loop's streams with the loop's Kafka settings (TLS and
SASL from its Secrets) and prints how many dead letters each stream has by reason, then
the latest of them: where each came from (source partition and offset), why, and its key
and value (truncated; in full with -o json). Credentials are never printed.`,
		Example: `  customerloop dlq acme
  customerloop dlq acme --stream usage --reason missing_field --since 1h
  customerloop dlq acme --stream usage --limit 0 -o json`,
		Args: cobra.ExactArgs(1),
	}
	k := addKubeFlags(config)
	cmd.ValidArgsFunction = k.completeLoops
	f.add(cmd, k, "only this stream's dead letters (default: every stream)")
	cmd.Flags().IntVar(&limit, "limit", 20, "print at most this many dead letters, the latest; 0 prints all")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json (default: tables)")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if output != "" && output != "json" {
			return fmt.Errorf("--output %q: want json, or nothing for tables", output)
		}
		if limit < 0 {
			return fmt.Errorf("--limit %d: want 0 (all) or more", limit)
		}
		ctx := cmd.Context()
		_, cfg, err := k.loopConfig(ctx, args[0])
		if err != nil {
			return err
		}
		letters, err := f.read(ctx, cfg, time.Now())
		if err != nil {
			return err
		}
		if output == "json" {
			return printDLQJSON(cmd.OutOrStdout(), letters, limit)
		}
		return printDLQ(cmd.OutOrStdout(), letters, limit)
	}
	cmd.AddCommand(newReplayCommand(config))
	return cmd
}

// reasonSummary counts a stream's dead letters of one reason.
type reasonSummary struct {
	Stream string    `json:"stream"`
	Reason string    `json:"reason"`
	Count  int       `json:"count"`
	First  time.Time `json:"first"`
	Last   time.Time `json:"last"`
}

func summarize(letters []streamLetters) []reasonSummary {
	var out []reasonSummary
	for _, sl := range letters {
		by := map[string]*reasonSummary{}
		for _, d := range sl.letters {
			r := by[d.Reason]
			if r == nil {
				r = &reasonSummary{Stream: sl.stream.Name, Reason: d.Reason, First: d.Time}
				by[d.Reason] = r
			}
			r.Count++
			r.First, r.Last = minTime(r.First, d.Time), maxTime(r.Last, d.Time)
		}
		start := len(out)
		for _, r := range by {
			out = append(out, *r)
		}
		slices.SortFunc(out[start:], func(a, b reasonSummary) int {
			if a.Count != b.Count {
				return b.Count - a.Count
			}
			return strings.Compare(a.Reason, b.Reason)
		})
	}
	return out
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// latest returns the last limit dead letters of all streams, oldest first, each with
// its stream's name.
func latest(letters []streamLetters, limit int) []namedLetter {
	var all []namedLetter
	for _, sl := range letters {
		for _, d := range sl.letters {
			all = append(all, namedLetter{sl.stream.Name, d})
		}
	}
	slices.SortStableFunc(all, func(a, b namedLetter) int { return a.Time.Compare(b.Time) })
	if limit > 0 && len(all) > limit {
		all = all[len(all)-limit:]
	}
	return all
}

type namedLetter struct {
	stream string
	ingest.DeadLetter
}

func printDLQ(w io.Writer, letters []streamLetters, limit int) error {
	sum := summarize(letters)
	total := 0
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tREASON\tCOUNT\tFIRST\tLAST")
	for _, r := range sum {
		total += r.Count
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", r.Stream, r.Reason, r.Count, r.First.UTC().Format(time.RFC3339), r.Last.UTC().Format(time.RFC3339))
	}
	if len(sum) == 0 {
		fmt.Fprintln(tw, "(no dead letters)\t\t\t\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if total == 0 {
		return nil
	}
	shown := latest(letters, limit)
	if len(shown) < total {
		fmt.Fprintf(w, "\nThe latest %d of %d dead letters (--limit 0 prints all):\n", len(shown), total)
	} else {
		fmt.Fprintln(w, "\nDead letters:")
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tSOURCE\tDEAD-LETTERED\tREASON\tERROR\tKEY\tVALUE")
	for _, d := range shown {
		value := printable(d.Value, 60)
		if d.Scrubbed != "" {
			value = "(" + d.Scrubbed + ") " + value
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.stream, sourceOf(d.DeadLetter), d.Time.UTC().Format(time.RFC3339),
			d.Reason, printable([]byte(d.Error), 60), printable(d.Key, 24), value)
	}
	return tw.Flush()
}

// sourceOf is where a dead letter came from, as --offsets takes it: PARTITION:OFFSET.
func sourceOf(d ingest.DeadLetter) string {
	return fmt.Sprintf("%d:%d", d.Source.Partition, d.Source.Offset)
}

// printable is b as one line of at most max characters, with control characters and
// invalid UTF-8 escaped.
func printable(b []byte, max int) string {
	var sb strings.Builder
	n := 0
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		var s string
		switch {
		case r == utf8.RuneError && size <= 1:
			s = fmt.Sprintf(`\x%02x`, b[0])
		case r < 0x20 || r == 0x7f:
			s = strings.Trim(strconv.QuoteRune(r), "'")
		default:
			s = string(r)
		}
		if n >= max {
			sb.WriteString("…")
			break
		}
		sb.WriteString(s)
		n++
		b = b[size:]
	}
	return sb.String()
}

type dlqJSON struct {
	Summary     []reasonSummary  `json:"summary"`
	DeadLetters []deadLetterJSON `json:"deadLetters"`
}

type deadLetterJSON struct {
	Stream         string            `json:"stream"`
	Source         ingest.MessageRef `json:"source"`
	Origin         ingest.MessageRef `json:"origin"`
	DeadLetter     ingest.MessageRef `json:"deadLetter"`
	Time           time.Time         `json:"time"`
	SourceTime     *time.Time        `json:"sourceTime,omitempty"`
	Reason         string            `json:"reason"`
	Error          string            `json:"error"`
	Key            string            `json:"key"`
	Value          string            `json:"value"`
	Scrubbed       string            `json:"scrubbed,omitempty"`
	DeadLetteredAt *time.Time        `json:"deadLetteredAt,omitempty"`
}

func printDLQJSON(w io.Writer, letters []streamLetters, limit int) error {
	out := dlqJSON{Summary: summarize(letters), DeadLetters: []deadLetterJSON{}}
	if out.Summary == nil {
		out.Summary = []reasonSummary{}
	}
	for _, d := range latest(letters, limit) {
		j := deadLetterJSON{Stream: d.stream, Source: d.Source, Origin: d.Origin, DeadLetter: d.At, Time: d.Time.UTC(),
			Reason: d.Reason, Error: d.Error, Key: string(d.Key), Value: string(d.Value), Scrubbed: d.Scrubbed}
		if !d.SourceTime.IsZero() {
			t := d.SourceTime.UTC()
			j.SourceTime = &t
		}
		if !d.DeadLetteredAt.IsZero() {
			t := d.DeadLetteredAt.UTC()
			j.DeadLetteredAt = &t
		}
		out.DeadLetters = append(out.DeadLetters, j)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
