package streamtx_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

// A bad config is a *ConfigError naming the field, and still ErrConfig;
// fields that only fail together are checked together.
func TestConfigErrorNamesTheField(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer rdb.Close()
	h := streamtx.HandlerFunc(noop)
	base := streamtx.Config{Stream: "s", Group: "g", Consumer: "c"}
	for _, tc := range []struct {
		field string
		set   func(*streamtx.Config)
	}{
		{"Stream", func(c *streamtx.Config) { c.Stream = "" }},
		{"HandlerTimeout", func(c *streamtx.Config) { c.HandlerTimeout = -time.Second }},
		{"ClaimIdle", func(c *streamtx.Config) { c.ClaimIdle = time.Second }},                                   // not longer than the default Block
		{"ClaimIdle", func(c *streamtx.Config) { c.ClaimIdle, c.Block = 2*time.Second, 2*time.Second }},         // equal
		{"ClaimIdle", func(c *streamtx.Config) { c.ClaimIdle, c.MaxBatchDelay = 3*time.Second, 5*time.Second }}, // a filling batch
	} {
		cfg := base
		tc.set(&cfg)
		_, err := streamtx.NewConsumer(rdb, cfg, h)
		require.ErrorIs(t, err, streamtx.ErrConfig, tc.field)
		var ce *streamtx.ConfigError
		require.True(t, errors.As(err, &ce), "%v", err)
		require.Equal(t, tc.field, ce.Field)
		require.NotEmpty(t, ce.Reason)
	}
	cfg := base
	cfg.ClaimIdle, cfg.Block = 2*time.Second, time.Second
	_, err := streamtx.NewConsumer(rdb, cfg, h)
	require.NoError(t, err)
}

// Backoff sees the entry and the handler's error; HandlerTimeout cancels a
// handler that runs too long, which then fails and is retried like any
// failure.
func TestBackoffGetsTheErrorAndHandlerTimeoutCancels(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src := e.key("in")
	ids := e.add(src, 1, func(int) map[string]any { return map[string]any{"i": 1} })
	type call struct {
		id          string
		deliveries  int64
		deadlineErr bool
	}
	calls := make(chan call, 10)
	var mu sync.Mutex
	attempts := 0
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		mu.Lock()
		attempts++
		first := attempts == 1
		mu.Unlock()
		if first {
			<-ctx.Done() // too slow: HandlerTimeout ends it
			return ctx.Err()
		}
		return nil
	})
	cfg := e.cfg(src, "g", "c")
	cfg.HandlerTimeout = 20 * time.Millisecond
	cfg.Backoff = func(msg *streamtx.Message, err error) time.Duration {
		calls <- call{msg.ID, msg.Deliveries, errors.Is(err, context.DeadlineExceeded)}
		return time.Millisecond
	}
	c, err := streamtx.NewConsumer(e.rdb, cfg, h)
	require.NoError(t, err)
	run(t, c)
	e.drained(src, "g")
	got := <-calls
	require.Equal(t, call{ids[0], 1, true}, got)
	require.Empty(t, e.entries(c.DeadLetterStream()))
}

// A handler that runs longer than ClaimIdle and calls KeepAlive keeps its
// entry: another consumer scanning for idle entries does not claim it.
func TestKeepAliveKeepsALongHandlersEntry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	src := e.key("in")
	e.add(src, 1, func(int) map[string]any { return map[string]any{"i": 1} })
	const claimIdle = 300 * time.Millisecond
	inside, release := make(chan struct{}), make(chan struct{})
	kept := make(chan error, 100)
	slow := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		close(inside)
		for {
			select {
			case <-release:
				return nil
			case <-time.After(claimIdle / 5):
				kept <- streamtx.KeepAlive(ctx)
			}
		}
	})
	cfg := e.cfg(src, "g", "slow")
	cfg.ClaimIdle = claimIdle
	a, err := streamtx.NewConsumer(e.rdb, cfg, slow)
	require.NoError(t, err)
	run(t, a)
	<-inside
	// Three ClaimIdles of keep-alives, each checked to have gone through.
	for i := 0; i < 15; i++ {
		require.NoError(t, <-kept)
	}
	// The entry is still idle for less than ClaimIdle: a claim finds
	// nothing.
	claimed, _, err := e.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: src, Group: "g", Consumer: "other", MinIdle: claimIdle, Start: "0", Count: 10}).Result()
	require.NoError(t, err)
	require.Empty(t, claimed)
	rows, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: src, Group: "g", Start: "-", End: "+", Count: 10}).Result()
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Equal(t, "slow", rows[0].Consumer)
	require.EqualValues(t, 1, rows[0].RetryCount, "keep-alives count no delivery")
	close(release)
	e.drained(src, "g")
	require.ErrorContains(t, streamtx.KeepAlive(ctx), "not a handler's context")
}
