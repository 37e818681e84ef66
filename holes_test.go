package streamtx_test

// Each test here is one hole of the reference library (DESIGN.md, "The
// reference it improves on"), on real Redis.

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/faultproxy"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/txn"
)

// countAndPublish counts entries in Stateful state and publishes the count.
func countAndPublish(name, out string) streamtx.Handler {
	return streamtx.Stateful(name, func(ctx context.Context, msg *streamtx.Message, s *counter, tx *txn.Tx) error {
		s.N++
		return tx.Publish(out, map[string]any{"src": msg.ID, "n": s.N})
	})
}

// requireExactlyOnce checks that out holds one entry per source ID with
// counters exactly 1..len(srcIDs).
func (e *env) requireExactlyOnce(out string, srcIDs []string) {
	e.t.Helper()
	got := e.entries(out)
	counters := map[int]bool{}
	sources := map[string]bool{}
	for _, m := range got {
		n := atoi(e.t, m.Values["n"].(string))
		require.False(e.t, counters[n], "counter %d published twice", n)
		counters[n] = true
		src := m.Values["src"].(string)
		require.False(e.t, sources[src], "source %s published twice", src)
		sources[src] = true
	}
	require.Len(e.t, got, len(srcIDs))
	for i := 1; i <= len(srcIDs); i++ {
		require.True(e.t, counters[i], "counter %d missing", i)
	}
	for _, id := range srcIDs {
		require.True(e.t, sources[id], "source %s missing", id)
	}
}

func (e *env) counterState(stream, group, name string) streamtx.Snapshot[counter] {
	e.t.Helper()
	s, err := streamtx.ReadState[counter](context.Background(), e.rdb, stream, group, name)
	require.NoError(e.t, err)
	return s
}

// Hole 1: a handler that mutates state and then fails must not leave the
// mutation behind for the retry.
func TestHole1MutateThenFailLeavesStateUntouched(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("in"), e.key("out")
	ids := e.add(src, 50, func(i int) map[string]any { return map[string]any{"i": i} })
	var failures atomic.Int64
	h := streamtx.Stateful("n", func(ctx context.Context, msg *streamtx.Message, s *counter, tx *txn.Tx) error {
		s.N++
		s.Seen = append(s.Seen, msg.ID)
		if err := tx.Publish(out, map[string]any{"src": msg.ID, "n": s.N}); err != nil {
			return err
		}
		i, err := strconv.Atoi(msg.Values["i"])
		if err != nil {
			return streamtx.Permanent(err) // a dead letter: the checks below fail
		}
		if msg.Deliveries == 1 && i != 1 && i%3 == 0 {
			failures.Add(1)
			return errors.New("fails after mutating and publishing")
		}
		return nil
	})
	c, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "c"), h)
	require.NoError(t, err)
	stop := run(t, c)
	e.drained(src, "g")
	stop()

	require.Equal(t, int64(16), failures.Load())
	e.requireExactlyOnce(out, ids)
	st := e.counterState(src, "g", "n")
	require.Equal(t, 50, st.Value.N)
	require.ElementsMatch(t, ids, st.Value.Seen)
}

