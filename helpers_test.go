package streamtx_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// env is one integration test's Redis and key prefix.
type env struct {
	t   *testing.T
	rdb *redis.Client
	p   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	rdb := redistest.Client(t)
	return &env{t: t, rdb: rdb, p: redistest.Prefix(t, rdb)}
}

func (e *env) key(name string) string { return e.p + name }

// add appends n entries to stream, fields from f(i) (i from 1).
func (e *env) add(stream string, n int, f func(i int) map[string]any) []string {
	e.t.Helper()
	ctx := context.Background()
	ids := make([]string, 0, n)
	for start := 1; start <= n; start += 500 {
		pipe := e.rdb.Pipeline()
		var cmds []*redis.StringCmd
		for i := start; i < start+500 && i <= n; i++ {
			cmds = append(cmds, pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: f(i)}))
		}
		_, err := pipe.Exec(ctx)
		require.NoError(e.t, err)
		for _, c := range cmds {
			ids = append(ids, c.Val())
		}
	}
	return ids
}

// cfg returns a config with short timings for tests.
func (e *env) cfg(stream, group, consumer string) streamtx.Config {
	return streamtx.Config{
		Stream:   stream,
		Group:    group,
		Consumer: consumer,
		Block:    50 * time.Millisecond,
		Backoff:  func(*streamtx.Message, error) time.Duration { return 10 * time.Millisecond },
	}
}

// run starts c.Run in a goroutine and returns a stop function that cancels
// it and waits for Run to return nil.
func run(t *testing.T, c *streamtx.Consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-errc:
		cancel()
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("consumer not ready after 10s")
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return 30s after cancel")
		}
	}
	t.Cleanup(stop)
	return stop
}

// eventually polls cond until it holds, failing after 30s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pending returns the number of pending entries of group.
func (e *env) pending(stream, group string) int64 {
	p, err := e.rdb.XPending(context.Background(), stream, group).Result()
	if err != nil {
		var re redis.Error
		if errors.As(err, &re) {
			return -1
		}
		require.NoError(e.t, err)
	}
	return p.Count
}

// drained waits until group has read every entry of stream and has nothing
// pending.
func (e *env) drained(stream, group string) {
	e.t.Helper()
	eventually(e.t, fmt.Sprintf("%s/%s drained", stream, group), func() bool {
		groups, err := e.rdb.XInfoGroups(context.Background(), stream).Result()
		if err != nil {
			return false
		}
		last, err := e.rdb.XRevRangeN(context.Background(), stream, "+", "-", 1).Result()
		if err != nil {
			return false
		}
		for _, g := range groups {
			if g.Name == group {
				return g.Pending == 0 && (len(last) == 0 || g.LastDeliveredID == last[0].ID)
			}
		}
		return false
	})
}

// entries returns all entries of stream.
func (e *env) entries(stream string) []redis.XMessage {
	e.t.Helper()
	ms, err := e.rdb.XRange(context.Background(), stream, "-", "+").Result()
	require.NoError(e.t, err)
	return ms
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	require.NoError(t, err, "not a number: %q", s)
	return n
}
