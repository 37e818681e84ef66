package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/streamtx/streamtx"
)

const dlqUsage = `Usage:
  streamtx dlq list STREAM GROUP [--from ID] [--count N] [--json]
  streamtx dlq show STREAM GROUP ID [--json]
  streamtx dlq replay STREAM GROUP (ID... | --all)
  streamtx dlq purge STREAM GROUP (ID... | --all --yes)

The dead letters of GROUP on STREAM: entries that failed for good, stored
with their original fields, error and delivery count in the group's
dead-letter stream (stx:{tag}:STREAM:GROUP:dlq; --dlq KEY for a consumer
configured with another Config.DeadLetterStream).

  list    oldest first, a page at a time (--from the ID it prints)
  show    one dead letter with all its fields
  replay  append them back to STREAM, each atomically removed from the
          dead-letter stream (a replay never doubles); only GROUP processes
          them again
  purge   delete them; --all deletes every one and needs --yes

Run 'streamtx dlq SUBCOMMAND --help' for its flags.
`

func runDLQ(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 {
		return usagef("dlq: missing subcommand: list, show, replay or purge")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, dlqUsage)
		return errHelp
	case "list":
		return runDLQList(ctx, c, args[1:])
	case "show":
		return runDLQShow(ctx, c, args[1:])
	case "replay":
		return runDLQReplay(ctx, c, args[1:])
	case "purge":
		return runDLQPurge(ctx, c, args[1:])
	}
	return usagef("dlq: unknown subcommand %q: want list, show, replay or purge", args[0])
}

// dlqFlags adds --dlq to f and returns a function giving the dead-letter
// stream of stream and group.
func dlqFlags(f *flags) func(stream, group string) (string, error) {
	key := f.String("dlq", "", "dead-letter stream `KEY` (default: the group's, stx:{tag}:STREAM:GROUP:dlq)")
	return func(stream, group string) (string, error) {
		if *key != "" {
			return *key, nil
		}
		return streamtx.DeadLetterStreamFor(stream, group)
	}
}

