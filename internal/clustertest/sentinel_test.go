package clustertest

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

// handlerWork is how long the sentinel test's handler works on an entry, so
// that the consumers are still at it when the failover switches masters
// (about a second after it is asked for).
const handlerWork = time.Millisecond

// A Sentinel failover (SENTINEL FAILOVER) of the master while four
// consumers share a counter through a FailoverClient. The failover does
// not stop the old master: until the clients hear of the new one, they
// read and commit on the old master, and those commits are lost when it
// becomes a replica — each whole, with its publishes, state and XACK — so
// their entries are delivered and handled again on the new master. Every
// exactly-once invariant holds on the new master: counters exactly 1..N,
// each source entry once, state N.
//
// Every entry is added, and replicated, before the consumers start, so the
// failover loses no source entry.
func TestSentinelFailoverMidRun(t *testing.T) {
	t.Parallel()
	const n = 2000
	ctx := context.Background()
	s := redistest.StartSentinel(t, 1)
	rdb := s.FailoverClient(t)
	rec := newRecorder(t)
	obs := &recommits{rec: rec}

	src, out := "{orders-s}", "{orders-s}:out"
	var ids []string
	for start := 1; start <= n; start += 500 {
		pipe := rdb.Pipeline()
		var cmds []*redis.StringCmd
		for i := start; i < start+500 && i <= n; i++ {
			cmds = append(cmds, pipe.XAdd(ctx, &redis.XAddArgs{Stream: src, Values: map[string]any{"i": i}}))
		}
		_, err := pipe.Exec(ctx)
		require.NoError(t, err)
		for _, c := range cmds {
			ids = append(ids, c.Val())
		}
	}
	replicas, err := rdb.Wait(ctx, 1, waitTimeout).Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, replicas, "the replica has every entry")

	h := streamtx.Stateful("counter", func(ctx context.Context, msg *streamtx.Message, c *counter, tx *txn.Tx) error {
		select {
		case <-time.After(handlerWork): // work on the entry
		case <-ctx.Done():
			return ctx.Err()
		}
		c.N++
		return tx.Publish(out, map[string]any{"src": msg.ID, "n": c.N})
	})
	var stops []func()
	for i := range consumersPer {
		cfg := consumerConfig(t, src, "c"+strconv.Itoa(i), rec)
		cfg.BatchSize = 10 * (i + 1)
		cfg.Observer = obs
		cons, err := streamtx.NewConsumer(rdb, cfg, h)
		require.NoError(t, err)
		stops = append(stops, run(t, cons))
	}

	select {
	case <-rec.whenCommitted(src, n/10):
	case <-time.After(waitTimeout):
		t.Fatalf("fewer than %d entries committed after %v; events: %s", n/10, waitTimeout, rec.summary())
	}
	before := s.MasterAddr()
	atStart := rec.committed(src)
	start := time.Now()
	s.Failover(t)
	after := s.MasterAddr()
	t.Logf("failover %s -> %s in %v; %d entries committed before, %d after",
		before, after, time.Since(start).Round(time.Millisecond), atStart, rec.committed(src))
	require.NotEqual(t, before, after)
	require.Less(t, atStart, n/2, "the failover started mid-run")

	waitDrained(t, rdb, src)
	for _, stop := range stops {
		stop()
	}
	again := obs.again()
	t.Logf("%d entries reported committed again after the failover (their first commit was lost); events: %s", len(again), rec.summary())
	checkExactlyOnce(t, rdb, src, out, ids)
}

// recommits passes a consumer's events on to a recorder, leaving out of
// commit events the entries that were reported committed before: after a
// failover that lost their first commit, they are committed again.
type recommits struct {
	rec  *recorder
	mu   sync.Mutex
	seen map[string]bool
	ids  []string // reported committed again
}

func (r *recommits) Observe(e streamtx.Event) {
	if e.Kind == streamtx.EventCommit {
		r.mu.Lock()
		if r.seen == nil {
			r.seen = make(map[string]bool)
		}
		fresh := make([]string, 0, len(e.IDs))
		for _, id := range e.IDs {
			if r.seen[id] {
				r.ids = append(r.ids, id)
			} else {
				r.seen[id] = true
				fresh = append(fresh, id)
			}
		}
		r.mu.Unlock()
		e.IDs = fresh
	}
	r.rec.Observe(e)
}

func (r *recommits) again() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ids...)
}
