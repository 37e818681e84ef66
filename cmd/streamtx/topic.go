package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
)

const topicUsage = `Usage:
  streamtx topic create TOPIC --partitions N [--colocate NAME]
  streamtx topic describe TOPIC [--group GROUP] [--json]

A topic is P partition streams, TOPIC:{TOPIC.p0} to TOPIC:{TOPIC.p<P-1>}
(TOPIC:{NAME.p<p>} with --colocate NAME), and a record of its partition
count, stx:{TOPIC}:topic.

  create    creates the topic, or does nothing when it exists with the same
            --partitions and --colocate (it fails when it exists with
            others: a topic's partition count never changes); prints the
            partition streams
  describe  the partitions and, per consumer group, which instance owns
            each partition (its lease: epoch, time left), the lag and
            pending entries there, and the group's members

inspect and trim --safe accept a topic where they take a stream: they work
on each partition stream.

Run 'streamtx topic SUBCOMMAND --help' for its flags.
`

func runTopic(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 {
		return usagef("topic: missing subcommand: create or describe")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, topicUsage)
		return errHelp
	case "create":
		return runTopicCreate(ctx, c, args[1:])
	case "describe":
		return runTopicDescribe(ctx, c, args[1:])
	}
	return usagef("topic: unknown subcommand %q: want create or describe", args[0])
}

func runTopicCreate(ctx context.Context, c *cli, args []string) error {
	f := c.newFlags("topic create TOPIC --partitions N [--colocate NAME]",
		"Creates a topic of N partitions, or checks that it exists with N\n"+
			"partitions (and NAME): running it again changes nothing. Prints the\n"+
			"partition streams.\n")
	partitions := f.Int("partitions", 0, "the number of partitions `N`, 1 to 1024; fixed for the topic's lifetime")
	colocate := f.String("colocate", "", "co-location `NAME`: topics with one NAME and the same N share each partition's cluster slot")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	set := false
	f.Visit(func(fl *flag.Flag) { set = set || fl.Name == "partitions" })
	if !set {
		return usagef("topic create: --partitions N is required (it cannot change later)")
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	t, err := streamtx.CreateTopic(ctx, rdb, pos[0], streamtx.TopicConfig{Partitions: *partitions, Colocate: *colocate})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "topic %s: %s", pos[0], partitionsOf(t.Partitions()))
	if *colocate != "" {
		fmt.Fprintf(c.stdout, ", co-located as %q", *colocate)
	}
	fmt.Fprintln(c.stdout)
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tSTREAM")
	for p := range t.Partitions() {
		fmt.Fprintf(tw, "%d\t%s\n", p, t.Stream(p))
	}
	return tw.Flush()
}

const topicDescribeHelp = `Prints the topic's partition count and co-location name, then one row per
partition and consumer group: the partition stream and its length, the
instance that owns the partition for the group (its consumer name and
instance ID), the lease's epoch (the fencing token, which grows at every
acquisition) and time left ("expired": the owner stopped renewing it, and
another member may take it; "free": nobody holds it), and the group's lag
and pending entries on the partition stream. Then the group's members:
each instance, how many partitions it owns, and its heartbeat's time left
("expired" until another member's heartbeat removes it). Times are
measured by the Redis clock.

A partition stream that nothing was published to yet shows "-".
Per-stream detail: streamtx inspect TOPIC.
`