func runDLQList(ctx context.Context, c *cli, args []string) error {
	f := c.newFlags("dlq list STREAM GROUP [--from ID] [--count N] [--json]",
		"Lists dead letters, oldest first. When there are more than --count, it\nprints the --from that shows the next page.\n")
	dlqOf := dlqFlags(f)
	from := f.String("from", "-", "start at dead-letter `ID` (inclusive)")
	count := f.Int64("count", 20, "list at most `N` dead letters")
	asJSON := f.Bool("json", false, "print JSON")
	pos, err := f.parse(args, 2, 2)
	if err != nil {
		return err
	}
	if *count <= 0 {
		return usagef("dlq list: --count must be positive")
	}
	dlq, err := dlqOf(pos[0], pos[1])
	if err != nil {
		return err
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	page, next, err := streamtx.ListDeadLetters(ctx, rdb, dlq, *from, *count)
	if err != nil {
		return err
	}
	if *asJSON {
		out := struct {
			DeadLetters []deadLetterView `json:"dead_letters"`
			Next        string           `json:"next,omitempty"`
		}{DeadLetters: []deadLetterView{}, Next: next}
		for _, d := range page {
			out.DeadLetters = append(out.DeadLetters, deadLetterJSON(d))
		}
		return writeJSON(c.stdout, out)
	}
	if len(page) == 0 {
		fmt.Fprintln(c.stdout, "no dead letters")
		return nil
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSOURCE ID\tCONSUMER\tDELIVERIES\tTIME\tERROR")
	for _, d := range page {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, d.SourceID, d.Consumer, d.Deliveries,
			fmtTime(d.Time), oneLine(d.Error, 60))
	}
	tw.Flush()
	if next != "" {
		fmt.Fprintf(c.stdout, "more: --from %s\n", next)
	}
	return nil
}

func runDLQShow(ctx context.Context, c *cli, args []string) error {
	f := c.newFlags("dlq show STREAM GROUP ID [--json]", "Prints one dead letter with all its fields.\n")
	dlqOf := dlqFlags(f)
	asJSON := f.Bool("json", false, "print JSON")
	pos, err := f.parse(args, 3, 3)
	if err != nil {
		return err
	}
	dlq, err := dlqOf(pos[0], pos[1])
	if err != nil {
		return err
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	page, _, err := streamtx.ListDeadLetters(ctx, rdb, dlq, pos[2], 1)
	if err != nil {
		return err
	}
	if len(page) == 0 || page[0].ID != pos[2] {
		return fmt.Errorf("%w: dead letter %s in %q", errNotFound, pos[2], dlq)
	}
	d := page[0]
	if *asJSON {
		return writeJSON(c.stdout, deadLetterJSON(d))
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\n", d.ID)
	fmt.Fprintf(tw, "stream\t%s\n", d.Stream)
	fmt.Fprintf(tw, "source id\t%s\n", d.SourceID)
	fmt.Fprintf(tw, "group\t%s\n", d.Group)
	fmt.Fprintf(tw, "consumer\t%s\n", d.Consumer)
	fmt.Fprintf(tw, "deliveries\t%d\n", d.Deliveries)
	fmt.Fprintf(tw, "time\t%s\n", fmtTime(d.Time))
	fmt.Fprintf(tw, "error\t%s\n", d.Error)
	tw.Flush()
	fmt.Fprintln(c.stdout, "\nfields:")
	names := make([]string, 0, len(d.Values))
	for k := range d.Values {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(tw, "  %s\t%s\n", k, d.Values[k])
	}
	tw.Flush()
	return nil
}

func runDLQReplay(ctx context.Context, c *cli, args []string) error {
	f := c.newFlags("dlq replay STREAM GROUP (ID... | --all)",
		"Appends dead letters back to STREAM, each atomically removed from the\ndead-letter stream, so a replay never doubles. Only GROUP processes them\nagain. Exit status 1 if an ID is not found (already replayed or purged).\n")
	dlqOf := dlqFlags(f)
	all := f.Bool("all", false, "replay every dead letter")
	pos, err := f.parse(args, 2, -1)
	if err != nil {
		return err
	}
	ids := pos[2:]
	if *all == (len(ids) > 0) {
		return usagef("dlq replay: give dead-letter IDs or --all (not both)")
	}
	dlq, err := dlqOf(pos[0], pos[1])
	if err != nil {
		return err
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	res, err := streamtx.ReplayDeadLetters(ctx, rdb, dlq, ids...)
	done := make([]string, 0, len(res.Replayed))
	for from := range res.Replayed {
		done = append(done, from)
	}
	sort.Slice(done, func(i, j int) bool { return idLess(done[i], done[j]) })
	for _, from := range done {
		fmt.Fprintf(c.stdout, "replayed %s -> %s %s\n", from, pos[0], res.Replayed[from])
	}
	if err != nil {
		return err
	}
	for _, id := range res.Missing {
		fmt.Fprintf(c.stderr, "streamtx: not found: dead letter %s in %q\n", id, dlq)
	}
	if len(res.Missing) > 0 {
		return errReported
	}
	if len(done) == 0 {
		fmt.Fprintln(c.stdout, "no dead letters to replay")
	}
	return nil
}

func runDLQPurge(ctx context.Context, c *cli, args []string) error {
	f := c.newFlags("dlq purge STREAM GROUP (ID... | --all --yes)",
		"Deletes dead letters. --all deletes every one and needs --yes. Exit\nstatus 1 if an ID is not found.\n")
	dlqOf := dlqFlags(f)
	all := f.Bool("all", false, "delete every dead letter (needs --yes)")
	yes := f.Bool("yes", false, "confirm --all")
	pos, err := f.parse(args, 2, -1)
	if err != nil {
		return err
	}
	ids := pos[2:]
	if *all == (len(ids) > 0) {
		return usagef("dlq purge: give dead-letter IDs or --all (not both)")
	}
	if *all && !*yes {
		return usagef("dlq purge --all deletes every dead letter of group %q on %q: add --yes to confirm", pos[1], pos[0])
	}
	dlq, err := dlqOf(pos[0], pos[1])
	if err != nil {
		return err
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	n, err := streamtx.PurgeDeadLetters(ctx, rdb, dlq, ids...)
	if err != nil {
		return err
	}
	if n == 1 {
		fmt.Fprintln(c.stdout, "purged 1 dead letter")
	} else {
		fmt.Fprintf(c.stdout, "purged %d dead letters\n", n)
	}
	if !*all && n < int64(len(ids)) {
		return fmt.Errorf("%w: %d of %d dead letters in %q", errNotFound, int64(len(ids))-n, len(ids), dlq)
	}
	return nil
}

type deadLetterView struct {
	ID         string            `json:"id"`
	Stream     string            `json:"stream"`
	SourceID   string            `json:"source_id"`
	Group      string            `json:"group"`
	Consumer   string            `json:"consumer"`
	Error      string            `json:"error"`
	Deliveries int64             `json:"deliveries"`
	Time       *time.Time        `json:"time,omitempty"`
	Values     map[string]string `json:"values"`
}

func deadLetterJSON(d streamtx.DeadLetter) deadLetterView {
	v := deadLetterView{ID: d.ID, Stream: d.Stream, SourceID: d.SourceID, Group: d.Group,
		Consumer: d.Consumer, Error: d.Error, Deliveries: d.Deliveries, Values: d.Values}
	if !d.Time.IsZero() {
		t := d.Time.UTC()
		v.Time = &t
	}
	return v
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// oneLine returns s on one line, cut to at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
