package streamtx_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
)

// addIDs appends one entry per ID, with explicit IDs.
func (e *env) addIDs(stream string, ids ...string) {
	e.t.Helper()
	ctx := context.Background()
	pipe := e.rdb.Pipeline()
	for _, id := range ids {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, ID: id, Values: []any{"id", id}})
	}
	_, err := pipe.Exec(ctx)
	require.NoError(e.t, err)
}

// readAck reads n new entries of group as consumer and acknowledges the
// first ack of them; it returns the IDs read.
func (e *env) readAck(stream, group, consumer string, n, ack int) []string {
	e.t.Helper()
	ctx := context.Background()
	res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: group, Consumer: consumer, Streams: []string{stream, ">"}, Count: int64(n), Block: -1,
	}).Result()
	require.NoError(e.t, err)
	require.Len(e.t, res, 1)
	var ids []string
	for _, m := range res[0].Messages {
		ids = append(ids, m.ID)
	}
	require.Len(e.t, ids, n, "entries read")
	if ack > 0 {
		require.NoError(e.t, e.rdb.XAck(ctx, stream, group, ids[:ack]...).Err())
	}
	return ids
}

func TestInspect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	s := e.key("orders")

	// Every time below is read from the server's clock (TIME), the clock
	// that stamps IDs and measures idle times, so the bounds hold whatever
	// the offset between the test's clock and the server's.
	//
	// Ten entries one millisecond apart, an hour ago: their ages are known.
	base := e.serverTime().Add(-time.Hour).UnixMilli()
	id := func(i int) string { return fmt.Sprintf("%d-0", base+int64(i)) }
	var ids []string
	for i := 1; i <= 10; i++ {
		ids = append(ids, id(i))
	}
	e.addIDs(s, ids...)

	// behind: read 1..3, acked all: lag 7, trim point just after 3.
	require.NoError(t, e.rdb.XGroupCreate(ctx, s, "behind", "0").Err())
	e.readAck(s, "behind", "b1", 3, 3)
	// pending: c1 read 1..6 and acked 1..4; c2 read 7..8, acked nothing.
	// Pending 5, 6, 7, 8 (oldest 5, held by c1); lag 2 (9, 10).
	require.NoError(t, e.rdb.XGroupCreate(ctx, s, "pending", "0").Err())
	e.readAck(s, "pending", "c1", 6, 4)
	r0 := e.serverTime()
	e.readAck(s, "pending", "c2", 2, 0)
	r1 := e.serverTime()
	// caught: created at the end: lag 0, nothing pending.
	require.NoError(t, e.rdb.XGroupCreate(ctx, s, "caught", "$").Err())

	dlq, err := streamtx.DeadLetterStreamFor(s, "pending")
	require.NoError(t, err)
	e.add(dlq, 2, func(i int) map[string]any { return map[string]any{"n": i} })
	sp, err := keys.NewSpace(s, "pending")
	require.NoError(t, err)
	require.NoError(t, e.rdb.HSet(ctx, sp.Offsets(), "c1", id(4), "gone", id(1)).Err())
	// The oldest pending entry (5) was last delivered to c1 before r0; make
	// its idle time known by claiming it between q0 and q1.
	q0 := e.serverTime()
	require.NoError(t, e.rdb.XClaim(ctx, &redis.XClaimArgs{
		Stream: s, Group: "pending", Consumer: "c1", Messages: []string{id(5)},
	}).Err())
	q1 := e.serverTime()

	i0 := e.serverTime()
	info, err := streamtx.Inspect(ctx, e.rdb, s)
	i1 := e.serverTime()
	require.NoError(t, err)

	assert.Equal(t, s, info.Stream)
	assert.EqualValues(t, 10, info.Length)
	assert.Equal(t, id(1), info.FirstID)
	assert.Equal(t, id(10), info.LastID)
	assert.Equal(t, id(10), info.LastGeneratedID)
	assert.EqualValues(t, 10, info.EntriesAdded)
	assert.WithinRange(t, info.Time, i0, i1)
	assert.Equal(t, fmt.Sprintf("%d-1", base+3), info.SafeTrimPoint)
	assert.Equal(t, "behind", info.SafeTrimHeldBy)

	require.Len(t, info.Groups, 3)
	g := map[string]streamtx.GroupInfo{}
	for _, gi := range info.Groups {
		g[gi.Name] = gi
	}
	assert.Equal(t, []string{"behind", "caught", "pending"},
		[]string{info.Groups[0].Name, info.Groups[1].Name, info.Groups[2].Name})

	b := g["behind"]
	assert.Equal(t, id(3), b.LastDeliveredID)
	assert.EqualValues(t, 7, b.Lag)
	assert.True(t, b.LagExact)
	assert.Zero(t, b.Pending)
	assert.Nil(t, b.OldestPending)
	assert.Equal(t, fmt.Sprintf("%d-1", base+3), b.TrimPoint)
	assert.False(t, b.TrimPointPending)
	require.Len(t, b.Consumers, 1)
	assert.Equal(t, "b1", b.Consumers[0].Name)
	assert.Zero(t, b.DeadLetters)
	assert.Empty(t, b.Offsets)

	c := g["caught"]
	assert.Equal(t, id(10), c.LastDeliveredID)
	assert.Zero(t, c.Lag)
	assert.True(t, c.LagExact)
	assert.Equal(t, fmt.Sprintf("%d-1", base+10), c.TrimPoint)
	assert.Empty(t, c.Consumers)

	p := g["pending"]
	assert.Equal(t, id(8), p.LastDeliveredID)
	assert.EqualValues(t, 2, p.Lag)
	assert.True(t, p.LagExact)
	assert.EqualValues(t, 4, p.Pending)
	assert.Equal(t, id(5), p.TrimPoint)
	assert.True(t, p.TrimPointPending)
	assert.Equal(t, dlq, p.DeadLetterStream)
	assert.EqualValues(t, 2, p.DeadLetters)
	assert.Equal(t, map[string]string{"c1": id(4), "gone": id(1)}, p.Offsets)
	require.Len(t, p.Consumers, 2)
	assert.Equal(t, streamtx.ConsumerInfo{Name: "c1", Pending: 2, Idle: p.Consumers[0].Idle, CommittedID: id(4)}, p.Consumers[0])
	assert.Equal(t, streamtx.ConsumerInfo{Name: "c2", Pending: 2, Idle: p.Consumers[1].Idle}, p.Consumers[1])
	// c2 last read between r0 and r1, Inspect ran between i0 and i1.
	durationWithin(t, p.Consumers[1].Idle, msBetween(r1, i0), msBetween(r0, i1))

	op := p.OldestPending
	require.NotNil(t, op)
	assert.Equal(t, id(5), op.ID)
	assert.Equal(t, "c1", op.Consumer)
	assert.EqualValues(t, 2, op.Deliveries) // read, then claimed
	// Idle: since the claim (between q0 and q1), at a time between i0 and i1.
	durationWithin(t, op.Idle, msBetween(q1, i0), msBetween(q0, i1))
	// Age: from the ID's millisecond (base+5) to the server's time, which
	// was between i0 and i1.
	born := time.UnixMilli(base + 5)
	durationWithin(t, op.Age, i0.Sub(born), i1.Sub(born))
	assert.Equal(t, info.Time.Sub(born), op.Age)
}

