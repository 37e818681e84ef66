package console

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
)

// kind is what a streamSnap is: a plain stream, or a partition of a topic.
type kind string

const (
	// kindStream is a plain stream: a row of its own on the overview.
	kindStream kind = "stream"
	// kindPartition is a partition stream of a topic, inspected with it by
	// InspectTopic: it is shown on the topic's row and page, not as a
	// stream row, and its group pages work like a stream's.
	kindPartition kind = "partition"
)

// snapshot is what the sampler saw at one time. It is never modified once
// published: a refresh makes a new one.
type snapshot struct {
	At      time.Time
	Streams []*streamSnap // sorted by name; with the topics' partitions
	Topics  []*topicSnap  // sorted by name
	// DiscoverErr is the last discovery's error, "" when it worked.
	DiscoverErr string
}

type streamSnap struct {
	Name string
	kind kind
	Info *streamtx.StreamInfo // nil when Err is set
	Err  string
	// Topic and Partition locate a kindPartition stream.
	Topic     string
	Partition int
}

// topicSnap is InspectTopic's reading of one topic.
type topicSnap struct {
	Name string
	Info *streamtx.TopicInfo // nil when Err is set
	Err  string
}

func (s *snapshot) topic(name string) *topicSnap {
	i, ok := slices.BinarySearchFunc(s.Topics, name, func(x *topicSnap, n string) int { return strings.Compare(x.Name, n) })
	if !ok {
		return nil
	}
	return s.Topics[i]
}

func (s *snapshot) stream(name string) *streamSnap {
	if s == nil {
		return nil
	}
	i, ok := slices.BinarySearchFunc(s.Streams, name, func(x *streamSnap, n string) int { return strings.Compare(x.Name, n) })
	if !ok {
		return nil
	}
	return s.Streams[i]
}

// group returns the snapshot's info of stream and group, or nil.
func (s *snapshot) group(stream, group string) (*streamtx.StreamInfo, *streamtx.GroupInfo) {
	ss := s.stream(stream)
	if ss == nil || ss.Info == nil {
		return nil, nil
	}
	for i := range ss.Info.Groups {
		if ss.Info.Groups[i].Name == group {
			return ss.Info, &ss.Info.Groups[i]
		}
	}
	return ss.Info, nil
}

// point is one sample of a group.
type point struct {
	At           time.Time
	Lag, Pending int64
}

type groupKey struct{ stream, group string }

// sampler inspects the streams every Interval and keeps the last snapshot
// and each group's recent lag. Its run loop is the only goroutine; pages
// read under mu.
type sampler struct {
	rdb  redis.UniversalClient
	opts Options
	log  *slog.Logger
	now  func() time.Time

	sampleMu     sync.Mutex // one sample or refresh at a time
	streams      []string   // discovered; under sampleMu
	topics       []string   // discovered; under sampleMu
	discoverErr  string     // under sampleMu
	lastDiscover time.Time  // under sampleMu

	mu    sync.RWMutex
	snap  *snapshot
	hist  map[groupKey][]point
	ready chan struct{} // closed when the first snapshot is published
	once  sync.Once
}

func newSampler(rdb redis.UniversalClient, opts Options, log *slog.Logger) *sampler {
	return &sampler{rdb: rdb, opts: opts, log: log, now: time.Now,
		hist: map[groupKey][]point{}, ready: make(chan struct{})}
}

// run samples at once, then every Interval, until ctx is cancelled.
func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		s.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// wait returns the latest snapshot, waiting for the first one.
func (s *sampler) wait(ctx context.Context) (*snapshot, error) {
	select {
	case <-s.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.snap, nil
}

// history returns the group's samples, oldest first.
func (s *sampler) history(stream, group string) []point {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.hist[groupKey{stream, group}])
}

// configured reports whether Options name the streams and topics to show
// (then nothing is discovered).
func (o *Options) configured() bool { return len(o.Streams) > 0 || len(o.Topics) > 0 }