// Hole 2: a publish to a key of the wrong type must commit nothing at all:
// not the state, not the other publishes, not the ack.
func TestHole2PublishToWrongTypeCommitsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	src, out, bad := e.key("in"), e.key("out"), e.key("not-a-stream")
	require.NoError(t, e.rdb.Set(ctx, bad, "x", 0).Err())
	ids := e.add(src, 5, func(i int) map[string]any { return map[string]any{"i": i} })

	h := streamtx.Stateful("n", func(ctx context.Context, msg *streamtx.Message, s *counter, tx *txn.Tx) error {
		s.N++
		if err := tx.Publish(out, map[string]any{"src": msg.ID, "n": s.N}); err != nil {
			return err
		}
		if msg.Values["i"] == "3" {
			return tx.Publish(bad, map[string]any{"src": msg.ID})
		}
		return nil
	})
	ev := newEvents()
	cfg := e.cfg(src, "g", "c")
	cfg.BatchSize = 5
	cfg.Observer = ev
	c, err := streamtx.NewConsumer(e.rdb, cfg, h)
	require.NoError(t, err)
	stop := run(t, c)
	e.drained(src, "g")
	stop()
	require.Len(t, ev.of(streamtx.EventDeadLetter), 1)

	// Entry 3 is dead-lettered; the other four commit, each once.
	e.requireExactlyOnce(out, []string{ids[0], ids[1], ids[3], ids[4]})
	require.Equal(t, 4, e.counterState(src, "g", "n").Value.N)
	dl := e.entries(c.DeadLetterStream())
	require.Len(t, dl, 1)
	require.Equal(t, ids[2], dl[0].Values["stx.id"])
	require.Contains(t, dl[0].Values["stx.error"], "not a stream")
	require.Equal(t, "3", dl[0].Values["i"])
	require.Equal(t, "x", e.rdb.Get(ctx, bad).Val())
}

// Hole 3: two live processes under one consumer name must not double a
// publish or lose a state update.
func TestHole3SameConsumerNameTwice(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("in"), e.key("out")
	ids := e.add(src, 3000, func(i int) map[string]any { return map[string]any{"i": i} })
	h := countAndPublish("n", out)
	for i := 0; i < 2; i++ {
		cfg := e.cfg(src, "g", "same-name")
		cfg.BatchSize = 7 + 13*i
		c, err := streamtx.NewConsumer(e.rdb, cfg, h)
		require.NoError(t, err)
		run(t, c)
	}
	e.drained(src, "g")
	e.requireExactlyOnce(out, ids)
	require.Equal(t, 3000, e.counterState(src, "g", "n").Value.N)
}

// Hole 4: one state name on two streams gives two independent states.
func TestHole4StateNameIsPerStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.key("a"), e.key("b")
	e.add(a, 7, func(i int) map[string]any { return map[string]any{"i": i} })
	e.add(b, 3, func(i int) map[string]any { return map[string]any{"i": i} })
	for _, s := range []string{a, b} {
		c, err := streamtx.NewConsumer(e.rdb, e.cfg(s, "g", "c"), countAndPublish("shared-name", s+":out"))
		require.NoError(t, err)
		run(t, c)
	}
	e.drained(a, "g")
	e.drained(b, "g")
	require.Equal(t, 7, e.counterState(a, "g", "shared-name").Value.N)
	require.Equal(t, 3, e.counterState(b, "g", "shared-name").Value.N)
}

// Hole 5: renaming the consumer must not replay the stream onto the state.
func TestHole5RenamedConsumerDoesNotReplay(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("in"), e.key("out")
	ids := e.add(src, 10, func(i int) map[string]any { return map[string]any{"i": i} })
	c1, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "old-name"), countAndPublish("n", out))
	require.NoError(t, err)
	stop := run(t, c1)
	e.drained(src, "g")
	stop()

	ids = append(ids, e.add(src, 5, func(i int) map[string]any { return map[string]any{"i": 10 + i} })...)
	c2, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "new-name"), countAndPublish("n", out))
	require.NoError(t, err)
	run(t, c2)
	e.drained(src, "g")
	e.requireExactlyOnce(out, ids)
	require.Equal(t, 15, e.counterState(src, "g", "n").Value.N)
}

// Hole 6: publishes are never trimmed, however far a reader lags.
func TestHole6PublishesAreNeverTrimmed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("in"), e.key("out")
	const n = 12000 // the reference trims publishes to ~10000
	e.add(src, n, func(i int) map[string]any { return map[string]any{"i": i} })
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		return tx.Publish(out, map[string]any{"i": msg.Values["i"]})
	})
	c, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "c"), h)
	require.NoError(t, err)
	run(t, c)
	e.drained(src, "g")
	require.Equal(t, int64(n), e.rdb.XLen(context.Background(), out).Val())
}