// TestInspectLagRedisGetsWrong covers the cases where Redis 7.0's XINFO
// GROUPS lag is nil (a group set at an arbitrary ID, a deleted entry after
// a group's position) or wrong (entries a group had not read were trimmed:
// redis/redis#13957).
func TestInspectLagRedisGetsWrong(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	s := e.key("s")
	var ids []string
	for i := 1; i <= 10; i++ {
		ids = append(ids, strconv.Itoa(i)+"-0")
	}
	e.addIDs(s, ids...)

	require.NoError(t, e.rdb.XGroupCreate(ctx, s, "stuck", "0").Err())
	e.readAck(s, "stuck", "c", 1, 1) // at 1-0
	require.NoError(t, e.rdb.XGroupCreate(ctx, s, "moved", "0").Err())
	e.readAck(s, "moved", "c", 1, 1)                       // at 1-0, then reads on after the trim
	require.NoError(t, e.rdb.XTrimMaxLen(ctx, s, 5).Err()) // 6..10 remain
	e.readAck(s, "moved", "c", 1, 1)                       // at 6-0
	require.NoError(t, e.rdb.XGroupCreate(ctx, s, "arbitrary", "7-0").Err())

	info, err := streamtx.Inspect(ctx, e.rdb, s)
	require.NoError(t, err)
	raw, err := e.rdb.XInfoGroups(ctx, s).Result()
	require.NoError(t, err)
	for _, g := range raw {
		t.Logf("Redis says lag(%s) = %d (-1: nil)", g.Name, g.Lag)
	}
	lags := map[string]int64{}
	for _, g := range info.Groups {
		assert.True(t, g.LagExact, g.Name)
		lags[g.Name] = g.Lag
	}
	assert.Equal(t, map[string]int64{"stuck": 5, "moved": 4, "arbitrary": 3}, lags)

	// A deleted entry after the groups' positions.
	require.NoError(t, e.rdb.XDel(ctx, s, "9-0").Err())
	info, err = streamtx.Inspect(ctx, e.rdb, s)
	require.NoError(t, err)
	lags = map[string]int64{}
	for _, g := range info.Groups {
		assert.True(t, g.LagExact, g.Name)
		lags[g.Name] = g.Lag
	}
	assert.Equal(t, map[string]int64{"stuck": 4, "moved": 3, "arbitrary": 2}, lags)
	assert.Equal(t, "1-1", info.SafeTrimPoint)
	assert.Equal(t, "stuck", info.SafeTrimHeldBy)
}

