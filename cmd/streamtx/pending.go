package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
)

const pendingHelp = `Lists a group's pending entries (delivered, not acknowledged), oldest ID
first: the consumer holding each, its idle time since it was last delivered,
how many times it was delivered, and its age since it was added. When more
entries match than --count, it says which --from shows the next page.
`

func runPending(ctx context.Context, c *cli, args []string) error {
	f := c.newFlags("pending STREAM GROUP [--older-than D] [--consumer NAME] [--from ID] [--count N] [--json]", pendingHelp)
	olderThan := f.Duration("older-than", 0, "only entries idle at least `D`")
	consumer := f.String("consumer", "", "only entries held by consumer `NAME`")
	from := f.String("from", "-", "start at entry `ID` (inclusive)")
	count := f.Int64("count", 100, "list at most `N` entries")
	asJSON := f.Bool("json", false, "print JSON")
	pos, err := f.parse(args, 2, 2)
	if err != nil {
		return err
	}
	if *count <= 0 {
		return usagef("pending: --count must be positive")
	}
	if *olderThan < 0 {
		return usagef("pending: --older-than must not be negative")
	}
	stream, group := pos[0], pos[1]
	rdb, err := c.client()
	if err != nil {
		return err
	}
	pipe := rdb.Pipeline()
	tm := pipe.Time(ctx)
	xp := pipe.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: stream, Group: group, Idle: *olderThan, Start: *from, End: "+",
		Count: *count + 1, Consumer: *consumer,
	})
	_, _ = pipe.Exec(ctx)
	if err := tm.Err(); err != nil {
		return err
	}
	entries, err := xp.Result()
	if err != nil {
		return groupErr(stream, group, err)
	}
	next := ""
	if int64(len(entries)) > *count {
		next, entries = entries[*count].ID, entries[:*count]
	}
	now := tm.Val()

	if *asJSON {
		out := struct {
			Entries []pendingView `json:"entries"`
			Next    string        `json:"next,omitempty"`
		}{Entries: []pendingView{}, Next: next}
		for _, p := range entries {
			out.Entries = append(out.Entries, pendingView{ID: p.ID, Consumer: p.Consumer,
				Deliveries: p.RetryCount, IdleMS: p.Idle.Milliseconds(), AgeMS: idAge(p.ID, now).Milliseconds()})
		}
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	if len(entries) == 0 {
		fmt.Fprintln(c.stdout, "no pending entries")
		return nil
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCONSUMER\tIDLE\tDELIVERIES\tAGE")
	for _, p := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", p.ID, p.Consumer, fmtDuration(p.Idle), p.RetryCount,
			fmtDuration(idAge(p.ID, now)))
	}
	tw.Flush()
	if next != "" {
		fmt.Fprintf(c.stdout, "more: --from %s\n", next)
	}
	return nil
}

// errNotFound marks failures where what was asked for does not exist.
var errNotFound = errors.New("not found")

// groupErr turns a NOGROUP error into a clear "not found".
func groupErr(stream, group string, err error) error {
	if redis.HasErrorPrefix(err, "NOGROUP") {
		return fmt.Errorf("%w: stream %q has no group %q (or does not exist)", errNotFound, stream, group)
	}
	return err
}

// idAge is the time from the millisecond part of id to now; 0 if that is
// in the future or id does not parse.
func idAge(id string, now time.Time) time.Duration {
	ms, _, ok := parseID(id)
	if !ok || ms > uint64(now.UnixMilli()) {
		return 0
	}
	return now.Sub(time.UnixMilli(int64(ms)))
}
