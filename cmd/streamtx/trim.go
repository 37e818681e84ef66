package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

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

	res, err := streamtx.TrimSafe(ctx, rdb, stream, streamtx.TrimOptions{KeepMinAge: *keep, DryRun: *dry})
	if errors.Is(err, streamtx.ErrNoGroups) {
		fmt.Fprintf(c.stderr, "streamtx: %q has no consumer groups, so no position says which entries are no longer needed\n"+
			"(a group created later from \"0\" would find them gone). Nothing was trimmed.\n"+
			"To trim anyway: streamtx trim %s --force --maxlen N (or --minid ID)\n", stream, stream)
		return errReported
	}
	if err != nil {
		return err
	}
	verb := "trimmed"
	if res.DryRun {
		verb = "dry run: would trim"
	}
	fmt.Fprintf(c.stdout, "%s %s below %s\n", verb, entries(res.Removed), res.Point)
	held := fmt.Sprintf("group %q, which has not read the entries from %s on", res.HeldBy, res.SafePoint)
	if res.HeldByPending {
		held = fmt.Sprintf("group %q, whose oldest pending entry is %s", res.HeldBy, res.SafePoint)
	}
	if res.LimitedByAge {
		fmt.Fprintf(c.stdout, "held back by --keep-min-age %s (the safe point is %s, held back by %s)\n", *keep, res.SafePoint, held)
	} else {
		fmt.Fprintf(c.stdout, "held back by %s\n", held)
	}
	return nil
}

// forceTrim trims stream to maxlen entries (byLen) or below minid, warning
// about groups that lose entries they have not acknowledged.
func (c *cli) forceTrim(ctx context.Context, rdb redis.UniversalClient, stream string, byLen bool, maxlen int64, minid string, dry bool) error {
	info, err := streamtx.Inspect(ctx, rdb, stream)
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