func runTopicDescribe(ctx context.Context, c *cli, args []string) error {
	f := c.newFlags("topic describe TOPIC [--group GROUP] [--json]", topicDescribeHelp)
	group := f.String("group", "", "only this consumer `GROUP`")
	asJSON := f.Bool("json", false, "print JSON")
	pos, err := f.parse(args, 1, 1)
	if err != nil {
		return err
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	info, err := streamtx.InspectTopic(ctx, rdb, pos[0])
	if err != nil {
		return err
	}
	if *group != "" {
		var only []streamtx.TopicGroupInfo
		for _, g := range info.Groups {
			if g.Name == *group {
				only = append(only, g)
			}
		}
		if only == nil {
			return fmt.Errorf("group %q not found on any partition of topic %q", *group, info.Name)
		}
		info.Groups = only
	}
	if *asJSON {
		return writeJSON(c.stdout, topicJSON(info))
	}
	printTopic(c.stdout, info)
	return nil
}

func printTopic(w io.Writer, info *streamtx.TopicInfo) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "topic\t%s\n", info.Name)
	fmt.Fprintf(tw, "partitions\t%d\n", info.Partitions)
	fmt.Fprintf(tw, "colocate\t%s\n", dash(info.Colocate))
	tw.Flush()

	fmt.Fprintln(w)
	fmt.Fprintln(tw, "PARTITION\tSTREAM\tLENGTH\tGROUP\tOWNER\tINSTANCE\tEPOCH\tLEASE\tLAG\tPENDING")
	for p, stream := range info.Streams {
		s := info.Inspected[p]
		length := "-"
		if s != nil {
			length = strconv.FormatInt(s.Length, 10)
		}
		if len(info.Groups) == 0 {
			fmt.Fprintf(tw, "%d\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\n", p, stream, length)
			continue
		}
		for _, g := range info.Groups {
			l := g.Leases[p]
			owner, instance, epoch := "-", "-", "-"
			if l.Owner != "" {
				owner, instance = l.Consumer, instanceSuffix(l.Owner)
			}
			if l.Epoch > 0 {
				epoch = strconv.FormatInt(l.Epoch, 10)
			}
			lag, pending := "-", "-"
			if gi := groupOf(s, g.Name); gi != nil {
				lag, pending = strconv.FormatInt(gi.Lag, 10), strconv.FormatInt(gi.Pending, 10)
				if !gi.LagExact {
					lag = "~" + lag
				}
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p, stream, length, g.Name,
				owner, instance, epoch, leaseState(l, info.Time), lag, pending)
		}
	}
	tw.Flush()

	fmt.Fprintln(w)
	if len(info.Groups) == 0 {
		fmt.Fprintln(w, "no consumer groups")
		return
	}
	fmt.Fprintln(tw, "GROUP\tMEMBER\tINSTANCE\tOWNS\tHEARTBEAT")
	for _, g := range info.Groups {
		if len(g.Members) == 0 {
			fmt.Fprintf(tw, "%s\t(none)\t\t\t\n", g.Name)
		}
		for _, m := range g.Members {
			beat := "expired"
			if m.Live {
				beat = fmtDuration(m.Until.Sub(info.Time))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", g.Name, m.Consumer, instanceSuffix(m.ID), owns(g, m.ID), beat)
		}
	}
	tw.Flush()
}

// leaseState says how long l has left at now: the time, "expired" or "free".
func leaseState(l streamtx.LeaseInfo, now time.Time) string {
	switch {
	case l.Live:
		return fmtDuration(l.Until.Sub(now))
	case l.Owner != "":
		return "expired"
	}
	return "free"
}

// groupOf returns the group called name of s; nil when s is nil or has no
// such group.
func groupOf(s *streamtx.StreamInfo, name string) *streamtx.GroupInfo {
	if s == nil {
		return nil
	}
	for i := range s.Groups {
		if s.Groups[i].Name == name {
			return &s.Groups[i]
		}
	}
	return nil
}

// owns counts the partitions whose live lease of g instance holds.
func owns(g streamtx.TopicGroupInfo, instance string) int {
	n := 0
	for _, l := range g.Leases {
		if l.Live && l.Owner == instance {
			n++
		}
	}
	return n
}

// instanceSuffix returns the part of an instance ID after its consumer name
// ("<consumer name>/<16 hex digits>"); "-" when there is none.
func instanceSuffix(id string) string {
	if i := strings.LastIndexByte(id, '/'); i >= 0 {
		return id[i+1:]
	}
	return "-"
}

func partitionsOf(n int) string {
	if n == 1 {
		return "1 partition"
	}
	return fmt.Sprintf("%d partitions", n)
}

// JSON view of topic describe: times in RFC 3339, durations in milliseconds.

type topicView struct {
	Topic      string            `json:"topic"`
	Partitions int               `json:"partitions"`
	Colocate   string            `json:"colocate,omitempty"`
	Time       time.Time         `json:"time"`
	Streams    []topicStreamView `json:"streams"`
	Groups     []topicGroupView  `json:"groups"`
}