// Hole 7: a poison entry is dead-lettered after MaxDeliveries and never
// blocks the entries behind it.
func TestHole7PoisonEntryIsDeadLetteredAndDoesNotBlock(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("in"), e.key("out")
	ids := e.add(src, 20, func(i int) map[string]any { return map[string]any{"i": i, "stx.x": "kept"} })
	h := streamtx.Stateful("n", func(ctx context.Context, msg *streamtx.Message, s *counter, tx *txn.Tx) error {
		s.N++
		if msg.Values["i"] == "4" {
			return errors.New("poison")
		}
		return tx.Publish(out, map[string]any{"src": msg.ID, "n": s.N})
	})
	cfg := e.cfg(src, "g", "c")
	cfg.MaxDeliveries = 3
	ev := newEvents()
	cfg.Observer = ev
	c, err := streamtx.NewConsumer(e.rdb, cfg, h)
	require.NoError(t, err)
	run(t, c)
	ev.wait(t, streamtx.EventDeadLetter, nil)
	e.drained(src, "g")

	e.requireExactlyOnce(out, append(append([]string{}, ids[:3]...), ids[4:]...))
	require.Equal(t, 19, e.counterState(src, "g", "n").Value.N)
	dl := e.entries(c.DeadLetterStream())
	require.Len(t, dl, 1)
	v := dl[0].Values
	assert.Equal(t, ids[3], v["stx.id"])
	assert.Equal(t, src, v["stx.stream"])
	assert.Equal(t, "g", v["stx.group"])
	assert.Equal(t, "c", v["stx.consumer"])
	assert.Equal(t, "poison", v["stx.error"])
	assert.Equal(t, "3", v["stx.deliveries"])
	assert.Equal(t, "4", v["i"])
	assert.Equal(t, "kept", v["stx.stx.x"], "an original stx.* field is escaped, not overwritten")
	var deliveries []int64
	for _, x := range append(ev.of(streamtx.EventRetry), ev.of(streamtx.EventDeadLetter)...) {
		deliveries = append(deliveries, x.Deliveries)
	}
	require.Equal(t, []int64{1, 2, 3}, deliveries)
}

// Hole 8: shutdown finishes and commits the entry in hand; a replacement
// never processes an entry the old consumer committed.
func TestHole8ShutdownCommitsEntryInHand(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("in"), e.key("out")
	ids := e.add(src, 30, func(i int) map[string]any { return map[string]any{"i": i} })
	started := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	inner := countAndPublish("n", out)
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if msg.Values["i"] == "10" {
			once.Do(func() { close(started) })
			<-release
		}
		return inner.Handle(ctx, msg, tx)
	})
	cfg := e.cfg(src, "g", "c")
	cfg.BatchSize = 1
	c, err := streamtx.NewConsumer(e.rdb, cfg, h)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	<-started
	cancel() // shutdown begins while entry 10 is in the handler
	close(release)
	require.NoError(t, <-errc)
	// Entries 1..10 committed, nothing pending, nothing beyond.
	require.Len(t, e.entries(out), 10)
	require.Equal(t, int64(0), e.pending(src, "g"))

	c2, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "c"), countAndPublish("n", out))
	require.NoError(t, err)
	run(t, c2)
	e.drained(src, "g")
	e.requireExactlyOnce(out, ids)
}

