package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ingest"
)

type replayOptions struct {
	filter  dlqFilter
	offsets string
	dryRun  bool
	force   bool
}

func newReplayCommand(config *genericclioptions.ConfigFlags) *cobra.Command {
	var o replayOptions
	cmd := &cobra.Command{
		Use:   "replay LOOP --stream STREAM",
		Short: "Re-send a stream's dead letters to its topic, after a fix, each at most once",
		Long: `Re-sends chosen dead letters of a stream to the stream's topic, with their original key,
value, headers and produce time, to the partition they were first read from, marked with
the headers customerloop.replayed_at and customerloop.replay.source.{topic,partition,offset}
(the message as its producer first sent it).

A dead letter is re-sent only if its id (the stream's eventId or planId field) is not
already stored: the raw table is read first. So replaying the same dead letters again
stores nothing twice, and two replays sent before the first is stored fall in the
stream's duplicate window (same id, same partition, same produce time), which drops the
second. Not re-sent:
  - dead letters whose id is already in the raw table;
  - dead letters without a usable id (not JSON, no id field), unless --force: nothing
    can tell whether they are stored already;
  - dead letters of streams with personal data fields: they hold the message with those
    fields hashed or removed, not as sent. Ask the producer to send it again.`,
		Example: `  customerloop dlq replay acme --stream usage --reason unknown_customer --dry-run
  customerloop dlq replay acme --stream usage --offsets 0:17,2:5
  customerloop dlq replay acme --stream plans --since 2h`,
		Args: cobra.ExactArgs(1),
	}
	k := addKubeFlags(config)
	k.addClickHouseFlag(cmd)
	cmd.ValidArgsFunction = k.completeLoops
	o.filter.add(cmd, k, "the stream whose dead letters to re-send (required)")
	_ = cmd.MarkFlagRequired("stream")
	fs := cmd.Flags()
	fs.StringVar(&o.offsets, "offsets", "", "only these dead letters, by source PARTITION:OFFSET as customerloop dlq prints them, comma-separated")
	fs.BoolVar(&o.dryRun, "dry-run", false, "print what would be re-sent and why the others would not, and send nothing")
	fs.BoolVar(&o.force, "force", false, "also re-send dead letters without a usable id (they may be stored twice)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		chosen, err := parseOffsets(o.offsets)
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		_, cfg, err := k.loopConfig(ctx, args[0])
		if err != nil {
			return err
		}
		letters, err := o.filter.read(ctx, cfg, time.Now())
		if err != nil {
			return err
		}
		conn, err := k.openClickHouse(ctx, cfg)
		if err != nil {
			return fmt.Errorf("%w: replay reads which ids are already stored, and sends nothing without that", err)
		}
		defer conn.Close()
		sl := letters[0]
		plan, err := planReplay(ctx, conn, cfg.ClickHouse.Database, sl.stream, sl.letters, chosen, o.force)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if err := plan.print(w, o.dryRun); err != nil {
			return err
		}
		if o.dryRun || len(plan.send) == 0 {
			return nil
		}
		now := time.Now()
		msgs := make([]kafka.Message, len(plan.send))
		for i, d := range plan.send {
			msgs[i] = d.letter.ReplayMessage(now)
		}
		if err := ingest.SendReplays(ctx, cfg.Kafka, sl.stream.Topic, msgs); err != nil {
			return err
		}
		fmt.Fprintf(w, "Sent %d to %s.\n", len(msgs), sl.stream.Topic)
		return nil
	}
	return cmd
}

// parseOffsets reads --offsets: PARTITION:OFFSET,...
func parseOffsets(s string) (map[[2]int64]bool, error) {
	if s == "" {
		return nil, nil
	}
	out := map[[2]int64]bool{}
	for _, item := range strings.Split(s, ",") {
		ps, os, ok := strings.Cut(strings.TrimSpace(item), ":")
		p, err1 := strconv.ParseInt(ps, 10, 32)
		off, err2 := strconv.ParseInt(os, 10, 64)
		if !ok || err1 != nil || err2 != nil || p < 0 || off < 0 {
			return nil, fmt.Errorf("--offsets %q: want PARTITION:OFFSET pairs such as 0:17,2:5", item)
		}
		out[[2]int64{p, off}] = true
	}
	return out, nil
}

// replayItem is one chosen dead letter and what replay does with it.
type replayItem struct {
	letter ingest.DeadLetter
	id     string
	// skip says why it is not re-sent; empty when it is.
	skip string
}

