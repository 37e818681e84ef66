package streamtx_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/redistest"
)

// The least-privilege tests run streamtx as users with exactly the ACL rules
// that README.md documents (redistest.ACLRules), each test on a redis-server
// of its own, so that its ACL LOG is its own: it must be empty afterwards.

// privateEnv returns an env on srv, whose client is the default user (all
// rights, for setting up and checking), and makes the test fail if the
// server's ACL LOG holds anything once the test's consumers have stopped.
func privateEnv(t *testing.T, srv *redistest.Server, checkACL bool) *env {
	t.Helper()
	admin := srv.Client(t)
	e := &env{t: t, rdb: admin, p: redistest.Prefix(t, admin)}
	if checkACL {
		// Registered before any consumer runs: cleanups run last first,
		// so this runs after they have stopped.
		t.Cleanup(func() { redistest.RequireNoACLDenials(t, admin) })
	}
	return e
}

// as returns a client of srv that logs in as a new user with role's rules
// over e's streams.
func (e *env) as(srv *redistest.Server, role redistest.Role) *redis.Client {
	e.t.Helper()
	user, pw := redistest.CreateACLUser(e.t, e.rdb, role, "~"+e.p+"*")
	return e.login(srv, user, pw)
}

func (e *env) login(srv *redistest.Server, user, pw string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: user, Password: pw})
	e.t.Cleanup(func() { c.Close() })
	return c
}

// The core exactly-once test with every client a least-privilege user: the
// producer appends the source entries (idempotently, with retries that
// append nothing), four consumers share a counter, and a consumer with
// Retention trims what they acknowledged.
func TestACLCoreExactlyOnce(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	e := privateEnv(t, srv, true)
	ctx := context.Background()
	src := e.key("events")

	p, err := streamtx.NewProducer(e.as(srv, redistest.RoleProducer), streamtx.ProducerConfig{})
	require.NoError(t, err)
	const n = 2000
	var srcIDs []string
	for i := 1; i <= n; i++ {
		id, err := p.Publish(ctx, src, map[string]any{"i": i}, streamtx.WithIdempotencyKey(strconv.Itoa(i)))
		require.NoError(t, err)
		srcIDs = append(srcIDs, id)
	}
	for i := 1; i <= 10; i++ { // retries: nothing appended
		id, err := p.Publish(ctx, src, map[string]any{"i": i}, streamtx.WithIdempotencyKey(strconv.Itoa(i)))
		require.NoError(t, err)
		require.Equal(t, srcIDs[i-1], id)
	}

	consumer := e.as(srv, redistest.RoleConsumer)
	sharedCounterExactlyOnce(e, consumer, src, srcIDs)
	snap, err := streamtx.ReadState[counter](ctx, consumer, src, "g", "counter")
	require.NoError(t, err)
	require.Equal(t, n, snap.Value.N, "ReadState as the consumer")

	cfg := e.cfg(src, "g", "trimmer")
	cfg.Retention = streamtx.Retention{MaxLen: 1, MaxAge: time.Millisecond, Interval: time.Millisecond}
	c, err := streamtx.NewConsumer(consumer, cfg, countAndPublish("counter", src+":counted"))
	require.NoError(t, err)
	stop := run(t, c)
	eventually(t, "source trimmed by Retention", func() bool { return e.rdb.XLen(ctx, src).Val() <= 1 })
	stop()
}

// Consumers of a topic under the consumer role: membership, leases, the
// fenced reads and commits, hand-overs, with no ACL denial.
func TestACLTopicConsumers(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	e := privateEnv(t, srv, true)
	o := newOrderRun(t, e, 4, 10, 400)
	o.client = e.as(srv, redistest.RoleConsumer)
	h := o.handler(t, 7)
	run(t, o.consumer(t, "a", h, nil))
	run(t, o.consumer(t, "b", h, nil))
	o.check(t)
}

// Dead letters: written by a consumer user, listed and replayed by a CLI
// user, then handled once.
func TestACLDeadLetterReplay(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	e := privateEnv(t, srv, true)
	replayDeadLettersExactlyOnce(e, e.as(srv, redistest.RoleConsumer), e.as(srv, redistest.RoleCLI))
}

// Cross-slot publishes: the source consumer (consumer rules) writes them to
// its outbox, the relay (relay rules, with Retention) forwards them.
func TestACLRelay(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	e := privateEnv(t, srv, true)
	ctx := context.Background()
	src, far := e.key("src"), e.key("far")
	require.NotEqual(t, keys.Slot(src), keys.Slot(far))
	ids := e.add(src, 200, func(i int) map[string]any { return map[string]any{"i": i} })

	cfg := e.cfg(src, "g", "c")
	cfg.CrossSlot = streamtx.CrossSlotRelay
	c, err := streamtx.NewConsumer(e.as(srv, redistest.RoleConsumer), cfg, countAndPublish("n", far))
	require.NoError(t, err)
	run(t, c)
	r, err := streamtx.NewRelay(e.as(srv, redistest.RoleRelay), streamtx.RelayConfig{
		Stream: src, Group: "g", Consumer: "relay", BatchSize: 7, Block: cfg.Block,
		Retention: streamtx.Retention{MaxLen: 1, Interval: time.Millisecond},
	})
	require.NoError(t, err)
	run(t, r)
	outbox, err := streamtx.OutboxStream(src, "g")
	require.NoError(t, err)
	e.drained(src, "g")
	e.drained(outbox, streamtx.RelayGroup)
	e.requireExactlyOnce(far, ids)
	eventually(t, "outbox trimmed", func() bool { return e.rdb.XLen(ctx, outbox).Val() <= 1 })
}