type topicStreamView struct {
	Partition int                  `json:"partition"`
	Stream    string               `json:"stream"`
	Exists    bool                 `json:"exists"` // false: nothing was published to it yet
	Length    int64                `json:"length"`
	Groups    []partitionGroupView `json:"groups"`
}

type partitionGroupView struct {
	Name  string    `json:"name"`
	Lease leaseView `json:"lease"`
	// OnStream reports whether the group exists on the partition stream;
	// Lag, LagExact and Pending are its figures there.
	OnStream bool  `json:"on_stream"`
	Lag      int64 `json:"lag"`
	LagExact bool  `json:"lag_exact"`
	Pending  int64 `json:"pending"`
}

type leaseView struct {
	State       string     `json:"state"` // "live", "expired" or "free"
	Owner       string     `json:"owner,omitempty"`
	Consumer    string     `json:"consumer,omitempty"`
	Epoch       int64      `json:"epoch"`
	Until       *time.Time `json:"until,omitempty"`
	RemainingMS int64      `json:"remaining_ms"`
}

type topicGroupView struct {
	Name    string       `json:"name"`
	Members []memberView `json:"members"`
}

type memberView struct {
	ID          string    `json:"id"`
	Consumer    string    `json:"consumer"`
	Live        bool      `json:"live"`
	Until       time.Time `json:"until"`
	RemainingMS int64     `json:"remaining_ms"`
	Owns        int       `json:"owns"` // partitions whose live lease it holds
}

func topicJSON(info *streamtx.TopicInfo) topicView {
	v := topicView{Topic: info.Name, Partitions: info.Partitions, Colocate: info.Colocate, Time: info.Time.UTC(),
		Streams: []topicStreamView{}, Groups: []topicGroupView{}}
	for p, stream := range info.Streams {
		sv := topicStreamView{Partition: p, Stream: stream, Groups: []partitionGroupView{}}
		if s := info.Inspected[p]; s != nil {
			sv.Exists, sv.Length = true, s.Length
		}
		for _, g := range info.Groups {
			l := g.Leases[p]
			lv := leaseView{State: "free", Owner: l.Owner, Consumer: l.Consumer, Epoch: l.Epoch}
			switch {
			case l.Live:
				lv.State, lv.RemainingMS = "live", l.Until.Sub(info.Time).Milliseconds()
			case l.Owner != "":
				lv.State = "expired"
			}
			if !l.Until.IsZero() {
				u := l.Until.UTC()
				lv.Until = &u
			}
			gv := partitionGroupView{Name: g.Name, Lease: lv}
			if gi := groupOf(info.Inspected[p], g.Name); gi != nil {
				gv.OnStream, gv.Lag, gv.LagExact, gv.Pending = true, gi.Lag, gi.LagExact, gi.Pending
			}
			sv.Groups = append(sv.Groups, gv)
		}
		v.Streams = append(v.Streams, sv)
	}
	for _, g := range info.Groups {
		gv := topicGroupView{Name: g.Name, Members: []memberView{}}
		for _, m := range g.Members {
			mv := memberView{ID: m.ID, Consumer: m.Consumer, Live: m.Live, Until: m.Until.UTC(), Owns: owns(g, m.ID)}
			if m.Live {
				mv.RemainingMS = m.Until.Sub(info.Time).Milliseconds()
			}
			gv.Members = append(gv.Members, mv)
		}
		v.Groups = append(v.Groups, gv)
	}
	return v
}

// topicOf returns the topic called name when err says that no stream name
// exists and a topic of that name does. Otherwise it returns nil and err,
// or the error reading the topic's record.
func topicOf(ctx context.Context, rdb redis.UniversalClient, name string, err error) (*streamtx.Topic, error) {
	if !errors.Is(err, streamtx.ErrStreamNotFound) {
		return nil, err
	}
	t, terr := streamtx.OpenTopic(ctx, rdb, name)
	switch {
	case errors.Is(terr, streamtx.ErrTopicNotFound), errors.Is(terr, streamtx.ErrConfig):
		return nil, err // not a topic (nor a topic's name): the stream is missing
	case terr != nil:
		return nil, terr
	}
	return t, nil
}
