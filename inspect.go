package streamtx

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/streamid"
)

var (
	// ErrStreamNotFound is returned by Inspect and TrimSafe when the stream
	// key does not exist.
	ErrStreamNotFound = errors.New("streamtx: stream not found")
	// ErrNotAStream is returned by Inspect and TrimSafe when the key exists
	// and holds another type than a stream.
	ErrNotAStream = errors.New("streamtx: key is not a stream")
)

// StreamInfo is what Inspect reads about a stream and its consumer groups.
// It is a snapshot taken in a few round trips, not atomically: while
// consumers run, figures of different groups may be a few milliseconds apart.
type StreamInfo struct {
	Stream          string
	Length          int64  // entries in the stream
	FirstID         string // ID of the first entry; "" when the stream is empty
	LastID          string // ID of the last entry; "" when the stream is empty
	LastGeneratedID string // the highest ID ever added (it survives trimming)
	EntriesAdded    int64  // entries ever added, trimmed and deleted ones included
	// Time is the Redis server's clock when the stream was inspected. Ages
	// are measured against it: it is the clock that stamps generated IDs.
	Time   time.Time
	Groups []GroupInfo // sorted by name

	// SafeTrimPoint is the lowest of the groups' TrimPoints: every entry
	// with an ID strictly below it has been delivered to every group and
	// acknowledged, so removing those entries (XTRIM MINID SafeTrimPoint)
	// loses nothing any group still needs. "" when the stream has no groups:
	// then no position says what is safe, and TrimSafe refuses to trim (a
	// group created later from "0", or a consumer not started yet, would
	// find its entries gone).
	SafeTrimPoint string
	// SafeTrimHeldBy is the group whose TrimPoint is SafeTrimPoint (the
	// first by name on a tie): the one to look at when the stream does not
	// shrink.
	SafeTrimHeldBy string
}

// GroupInfo describes one consumer group of an inspected stream.
type GroupInfo struct {
	Name            string
	LastDeliveredID string // the last ID the group delivered to any consumer
	// Lag is the number of entries in the stream after LastDeliveredID: not
	// delivered to the group yet. See LagExact.
	Lag int64
	// LagExact reports whether Lag was computed exactly. Redis 7.0's own
	// XINFO lag is nil after deletions (XDEL) or for a group set at an
	// arbitrary ID, and is wrong (too high) after entries the group had not
	// read were trimmed; Inspect uses it only when no entry was ever removed
	// from the stream. Otherwise it derives the lag from the stream's ends or
	// counts entries (from both ends of the group's position, at most
	// 100,000 per group). When counting stops at that bound, LagExact is
	// false and Lag is an estimate within the bounds counted: Redis's figure
	// when it lies within them, else the count so far (a lower bound).
	LagExact bool
	Pending  int64 // entries delivered and not acknowledged
	// OldestPending is the pending entry with the lowest ID; nil when
	// nothing is pending.
	OldestPending *PendingEntry
	Consumers     []ConsumerInfo // sorted by name
	// Offsets are the streamtx committed offsets of the group: consumer
	// name -> the highest entry ID it committed. It includes consumers that
	// are no longer in the group. Empty for groups that streamtx does not
	// consume.
	Offsets map[string]string
	// DeadLetterStream is the group's default dead-letter stream (see
	// DeadLetterStreamFor; a Consumer configured with another
	// Config.DeadLetterStream writes there instead) and DeadLetters its
	// length. "" when the stream's name cannot have derived keys.
	DeadLetterStream string
	DeadLetters      int64
	// TrimPoint is the group's own safe trim point: its oldest pending
	// entry when it has pending entries (TrimPointPending), else the ID just
	// after LastDeliveredID. The group has received and acknowledged every
	// entry below it.
	TrimPoint        string
	TrimPointPending bool
}

// PendingEntry is a delivered, unacknowledged entry.
type PendingEntry struct {
	ID         string
	Consumer   string        // the consumer that holds it
	Deliveries int64         // times it was delivered
	Idle       time.Duration // since it was last delivered (or claimed)
	// Age is the time since the entry was added: the inspection time minus
	// the millisecond part of its ID (for an ID given explicitly to XADD,
	// whatever that part says), 0 for an ID from the future.
	Age time.Duration
}

// ConsumerInfo describes one consumer of a group.
type ConsumerInfo struct {
	Name    string
	Pending int64         // entries it holds
	Idle    time.Duration // since its last read or claim
	// CommittedID is the highest entry ID it committed through streamtx
	// (its field in the group's offsets hash); "" when none.
	CommittedID string
}

