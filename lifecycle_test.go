package streamtx_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

func noop(context.Context, *streamtx.Message, *txn.Tx) error { return nil }

// Run returning before it is ready (a fatal error) closes Done, not
// Ready: a caller selecting on both learns why.
func TestDoneWhenRunFailsBeforeReady(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src := e.key("in")
	require.NoError(t, e.rdb.Set(context.Background(), src, "not a stream", 0).Err())
	c, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "c"), streamtx.HandlerFunc(noop))
	require.NoError(t, err)
	require.Nil(t, c.Err())
	go c.Run(context.Background()) //nolint:errcheck // Err reports it
	select {
	case <-c.Ready():
		t.Fatal("ready on a key that is not a stream")
	case <-c.Done():
	}
	require.ErrorContains(t, c.Err(), "WRONGTYPE")
}

// Cancelled while it cannot reach Redis, Run returns nil and closes Done.
func TestDoneWhenCancelledDuringStart(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close()) // nothing listens there now
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer rdb.Close()
	ev := newEvents()
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{Stream: "s", Group: "g", Consumer: "c", Observer: ev}, streamtx.HandlerFunc(noop))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	go c.Run(ctx) //nolint:errcheck // Err reports it
	ev.wait(t, streamtx.EventError, func(streamtx.Event) bool { return true })
	require.Error(t, c.Health(), "not ready: unhealthy")
	cancel()
	select {
	case <-c.Ready():
		t.Fatal("ready without Redis")
	case <-c.Done():
	}
	require.NoError(t, c.Err())
}
