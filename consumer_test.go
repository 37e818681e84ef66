package streamtx_test

// Unit tests on the embedded miniredis: configuration, API contracts and the
// happy paths. Failure paths that depend on real Redis semantics are in the
// integration tests.

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

func miniClient(t *testing.T) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	return mr, rdb
}

var nop = streamtx.HandlerFunc(func(context.Context, *streamtx.Message, *txn.Tx) error { return nil })

func TestNewConsumerRejectsBadConfigNamingTheField(t *testing.T) {
	_, rdb := miniClient(t)
	ok := streamtx.Config{Stream: "s", Group: "g", Consumer: "c"}
	tests := []struct {
		field  string
		mutate func(*streamtx.Config)
	}{
		{"Stream", func(c *streamtx.Config) { c.Stream = "" }},
		{"Group", func(c *streamtx.Config) { c.Group = "" }},
		{"Consumer", func(c *streamtx.Config) { c.Consumer = "" }},
		{"Consumer", func(c *streamtx.Config) { c.Consumer = "a b" }},
		{"BatchSize", func(c *streamtx.Config) { c.BatchSize = -1 }},
		{"BatchSize", func(c *streamtx.Config) { c.BatchSize = 1001 }},
		{"Block", func(c *streamtx.Config) { c.Block = -time.Second }},
		{"Block", func(c *streamtx.Config) { c.Block = time.Microsecond }},
		{"MaxDeliveries", func(c *streamtx.Config) { c.MaxDeliveries = -1 }},
		{"ClaimIdle", func(c *streamtx.Config) { c.ClaimIdle = -1 }},
		{"ClaimInterval", func(c *streamtx.Config) { c.ClaimInterval = -1 }},
		{"ShutdownTimeout", func(c *streamtx.Config) { c.ShutdownTimeout = -1 }},
		{"CommitTimeout", func(c *streamtx.Config) { c.CommitTimeout = -1 }},
		{"StateCacheSize", func(c *streamtx.Config) { c.StateCacheSize = -1 }},
		{"StartID", func(c *streamtx.Config) { c.StartID = "yesterday" }},
		{"Stream", func(c *streamtx.Config) { c.Stream = "a}b" }},
		{"DeadLetterStream", func(c *streamtx.Config) { c.DeadLetterStream = "s" }},
	}
	for _, tt := range tests {
		cfg := ok
		tt.mutate(&cfg)
		_, err := streamtx.NewConsumer(rdb, cfg, nop)
		require.ErrorIs(t, err, streamtx.ErrConfig, tt.field)
		require.Contains(t, err.Error(), tt.field)
	}
	_, err := streamtx.NewConsumer(nil, ok, nop)
	require.ErrorIs(t, err, streamtx.ErrConfig)
	_, err = streamtx.NewConsumer(rdb, ok, nil)
	require.ErrorIs(t, err, streamtx.ErrConfig)
	_, err = streamtx.NewConsumer(rdb, ok, streamtx.Stateful[counter]("n", nil))
	require.ErrorIs(t, err, streamtx.ErrConfig)
	type hidden struct {
		Shown int
		inner struct{ n int }
	}
	_, err = streamtx.NewConsumer(rdb, ok, streamtx.Stateful("n", func(context.Context, *streamtx.Message, *hidden, *txn.Tx) error { return nil }))
	require.ErrorIs(t, err, streamtx.ErrConfig)
	require.Contains(t, err.Error(), "unexported field hidden.inner")
	type nested struct{ M map[string][]*hidden }
	_, err = streamtx.NewConsumer(rdb, ok, streamtx.Keyed("n", func(*streamtx.Message) string { return "" }, func(context.Context, *streamtx.Message, *nested, *txn.Tx) error { return nil }))
	require.ErrorIs(t, err, streamtx.ErrConfig)
	type fine struct {
		A     int
		B     map[string][]string
		cache int `msgpack:"-"`
	}
	_, err = streamtx.NewConsumer(rdb, ok, streamtx.Stateful("n", func(context.Context, *streamtx.Message, *fine, *txn.Tx) error { return nil }))
	require.NoError(t, err)

	for _, id := range []string{"0", "$", "0-0", "1700000000000-5", "12"} {
		cfg := ok
		cfg.StartID = id
		_, err := streamtx.NewConsumer(rdb, cfg, nop)
		require.NoError(t, err, id)
	}
}

func TestRunTwiceAtOnceIsRefused(t *testing.T) {
	_, rdb := miniClient(t)
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{Stream: "s", Group: "g", Consumer: "c", Block: 10 * time.Millisecond}, nop)
	require.NoError(t, err)
	run(t, c)
	require.ErrorIs(t, c.Run(context.Background()), streamtx.ErrRunning)
}

func TestRunReturnsAfterCancelAndLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	mr, err := miniredis.Run()
	require.NoError(t, err)
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	for i := 0; i < 10; i++ {
		mr.XAdd("s", "*", []string{"i", "x"})
	}
	var handled int
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		handled++
		return tx.Publish("out", map[string]any{"id": msg.ID})
	})
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{Stream: "s", Group: "g", Consumer: "c", Block: 10 * time.Millisecond}, h)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	eventually(t, "10 published", func() bool { n, _ := rdb.XLen(ctx, "out").Result(); return n == 10 })
	cancel()
	require.NoError(t, <-errc)
	require.Equal(t, 10, handled)
	// Run can run again after it returned.
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { errc <- c.Run(ctx2) }()
	cancel2()
	require.NoError(t, <-errc)
}

