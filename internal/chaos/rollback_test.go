//go:build linux

package chaos

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

// TestRollbackSameVersionOtherHistory replays, step by step, the lost update
// the chaos run found after a lagging-snapshot restore (see the report of
// the chaos harness): a state record's version counts commits, so after a
// rollback another consumer can bring the record back to the version a
// stale cache holds, with other contents; the stale consumer's commit then
// passes the version check and overwrites them.
//
// Consumer A commits entries one by one; B commits batches of five. A's
// reads and B's reads are released one at a time by the test.
func TestRollbackSameVersionOtherHistory(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartServer(t)
	rdb := srv.Client(t)
	const n = 100
	preload(t, rdb, n)

	// A commits 10 entries alone: version 10, N=10.
	a := startGated(t, srv.Addr(), "a", 1)
	a.allow(10)
	waitLen(t, rdb, outStream, 10)

	snap, err := snapshotScript.Run(ctx, rdb, nil).Slice()
	require.NoError(t, err)

	// A commits 5 more: version 15, N=15 in Redis and in A's cache.
	a.allow(5)
	waitLen(t, rdb, outStream, 15)

	// The failover: Redis is back at version 10, N=10.
	require.NoError(t, restoreScript.Run(ctx, rdb, nil, snap...).Err())
	waitLen(t, rdb, outStream, 10)

	// B commits 5 batches of 5: version 15 again, but N=35.
	b := startGated(t, srv.Addr(), "b", 5)
	b.allow(5)
	waitLen(t, rdb, outStream, 35)
	st, err := streamtx.ReadState[counterState](ctx, rdb, srcStream, "g", stateName)
	require.NoError(t, err)
	require.Equal(t, 35, st.Value.N)
	require.EqualValues(t, 15, st.Version, "B's five commits bring the version back to 15")

	// A handles more entries with its cache of version 15. (A learns the
	// outcome of a commit when it next reads: it sends each commit while it
	// reads and handles the next batch; so let it read twice.)
	a.allow(2)
	waitLen(t, rdb, outStream, 37)
	pubs, err := readPublished(ctx, rdb, outStream)
	require.NoError(t, err)
	st, err = streamtx.ReadState[counterState](ctx, rdb, srcStream, "g", stateName)
	require.NoError(t, err)
	for i, p := range pubs[35:] {
		assert.Equal(t, 36+i, p.n, "A published a counter computed from state older than Redis's: %v", p)
	}
	assert.Equal(t, 37, st.Value.N, "A overwrote N=35 (version 15) with its stale state; state %+v", st)
}

// gated is an in-process consumer whose reads of new entries wait for
// permission.
type gated struct {
	reads chan struct{}
}

func (g *gated) allow(n int) {
	for range n {
		g.reads <- struct{}{}
	}
}

// startGated runs a counter consumer (group g, Stateful counter publishing
// to out) named name, with the given batch size, claims off.
func startGated(t *testing.T, addr, name string, batch int) *gated {
	t.Helper()
	g := &gated{reads: make(chan struct{})}
	done := make(chan struct{})
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	rdb.AddHook(gateHook{g: g, done: done})
	h := streamtx.Stateful(stateName, func(ctx context.Context, msg *streamtx.Message, s *counterState, tx *txn.Tx) error {
		s.N++
		return tx.Publish(outStream, map[string]any{"src": msg.ID, "n": s.N, "by": name, "d": msg.Deliveries})
	})
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream: srcStream, Group: "g", Consumer: name, BatchSize: batch,
		Block: 20 * time.Millisecond, ClaimIdle: time.Hour,
	}, h)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		close(done)
		assert.NoError(t, <-errc)
		rdb.Close()
	})
	select {
	case <-c.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("consumer %s not ready", name)
	}
	return g
}

// gateHook makes every XREADGROUP wait for a permission from g.
type gateHook struct {
	g    *gated
	done chan struct{}
}

func (gateHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h gateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "xreadgroup" {
			select {
			case <-h.g.reads:
			case <-h.done:
				return context.Canceled
			}
		}
		return next(ctx, cmd)
	}
}

func (gateHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// waitLen polls until stream has n entries.
func waitLen(t *testing.T, rdb *redis.Client, stream string, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := rdb.XLen(context.Background(), stream).Result()
		if err == nil && l == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d entries (err %v), want %d", stream, l, err, n)
		}
		time.Sleep(10 * time.Millisecond) // polling for commits
	}
}
