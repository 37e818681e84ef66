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

// kind is what an overview row shows. Streams are the only kind today.
//
// Seam for topics (partitioned streams, see DESIGN.md): a topic will be a
// kind of its own, discovered from its metadata record rather than by SCAN,
// whose partitions are ordinary streams. The sampler will inspect each
// partition like a stream, and a topic's snapshot will add its partitions'
// figures up per group (lag and pending summed, the oldest pending entry the
// oldest of all), keep the per-partition StreamInfos for the group page
// (partition owners and lease epochs go there), and exclude the partition
// streams from the plain stream rows.
type kind string

// kindStream is a plain stream.
const kindStream kind = "stream"

// snapshot is what the sampler saw at one time. It is never modified once
// published: a refresh makes a new one.
type snapshot struct {
	At      time.Time
	Streams []*streamSnap // sorted by name
	// DiscoverErr is the last discovery's error, "" when it worked.
	DiscoverErr string
}

type streamSnap struct {
	Name string
	kind kind
	Info *streamtx.StreamInfo // nil when Err is set
	Err  string
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

// sample discovers the streams when due, inspects each and publishes the
// snapshot.
func (s *sampler) sample(ctx context.Context) {
	s.sampleMu.Lock()
	defer s.sampleMu.Unlock()
	now := s.now()
	if len(s.opts.Streams) > 0 {
		s.streams = s.opts.Streams
	} else if s.lastDiscover.IsZero() || now.Sub(s.lastDiscover) >= s.opts.DiscoverInterval {
		names, err := discover(ctx, s.rdb, s.opts.Match, s.opts.MaxStreams)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("console: discovering streams", "match", s.opts.Match, "err", err)
			s.discoverErr = err.Error()
		} else {
			s.streams, s.discoverErr = names, ""
		}
		s.lastDiscover = now
	}
	snap := &snapshot{At: now, DiscoverErr: s.discoverErr}
	for _, name := range s.streams {
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

// inspect inspects one stream, bounded by Interval. It returns nil for a
// discovered stream that is gone.
func (s *sampler) inspect(ctx context.Context, name string) *streamSnap {
	ictx, cancel := context.WithTimeout(ctx, s.opts.Interval)
	defer cancel()
	info, err := streamtx.Inspect(ictx, s.rdb, name)
	ss := &streamSnap{Name: name, kind: kindStream, Info: info}
	if err != nil {
		if errors.Is(err, streamtx.ErrStreamNotFound) && len(s.opts.Streams) == 0 {
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
	snap := &snapshot{At: old.At, DiscoverErr: old.DiscoverErr}
	for _, x := range old.Streams {
		if x.Name == name {
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
	var mu sync.Mutex
	set := map[string]bool{}
	scan := func(ctx context.Context, c redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := c.ScanType(ctx, cursor, match, 1000, "stream").Result()
			if err != nil {
				return err
			}
			mu.Lock()
			for _, k := range keys {
				if !strings.HasPrefix(k, "stx:") && validName(k) {
					set[k] = true
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