func TestInspectEmptyMissingWrongType(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()

	_, err := streamtx.Inspect(ctx, e.rdb, e.key("missing"))
	require.ErrorIs(t, err, streamtx.ErrStreamNotFound)
	require.NoError(t, e.rdb.Set(ctx, e.key("str"), "x", 0).Err())
	_, err = streamtx.Inspect(ctx, e.rdb, e.key("str"))
	require.ErrorIs(t, err, streamtx.ErrNotAStream)

	s := e.key("empty")
	require.NoError(t, e.rdb.XGroupCreateMkStream(ctx, s, "g", "$").Err())
	info, err := streamtx.Inspect(ctx, e.rdb, s)
	require.NoError(t, err)
	assert.Zero(t, info.Length)
	assert.Empty(t, info.FirstID)
	assert.Empty(t, info.LastID)
	require.Len(t, info.Groups, 1)
	assert.Zero(t, info.Groups[0].Lag)
	assert.True(t, info.Groups[0].LagExact)
	assert.Equal(t, "0-1", info.SafeTrimPoint)

	nog := e.key("nogroups")
	e.addIDs(nog, "1-0", "2-0")
	info, err = streamtx.Inspect(ctx, e.rdb, nog)
	require.NoError(t, err)
	assert.EqualValues(t, 2, info.Length)
	assert.Empty(t, info.Groups)
	assert.Empty(t, info.SafeTrimPoint, "no groups: no safe point")
}

// serverTime is the Redis server's clock (TIME).
func (e *env) serverTime() time.Time {
	e.t.Helper()
	now, err := e.rdb.Time(context.Background()).Result()
	require.NoError(e.t, err)
	return now
}

// msBetween is the time from a to b as Redis measures idle times: the
// difference of the two instants' whole milliseconds (it subtracts its
// millisecond clock at one event from its millisecond clock at the other).
// With a and b read by TIME before or after those events, it bounds the idle
// time exactly.
func msBetween(a, b time.Time) time.Duration {
	return time.Duration(b.UnixMilli()-a.UnixMilli()) * time.Millisecond
}

// durationWithin asserts lo <= d <= hi.
func durationWithin(t *testing.T, d, lo, hi time.Duration) {
	t.Helper()
	assert.Truef(t, lo <= d && d <= hi, "%s is not within [%s, %s]", d, lo, hi)
}