// Hole 9: a commit whose reply is lost and that is retried applies once.
func TestHole9LostCommitReplyAppliesOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("in"), e.key("out")
	ids := e.add(src, 40, func(i int) map[string]any { return map[string]any{"i": i} })

	proxy := faultproxy.New(t, e.rdb.Options().Addr)
	sum := sha1.Sum([]byte(luaSource(t, "commit.lua")))
	// Load the script so commits go out as EVALSHA <sha>.
	require.NoError(t, e.rdb.ScriptLoad(context.Background(), luaSource(t, "commit.lua")).Err())
	proxy.DropReply(hex.EncodeToString(sum[:]), 3)
	// go-redis retries lost replies by itself by default; turn that off in
	// one run so streamtx's own retry is exercised too.
	client := redis.NewClient(&redis.Options{Addr: proxy.Addr(), MaxRetries: -1})
	t.Cleanup(func() { client.Close() })

	ev := newEvents()
	cfg := e.cfg(src, "g", "c")
	cfg.BatchSize = 4
	cfg.Observer = ev
	c, err := streamtx.NewConsumer(client, cfg, countAndPublish("n", out))
	require.NoError(t, err)
	run(t, c)
	e.drained(src, "g")
	require.Equal(t, 3, proxy.Fired())
	e.requireExactlyOnce(out, ids)
	require.Equal(t, 40, e.counterState(src, "g", "n").Value.N)
	// A retried commit that already ran is refused as not owned, and
	// reported as what happened: committed (once), not fenced.
	require.Empty(t, ev.of(streamtx.EventFenced))
	committed := map[string]int{}
	for _, cm := range ev.of(streamtx.EventCommit) {
		for _, id := range cm.IDs {
			committed[id]++
		}
	}
	for _, id := range ids {
		require.Equal(t, 1, committed[id], "entry %s reported committed", id)
	}
}

// Hole 11: after a failover that lost recent commits, state in Redis is
// older than the consumer's memory: the consumer reloads it instead of
// overwriting it.
func TestHole11OlderStateInRedisIsReloaded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	src, out := e.key("in"), e.key("out")
	ids := e.add(src, 10, func(i int) map[string]any { return map[string]any{"i": i} })
	c, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "c"), countAndPublish("n", out))
	require.NoError(t, err)
	run(t, c)
	e.drained(src, "g")

	sp, err := keys.NewSpace(src, "g")
	require.NoError(t, err)
	snapKeys := []string{src, out, sp.State("n"), sp.Offsets()}
	dumps := make([]string, len(snapKeys))
	for i, k := range snapKeys {
		dumps[i], err = e.rdb.Dump(ctx, k).Result()
		require.NoError(t, err, k)
	}
	// These commits are lost by the "failover" below.
	e.add(src, 10, func(i int) map[string]any { return map[string]any{"i": 10 + i} })
	e.drained(src, "g")
	require.Equal(t, 20, e.counterState(src, "g", "n").Value.N)

	_, err = e.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range snapKeys {
			p.RestoreReplace(ctx, k, 0, dumps[i])
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 10, e.counterState(src, "g", "n").Value.N)

	// Producers send again what the failover lost.
	ids = append(ids, e.add(src, 10, func(i int) map[string]any { return map[string]any{"i": 10 + i} })...)
	e.drained(src, "g")
	e.requireExactlyOnce(out, ids)
	require.Equal(t, 20, e.counterState(src, "g", "n").Value.N, "the consumer overwrote Redis with its memory")
}

// Hole 12: state is typed msgpack; bytes that do not decode are a clear
// error naming the key, and the record is left as it is, never reset.
func TestHole12UndecodableStateIsAnErrorNamingTheKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	src, out := e.key("in"), e.key("out")
	sp, err := keys.NewSpace(src, "g")
	require.NoError(t, err)
	// A msgpack string where a struct is expected, at version 1.
	require.NoError(t, e.rdb.Set(ctx, sp.State("n"), record.Format(1, "t", "0-1", []byte("\xa3abc")), 0).Err())
	e.add(src, 1, func(i int) map[string]any { return map[string]any{"i": i} })

	ev := newEvents()
	cfg := e.cfg(src, "g", "c")
	cfg.MaxDeliveries = 2
	cfg.Observer = ev
	c, err := streamtx.NewConsumer(e.rdb, cfg, countAndPublish("n", out))
	require.NoError(t, err)
	run(t, c)
	ev.wait(t, streamtx.EventDeadLetter, nil)

	errs := append(ev.of(streamtx.EventRetry), ev.of(streamtx.EventDeadLetter)...)
	require.Len(t, errs, 2)
	for _, x := range errs {
		require.ErrorIs(t, x.Err, txn.ErrStateDecode)
		require.Contains(t, x.Err.Error(), strconv.Quote(sp.State("n")))
	}
	rec, err := record.Load(ctx, e.rdb, sp.State("n"))
	require.NoError(t, err)
	require.Equal(t, "\xa3abc", string(rec.Data), "the record must not be reset")
	require.Zero(t, e.rdb.XLen(ctx, out).Val())
	require.Len(t, e.entries(c.DeadLetterStream()), 1)
	require.True(t, strings.Contains(e.entries(c.DeadLetterStream())[0].Values["stx.error"].(string), "does not decode"))
}