// sample discovers the streams and topics when due, inspects each and
// publishes the snapshot.
func (s *sampler) sample(ctx context.Context) {
	s.sampleMu.Lock()
	defer s.sampleMu.Unlock()
	now := s.now()
	if s.opts.configured() {
		s.streams, s.topics = s.opts.Streams, s.opts.Topics
	} else if s.lastDiscover.IsZero() || now.Sub(s.lastDiscover) >= s.opts.DiscoverInterval {
		names, err := discover(ctx, s.rdb, s.opts.Match, s.opts.MaxStreams)
		var topics []string
		if err == nil {
			topics, err = discoverTopics(ctx, s.rdb, s.opts.Match, s.opts.MaxStreams)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("console: discovering streams and topics", "match", s.opts.Match, "err", err)
			s.discoverErr = err.Error()
		} else {
			s.streams, s.topics, s.discoverErr = names, topics, ""
		}
		s.lastDiscover = now
	}
	snap := &snapshot{At: now, DiscoverErr: s.discoverErr}
	partitions := map[string]bool{}
	for _, name := range s.topics {
		ts := s.inspectTopic(ctx, name)
		if ctx.Err() != nil {
			return // stopping: publish nothing half done
		}
		if ts == nil {
			continue
		}
		snap.Topics = append(snap.Topics, ts)
		if ts.Info == nil {
			continue
		}
		for p, info := range ts.Info.Inspected {
			if info != nil && !partitions[info.Stream] {
				partitions[info.Stream] = true
				snap.Streams = append(snap.Streams, &streamSnap{Name: info.Stream, kind: kindPartition, Info: info,
					Topic: ts.Name, Partition: p})
			}
		}
	}
	for _, name := range s.streams {
		if partitions[name] {
			continue // inspected with its topic
		}
		ss := s.inspect(ctx, name)
		if ctx.Err() != nil {
			return // stopping: publish nothing half done
		}
		if ss != nil {
			snap.Streams = append(snap.Streams, ss)
		}
	}
	s.publish(snap, true)
}

// inspectTopic inspects one topic and its partitions, bounded by Interval.
// It returns nil for a discovered topic that is gone.
func (s *sampler) inspectTopic(ctx context.Context, name string) *topicSnap {
	ictx, cancel := context.WithTimeout(ctx, s.opts.Interval)
	defer cancel()
	info, err := streamtx.InspectTopic(ictx, s.rdb, name)
	ts := &topicSnap{Name: name, Info: info}
	if err != nil {
		if errors.Is(err, streamtx.ErrTopicNotFound) && !s.opts.configured() {
			return nil
		}
		ts.Info, ts.Err = nil, err.Error()
	}
	return ts
}

// inspect inspects one stream, bounded by Interval. It returns nil for a
// discovered stream that is gone.
func (s *sampler) inspect(ctx context.Context, name string) *streamSnap {
	ictx, cancel := context.WithTimeout(ctx, s.opts.Interval)
	defer cancel()
	info, err := streamtx.Inspect(ictx, s.rdb, name)
	ss := &streamSnap{Name: name, kind: kindStream, Info: info}
	if err != nil {
		if errors.Is(err, streamtx.ErrStreamNotFound) && !s.opts.configured() {
			return nil
		}
		ss.Info, ss.Err = nil, err.Error()
	}
	return ss
}

// refreshStream inspects one stream at once (after an action changed it)
// and publishes a snapshot with it replaced, adding no chart sample.
func (s *sampler) refreshStream(ctx context.Context, name string) {
	s.sampleMu.Lock()
	defer s.sampleMu.Unlock()
	ss := s.inspect(ctx, name)
	s.mu.RLock()
	old := s.snap
	s.mu.RUnlock()
	if old == nil {
		return
	}
	snap := &snapshot{At: old.At, DiscoverErr: old.DiscoverErr, Topics: old.Topics}
	for _, x := range old.Streams {
		if x.Name == name {
			if ss != nil {
				ss.kind, ss.Topic, ss.Partition = x.kind, x.Topic, x.Partition
			}
			x = ss
		}
		if x != nil {
			snap.Streams = append(snap.Streams, x)
		}
	}
	s.publish(snap, false)
}