func TestKeyedStateOnMiniredis(t *testing.T) {
	mr, rdb := miniClient(t)
	for _, sku := range []string{"a", "b", "a", "c", "a", "b"} {
		mr.XAdd("sales", "*", []string{"sku", sku, "qty", "2"})
	}
	type stock struct{ Sold int }
	h := streamtx.Keyed("stock", func(m *streamtx.Message) string { return m.Values["sku"] },
		func(ctx context.Context, msg *streamtx.Message, s *stock, tx *txn.Tx) error {
			s.Sold += 2
			return nil
		})
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{Stream: "sales", Group: "g", Consumer: "c", Block: 10 * time.Millisecond}, h)
	require.NoError(t, err)
	stop := run(t, c)
	eventually(t, "all acked", func() bool {
		p, err := rdb.XPending(context.Background(), "sales", "g").Result()
		return err == nil && p.Count == 0 && rdb.HLen(context.Background(), "stx:{sales}:sales:g:offsets").Val() == 1
	})
	stop()
	for sku, want := range map[string]int{"a": 6, "b": 4, "c": 2, "d": 0} {
		s, err := streamtx.ReadKeyedState[stock](context.Background(), rdb, "sales", "g", "stock", sku)
		require.NoError(t, err)
		require.Equal(t, want, s.Value.Sold, sku)
	}
}

func TestPermanent(t *testing.T) {
	require.Nil(t, streamtx.Permanent(nil))
	base := errors.New("bad input")
	err := streamtx.Permanent(base)
	require.True(t, streamtx.IsPermanent(err))
	require.True(t, streamtx.IsPermanent(errors.Join(errors.New("x"), err)))
	require.ErrorIs(t, err, base)
	require.False(t, streamtx.IsPermanent(base))
}

func TestPanickingHandlerIsRetriedAndDeadLettered(t *testing.T) {
	mr, rdb := miniClient(t)
	mr.XAdd("s", "*", []string{"k", "v"})
	var got []streamtx.Event
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		_ = tx.Publish("out", map[string]any{"k": "v"})
		panic("boom")
	})
	cfg := streamtx.Config{Stream: "s", Group: "g", Consumer: "c", Block: 10 * time.Millisecond, MaxDeliveries: 2,
		Backoff: func(*streamtx.Message, error) time.Duration { return time.Millisecond },
		Observer: streamtx.ObserverFunc(func(e streamtx.Event) {
			if e.Kind == streamtx.EventRetry || e.Kind == streamtx.EventDeadLetter {
				got = append(got, e)
			}
		})}
	c, err := streamtx.NewConsumer(rdb, cfg, h)
	require.NoError(t, err)
	stop := run(t, c)
	eventually(t, "dead letter", func() bool { n, _ := rdb.XLen(context.Background(), c.DeadLetterStream()).Result(); return n == 1 })
	stop()
	require.Len(t, got, 2)
	var pe *streamtx.PanicError
	require.ErrorAs(t, got[0].Err, &pe)
	require.Equal(t, "boom", pe.Value)
	require.Equal(t, streamtx.EventDeadLetter, got[1].Kind)
	require.Zero(t, rdb.Exists(context.Background(), "out").Val(), "a failed handler publishes nothing")
}

// A restarted consumer with more of its own pending entries than one batch
// pages through them on miniredis too (which refuses XPENDING's exclusive
// "(" start): every entry is handled once, and no read fails.
func TestOwnPendingPagesOnMiniredis(t *testing.T) {
	_, rdb := miniClient(t)
	ctx := context.Background()
	require.NoError(t, rdb.XGroupCreateMkStream(ctx, "s", "g", "0").Err())
	for i := range 7 {
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: "s", Values: map[string]any{"i": i}}).Err())
	}
	// Delivered to "c", which then died.
	require.NoError(t, rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{"s", ">"}, Count: 7, Block: -1}).Err())
	var mu sync.Mutex
	seen := map[string]int{}
	var errs []error
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		mu.Lock()
		seen[msg.ID]++
		mu.Unlock()
		return nil
	})
	cfg := streamtx.Config{Stream: "s", Group: "g", Consumer: "c", BatchSize: 2, Block: 5 * time.Millisecond,
		Observer: streamtx.ObserverFunc(func(e streamtx.Event) {
			if e.Kind == streamtx.EventError {
				mu.Lock()
				errs = append(errs, e.Err)
				mu.Unlock()
			}
		})}
	c, err := streamtx.NewConsumer(rdb, cfg, h)
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	require.Eventually(t, func() bool {
		p, err := rdb.XPending(ctx, "s", "g").Result()
		return err == nil && p.Count == 0
	}, 10*time.Second, 5*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, 7)
	for id, n := range seen {
		require.Equal(t, 1, n, id)
	}
	require.Empty(t, errs)
}
