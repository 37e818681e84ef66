package streamtx_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

type counter struct {
	N    int
	Seen []string
}

func TestStatefulCounterPublishes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("orders"), e.key("counts")
	e.add(src, 250, func(i int) map[string]any { return map[string]any{"n": i} })

	h := streamtx.Stateful("count", func(ctx context.Context, msg *streamtx.Message, s *counter, tx *txn.Tx) error {
		s.N++
		return tx.Publish(out, map[string]any{"src": msg.ID, "n": s.N})
	})
	c, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "c1"), h)
	require.NoError(t, err)
	stop := run(t, c)
	e.drained(src, "g")
	stop()

	got := e.entries(out)
	require.Len(t, got, 250)
	for i, m := range got {
		require.Equal(t, i+1, atoi(t, m.Values["n"].(string)))
	}
	snap, err := streamtx.ReadState[counter](context.Background(), e.rdb, src, "g", "count")
	require.NoError(t, err)
	require.Equal(t, 250, snap.Value.N)
	require.Equal(t, got[len(got)-1].Values["src"], snap.LastID)
}

// Four consumers share one Stateful counter and publish it after every
// increment: the published counters must be exactly 1..N, and every source
// entry must appear once downstream.
func TestManyConsumersSharedCounterExactlyOnce(t *testing.T) {
	t.Parallel()
	const n = 10000
	e := newEnv(t)
	src, out := e.key("events"), e.key("counted")
	srcIDs := e.add(src, n, func(i int) map[string]any { return map[string]any{"i": i} })

	h := streamtx.Stateful("counter", func(ctx context.Context, msg *streamtx.Message, s *counter, tx *txn.Tx) error {
		s.N++
		return tx.Publish(out, map[string]any{"src": msg.ID, "n": s.N})
	})
	var stops []func()
	for i := 0; i < 4; i++ {
		cfg := e.cfg(src, "g", "c"+strconv.Itoa(i))
		cfg.BatchSize = 10 * (i + 1) // mixed batch sizes contend more
		c, err := streamtx.NewConsumer(e.rdb, cfg, h)
		require.NoError(t, err)
		stops = append(stops, run(t, c))
	}
	e.drained(src, "g")
	for _, stop := range stops {
		stop()
	}

	got := e.entries(out)
	require.Len(t, got, n)
	counters := make(map[int]bool, n)
	sources := make(map[string]bool, n)
	for _, m := range got {
		k := atoi(t, m.Values["n"].(string))
		require.False(t, counters[k], "counter %d published twice", k)
		counters[k] = true
		s := m.Values["src"].(string)
		require.False(t, sources[s], "source %s published twice", s)
		sources[s] = true
	}
	for i := 1; i <= n; i++ {
		require.True(t, counters[i], "counter %d missing", i)
	}
	for _, id := range srcIDs {
		require.True(t, sources[id], "source %s missing downstream", id)
	}
	snap, err := streamtx.ReadState[counter](context.Background(), e.rdb, src, "g", "counter")
	require.NoError(t, err)
	require.Equal(t, n, snap.Value.N)
}
