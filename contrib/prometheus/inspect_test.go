package prometheus_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	stxprom "github.com/streamtx/streamtx/contrib/prometheus"
	"github.com/streamtx/streamtx/internal/redistest"
)

// TestInspectStats reads a topic's partitions and a plain stream with
// InspectStats, on Redis: lag and pending per partition and group; nothing
// for a partition nothing was published to, a missing stream or a missing
// topic; up 0 when a partition's key holds another type.
func TestInspectStats(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	pre := redistest.Prefix(t, rdb)
	ctx := context.Background()

	name := pre + "orders"
	top, err := streamtx.CreateTopic(ctx, rdb, name, streamtx.TopicConfig{Partitions: 4})
	require.NoError(t, err)
	p, err := streamtx.NewProducer(rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)
	var published [4]int64 // per partition
	for i := range 40 {
		key := "key-" + strconv.Itoa(i)
		if top.PartitionOf(key) == 3 {
			continue // partition 3 stays without a stream
		}
		_, err := p.PublishKeyed(ctx, name, key, map[string]any{"i": i})
		require.NoError(t, err)
		published[top.PartitionOf(key)]++
	}
	for part := range 3 {
		require.Positive(t, published[part], "keys for partition %d", part)
		require.NoError(t, rdb.XGroupCreate(ctx, top.Stream(part), "billing", "0").Err())
	}
	require.NoError(t, rdb.XGroupCreate(ctx, top.Stream(1), "audit", "$").Err())
	// billing reads 2 entries of partition 0 and leaves them pending.
	require.NoError(t, rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: "billing", Consumer: "c", Streams: []string{top.Stream(0), ">"}, Count: 2,
	}).Err())

	plain := pre + "plain"
	for range 3 {
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: plain, Values: []any{"k", "v"}}).Err())
	}
	require.NoError(t, rdb.XGroupCreate(ctx, plain, "g", "0").Err())

	c := stxprom.NewGroupStatsCollector(stxprom.InspectStats(rdb, stxprom.Sources{
		Streams: []string{plain, pre + "missing"},
		Topics:  []string{name, pre + "never-created"},
	}), stxprom.GroupStatsOptions{})

	part := func(group string, p int) map[string]string {
		return map[string]string{"topic": name, "group": group, "partition": strconv.Itoa(p)}
	}
	assert.Equal(t, 1.0, gauge(t, c, "streamtx_group_stats_up", nil))
	assert.Equal(t, float64(published[0]-2), gauge(t, c, "streamtx_partition_lag", part("billing", 0)))
	assert.Equal(t, 2.0, gauge(t, c, "streamtx_partition_pending", part("billing", 0)))
	assert.GreaterOrEqual(t, gauge(t, c, "streamtx_partition_oldest_pending_age_seconds", part("billing", 0)), 0.0)
	for _, p := range []int{1, 2} {
		assert.Equal(t, float64(published[p]), gauge(t, c, "streamtx_partition_lag", part("billing", p)), "partition %d", p)
		assert.Zero(t, gauge(t, c, "streamtx_partition_pending", part("billing", p)), "partition %d", p)
	}
	assert.Zero(t, gauge(t, c, "streamtx_partition_lag", part("audit", 1)))
	assert.Equal(t, 4, testutil.CollectAndCount(c, "streamtx_partition_lag"), "3 partitions of billing, 1 of audit; none for partition 3")
	assert.Equal(t, 3.0, gauge(t, c, "streamtx_group_lag", map[string]string{"stream": plain, "group": "g"}))
	assert.Equal(t, 1, testutil.CollectAndCount(c, "streamtx_group_lag"), "the plain stream only: no partition stream, nothing for the missing one")

	// A partition's key of another type fails the read.
	require.NoError(t, rdb.Set(ctx, top.Stream(3), "not a stream", 0).Err())
	assert.Equal(t, 0.0, gauge(t, c, "streamtx_group_stats_up", nil))
	assert.Zero(t, testutil.CollectAndCount(c, "streamtx_partition_lag"))
}