const (
	lagCountLimit = 100_000 // entries read per group, at most, to count a lag
	lagCountPage  = 1000    // entries per XRANGE page when counting a lag
)

// Inspect reads the state of stream and its consumer groups: length and
// ends, each group's lag, pending entries and oldest pending entry,
// consumers, streamtx committed offsets and dead letters, and the point
// below which the stream can be trimmed safely (see StreamInfo.SafeTrimPoint).
//
// It takes two pipelined round trips, plus a few more per group whose lag
// Redis cannot report exactly (see GroupInfo.LagExact). It only reads. It
// returns an error wrapping ErrStreamNotFound or ErrNotAStream when the key
// is missing or holds another type.
func Inspect(ctx context.Context, client redis.UniversalClient, stream string) (*StreamInfo, error) {
	pipe := client.Pipeline()
	xs := pipe.XInfoStream(ctx, stream)
	xg := pipe.XInfoGroups(ctx, stream)
	tm := pipe.Time(ctx)
	_, _ = pipe.Exec(ctx) // errors are checked per command
	if err := xs.Err(); err != nil {
		return nil, streamErr(stream, err)
	}
	if err := xg.Err(); err != nil {
		return nil, streamErr(stream, err)
	}
	if err := tm.Err(); err != nil {
		return nil, fmt.Errorf("streamtx: inspect %q: TIME: %w", stream, err)
	}
	s := xs.Val()
	info := &StreamInfo{
		Stream:          stream,
		Length:          s.Length,
		FirstID:         s.FirstEntry.ID,
		LastID:          s.LastEntry.ID,
		LastGeneratedID: s.LastGeneratedID,
		EntriesAdded:    s.EntriesAdded,
		Time:            tm.Val(),
	}
	if info.Length == 0 {
		info.FirstID, info.LastID = "", ""
	}

	groups := xg.Val()
	sort.Slice(groups, func(i, j int) bool { return groups[i].Name < groups[j].Name })
	type groupCmds struct {
		consumers *redis.XInfoConsumersCmd
		oldest    *redis.XPendingExtCmd
		offsets   *redis.MapStringStringCmd
		dlqLen    *redis.IntCmd
	}
	cmds := make([]groupCmds, len(groups))
	if len(groups) > 0 {
		pipe = client.Pipeline()
		for i, g := range groups {
			cmds[i].consumers = pipe.XInfoConsumers(ctx, stream, g.Name)
			cmds[i].oldest = pipe.XPendingExt(ctx, &redis.XPendingExtArgs{
				Stream: stream, Group: g.Name, Start: "-", End: "+", Count: 1,
			})
			if sp, err := keys.NewSpace(stream, g.Name); err == nil {
				cmds[i].offsets = pipe.HGetAll(ctx, sp.Offsets())
				cmds[i].dlqLen = pipe.XLen(ctx, sp.DeadLetters())
			}
		}
		_, _ = pipe.Exec(ctx) // errors are checked per command
	}

	for i, g := range groups {
		c := cmds[i]
		if err := c.consumers.Err(); err != nil {
			if redis.HasErrorPrefix(err, "NOGROUP") {
				continue // destroyed since XINFO GROUPS
			}
			return nil, fmt.Errorf("streamtx: inspect %q: consumers of %q: %w", stream, g.Name, err)
		}
		gi := GroupInfo{
			Name:            g.Name,
			LastDeliveredID: g.LastDeliveredID,
			Pending:         g.Pending,
			Offsets:         map[string]string{},
		}
		pend, err := c.oldest.Result()
		if err != nil && !redis.HasErrorPrefix(err, "NOGROUP") {
			return nil, fmt.Errorf("streamtx: inspect %q: pending of %q: %w", stream, g.Name, err)
		}
		if len(pend) > 0 {
			p := pend[0]
			gi.OldestPending = &PendingEntry{
				ID: p.ID, Consumer: p.Consumer, Deliveries: p.RetryCount, Idle: p.Idle,
				Age: idAge(p.ID, info.Time),
			}
		}
		if c.offsets != nil {
			if gi.Offsets, err = c.offsets.Result(); err != nil {
				return nil, fmt.Errorf("streamtx: inspect %q: offsets of %q: %w", stream, g.Name, err)
			}
			if gi.DeadLetters, err = c.dlqLen.Result(); err != nil {
				return nil, fmt.Errorf("streamtx: inspect %q: dead letters of %q: %w", stream, g.Name, err)
			}
			gi.DeadLetterStream, _ = DeadLetterStreamFor(stream, g.Name)
		}
		cons := c.consumers.Val()
		sort.Slice(cons, func(i, j int) bool { return cons[i].Name < cons[j].Name })
		for _, ci := range cons {
			gi.Consumers = append(gi.Consumers, ConsumerInfo{
				Name: ci.Name, Pending: ci.Pending, Idle: ci.Idle, CommittedID: gi.Offsets[ci.Name],
			})
		}
		gi.TrimPoint = streamid.Next(gi.LastDeliveredID)
		if gi.OldestPending != nil && streamid.Less(gi.OldestPending.ID, gi.TrimPoint) {
			gi.TrimPoint, gi.TrimPointPending = gi.OldestPending.ID, true
		}
		if info.SafeTrimPoint == "" || streamid.Less(gi.TrimPoint, info.SafeTrimPoint) {
			info.SafeTrimPoint, info.SafeTrimHeldBy = gi.TrimPoint, gi.Name
		}
		gi.Lag, gi.LagExact, err = groupLag(ctx, client, info, gi.LastDeliveredID, g.Lag)
		if err != nil {
			return nil, fmt.Errorf("streamtx: inspect %q: lag of %q: %w", stream, g.Name, err)
		}
		info.Groups = append(info.Groups, gi)
	}
	return info, nil
}

