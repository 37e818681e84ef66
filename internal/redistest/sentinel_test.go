package redistest_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
)

func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.StartSentinel(t, 2)
	nodes := s.Nodes()
	require.Len(t, nodes, 3)
	require.Len(t, s.SentinelAddrs(), 3)
	before := s.MasterAddr()
	assert.Equal(t, nodes[0].Addr(), before, "the first node starts as the master")

	rdb := s.FailoverClient(t)
	require.NoError(t, rdb.Set(ctx, "k", "v", 0).Err())
	// Wait for the replicas to have the write, so the failover cannot lose it.
	require.NoError(t, rdb.Wait(ctx, 2, 5*time.Second).Err())

	start := time.Now()
	s.Failover(t)
	after := s.MasterAddr()
	t.Logf("failover %s -> %s in %v", before, after, time.Since(start).Round(time.Millisecond))
	assert.NotEqual(t, before, after)

	v, err := rdb.Get(ctx, "k").Result()
	require.NoError(t, err, "the failover client follows the new master")
	assert.Equal(t, "v", v)
	require.NoError(t, rdb.Set(ctx, "k", "w", 0).Err())
	role, err := nodes[0].Client(t).Do(ctx, "ROLE").Slice()
	require.NoError(t, err)
	assert.Equal(t, "slave", role[0], "the old master is a replica")

	s.Stop()
	for i, n := range nodes {
		assert.Zero(t, n.Pid(), "node %d still running after Stop", i)
	}
	s.Stop() // again: nothing
}
