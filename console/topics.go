package console

import (
	"cmp"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/streamtx/streamtx"
)

// topicRow is one group of a topic on the overview, its figures summed over
// the partitions; a topic without groups (or whose inspection failed) has
// one row without a group.
type topicRow struct {
	Topic, Group   string
	Partitions     int
	Lag            int64
	LagExact       bool
	Pending        int64
	DeadLetters    int64
	Owned          int // partitions under a live lease of the group
	Unowned        int // partitions free or whose lease expired
	Members        int // live members of the group
	Level          int
	Reasons        []string
	Err            string
	Link           string // the topic page
	TopicHasGroups bool
}

// topicRows returns the overview's rows of the snapshot's topics, what
// needs attention first.
func (c *Console) topicRows(snap *snapshot) []topicRow {
	var out []topicRow
	for _, ts := range snap.Topics {
		link := c.link("/topic", "name", ts.Name)
		if ts.Info == nil {
			out = append(out, topicRow{Topic: ts.Name, Err: ts.Err, Link: link, Level: levelAlert,
				Reasons: []string{"inspect failed"}})
			continue
		}
		if len(ts.Info.Groups) == 0 {
			out = append(out, topicRow{Topic: ts.Name, Partitions: ts.Info.Partitions, Link: link})
			continue
		}
		for _, g := range ts.Info.Groups {
			row := topicRow{Topic: ts.Name, Group: g.Name, Partitions: ts.Info.Partitions, LagExact: true,
				Link: link, TopicHasGroups: true}
			for p := range ts.Info.Partitions {
				if gi := partitionGroup(ts.Info, p, g.Name); gi != nil {
					row.Lag += gi.Lag
					row.LagExact = row.LagExact && gi.LagExact
					row.Pending += gi.Pending
					row.DeadLetters += gi.DeadLetters
				}
				if g.Leases[p].Live {
					row.Owned++
				}
			}
			row.Unowned = ts.Info.Partitions - row.Owned
			for _, m := range g.Members {
				if m.Live {
					row.Members++
				}
			}
			row.Level, row.Reasons = topicAttention(row)
			out = append(out, row)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Level != b.Level {
			return a.Level > b.Level
		}
		return cmp.Or(strings.Compare(a.Topic, b.Topic), strings.Compare(a.Group, b.Group)) < 0
	})
	return out
}

// topicAttention says how urgently a topic's group needs a look, and why.
func topicAttention(r topicRow) (int, []string) {
	level, why := levelOK, []string(nil)
	raise := func(l int, reason string) {
		level = max(level, l)
		why = append(why, reason)
	}
	if r.DeadLetters > 0 {
		raise(levelAlert, fmt.Sprintf("%s dead letters", fmtNum(r.DeadLetters)))
	}
	if r.Unowned > 0 {
		raise(levelWarn, fmt.Sprintf("%d of %d partitions unowned", r.Unowned, r.Partitions))
	}
	if r.Lag > 0 || r.Pending > 0 {
		raise(levelWarn, "behind")
	}
	return level, why
}

// partitionGroup returns group's info on partition p of the topic, or nil
// (no stream yet, or the group is not on it).
func partitionGroup(info *streamtx.TopicInfo, p int, group string) *streamtx.GroupInfo {
	s := info.Inspected[p]
	if s == nil {
		return nil
	}
	for i := range s.Groups {
		if s.Groups[i].Name == group {
			return &s.Groups[i]
		}
	}
	return nil
}

type topicPage struct {
	At     time.Time
	Info   *streamtx.TopicInfo
	Groups []topicGroupView
}

type topicGroupView struct {
	Name           string
	Partitions     []partitionRow
	Members        []memberRow
	Owned, Unowned int
}

// partitionRow is a group's view of one partition.
type partitionRow struct {
	Partition  int
	Stream     string
	GroupLink  string // "" when the group is not on the stream
	NoStream   bool   // nothing published to the partition yet
	Owner      string // the instance ID
	Consumer   string
	Epoch      int64
	Lease      string // "free", "expired" or the time left
	State      string // "free", "expired" or "live"
	Lag        int64
	LagExact   bool
	Pending    int64
	DeadLetter int64
}

type memberRow struct {
	ID, Consumer string
	Left         string // heartbeat time left, or "expired"
	Live         bool
}

// topic serves the topic page (GET /topic?name=T) from the snapshot: it
// sends nothing to Redis.
func (c *Console) topic(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if !validName(name) {
		c.fail(w, http.StatusBadRequest, "name must be 1 to 1024 bytes without control characters")
		return
	}
	snap := c.snapshot(w, r)
	if snap == nil {
		return
	}
	ts := snap.topic(name)
	if ts == nil {
		c.fail(w, http.StatusNotFound, "the console lists no topic %q (as of %s)", name, fmtTime(snap.At))
		return
	}
	if ts.Info == nil {
		c.fail(w, http.StatusBadGateway, "inspecting topic %q failed (as of %s): %s", name, fmtTime(snap.At), ts.Err)
		return
	}
	info := ts.Info
	p := topicPage{At: snap.At, Info: info}
	for _, g := range info.Groups {
		v := topicGroupView{Name: g.Name}
		for i, l := range g.Leases {
			row := partitionRow{Partition: i, Stream: info.Streams[i], NoStream: info.Inspected[i] == nil,
				Owner: l.Owner, Consumer: l.Consumer, Epoch: l.Epoch, LagExact: true}
			switch {
			case l.Owner == "":
				row.Lease, row.State = "free", "free"
			case !l.Live:
				row.Lease, row.State = "expired", "expired"
			default:
				row.Lease, row.State = fmtDuration(l.Until.Sub(info.Time))+" left", "live"
				v.Owned++
			}
			if gi := partitionGroup(info, i, g.Name); gi != nil {
				row.GroupLink = c.link("/group", "stream", row.Stream, "group", g.Name)
				row.Lag, row.LagExact, row.Pending, row.DeadLetter = gi.Lag, gi.LagExact, gi.Pending, gi.DeadLetters
			}
			v.Partitions = append(v.Partitions, row)
		}
		v.Unowned = info.Partitions - v.Owned
		for _, m := range g.Members {
			mr := memberRow{ID: m.ID, Consumer: m.Consumer, Live: m.Live, Left: "expired"}
			if m.Live {
				mr.Left = fmtDuration(m.Until.Sub(info.Time)) + " left"
			}
			v.Members = append(v.Members, mr)
		}
		p.Groups = append(p.Groups, v)
	}
	c.render(w, http.StatusOK, "topic", layoutData{Title: "Topic " + name, Refresh: int(c.opts.Interval / time.Second),
		Page: p, Crumbs: []crumb{{"topic " + name, ""}}})
}