// streamErr maps a stream command's error to ErrStreamNotFound or
// ErrNotAStream where it says so.
func streamErr(stream string, err error) error {
	switch {
	case redis.HasErrorPrefix(err, "no such key"): // ERR no such key
		return fmt.Errorf("%w: %q", ErrStreamNotFound, stream)
	case redis.HasErrorPrefix(err, "WRONGTYPE"):
		return fmt.Errorf("%w: %q", ErrNotAStream, stream)
	}
	return fmt.Errorf("streamtx: inspect %q: %w", stream, err)
}

// groupLag returns the number of entries after last (a group's
// last-delivered ID) and whether it is exact. redisLag is XINFO GROUPS' lag,
// -1 when Redis reported nil.
func groupLag(ctx context.Context, c redis.Cmdable, s *StreamInfo, last string, redisLag int64) (int64, bool, error) {
	switch {
	case s.Length == 0 || !streamid.Less(last, s.LastID):
		return 0, true, nil // nothing after last
	case streamid.Less(last, s.FirstID):
		return s.Length, true, nil // every entry is after last
	case redisLag >= 1 && redisLag < s.Length && s.EntriesAdded == s.Length:
		// Nothing was ever deleted or trimmed, so Redis's counters are
		// exact. (Redis 7.0 overcounts when entries after a group's position
		// were trimmed, even after the group reads on: redis/redis#13957.)
		return redisLag, true, nil
	}
	return countLag(ctx, c, s.Stream, last, redisLag, lagCountLimit, lagCountPage)
}

// countLag counts the entries after last by reading pages from both sides
// of it, one page of each per round trip: the entries after last directly,
// and the entries up to last to subtract from the stream's length. It stops
// as soon as either side is done, so it reads about twice the smaller side,
// and at most limit entries. When limit is reached, the lag is estimated
// (exact false): redisLag (-1 for none) if it lies within the bounds
// counted, else the lower bound.
func countLag(ctx context.Context, c redis.Cmdable, stream, last string, redisLag, limit, page int64) (lag int64, exact bool, err error) {
	tailStart, headStart := "("+last, "-"
	var tail, head, length int64
	for read := int64(0); read < limit; {
		pipe := c.Pipeline()
		t := pipe.XRangeN(ctx, stream, tailStart, "+", page)
		h := pipe.XRangeN(ctx, stream, headStart, last, page)
		n := pipe.XLen(ctx, stream)
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, false, err
		}
		tp, hp := t.Val(), h.Val()
		tail += int64(len(tp))
		head += int64(len(hp))
		length = n.Val()
		read += int64(len(tp) + len(hp))
		if int64(len(tp)) < page {
			return tail, true, nil
		}
		if int64(len(hp)) < page {
			return max(length-head, tail), true, nil
		}
		tailStart, headStart = "("+tp[len(tp)-1].ID, "("+hp[len(hp)-1].ID
	}
	if redisLag >= tail && redisLag <= length-head {
		return redisLag, false, nil
	}
	return tail, false, nil
}

// idAge returns now minus the millisecond part of id, or 0 if that is in
// the future or id does not parse.
func idAge(id string, now time.Time) time.Duration {
	ms, _, ok := streamid.Parse(id)
	if !ok || ms > uint64(now.UnixMilli()) {
		return 0
	}
	return now.Sub(time.UnixMilli(int64(ms)))
}
