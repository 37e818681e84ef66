package prometheus_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	stxprom "github.com/streamtx/streamtx/contrib/prometheus"
)

func TestGroupStatsCollector(t *testing.T) {
	t.Parallel()
	var fail atomic.Bool
	var deadline atomic.Bool
	fn := func(ctx context.Context) ([]stxprom.GroupStats, error) {
		_, ok := ctx.Deadline()
		deadline.Store(ok)
		if fail.Load() {
			return nil, errors.New("redis down")
		}
		return []stxprom.GroupStats{
			{Stream: "orders", Group: "billing", Lag: 12, Pending: 3, OldestPendingAge: 1500 * time.Millisecond},
			{Stream: "orders", Group: "shipping"},
			{Stream: "orders", Group: "billing", Lag: 99}, // a duplicate: ignored
		}, nil
	}
	c := stxprom.NewGroupStatsCollector(fn, stxprom.GroupStatsOptions{})

	const ok = `
# HELP streamtx_group_lag Entries of the stream not yet delivered to the group.
# TYPE streamtx_group_lag gauge
streamtx_group_lag{group="billing",stream="orders"} 12
streamtx_group_lag{group="shipping",stream="orders"} 0
# HELP streamtx_group_oldest_pending_age_seconds Age of the group's oldest pending entry; 0 when nothing is pending.
# TYPE streamtx_group_oldest_pending_age_seconds gauge
streamtx_group_oldest_pending_age_seconds{group="billing",stream="orders"} 1.5
streamtx_group_oldest_pending_age_seconds{group="shipping",stream="orders"} 0
# HELP streamtx_group_pending Entries delivered to the group and not acknowledged.
# TYPE streamtx_group_pending gauge
streamtx_group_pending{group="billing",stream="orders"} 3
streamtx_group_pending{group="shipping",stream="orders"} 0
# HELP streamtx_group_stats_errors_total Scrapes at which reading the group stats failed.
# TYPE streamtx_group_stats_errors_total counter
streamtx_group_stats_errors_total 0
# HELP streamtx_group_stats_up 1 when the group stats were read at this scrape, 0 when reading them failed.
# TYPE streamtx_group_stats_up gauge
streamtx_group_stats_up 1
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(ok)))
	assert.True(t, deadline.Load(), "the StatsFunc gets a deadline")

	fail.Store(true)
	const failed = `
# HELP streamtx_group_stats_errors_total Scrapes at which reading the group stats failed.
# TYPE streamtx_group_stats_errors_total counter
streamtx_group_stats_errors_total 1
# HELP streamtx_group_stats_up 1 when the group stats were read at this scrape, 0 when reading them failed.
# TYPE streamtx_group_stats_up gauge
streamtx_group_stats_up 0
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(failed)))

	fail.Store(false)
	assert.Equal(t, 8, testutil.CollectAndCount(c), "up, errors, and 3 gauges for 2 groups")
	assert.Equal(t, 1.0, counter(t, c, "streamtx_group_stats_errors_total", nil), "the error count stays")

	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

func TestGroupStatsCollectorInvalidUTF8(t *testing.T) {
	t.Parallel()
	c := stxprom.NewGroupStatsCollector(func(context.Context) ([]stxprom.GroupStats, error) {
		return []stxprom.GroupStats{{Stream: "s\xff", Group: "g"}}, nil
	}, stxprom.GroupStatsOptions{Namespace: "app", Timeout: time.Second})
	assert.Equal(t, 1, testutil.CollectAndCount(c, "app_group_lag"))
}

// The stats of a topic's partitions are exported per partition, in their
// own gauges, next to those of plain streams.
func TestGroupStatsCollectorPartitions(t *testing.T) {
	t.Parallel()
	c := stxprom.NewGroupStatsCollector(func(context.Context) ([]stxprom.GroupStats, error) {
		return []stxprom.GroupStats{
			{Stream: "orders:{orders.p0}", Topic: "orders", Partition: 0, Group: "billing", Lag: 5, Pending: 2, OldestPendingAge: 3 * time.Second},
			{Stream: "orders:{orders.p1}", Topic: "orders", Partition: 1, Group: "billing", Lag: 7},
			{Stream: "orders:{orders.p1}", Topic: "orders", Partition: 1, Group: "billing", Lag: 99}, // a duplicate: ignored
			{Stream: "orders:{orders.p1}", Topic: "orders", Partition: 1, Group: "audit"},
			{Stream: "orders", Group: "billing", Lag: 1}, // a plain stream of the topic's name
		}, nil
	}, stxprom.GroupStatsOptions{})

	const want = `
# HELP streamtx_group_lag Entries of the stream not yet delivered to the group.
# TYPE streamtx_group_lag gauge
streamtx_group_lag{group="billing",stream="orders"} 1
# HELP streamtx_partition_lag Entries of the topic partition's stream not yet delivered to the group.
# TYPE streamtx_partition_lag gauge
streamtx_partition_lag{group="audit",partition="1",topic="orders"} 0
streamtx_partition_lag{group="billing",partition="0",topic="orders"} 5
streamtx_partition_lag{group="billing",partition="1",topic="orders"} 7
# HELP streamtx_partition_oldest_pending_age_seconds Age of the group's oldest pending entry of the topic partition; 0 when nothing is pending.
# TYPE streamtx_partition_oldest_pending_age_seconds gauge
streamtx_partition_oldest_pending_age_seconds{group="audit",partition="1",topic="orders"} 0
streamtx_partition_oldest_pending_age_seconds{group="billing",partition="0",topic="orders"} 3
streamtx_partition_oldest_pending_age_seconds{group="billing",partition="1",topic="orders"} 0
# HELP streamtx_partition_pending Entries of the topic partition delivered to the group and not acknowledged.
# TYPE streamtx_partition_pending gauge
streamtx_partition_pending{group="audit",partition="1",topic="orders"} 0
streamtx_partition_pending{group="billing",partition="0",topic="orders"} 2
streamtx_partition_pending{group="billing",partition="1",topic="orders"} 0
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want),
		"streamtx_group_lag", "streamtx_partition_lag", "streamtx_partition_pending", "streamtx_partition_oldest_pending_age_seconds"))
	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	assert.Empty(t, problems)
}
