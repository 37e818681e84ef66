package faultproxy_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/streamtx/streamtx/internal/faultproxy"
	"github.com/streamtx/streamtx/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// These tests check for leaked goroutines, so they do not run in parallel.

// checkLeaks fails t if goroutines started from now on outlive its cleanups
// registered after this call.
func checkLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// proxiedClient returns a client through p that never retries by itself.
func proxiedClient(t *testing.T, p *faultproxy.Proxy, name string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1, ClientName: name})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDropReplyOnceLosesReplyOfCommandThatRan(t *testing.T) {
	ctx := t.Context()
	rdb := redistest.Client(t)
	key := redistest.Prefix(t, rdb) + "k"
	checkLeaks(t)
	p := faultproxy.New(t, rdb.Options().Addr)
	c := proxiedClient(t, p, "")

	p.DropReplyOnce("INCR") // go-redis sends "incr": matching ignores case
	require.Error(t, c.Incr(ctx, key).Err(), "the reply is lost")
	select {
	case <-p.FiredCh():
	case <-ctx.Done():
		t.Fatal("FiredCh never received")
	}
	assert.Equal(t, 1, p.Fired())
	v, err := rdb.Get(ctx, key).Int()
	require.NoError(t, err)
	assert.Equal(t, 1, v, "the command ran on the server")

	n, err := c.Incr(ctx, key).Result()
	require.NoError(t, err, "the next command reconnects and gets its reply")
	assert.EqualValues(t, 2, n)
	assert.Equal(t, 1, p.Fired())
}

func TestDropReplyCountsDown(t *testing.T) {
	ctx := t.Context()
	rdb := redistest.Client(t)
	key := redistest.Prefix(t, rdb) + "k"
	checkLeaks(t)
	p := faultproxy.New(t, rdb.Options().Addr)
	c := proxiedClient(t, p, "")

	p.DropReply("\r\nincr\r\n", 2)
	require.NoError(t, c.Set(ctx, key, 0, 0).Err(), "other commands pass")
	require.Error(t, c.Incr(ctx, key).Err())
	require.Error(t, c.Incr(ctx, key).Err())
	n, err := c.Incr(ctx, key).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 3, n)
	assert.Equal(t, 2, p.Fired())
}

func TestCutAllFailsBlockedCommand(t *testing.T) {
	ctx := t.Context()
	rdb := redistest.Client(t)
	prefix := redistest.Prefix(t, rdb)
	checkLeaks(t)
	p := faultproxy.New(t, rdb.Options().Addr)
	name := strings.NewReplacer(":", "-").Replace(prefix + "blpop")
	c := proxiedClient(t, p, name)

	errc := make(chan error, 1)
	go func() { errc <- c.BLPop(ctx, time.Minute, prefix+"empty").Err() }()
	require.Eventually(t, func() bool {
		list, err := rdb.ClientList(ctx).Result()
		for line := range strings.Lines(list) {
			if strings.Contains(line, " name="+name+" ") {
				return err == nil && strings.Contains(line, " cmd=blpop ")
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond, "BLPOP never blocked on the server")
	assert.Equal(t, 1, p.Conns())

	p.CutAll()
	assert.Zero(t, p.Conns())
	select {
	case err := <-errc:
		require.Error(t, err)
		assert.False(t, errors.Is(err, redis.Nil), "BLPOP timed out instead of failing: %v", err)
	case <-time.After(30 * time.Second): // a bound, far below BLPOP's timeout
		t.Fatal("BLPOP still blocked after CutAll")
	}
}

func TestCloseEndsConnections(t *testing.T) {
	ctx := t.Context()
	rdb := redistest.Client(t)
	checkLeaks(t)
	p := faultproxy.New(t, rdb.Options().Addr)
	c := proxiedClient(t, p, "")

	require.NoError(t, c.Ping(ctx).Err())
	require.NoError(t, p.Close())
	assert.Zero(t, p.Conns())
	require.Error(t, c.Ping(ctx).Err(), "no proxy to reach")
	require.NoError(t, p.Close(), "Close is idempotent")
}
