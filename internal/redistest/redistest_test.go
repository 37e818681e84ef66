package redistest_test

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func TestClientPings(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	require.NoError(t, rdb.Ping(context.Background()).Err())
}

func TestPrefixCleanupDeletesKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redistest.Client(t)

	var keys []string
	t.Run("name with [glob]*? chars", func(t *testing.T) {
		prefix := redistest.Prefix(t, rdb)
		assert.Regexp(t, regexp.MustCompile(`^t:[A-Za-z0-9_./-]+:[0-9a-f]{8}:$`), prefix)

		extra := "redistest-extra:" + prefix
		redistest.Cleanup(t, rdb, extra+"*")
		keys = []string{prefix + "a", prefix + "b", "stx:{" + prefix + "orders}:log", extra + "x"}
		for _, k := range keys {
			require.NoError(t, rdb.Set(ctx, k, "v", time.Hour).Err())
		}
		require.EqualValues(t, len(keys), rdb.Exists(ctx, keys...).Val())
	})

	n, err := rdb.Exists(ctx, keys...).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "keys left after the subtest's cleanup")
}

func TestRestartWithAOFKeepsKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := redistest.StartServer(t, "--appendonly", "yes", "--appendfsync", "always")
	addr, pid := srv.Addr(), srv.Pid()
	require.NoError(t, srv.Client(t).Set(ctx, "k", "v", 0).Err())

	srv.Kill()
	assert.Zero(t, srv.Pid())
	srv.Restart(t)

	assert.Equal(t, addr, srv.Addr())
	assert.NotEqual(t, pid, srv.Pid())
	v, err := srv.Client(t).Get(ctx, "k").Result()
	require.NoError(t, err)
	assert.Equal(t, "v", v)
}

func TestRestartRunningServer(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	pid := srv.Pid()
	srv.Restart(t)
	assert.NotEqual(t, pid, srv.Pid())
	require.NoError(t, srv.Client(t).Ping(context.Background()).Err())
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := redistest.StartServer(t)
	rdb := redis.NewClient(&redis.Options{
		Addr:        srv.Addr(),
		MaxRetries:  -1,
		ReadTimeout: 100 * time.Millisecond,
	})
	t.Cleanup(func() { rdb.Close() })
	require.NoError(t, rdb.Ping(ctx).Err())

	srv.Pause()
	require.Error(t, rdb.Ping(ctx).Err(), "a paused server answers nothing")
	srv.Resume()
	require.NoError(t, rdb.Ping(ctx).Err())
}