type replayPlan struct {
	stream pipeline.StreamConfig
	send   []replayItem
	skip   []replayItem
	// force is set when dead letters without an id are sent.
	forced int
	// missing lists --offsets that matched no dead letter.
	missing []string
}

const (
	skipStored   = "already stored"
	skipNoID     = "no usable id (pass --force to send it anyway)"
	skipScrubbed = "holds the message with its personal data hashed or removed, not as sent; ask the producer to send it again"
	skipSameID   = "same id as another dead letter re-sent now"
	skipSame     = "the same source message as another dead letter re-sent now"
)

// planReplay decides which dead letters of a stream are re-sent: those chosen by
// offsets (all when nil) whose id the raw table does not hold yet, once per source
// message and id. See newReplayCommand for the rule.
func planReplay(ctx context.Context, conn driver.Conn, db string, s pipeline.StreamConfig, letters []ingest.DeadLetter, offsets map[[2]int64]bool, force bool) (replayPlan, error) {
	p := replayPlan{stream: s}
	matched := map[[2]int64]bool{}
	var candidates []replayItem
	origins := map[ingest.MessageRef]bool{}
	for _, d := range letters {
		at := [2]int64{int64(d.Source.Partition), d.Source.Offset}
		if offsets != nil && !offsets[at] {
			continue
		}
		matched[at] = true
		it := replayItem{letter: d}
		switch id, ok := ingest.MessageID(s, d.Value); {
		case d.Origin.Partition >= 0 && origins[d.Origin]:
			// A worker that crashed after dead-lettering may dead-letter a message twice.
			it.skip = skipSame
		case d.Scrubbed != "":
			it.skip = skipScrubbed
		case !ok && !force:
			it.skip = skipNoID
		default:
			it.id = id
		}
		origins[d.Origin] = true
		candidates = append(candidates, it)
	}
	for at := range offsets {
		if !matched[at] {
			p.missing = append(p.missing, fmt.Sprintf("%d:%d", at[0], at[1]))
		}
	}
	var ids []string
	for _, it := range candidates {
		if it.skip == "" && it.id != "" {
			ids = append(ids, it.id)
		}
	}
	stored, err := ingest.StoredIDs(ctx, conn, db, s, ids)
	if err != nil {
		return p, err
	}
	sent := map[string]bool{}
	for _, it := range candidates {
		switch {
		case it.skip != "":
		case it.id == "":
			p.forced++
		case stored[it.id]:
			it.skip = skipStored
		case sent[it.id]:
			it.skip = skipSameID
		default:
			sent[it.id] = true
		}
		if it.skip != "" {
			p.skip = append(p.skip, it)
		} else {
			p.send = append(p.send, it)
		}
	}
	return p, nil
}

func (p replayPlan) print(w io.Writer, dryRun bool) error {
	if len(p.missing) > 0 {
		return fmt.Errorf("--offsets: no dead letter of stream %s from %s", p.stream.Name, strings.Join(p.missing, ", "))
	}
	if len(p.send)+len(p.skip) == 0 {
		return errors.New("no dead letter matches: see customerloop dlq for what the topic holds")
	}
	verb := "send"
	if dryRun {
		verb = "would send"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tREASON\tID\tREPLAY")
	for _, it := range p.send {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", sourceOf(it.letter), it.letter.Reason, orDash(printable([]byte(it.id), 40)), verb)
	}
	for _, it := range p.skip {
		fmt.Fprintf(tw, "%s\t%s\t%s\tskip: %s\n", sourceOf(it.letter), it.letter.Reason, orDash(printable([]byte(it.id), 40)), it.skip)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	counts := map[string]int{}
	for _, it := range p.skip {
		counts[it.skip]++
	}
	var why []string
	for _, k := range []string{skipStored, skipNoID, skipScrubbed, skipSameID, skipSame} {
		if counts[k] > 0 {
			why = append(why, fmt.Sprintf("%d %s", counts[k], strings.SplitN(k, " (", 2)[0]))
		}
	}
	fmt.Fprintf(w, "\n%s %d of %d dead letters to %s", strings.ToUpper(verb[:1])+verb[1:], len(p.send), len(p.send)+len(p.skip), p.stream.Topic)
	if len(why) > 0 {
		fmt.Fprintf(w, "; not: %s", strings.Join(why, ", "))
	}
	fmt.Fprintln(w, ".")
	if p.forced > 0 {
		fmt.Fprintf(w, "--force: %d without a usable id are sent; nothing can tell whether they are stored already.\n", p.forced)
	}
	return nil
}
