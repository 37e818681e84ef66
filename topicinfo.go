package streamtx

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
)

// TopicInfo is what InspectTopic reads about a topic: each partition stream
// as Inspect reads it, and for each consumer group the lease of every
// partition and the group's members. Like StreamInfo, it is a snapshot taken
// in several round trips, not atomically.
type TopicInfo struct {
	Name       string
	Partitions int
	Colocate   string // the co-location name; "" when none
	// Time is the Redis server's clock when the leases and members were
	// read: lease and heartbeat expiries are measured against it.
	Time time.Time
	// Streams are the partition streams, index p: Streams[p] is
	// Topic.Stream(p).
	Streams []string
	// Inspected holds Inspect's reading of each partition stream, index p;
	// nil for a stream that does not exist yet (nothing was published to
	// it and no group created on it).
	Inspected []*StreamInfo
	// Groups are the consumer groups found on any partition stream, sorted
	// by name.
	Groups []TopicGroupInfo
}

// TopicGroupInfo describes one consumer group of a topic: which instance
// owns each partition, and which instances are members.
type TopicGroupInfo struct {
	Name string
	// Leases holds the group's lease of each partition, index p.
	Leases []LeaseInfo
	// Members are the instances in the group's membership set, sorted by
	// ID; expired ones (Live false) are listed until they are removed.
	Members []MemberInfo
}

// LeaseInfo is a group's lease of one partition.
type LeaseInfo struct {
	// Owner is the instance ID that holds the lease,
	// "<consumer name>/<16 hex digits>"; "" when the partition is free.
	Owner    string
	Consumer string    // the consumer name part of Owner
	Epoch    int64     // the fencing token: it grows at each acquisition; 0 when never held
	Until    time.Time // when the lease expires, by the Redis clock; zero when never held
	Live     bool      // Owner is set and Until is after TopicInfo.Time
}

// MemberInfo is one instance in a group's membership set.
type MemberInfo struct {
	ID       string    // the instance ID
	Consumer string    // the consumer name part of ID
	Until    time.Time // when its heartbeat expires, by the Redis clock
	Live     bool      // Until is after TopicInfo.Time
}

// inspectTopicParallel bounds the partitions InspectTopic inspects at once.
const inspectTopicParallel = 8

// InspectTopic reads the state of topic name: each partition stream as
// Inspect reads it (a few partitions at a time), and for every consumer
// group found on a partition stream the lease of each partition and the
// group's members. It only reads.
//
// It returns OpenTopic's errors (one wrapping ErrTopicNotFound when the
// topic was never created), an error wrapping ErrNotAStream when a
// partition's key holds another type, one saying that a lease record is
// corrupt, and otherwise the Redis or network error.
func InspectTopic(ctx context.Context, client redis.UniversalClient, name string) (*TopicInfo, error) {
	t, err := OpenTopic(ctx, client, name)
	if err != nil {
		return nil, err
	}
	n := t.Partitions()
	info := &TopicInfo{Name: name, Partitions: n, Colocate: t.m.Colocate(),
		Streams: make([]string, n), Inspected: make([]*StreamInfo, n)}
	for p := range n {
		info.Streams[p] = t.Stream(p)
	}
	if err := inspectPartitions(ctx, client, info.Streams, info.Inspected); err != nil {
		return nil, fmt.Errorf("streamtx: inspect topic %q: %w", name, err)
	}

	seen := map[string]bool{}
	for _, s := range info.Inspected {
		if s == nil {
			continue
		}
		for _, g := range s.Groups {
			if !seen[g.Name] {
				seen[g.Name] = true
				info.Groups = append(info.Groups, TopicGroupInfo{Name: g.Name})
			}
		}
	}
	sort.Slice(info.Groups, func(i, j int) bool { return info.Groups[i].Name < info.Groups[j].Name })

	pipe := client.Pipeline()
	tm := pipe.Time(ctx)
	members := make([]*redis.ZSliceCmd, len(info.Groups))
	leases := make([][]*redis.MapStringStringCmd, len(info.Groups))
	for i, g := range info.Groups {
		members[i] = pipe.ZRangeWithScores(ctx, keys.Members(name, g.Name), 0, -1)
		leases[i] = make([]*redis.MapStringStringCmd, n)
		for p := range n {
			sp, err := keys.NewSpace(info.Streams[p], g.Name)
			if err != nil {
				return nil, fmt.Errorf("streamtx: inspect topic %q: %w", name, err)
			}
			leases[i][p] = pipe.HGetAll(ctx, sp.Lease())
		}
	}
	_, _ = pipe.Exec(ctx) // errors are checked per command
	if info.Time, err = tm.Result(); err != nil {
		return nil, fmt.Errorf("streamtx: inspect topic %q: TIME: %w", name, err)
	}
	for i := range info.Groups {
		g := &info.Groups[i]
		zs, err := members[i].Result()
		if err != nil {
			return nil, fmt.Errorf("streamtx: inspect topic %q: members of %q: %w", name, g.Name, err)
		}
		g.Members = make([]MemberInfo, 0, len(zs))
		for _, z := range zs {
			id, _ := z.Member.(string)
			until := time.UnixMilli(int64(z.Score))
			g.Members = append(g.Members, MemberInfo{ID: id, Consumer: instanceConsumer(id), Until: until, Live: until.After(info.Time)})
		}
		sort.Slice(g.Members, func(a, b int) bool { return g.Members[a].ID < g.Members[b].ID })
		g.Leases = make([]LeaseInfo, n)
		for p, cmd := range leases[i] {
			h, err := cmd.Result()
			if err == nil {
				g.Leases[p], err = parseLease(h, info.Time)
			}
			if err != nil {
				return nil, fmt.Errorf("streamtx: inspect topic %q: lease of partition %d for %q: %w", name, p, g.Name, err)
			}
		}
	}
	return info, nil
}

// inspectPartitions runs Inspect on each of streams, a few at a time, into
// out (nil for a stream that does not exist).
func inspectPartitions(ctx context.Context, client redis.UniversalClient, streams []string, out []*StreamInfo) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	for range min(inspectTopicParallel, len(out)) {
		wg.Go(func() {
			for p := range next {
				s, err := Inspect(ctx, client, streams[p])
				switch {
				case errors.Is(err, ErrStreamNotFound):
				case err != nil:
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					cancel()
				default:
					out[p] = s
				}
			}
		})
	}
feed:
	for p := range out {
		select {
		case next <- p:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// parseLease reads a lease record's fields (an empty h: never held).
func parseLease(h map[string]string, now time.Time) (LeaseInfo, error) {
	l := LeaseInfo{Owner: h["owner"], Consumer: instanceConsumer(h["owner"])}
	if s, ok := h["epoch"]; ok {
		e, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return LeaseInfo{}, fmt.Errorf("corrupt lease record: epoch %q", s)
		}
		l.Epoch = e
	}
	if s, ok := h["until"]; ok {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return LeaseInfo{}, fmt.Errorf("corrupt lease record: until %q", s)
		}
		l.Until = time.UnixMilli(ms)
	}
	l.Live = l.Owner != "" && l.Until.After(now)
	return l, nil
}

// instanceConsumer returns the consumer name part of an instance ID
// ("<consumer name>/<16 hex digits>").
func instanceConsumer(id string) string {
	if i := strings.LastIndexByte(id, '/'); i >= 0 {
		return id[:i]
	}
	return id
}
