package redistest_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
)

func TestClusterFailover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := redistest.StartCluster(t, 3, 1)
	addrs := c.Addrs()
	require.Len(t, addrs, 6)
	rdb := c.Client(t)

	// redis-cli gives the first three nodes the slots, evenly.
	assert.Equal(t, addrs[0], c.MasterFor("{06S}"), "slot 0")        // CRC16("06S") % 16384 == 0
	assert.Equal(t, addrs[2], c.MasterFor("{k10322}"), "slot 16383") // CRC16("k10322") % 16384 == 16383
	assert.Equal(t, 0, c.Slot("{06S}"))

	const key = "{failover}:k"
	require.NoError(t, rdb.Set(ctx, key, "v", 0).Err())
	before := c.MasterFor(key)
	require.Contains(t, addrs[:3], before)

	c.Failover(t, key)
	after := c.MasterFor(key)
	assert.NotEqual(t, before, after)
	assert.Contains(t, addrs[3:], after, "a replica took over")

	v, err := rdb.Get(ctx, key).Result()
	require.NoError(t, err, "the cluster client follows the MOVED")
	assert.Equal(t, "v", v)
	require.NoError(t, rdb.Set(ctx, key, "w", 0).Err())

	// Fail back: the old master is now a replica of the new one.
	c.Failover(t, key)
	assert.Equal(t, before, c.MasterFor(key))
	v, err = rdb.Get(ctx, key).Result()
	require.NoError(t, err)
	assert.Equal(t, "w", v)

	pids := make([]int, 0, len(c.Nodes()))
	for _, s := range c.Nodes() {
		require.NotZero(t, s.Pid())
		pids = append(pids, s.Pid())
	}
	c.Stop()
	for i, s := range c.Nodes() {
		assert.Zero(t, s.Pid(), "node %d (pid %d) still running after Stop", i, pids[i])
	}
	c.Stop() // again: nothing
}
