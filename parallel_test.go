package streamtx_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

type seen struct{ Is []int }

// appliedBy is a key's entries in the order applied, and the consumer that
// applied each.
type appliedBy struct{ Is, By []int }

// Keyed handlers in parallel lanes: order per key is kept, every entry
// applies once, and two consumers with lanes still agree.
func TestKeyedParallelLanesKeepOrderPerKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("in"), e.key("out")
	const n, nkeys = 2000, 50
	ids := e.add(src, n, func(i int) map[string]any { return map[string]any{"i": i, "k": i % nkeys} })
	handler := func(consumer int) streamtx.Handler {
		return streamtx.Keyed("per-key", func(m *streamtx.Message) string { return m.Values["k"] },
			func(ctx context.Context, msg *streamtx.Message, s *appliedBy, tx *txn.Tx) error {
				i, err := strconv.Atoi(msg.Values["i"])
				if err != nil {
					return streamtx.Permanent(err) // a dead letter: the checks below fail
				}
				s.Is, s.By = append(s.Is, i), append(s.By, consumer)
				return tx.Publish(out, map[string]any{"src": msg.ID, "n": msg.Values["i"]})
			})
	}
	for i := 0; i < 2; i++ {
		cfg := e.cfg(src, "g", "c"+strconv.Itoa(i))
		cfg.Parallelism = 8
		// No claims: each consumer handles only what the group delivered
		// to it, so the order of its entries is the stream's.
		cfg.ClaimIdle = time.Hour
		c, err := streamtx.NewConsumer(e.rdb, cfg, handler(i))
		require.NoError(t, err)
		run(t, c)
	}
	e.drained(src, "g")
	e.requireExactlyOnce(out, ids)
	for k := 0; k < nkeys; k++ {
		s, err := streamtx.ReadKeyedState[appliedBy](context.Background(), e.rdb, src, "g", "per-key", strconv.Itoa(k))
		require.NoError(t, err)
		var want []int
		for i := 1; i <= n; i++ {
			if i%nkeys == k {
				want = append(want, i)
			}
		}
		require.ElementsMatch(t, want, s.Value.Is, "key %d: every entry applied once", k)
		require.Len(t, s.Value.By, len(s.Value.Is))
		// Each consumer applies its entries of a key in the stream's order
		// (its lanes keep it, a rerun after a conflict starts over in it);
		// the two consumers' batches may commit in either order.
		last := map[int]int{}
		for j, i := range s.Value.Is {
			by := s.Value.By[j]
			require.Greater(t, i, last[by], "key %d: consumer c%d applied entry %d after %d: %v by %v", k, by, i, last[by], s.Value.Is, s.Value.By)
			last[by] = i
		}
	}
}

func TestParallelLanesKeepStreamOrderPerKeyInOneConsumer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src := e.key("in")
	ids := e.add(src, 1000, func(i int) map[string]any { return map[string]any{"i": i, "k": i % 7} })
	h := streamtx.Keyed("per-key", func(m *streamtx.Message) string { return m.Values["k"] },
		func(ctx context.Context, msg *streamtx.Message, s *seen, tx *txn.Tx) error {
			i, err := strconv.Atoi(msg.Values["i"])
			if err != nil {
				return streamtx.Permanent(err) // a dead letter: the check below fails
			}
			s.Is = append(s.Is, i)
			return nil
		})
	cfg := e.cfg(src, "g", "c")
	cfg.Parallelism = 4
	c, err := streamtx.NewConsumer(e.rdb, cfg, h)
	require.NoError(t, err)
	run(t, c)
	e.drained(src, "g")
	require.Len(t, ids, 1000)
	for k := 0; k < 7; k++ {
		s, err := streamtx.ReadKeyedState[seen](context.Background(), e.rdb, src, "g", "per-key", strconv.Itoa(k))
		require.NoError(t, err)
		var want []int
		for i := 1; i <= 1000; i++ {
			if i%7 == k {
				want = append(want, i)
			}
		}
		require.Equal(t, want, s.Value.Is, "key %d", k)
	}
}

// A handler that touches one record from two lanes in a batch: the later
// lane's entry meets ErrLaneConflict, and the rest of its lane runs after
// the lanes, one at a time, in the same batch. Nothing is lost, retried or
// dead-lettered.
func TestLaneConflictRunsAfterTheLanes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src := e.key("in")
	// Every entry its own partition key, one state key: lanes are hashed
	// with a seed of each consumer's, and 20 keys all in one of 4 lanes has
	// a chance of 4^-19.
	e.add(src, 20, func(i int) map[string]any {
		return map[string]any{"i": i, "p": fmt.Sprintf("k%d", i)}
	})
	h := streamtx.Keyed("shared", func(*streamtx.Message) string { return "one" },
		func(ctx context.Context, msg *streamtx.Message, s *counter, tx *txn.Tx) error {
			s.N++
			return nil
		})
	ev := newEvents()
	cfg := e.cfg(src, "g", "c")
	cfg.Parallelism = 4
	cfg.MaxDeliveries = 100
	cfg.PartitionKey = func(m *streamtx.Message) string { return m.Values["p"] }
	cfg.Observer = ev
	c, err := streamtx.NewConsumer(e.rdb, cfg, h)
	require.NoError(t, err)
	run(t, c)
	e.drained(src, "g")
	s, err := streamtx.ReadKeyedState[counter](context.Background(), e.rdb, src, "g", "shared", "one")
	require.NoError(t, err)
	require.Equal(t, 20, s.Value.N)
	// The entries a lane conflict held back ran after the lanes, in the
	// same batch: no retry, no delivery counted, nothing dead-lettered
	// (before, one could reach MaxDeliveries on lane conflicts alone).
	require.Empty(t, ev.of(streamtx.EventRetry))
	require.Empty(t, e.entries(c.DeadLetterStream()))
}

func TestParallelismNeedsAPartitionKey(t *testing.T) {
	_, rdb := miniClient(t)
	_, err := streamtx.NewConsumer(rdb, streamtx.Config{Stream: "s", Group: "g", Consumer: "c", Parallelism: 4}, nop)
	require.ErrorIs(t, err, streamtx.ErrConfig)
	require.Contains(t, err.Error(), "PartitionKey")
	_, err = streamtx.NewConsumer(rdb, streamtx.Config{Stream: "s", Group: "g", Consumer: "c", Parallelism: 4,
		PartitionKey: func(m *streamtx.Message) string { return m.ID }}, nop)
	require.NoError(t, err)
}

// With MaxBatchDelay, a batch waits to fill up instead of committing what
// one read returned.
func TestMaxBatchDelayFillsTheBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	src := e.key("in")
	ev := newEvents()
	cfg := e.cfg(src, "g", "c")
	cfg.BatchSize = 5
	cfg.MaxBatchDelay = time.Minute // only a full batch commits within the test
	cfg.ClaimIdle = 2 * time.Minute // longer than MaxBatchDelay, as NewConsumer requires
	cfg.Observer = ev
	c, err := streamtx.NewConsumer(e.rdb, cfg, nop)
	require.NoError(t, err)
	run(t, c)
	for i := 0; i < 5; i++ {
		require.NoError(t, e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: src, Values: map[string]any{"i": i}}).Err())
	}
	commit := ev.wait(t, streamtx.EventCommit, nil)
	require.Len(t, commit.IDs, 5)
}
