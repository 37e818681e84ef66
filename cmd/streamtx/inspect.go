package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/streamtx/streamtx"
)

const inspectHelp = `Prints a stream's length and ends, then per group: lag (entries not yet
delivered; "~" marks an estimate), pending entries and the oldest one (its
idle time since last delivery, and its age since it was added), dead
letters, last delivered ID and trim point; then per consumer: pending
entries, idle time and streamtx committed offset. Ends with the safe trim
point: entries below it are delivered to and acknowledged by every group.

Given a topic (and no stream of that name), it prints each partition
stream in turn; one that nothing was published to yet is named only.
--json then prints {"topic": TOPIC, "streams": [...]}, one element per
partition (null for a stream that does not exist yet).

--watch refreshes every D until interrupted (or --count times).
`

func runInspect(ctx context.Context, c *cli, args []string) error {
	f := c.newFlags("inspect STREAM [--json] [--watch D [--count N]]", inspectHelp)
	asJSON := f.Bool("json", false, "print JSON")
	watch := f.Duration("watch", 0, "refresh every `D` until interrupted")
	count := f.Int("count", 0, "with --watch: stop after `N` refreshes (0: until interrupted)")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if *watch < 0 || *count < 0 {
		return usagef("inspect: --watch and --count must not be negative")
	}
	if *count > 0 && *watch == 0 {
		return usagef("inspect: --count needs --watch")
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	clear := *watch > 0 && !*asJSON && isTerminal(c.stdout)
	isTopic := false // once name was found to be a topic
	for n := 1; ; n++ {
		var info *streamtx.StreamInfo
		var topic *streamtx.TopicInfo
		if !isTopic {
			info, err = streamtx.Inspect(ctx, rdb, pos[0])
			var t *streamtx.Topic
			t, err = topicOf(ctx, rdb, pos[0], err)
			isTopic = t != nil
		}
		if isTopic {
			topic, err = streamtx.InspectTopic(ctx, rdb, pos[0])
		}
		if err != nil {
			if ctx.Err() != nil && *watch > 0 {
				return nil // interrupted
			}
			return err
		}
		if clear {
			fmt.Fprint(c.stdout, "\033[H\033[2J")
		} else if n > 1 && !*asJSON {
			fmt.Fprintln(c.stdout)
		}
		if *asJSON {
			enc := json.NewEncoder(c.stdout)
			if *watch == 0 {
				enc.SetIndent("", "  ")
			}
			var v any
			if topic != nil {
				v = inspectTopicJSON(topic)
			} else {
				v = inspectJSON(info)
			}
			if err := enc.Encode(v); err != nil {
				return err
			}
		} else if topic != nil {
			printInspectTopic(c.stdout, topic, *watch > 0)
		} else {
			printInspect(c.stdout, info, *watch > 0)
		}
		if *watch == 0 || (*count > 0 && n >= *count) {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*watch):
		}
	}
}

func printInspect(w io.Writer, info *streamtx.StreamInfo, stamp bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "stream\t%s\n", info.Stream)
	if stamp {
		fmt.Fprintf(tw, "time\t%s\n", info.Time.Format(time.RFC3339Nano))
	}
	fmt.Fprintf(tw, "length\t%d\n", info.Length)
	if info.Length > 0 {
		fmt.Fprintf(tw, "first\t%s\n", info.FirstID)
		fmt.Fprintf(tw, "last\t%s\n", info.LastID)
	}
	fmt.Fprintf(tw, "entries added\t%d\n", info.EntriesAdded)
	tw.Flush()

	if len(info.Groups) == 0 {
		fmt.Fprintln(w, "\nno consumer groups")
	} else {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "GROUP\tLAG\tPENDING\tOLDEST PENDING\tIDLE\tAGE\tDELIVERIES\tDEAD LETTERS\tLAST DELIVERED\tTRIM POINT")
		for _, g := range info.Groups {
			lag := strconv.FormatInt(g.Lag, 10)
			if !g.LagExact {
				lag = "~" + lag
			}
			oldest, idle, age, deliveries := "-", "-", "-", "-"
			if p := g.OldestPending; p != nil {
				oldest, idle, age = p.ID, fmtDuration(p.Idle), fmtDuration(p.Age)
				deliveries = strconv.FormatInt(p.Deliveries, 10)
			}
			dl := "-"
			if g.DeadLetterStream != "" {
				dl = strconv.FormatInt(g.DeadLetters, 10)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Name, lag, g.Pending,
				oldest, idle, age, deliveries, dl, g.LastDeliveredID, g.TrimPoint)
		}
		tw.Flush()

		fmt.Fprintln(w)
		fmt.Fprintln(tw, "GROUP\tCONSUMER\tPENDING\tIDLE\tCOMMITTED")
		listed := false
		for _, g := range info.Groups {
			seen := map[string]bool{}
			for _, ci := range g.Consumers {
				seen[ci.Name] = true
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", g.Name, ci.Name, ci.Pending, fmtDuration(ci.Idle), dash(ci.CommittedID))
				listed = true
			}
			// Committed offsets of consumers no longer in the group.
			var gone []string
			for name := range g.Offsets {
				if !seen[name] {
					gone = append(gone, name)
				}
			}
			sort.Strings(gone)
			for _, name := range gone {
				fmt.Fprintf(tw, "%s\t%s\t-\t-\t%s\n", g.Name, name+" (removed)", g.Offsets[name])
				listed = true
			}
		}
		if !listed {
			fmt.Fprintln(tw, "(none)")
		}
		tw.Flush()
	}

	fmt.Fprintln(w)
	if info.SafeTrimPoint == "" {
		fmt.Fprintln(w, "safe trim point: none (no consumer groups: trim --safe refuses; use trim --force)")
		return
	}
	var why string
	for _, g := range info.Groups {
		if g.Name != info.SafeTrimHeldBy {
			continue
		}
		if g.TrimPointPending {
			why = fmt.Sprintf("its oldest pending entry is %s", g.TrimPoint)
		} else {
			why = fmt.Sprintf("it has read up to %s", g.LastDeliveredID)
		}
	}
	fmt.Fprintf(w, "safe trim point: %s (held back by group %q: %s)\n", info.SafeTrimPoint, info.SafeTrimHeldBy, why)
}