// State is encoded once per batch. A value that does not encode must fail
// only the entry that made it: the batch is handled again encoding after
// every entry, and the other entries commit once each.
func TestUnencodableStateFailsOnlyItsEntry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("in"), e.key("out")
	ids := e.add(src, 10, func(i int) map[string]any { return map[string]any{"i": i} })
	type odd struct {
		N int
		F any
	}
	var calls atomic.Int64
	h := streamtx.Stateful("n", func(ctx context.Context, msg *streamtx.Message, s *odd, tx *txn.Tx) error {
		calls.Add(1)
		s.N++
		if msg.Values["i"] == "4" {
			s.F = make(chan int) // msgpack cannot encode a channel
		}
		return tx.Publish(out, map[string]any{"src": msg.ID, "n": s.N})
	})
	ev := newEvents()
	cfg := e.cfg(src, "g", "c")
	cfg.BatchSize = 10
	cfg.MaxDeliveries = 1
	cfg.Observer = ev
	c, err := streamtx.NewConsumer(e.rdb, cfg, h)
	require.NoError(t, err)
	stop := run(t, c)
	e.drained(src, "g")
	stop()

	e.requireExactlyOnce(out, append(append([]string{}, ids[:3]...), ids[4:]...)) // "i" counts from 1
	st, err := streamtx.ReadState[odd](context.Background(), e.rdb, src, "g", "n")
	require.NoError(t, err)
	require.Equal(t, 9, st.Value.N)
	require.Nil(t, st.Value.F)
	dl := e.entries(c.DeadLetterStream())
	require.Len(t, dl, 1)
	require.Equal(t, ids[3], dl[0].Values["stx.id"])
	require.Contains(t, dl[0].Values["stx.error"], "encode state")
	// One pass encoding at the end, one encoding after every entry.
	require.Equal(t, int64(20), calls.Load())
}

// With a backlog, the next batch is read while the handlers run. A consumer
// stopped then handles that batch too before Run returns: its entries are
// delivered to it already, and would otherwise wait for ClaimIdle.
func TestShutdownHandlesTheBatchReadAhead(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("in"), e.key("out")
	ids := e.add(src, 100, func(i int) map[string]any { return map[string]any{"i": i} })
	ctx, cancel := context.WithCancel(context.Background())
	inner := countAndPublish("n", out)
	h := streamtx.HandlerFunc(func(hctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if msg.Values["i"] == "30" {
			cancel() // while batch 21..30 is handled and 31..40 is read ahead
		}
		return inner.Handle(hctx, msg, tx)
	})
	cfg := e.cfg(src, "g", "c")
	cfg.BatchSize = 10
	c, err := streamtx.NewConsumer(e.rdb, cfg, h)
	require.NoError(t, err)
	require.NoError(t, c.Run(ctx))

	require.Zero(t, e.pending(src, "g"), "the batch read ahead was handled, not left pending")
	require.Len(t, e.entries(out), 40)

	c2, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "c2"), countAndPublish("n", out))
	require.NoError(t, err)
	run(t, c2)
	e.drained(src, "g")
	e.requireExactlyOnce(out, ids)
}