// Entries delivered more often than MaxDeliveries (their holder died) are
// suspects: each is counted (suspect.lua: INCR, PEXPIRE), handled alone,
// and its counter deleted (DEL), all with the consumer's rules.
func TestACLSuspectEntriesHandledAlone(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	e := privateEnv(t, srv, true)
	ctx := context.Background()
	src, out := e.key("in"), e.key("out")
	require.NoError(t, e.rdb.XGroupCreateMkStream(ctx, src, "g", "0").Err())
	ids := e.add(src, 3, func(i int) map[string]any { return map[string]any{"i": i} })
	// Consumer c died twice holding them: two deliveries each. Restarted,
	// it takes them back (claim.lua: XPENDING, XCLAIM), a third.
	require.NoError(t, e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c",
		Streams: []string{src, ">"}, Count: 3, Block: -1}).Err())
	require.NoError(t, e.rdb.XClaim(ctx, &redis.XClaimArgs{Stream: src, Group: "g", Consumer: "c",
		Messages: ids}).Err())

	cfg := e.cfg(src, "g", "c")
	cfg.MaxDeliveries = 2
	ev := newEvents()
	cfg.Observer = ev
	c, err := streamtx.NewConsumer(e.as(srv, redistest.RoleConsumer), cfg, countAndPublish("n", out))
	require.NoError(t, err)
	stop := run(t, c)
	for _, id := range ids {
		ev.wait(t, streamtx.EventCommit, hasID(id))
	}
	stop()
	for _, cm := range ev.of(streamtx.EventCommit) {
		require.Len(t, cm.IDs, 1, "a suspect commits alone")
	}
	e.requireExactlyOnce(out, ids)
	sp, err := keys.NewSpace(src, "g")
	require.NoError(t, err)
	for _, id := range ids {
		require.Zero(t, e.rdb.Exists(ctx, sp.Suspect(id)).Val(), "suspect counter deleted")
	}
}

// RemoveIdleConsumers, which a consumer's service may call, needs two more
// rules than the consumer's: the README says so.
func TestACLRemoveIdleConsumers(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	e := privateEnv(t, srv, true)
	ctx := context.Background()
	src := e.key("s")
	require.NoError(t, e.rdb.XGroupCreateMkStream(ctx, src, "g", "0").Err())
	require.NoError(t, e.rdb.XGroupCreateConsumer(ctx, src, "g", "idle").Err())
	// Redis counts idle time in milliseconds: wait until it is not 0.
	eventually(t, "consumer idle for 1ms", func() bool {
		cs, err := e.rdb.XInfoConsumers(ctx, src, "g").Result()
		return err == nil && len(cs) == 1 && cs[0].Idle > 0
	})
	rules := append(redistest.ACLRules(redistest.RoleConsumer, "~"+e.p+"*"), "+xinfo|consumers", "+xgroup|delconsumer")
	user, pw := redistest.CreateACLUserRules(t, e.rdb, "cleanup", rules)
	removed, err := streamtx.RemoveIdleConsumers(ctx, e.login(srv, user, pw), src, "g", time.Nanosecond)
	require.NoError(t, err)
	require.Equal(t, []string{"idle"}, removed)
}

// A consumer user missing one rule (SET, which commit.lua needs to write
// state) is refused at every commit: the refusal reaches the Observer as an
// EventError naming NOPERM, and no entry is dead-lettered for it, however
// often it is retried (MaxDeliveries is 1).
func TestACLMissingRuleIsReportedNotDeadLettered(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	e := privateEnv(t, srv, false) // the refusals are in ACL LOG, checked below
	ctx := context.Background()
	src := e.key("in")
	e.add(src, 5, func(i int) map[string]any { return map[string]any{"i": i} })
	rules := slices.DeleteFunc(redistest.ACLRules(redistest.RoleConsumer, "~"+e.p+"*"),
		func(r string) bool { return r == "+set" })
	user, pw := redistest.CreateACLUserRules(t, e.rdb, "noset", rules)

	ev := newEvents()
	cfg := e.cfg(src, "g", "c")
	cfg.MaxDeliveries = 1
	cfg.Observer = ev
	c, err := streamtx.NewConsumer(e.login(srv, user, pw), cfg, countAndPublish("n", e.key("out")))
	require.NoError(t, err)
	stop := run(t, c)
	noperm := func(ev streamtx.Event) bool { return ev.Err != nil && strings.Contains(ev.Err.Error(), "NOPERM") }
	for range 3 { // refused again and again: each retry is reported
		got := ev.wait(t, streamtx.EventError, noperm)
		var re redis.Error
		require.True(t, errors.As(got.Err, &re), "the Redis error is wrapped: %v", got.Err)
		require.NotEmpty(t, got.IDs, "the refused entries are named")
	}
	stop()

	require.Empty(t, ev.of(streamtx.EventDeadLetter))
	require.Empty(t, ev.of(streamtx.EventCommit))
	require.Zero(t, e.rdb.XLen(ctx, c.DeadLetterStream()).Val(), "nothing dead-lettered")
	require.EqualValues(t, 5, e.pending(src, "g"), "every entry still pending")
	require.Zero(t, e.rdb.Exists(ctx, e.key("out")).Val(), "nothing published")

	// commit.lua asks redis.acl_check_cmd before its first write, which
	// logs nothing; a refused call itself would be logged.
	for _, l := range redistest.ACLLog(t, e.rdb) {
		require.Equal(t, user, l.Username, l.String())
		require.Equal(t, "set", l.Object, "only SET is refused: %s", l)
	}
}
