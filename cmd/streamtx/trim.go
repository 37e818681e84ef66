package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
)

const trimHelp = `With --safe, removes the entries every consumer group has received and
acknowledged: those below the lowest, over the groups, of the oldest pending
entry (or, for a group with nothing pending, the ID after its last-delivered
one), and older than --keep-min-age. The point is computed and the stream
trimmed in one Lua script, so a consumer reading meanwhile loses nothing. It
says which group held the point back. A stream without groups is not
trimmed: no group says what is no longer needed, and a group created later
from "0" would find its entries gone (exit status 1).

With --force, trims exactly to --maxlen N entries or below --minid ID,
whatever the groups still need: it warns about the groups that lose
entries they have not acknowledged.

Given a topic (and no stream of that name), --safe trims each partition
stream in turn, each to its own safe point, and prints one line per
partition; a partition without groups is not trimmed (exit status 1, after
the other partitions are trimmed). --force takes one stream, not a topic.

--dry-run reports what would be removed, removing nothing.
`

func runTrim(ctx context.Context, c *cli, args []string) error {
	f := c.newFlags("trim STREAM (--safe [--keep-min-age D] | --force (--maxlen N | --minid ID)) [--dry-run]", trimHelp)
	safe := f.Bool("safe", false, "trim only what every group has received and acknowledged")
	keep := f.Duration("keep-min-age", 0, "with --safe: keep entries younger than `D`")
	dry := f.Bool("dry-run", false, "report what would be removed; remove nothing")
	force := f.Bool("force", false, "trim with --maxlen or --minid, even entries groups still need")
	maxlen := f.Int64("maxlen", 0, "with --force: keep the newest `N` entries")
	minid := f.String("minid", "", "with --force: remove the entries below `ID`")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	switch {
	case *safe && *force:
		return usagef("trim: --safe and --force exclude each other")
	case *safe && (set["maxlen"] || set["minid"]):
		return usagef("trim: --maxlen and --minid need --force (--safe trims to the safe point)")
	case !*safe && !*force:
		return usagef("trim: give --safe, or --force with --maxlen N or --minid ID")
	case *force && set["maxlen"] == set["minid"]:
		return usagef("trim --force: give one of --maxlen N and --minid ID")
	case *force && set["keep-min-age"]:
		return usagef("trim: --keep-min-age applies to --safe only")
	case set["minid"] && !validID(*minid):
		return usagef("trim: --minid %q is not a stream ID (ms-seq)", *minid)
	case *keep < 0 || *maxlen < 0:
		return usagef("trim: --keep-min-age and --maxlen must not be negative")
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	stream := pos[0]
	if *force {
		return c.forceTrim(ctx, rdb, stream, set["maxlen"], *maxlen, *minid, *dry)
	}

	opts := streamtx.TrimOptions{KeepMinAge: *keep, DryRun: *dry}
	res, err := streamtx.TrimSafe(ctx, rdb, stream, opts)
	t, err := topicOf(ctx, rdb, stream, err)
	if t != nil {
		return c.trimTopic(ctx, rdb, stream, t, opts)
	}
	if errors.Is(err, streamtx.ErrNoGroups) {
		fmt.Fprintf(c.stderr, "streamtx: %q has no consumer groups, so no position says which entries are no longer needed\n"+
			"(a group created later from \"0\" would find them gone). Nothing was trimmed.\n"+
			"To trim anyway: streamtx trim %s --force --maxlen N (or --minid ID)\n", stream, stream)
		return errReported
	}
	if err != nil {
		return err
	}
	printTrim(c.stdout, res, *keep, "")
	return nil
}

// printTrim prints what a safe trim did: a line saying what it removed, and
// a line, starting with indent, saying what held it back.
func printTrim(w io.Writer, res streamtx.TrimResult, keep time.Duration, indent string) {
	verb := "trimmed"
	if res.DryRun {
		verb = "dry run: would trim"
	}
	fmt.Fprintf(w, "%s %s below %s\n", verb, entries(res.Removed), res.Point)
	held := fmt.Sprintf("group %q, which has not read the entries from %s on", res.HeldBy, res.SafePoint)
	if res.HeldByPending {
		held = fmt.Sprintf("group %q, whose oldest pending entry is %s", res.HeldBy, res.SafePoint)
	}
	if res.LimitedByAge {
		fmt.Fprintf(w, "%sheld back by --keep-min-age %s (the safe point is %s, held back by %s)\n", indent, keep, res.SafePoint, held)
	} else {
		fmt.Fprintf(w, "%sheld back by %s\n", indent, held)
	}
}

// trimTopic trims each partition stream of topic t (called name) safely,
// printing a line per partition. Partitions without groups are not trimmed:
// it says so, and fails once the others are trimmed.
func (c *cli) trimTopic(ctx context.Context, rdb redis.UniversalClient, name string, t *streamtx.Topic, opts streamtx.TrimOptions) error {
	var refused []int
	for p := range t.Partitions() {
		stream := t.Stream(p)
		fmt.Fprintf(c.stdout, "partition %d (%s): ", p, stream)
		res, err := streamtx.TrimSafe(ctx, rdb, stream, opts)
		switch {
		case errors.Is(err, streamtx.ErrStreamNotFound):
			fmt.Fprintln(c.stdout, "no stream yet: nothing to trim")
		case errors.Is(err, streamtx.ErrNoGroups):
			fmt.Fprintln(c.stdout, "no consumer groups: nothing trimmed")
			refused = append(refused, p)
		case err != nil:
			fmt.Fprintln(c.stdout, "failed")
			return err
		default:
			printTrim(c.stdout, res, opts.KeepMinAge, "  ")
		}
	}
	if len(refused) > 0 {
		which := fmt.Sprintf("partition %d of topic %q has", refused[0], name)
		if len(refused) > 1 {
			which = fmt.Sprintf("partitions %s of topic %q have", joinInts(refused), name)
		}
		fmt.Fprintf(c.stderr, "streamtx: %s no consumer groups, so no position says which entries are no longer needed\n"+
			"(a group created later from \"0\" would find them gone). Nothing was trimmed there.\n"+
			"To trim anyway: streamtx trim %s --force --maxlen N (or --minid ID)\n", which, t.Stream(refused[0]))
		return errReported
	}
	return nil
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// forceTrim trims stream to maxlen entries (byLen) or below minid, warning
// about groups that lose entries they have not acknowledged.
func (c *cli) forceTrim(ctx context.Context, rdb redis.UniversalClient, stream string, byLen bool, maxlen int64, minid string, dry bool) error {
	info, err := streamtx.Inspect(ctx, rdb, stream)
	t, err := topicOf(ctx, rdb, stream, err)
	if t != nil {
		return fmt.Errorf("%q is a topic of %s: trim --force trims one stream: give a partition stream "+
			"(streamtx topic describe %s lists them), or trim the topic with --safe", stream, partitionsOf(t.Partitions()), stream)
	}
	if err != nil {
		return err
	}
	// cut: the lowest ID kept ("" when nothing is removed).
	cut := minid
	if byLen {
		cut = ""
		switch {
		case info.Length <= maxlen:
		case maxlen == 0:
			cut = nextID(info.LastID)
		default:
			kept, err := rdb.XRevRangeN(ctx, stream, "+", "-", maxlen).Result()
			if err != nil {
				return err
			}
			if len(kept) > 0 {
				cut = kept[len(kept)-1].ID
			}
		}
	}
	loses := "loses"
	if dry {
		loses = "would lose"
	}
	for _, g := range info.Groups {
		if cut != "" && idLess(g.TrimPoint, cut) {
			what := fmt.Sprintf("entries it has not read (from %s on)", g.TrimPoint)
			if g.TrimPointPending {
				what = fmt.Sprintf("entries it has not acknowledged (from %s on)", g.TrimPoint)
			}
			fmt.Fprintf(c.stderr, "warning: group %q %s %s below %s\n", g.Name, loses, what, cut)
		}
	}

	var n int64
	switch {
	case dry && byLen:
		n = max(info.Length-maxlen, 0)
	case dry:
		n, err = countBelow(ctx, rdb, stream, minid)
	case byLen:
		n, err = rdb.XTrimMaxLen(ctx, stream, maxlen).Result()
	default:
		n, err = rdb.XTrimMinID(ctx, stream, minid).Result()
	}
	if err != nil {
		return err
	}
	what := fmt.Sprintf("to the newest %d", maxlen)
	if !byLen {
		what = "below " + minid
	}
	if dry {
		fmt.Fprintf(c.stdout, "dry run: would trim %s (%s)\n", entries(n), what)
	} else {
		fmt.Fprintf(c.stdout, "trimmed %s (%s)\n", entries(n), what)
	}
	return nil
}

// countBelow counts the entries of stream with IDs below id.
func countBelow(ctx context.Context, rdb redis.UniversalClient, stream, id string) (int64, error) {
	if !idLess("0-0", id) {
		return 0, nil
	}
	const page = 1000
	var n int64
	start := "-"
	for {
		ms, err := rdb.XRangeN(ctx, stream, start, "("+id, page).Result()
		if err != nil {
			return n, err
		}
		n += int64(len(ms))
		if len(ms) < page {
			return n, nil
		}
		start = "(" + ms[len(ms)-1].ID
	}
}

func entries(n int64) string {
	if n == 1 {
		return "1 entry"
	}
	return fmt.Sprintf("%d entries", n)
}
