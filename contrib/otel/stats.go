package otel

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric"

	"github.com/streamtx/streamtx"
)

// GroupStats is what RegisterGroupStats reports for one consumer group.
type GroupStats struct {
	Stream, Group string
	// Lag is the number of entries not yet delivered to the group.
	Lag int64
	// Pending is the number of entries delivered and not acknowledged.
	Pending int64
	// OldestPendingAge is the age of the oldest pending entry; 0 when none.
	OldestPendingAge time.Duration
}

// StatsFunc reads the stats of the groups to report. It is called at every
// collection.
type StatsFunc func(ctx context.Context) ([]GroupStats, error)

// InspectStreams returns a StatsFunc that reads every group of streams with
// streamtx.Inspect (two pipelined round trips per stream).
func InspectStreams(client redis.UniversalClient, streams ...string) StatsFunc {
	return func(ctx context.Context) ([]GroupStats, error) {
		var out []GroupStats
		for _, s := range streams {
			info, err := streamtx.Inspect(ctx, client, s)
			if err != nil {
				return nil, err
			}
			for _, g := range info.Groups {
				gs := GroupStats{Stream: s, Group: g.Name, Lag: g.Lag, Pending: g.Pending}
				if g.OldestPending != nil {
					gs.OldestPendingAge = g.OldestPending.Age
				}
				out = append(out, gs)
			}
		}
		return out, nil
	}
}

// RegisterGroupStats registers three asynchronous gauges read through fn at
// every collection, with messaging.system, messaging.destination.name and
// messaging.consumer.group.name:
//
//	streamtx.group.lag                  {entry}  entries not yet delivered to the group
//	streamtx.group.pending              {entry}  entries delivered and not acknowledged
//	streamtx.group.oldest_pending.age   s        age of the oldest pending entry (0 when none)
//
// When fn fails, the collection reports none of them, and the error goes to
// the SDK's error handler. Unregister the returned Registration to stop.
func (m *Metrics) RegisterGroupStats(fn StatsFunc) (metric.Registration, error) {
	lag, err := m.meter.Int64ObservableGauge("streamtx.group.lag", metric.WithUnit("{entry}"),
		metric.WithDescription("Entries of the stream not yet delivered to the group."))
	if err != nil {
		return nil, err
	}
	pending, err := m.meter.Int64ObservableGauge("streamtx.group.pending", metric.WithUnit("{entry}"),
		metric.WithDescription("Entries delivered to the group and not acknowledged."))
	if err != nil {
		return nil, err
	}
	age, err := m.meter.Float64ObservableGauge("streamtx.group.oldest_pending.age", metric.WithUnit("s"),
		metric.WithDescription("Age of the group's oldest pending entry (by its ID); 0 when none."))
	if err != nil {
		return nil, err
	}
	return m.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		stats, err := fn(ctx)
		if err != nil {
			return err
		}
		seen := make(map[[2]string]bool, len(stats))
		for _, s := range stats {
			k := [2]string{s.Stream, s.Group}
			if seen[k] {
				continue
			}
			seen[k] = true
			set := m.set(s.Stream, s.Group, "")
			o.ObserveInt64(lag, s.Lag, set)
			o.ObserveInt64(pending, s.Pending, set)
			o.ObserveFloat64(age, s.OldestPendingAge.Seconds(), set)
		}
		return nil
	}, lag, pending, age)
}
