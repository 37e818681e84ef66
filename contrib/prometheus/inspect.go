package prometheus

import (
	"context"
	"errors"
	"slices"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/streamtx/streamtx"
)

// Sources names the streams and topics whose groups InspectStats reads.
type Sources struct {
	// Streams are plain streams: each group of each is one GroupStats.
	Streams []string
	// Topics are partitioned topics (streamtx.CreateTopic): each group of
	// each partition's stream is one GroupStats with Topic and Partition
	// set, exported per partition.
	Topics []string
}

// inspectParallel bounds the streams InspectStats inspects at once.
const inspectParallel = 8

// InspectStats returns a StatsFunc that reads the groups of src's streams
// and of every partition of src's topics with streamtx.Inspect, up to 8
// streams at a time: their lag, pending entries and oldest pending entry.
// Each call opens the topics anew (one GET each) and takes two round trips
// per stream, plus a few per group whose lag Redis cannot report exactly
// (see streamtx.GroupInfo.LagExact).
//
// A stream that does not exist, a topic never created and a partition
// nothing was published to yet have no groups to report: they are left out,
// and the call succeeds. Any other error fails the whole call (the scrape
// then has streamtx_group_stats_up 0).
//
// The StatsFunc is safe for concurrent use; it keeps copies of src's slices.
func InspectStats(rdb redis.UniversalClient, src Sources) StatsFunc {
	streams, topics := slices.Clone(src.Streams), slices.Clone(src.Topics)
	return func(ctx context.Context) ([]GroupStats, error) {
		type source struct {
			stream, topic string
			partition     int
		}
		var all []source
		for _, s := range streams {
			all = append(all, source{stream: s})
		}
		for _, name := range topics {
			t, err := streamtx.OpenTopic(ctx, rdb, name)
			if errors.Is(err, streamtx.ErrTopicNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			for p := range t.Partitions() {
				all = append(all, source{stream: t.Stream(p), topic: name, partition: p})
			}
		}

		found := make([][]GroupStats, len(all)) // index: all's
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(inspectParallel)
		for i, s := range all {
			g.Go(func() error {
				info, err := streamtx.Inspect(gctx, rdb, s.stream)
				if errors.Is(err, streamtx.ErrStreamNotFound) {
					return nil
				}
				if err != nil {
					return err
				}
				for _, gi := range info.Groups {
					st := GroupStats{
						Stream: s.stream, Group: gi.Name, Topic: s.topic, Partition: s.partition,
						Lag: gi.Lag, Pending: gi.Pending,
					}
					if gi.OldestPending != nil {
						st.OldestPendingAge = gi.OldestPending.Age
					}
					found[i] = append(found[i], st)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		return slices.Concat(found...), nil
	}
}