// printInspectTopic prints each partition stream of a topic as printInspect
// prints a stream.
func printInspectTopic(w io.Writer, info *streamtx.TopicInfo, stamp bool) {
	fmt.Fprintf(w, "topic %s: %s\n", info.Name, partitionsOf(info.Partitions))
	for p, s := range info.Inspected {
		fmt.Fprintf(w, "\n== partition %d: %s\n", p, info.Streams[p])
		if s == nil {
			fmt.Fprintln(w, "no stream yet: nothing was published to it")
			continue
		}
		fmt.Fprintln(w)
		printInspect(w, s, stamp)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// fmtDuration prints d rounded for a table: 850ms, 12.3s, 5m3s, 3h2m, 12d3h.
func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	}
	d = d.Round(time.Hour)
	return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// JSON views: durations in milliseconds.

type inspectView struct {
	Stream          string      `json:"stream"`
	Time            time.Time   `json:"time"`
	Length          int64       `json:"length"`
	FirstID         string      `json:"first_id,omitempty"`
	LastID          string      `json:"last_id,omitempty"`
	LastGeneratedID string      `json:"last_generated_id"`
	EntriesAdded    int64       `json:"entries_added"`
	Groups          []groupView `json:"groups"`
	SafeTrimPoint   string      `json:"safe_trim_point,omitempty"`
	SafeTrimHeldBy  string      `json:"safe_trim_held_by,omitempty"`
}

type groupView struct {
	Name             string            `json:"name"`
	LastDeliveredID  string            `json:"last_delivered_id"`
	Lag              int64             `json:"lag"`
	LagExact         bool              `json:"lag_exact"`
	Pending          int64             `json:"pending"`
	OldestPending    *pendingView      `json:"oldest_pending,omitempty"`
	DeadLetterStream string            `json:"dead_letter_stream,omitempty"`
	DeadLetters      int64             `json:"dead_letters"`
	TrimPoint        string            `json:"trim_point"`
	TrimPointPending bool              `json:"trim_point_pending"`
	Consumers        []consumerView    `json:"consumers"`
	Offsets          map[string]string `json:"offsets"`
}

type pendingView struct {
	ID         string `json:"id"`
	Consumer   string `json:"consumer"`
	Deliveries int64  `json:"deliveries"`
	IdleMS     int64  `json:"idle_ms"`
	AgeMS      int64  `json:"age_ms"`
}

type consumerView struct {
	Name        string `json:"name"`
	Pending     int64  `json:"pending"`
	IdleMS      int64  `json:"idle_ms"`
	CommittedID string `json:"committed_id,omitempty"`
}

// inspectTopicView is inspect's JSON for a topic: Streams[p] is partition
// p's stream, nil when it does not exist yet.
type inspectTopicView struct {
	Topic   string         `json:"topic"`
	Streams []*inspectView `json:"streams"`
}

func inspectTopicJSON(info *streamtx.TopicInfo) inspectTopicView {
	v := inspectTopicView{Topic: info.Name, Streams: make([]*inspectView, len(info.Inspected))}
	for p, s := range info.Inspected {
		if s != nil {
			sv := inspectJSON(s)
			v.Streams[p] = &sv
		}
	}
	return v
}

func inspectJSON(info *streamtx.StreamInfo) inspectView {
	v := inspectView{
		Stream: info.Stream, Time: info.Time, Length: info.Length, FirstID: info.FirstID, LastID: info.LastID,
		LastGeneratedID: info.LastGeneratedID, EntriesAdded: info.EntriesAdded, Groups: []groupView{},
		SafeTrimPoint: info.SafeTrimPoint, SafeTrimHeldBy: info.SafeTrimHeldBy,
	}
	for _, g := range info.Groups {
		gv := groupView{
			Name: g.Name, LastDeliveredID: g.LastDeliveredID, Lag: g.Lag, LagExact: g.LagExact,
			Pending: g.Pending, DeadLetterStream: g.DeadLetterStream, DeadLetters: g.DeadLetters,
			TrimPoint: g.TrimPoint, TrimPointPending: g.TrimPointPending,
			Consumers: []consumerView{}, Offsets: g.Offsets,
		}
		if p := g.OldestPending; p != nil {
			gv.OldestPending = &pendingView{ID: p.ID, Consumer: p.Consumer, Deliveries: p.Deliveries,
				IdleMS: p.Idle.Milliseconds(), AgeMS: p.Age.Milliseconds()}
		}
		for _, ci := range g.Consumers {
			gv.Consumers = append(gv.Consumers, consumerView{Name: ci.Name, Pending: ci.Pending,
				IdleMS: ci.Idle.Milliseconds(), CommittedID: ci.CommittedID})
		}
		v.Groups = append(v.Groups, gv)
	}
	return v
}