// publish makes snap the current snapshot; with record, it adds a chart
// sample per group and forgets samples older than History.
func (s *sampler) publish(snap *snapshot, record bool) {
	sort.Slice(snap.Streams, func(i, j int) bool { return snap.Streams[i].Name < snap.Streams[j].Name })
	sort.Slice(snap.Topics, func(i, j int) bool { return snap.Topics[i].Name < snap.Topics[j].Name })
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snap = snap
	if record {
		cutoff := snap.At.Add(-s.opts.History)
		seen := map[groupKey]bool{}
		for _, ss := range snap.Streams {
			if ss.Info == nil {
				continue
			}
			for _, g := range ss.Info.Groups {
				k := groupKey{ss.Name, g.Name}
				seen[k] = true
				s.hist[k] = append(s.hist[k], point{At: snap.At, Lag: g.Lag, Pending: g.Pending})
			}
		}
		for k, pts := range s.hist {
			i := 0
			for i < len(pts) && pts[i].At.Before(cutoff) {
				i++
			}
			switch {
			case i == len(pts):
				delete(s.hist, k)
			case i > 0:
				s.hist[k] = slices.Clone(pts[i:])
			}
		}
	}
	s.once.Do(func() { close(s.ready) })
}

// discover returns the stream keys matching match, without streamtx's own
// keys, sorted, at most limit of them; on every master of a cluster.
func discover(ctx context.Context, rdb redis.UniversalClient, match string, limit int) ([]string, error) {
	return scanNames(ctx, rdb, match, "stream", limit, func(k string) (string, bool) {
		return k, !strings.HasPrefix(k, "stx:") && validName(k)
	})
}

// Topic metadata records are "stx:{<topic>}:topic" (partition.MetaKey).
const (
	topicKeyPrefix = "stx:{"
	topicKeySuffix = "}:topic"
)

// discoverTopics returns the topics whose name matches match, found by
// their metadata records (SCAN MATCH stx:{<match>}:topic TYPE string),
// sorted, at most limit of them; on every master of a cluster.
func discoverTopics(ctx context.Context, rdb redis.UniversalClient, match string, limit int) ([]string, error) {
	return scanNames(ctx, rdb, topicKeyPrefix+match+topicKeySuffix, "string", limit, topicOfKey)
}

// scanNames scans the keys of type typ matching pattern, on every master
// of a cluster, and returns the names that name gives them (where it says
// ok), sorted, at most limit of them.
func scanNames(ctx context.Context, rdb redis.UniversalClient, pattern, typ string, limit int, name func(key string) (string, bool)) ([]string, error) {
	var mu sync.Mutex
	set := map[string]bool{}
	scan := func(ctx context.Context, c redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := c.ScanType(ctx, cursor, pattern, 1000, typ).Result()
			if err != nil {
				return err
			}
			mu.Lock()
			for _, k := range keys {
				if n, ok := name(k); ok {
					set[n] = true
				}
			}
			mu.Unlock()
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	var err error
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return scan(ctx, node) })
	} else {
		err = scan(ctx, rdb)
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(set))
	for k := range set {
		names = append(names, k)
	}
	sort.Strings(names)
	if len(names) > limit {
		names = names[:limit]
	}
	return names, nil
}

// topicOfKey returns the topic whose metadata record is key, if key is one:
// a topic name holds no brace.
func topicOfKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, topicKeyPrefix)
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, topicKeySuffix)
	if !ok || strings.ContainsAny(name, "{}") || !validName(name) {
		return "", false
	}
	return name, true
}
