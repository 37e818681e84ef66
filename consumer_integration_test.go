package streamtx_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"
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
	src := e.key("events")
	srcIDs := e.add(src, n, func(i int) map[string]any { return map[string]any{"i": i} })
	sharedCounterExactlyOnce(e, e.rdb, src, srcIDs)
}

// sharedCounterExactlyOnce runs four consumers over src, connected with
// client, sharing one Stateful counter that they publish after every
// increment, and checks the result with e's client: the published counters
// are exactly 1..len(srcIDs), and every source entry appears once
// downstream. The least-privilege and TLS tests run it with their clients.
func sharedCounterExactlyOnce(e *env, client redis.UniversalClient, src string, srcIDs []string) {
	t := e.t
	t.Helper()
	out := src + ":counted"
	h := countAndPublish("counter", out)
	var stops []func()
	for i := 0; i < 4; i++ {
		cfg := e.cfg(src, "g", "c"+strconv.Itoa(i))
		cfg.BatchSize = 10 * (i + 1) // mixed batch sizes contend more
		c, err := streamtx.NewConsumer(client, cfg, h)
		require.NoError(t, err)
		stops = append(stops, run(t, c))
	}
	e.drained(src, "g")
	for _, stop := range stops {
		stop()
	}
	e.requireExactlyOnce(out, srcIDs)
	require.Equal(t, len(srcIDs), e.counterState(src, "g", "counter").Value.N)
}
