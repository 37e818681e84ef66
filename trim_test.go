package streamtx_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
)

// streamIDs returns every ID in stream.
func (e *env) streamIDs(stream string) []string {
	e.t.Helper()
	ms, err := e.rdb.XRange(context.Background(), stream, "-", "+").Result()
	require.NoError(e.t, err)
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.ID
	}
	return ids
}

// assertNothingNeededRemoved checks that every pending entry of every group
// and every entry after each group's last-delivered ID is still in stream.
// added lists every ID ever added, in order.
func (e *env) assertNothingNeededRemoved(stream string, added []string) {
	e.t.Helper()
	ctx := context.Background()
	present := map[string]bool{}
	for _, id := range e.streamIDs(stream) {
		present[id] = true
	}
	groups, err := e.rdb.XInfoGroups(ctx, stream).Result()
	require.NoError(e.t, err)
	for _, g := range groups {
		pend, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: stream, Group: g.Name, Start: "-", End: "+", Count: 100000,
		}).Result()
		require.NoError(e.t, err)
		for _, p := range pend {
			assert.True(e.t, present[p.ID], "entry %s pending in group %s was trimmed", p.ID, g.Name)
		}
		for _, id := range added {
			if idAfter(id, g.LastDeliveredID) {
				assert.True(e.t, present[id], "entry %s not yet delivered to group %s was trimmed", id, g.Name)
			}
		}
	}
}

// idAfter reports whether "ms-seq" ID a sorts after b.
func idAfter(a, b string) bool {
	var am, as, bm, bs uint64
	fmt.Sscanf(a, "%d-%d", &am, &as)
	fmt.Sscanf(b, "%d-%d", &bm, &bs)
	return am > bm || am == bm && as > bs
}

func seqIDs(from, to int) []string {
	var ids []string
	for i := from; i <= to; i++ {
		ids = append(ids, strconv.Itoa(i)+"-0")
	}
	return ids
}

func TestTrimSafe(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	s := e.key("s")
	all := seqIDs(1, 20)
	e.addIDs(s, all...)

	// pending: read 1..10, acked 1..4: pending 5..10, safe below 5-0.
	require.NoError(t, e.rdb.XGroupCreate(ctx, s, "pending", "0").Err())
	e.readAck(s, "pending", "c", 10, 4)
	// behind: read and acked 1..3: safe below 3-1.
	require.NoError(t, e.rdb.XGroupCreate(ctx, s, "behind", "0").Err())
	e.readAck(s, "behind", "c", 3, 3)
	// caught: read and acked everything: safe below 20-1.
	require.NoError(t, e.rdb.XGroupCreate(ctx, s, "caught", "0").Err())
	e.readAck(s, "caught", "c", 20, 20)

	dry, err := streamtx.TrimSafe(ctx, e.rdb, s, streamtx.TrimOptions{DryRun: true})
	require.NoError(t, err)
	assert.Equal(t, streamtx.TrimResult{
		Point: "3-1", Removed: 3, SafePoint: "3-1", HeldBy: "behind", DryRun: true,
	}, dry)
	assert.Equal(t, all, e.streamIDs(s), "a dry run removes nothing")

	info, err := streamtx.Inspect(ctx, e.rdb, s)
	require.NoError(t, err)
	assert.Equal(t, dry.SafePoint, info.SafeTrimPoint, "Inspect and TrimSafe agree")
	assert.Equal(t, dry.HeldBy, info.SafeTrimHeldBy)

	res, err := streamtx.TrimSafe(ctx, e.rdb, s, streamtx.TrimOptions{})
	require.NoError(t, err)
	dry.DryRun = false
	assert.Equal(t, dry, res, "the trim does what the dry run said")
	assert.Equal(t, seqIDs(4, 20), e.streamIDs(s))
	e.assertNothingNeededRemoved(s, all)

	// behind reads and acks 4..13: now pending's oldest entry holds it.
	e.readAck(s, "behind", "c", 10, 10)
	dry, err = streamtx.TrimSafe(ctx, e.rdb, s, streamtx.TrimOptions{DryRun: true})
	require.NoError(t, err)
	assert.Equal(t, streamtx.TrimResult{
		Point: "5-0", Removed: 1, SafePoint: "5-0", HeldBy: "pending", HeldByPending: true, DryRun: true,
	}, dry)
	res, err = streamtx.TrimSafe(ctx, e.rdb, s, streamtx.TrimOptions{})
	require.NoError(t, err)
	dry.DryRun = false
	assert.Equal(t, dry, res)
	assert.Equal(t, seqIDs(5, 20), e.streamIDs(s))
	e.assertNothingNeededRemoved(s, all)

	// Nothing more to remove until pending acknowledges.
	res, err = streamtx.TrimSafe(ctx, e.rdb, s, streamtx.TrimOptions{})
	require.NoError(t, err)
	assert.Zero(t, res.Removed)
	assert.Equal(t, "5-0", res.Point)
	require.NoError(t, e.rdb.XAck(ctx, s, "pending", seqIDs(5, 10)...).Err())
	res, err = streamtx.TrimSafe(ctx, e.rdb, s, streamtx.TrimOptions{})
	require.NoError(t, err)
	assert.Equal(t, streamtx.TrimResult{Point: "10-1", Removed: 6, SafePoint: "10-1", HeldBy: "pending"}, res)
	assert.Equal(t, seqIDs(11, 20), e.streamIDs(s))
	e.assertNothingNeededRemoved(s, all)
}

func TestTrimSafeKeepMinAge(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	s := e.key("s")
	now := time.UnixMilli(1_700_000_000_000)
	ago := func(d time.Duration) string { return fmt.Sprintf("%d-0", now.Add(-d).UnixMilli()) }
	all := []string{ago(10 * time.Minute), ago(2*time.Minute + time.Millisecond), ago(2 * time.Minute), ago(time.Minute), ago(time.Second)}
	e.addIDs(s, all...)
	require.NoError(t, e.rdb.XGroupCreate(ctx, s, "g", "0").Err())
	e.readAck(s, "g", "c", 5, 5)
	clock := func() time.Time { return now }

	// The group is done with everything; the age keeps the last three: the
	// entry exactly two minutes old is not older than KeepMinAge, the one a
	// millisecond older is.
	opts := streamtx.TrimOptions{KeepMinAge: 2 * time.Minute, Now: clock, DryRun: true}
	dry, err := streamtx.TrimSafe(ctx, e.rdb, s, opts)
	require.NoError(t, err)
	want := streamtx.TrimResult{
		Point: ago(2 * time.Minute), Removed: 2, SafePoint: fmt.Sprintf("%d-1", now.Add(-time.Second).UnixMilli()),
		HeldBy: "g", LimitedByAge: true, DryRun: true,
	}
	assert.Equal(t, want, dry)
	opts.DryRun = false
	res, err := streamtx.TrimSafe(ctx, e.rdb, s, opts)
	require.NoError(t, err)
	want.DryRun = false
	assert.Equal(t, want, res)
	assert.Equal(t, all[2:], e.streamIDs(s))

	// When the group is behind, the safe point binds, not the age.
	s2 := e.key("s2")
	e.addIDs(s2, all...)
	require.NoError(t, e.rdb.XGroupCreate(ctx, s2, "g", "0").Err())
	e.readAck(s2, "g", "c", 1, 1)
	res, err = streamtx.TrimSafe(ctx, e.rdb, s2, streamtx.TrimOptions{KeepMinAge: time.Millisecond, Now: clock})
	require.NoError(t, err)
	assert.Equal(t, streamtx.TrimResult{
		Point: fmt.Sprintf("%d-1", now.Add(-10*time.Minute).UnixMilli()), Removed: 1,
		SafePoint: fmt.Sprintf("%d-1", now.Add(-10*time.Minute).UnixMilli()), HeldBy: "g",
	}, res)

	// Default clock: Redis's. Entries just added are younger than an hour.
	s3 := e.key("s3")
	e.add(s3, 3, func(i int) map[string]any { return map[string]any{"i": i} })
	require.NoError(t, e.rdb.XGroupCreate(ctx, s3, "g", "0").Err())
	e.readAck(s3, "g", "c", 3, 3)
	res, err = streamtx.TrimSafe(ctx, e.rdb, s3, streamtx.TrimOptions{KeepMinAge: time.Hour})
	require.NoError(t, err)
	assert.Zero(t, res.Removed)
	assert.True(t, res.LimitedByAge)
	n, err := e.rdb.XLen(ctx, s3).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 3, n)

	_, err = streamtx.TrimSafe(ctx, e.rdb, s3, streamtx.TrimOptions{KeepMinAge: -time.Second})
	require.Error(t, err)
}

func TestTrimSafeRefuses(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()

	s := e.key("nogroups")
	e.addIDs(s, "1-0", "2-0")
	_, err := streamtx.TrimSafe(ctx, e.rdb, s, streamtx.TrimOptions{})
	require.ErrorIs(t, err, streamtx.ErrNoGroups)
	assert.Equal(t, []string{"1-0", "2-0"}, e.streamIDs(s))

	_, err = streamtx.TrimSafe(ctx, e.rdb, e.key("missing"), streamtx.TrimOptions{})
	require.ErrorIs(t, err, streamtx.ErrStreamNotFound)
	require.NoError(t, e.rdb.Set(ctx, e.key("str"), "x", 0).Err())
	_, err = streamtx.TrimSafe(ctx, e.rdb, e.key("str"), streamtx.TrimOptions{})
	require.ErrorIs(t, err, streamtx.ErrNotAStream)

	// A group that has read nothing from "0" holds everything back, even
	// with a huge sequence number in the way.
	s2 := e.key("s2")
	e.addIDs(s2, "5-18446744073709551615", "6-0")
	require.NoError(t, e.rdb.XGroupCreate(ctx, s2, "fresh", "0").Err())
	res, err := streamtx.TrimSafe(ctx, e.rdb, s2, streamtx.TrimOptions{})
	require.NoError(t, err)
	assert.Equal(t, streamtx.TrimResult{Point: "0-1", SafePoint: "0-1", HeldBy: "fresh"}, res)
	require.NoError(t, e.rdb.XGroupCreate(ctx, s2, "done", "5-18446744073709551615").Err())
	require.NoError(t, e.rdb.XGroupSetID(ctx, s2, "fresh", "5-18446744073709551615").Err())
	res, err = streamtx.TrimSafe(ctx, e.rdb, s2, streamtx.TrimOptions{DryRun: true})
	require.NoError(t, err)
	assert.Equal(t, streamtx.TrimResult{Point: "6-0", Removed: 1, SafePoint: "6-0", HeldBy: "done", DryRun: true}, res)
}

// TestTrimSafeWhileReading trims in a loop while groups read: one acks at
// once, one holds a window of entries before acknowledging them, one reads
// slowly. No group may miss an entry, and an entry a consumer holds must
// still be in the stream when it acknowledges it.
func TestTrimSafeWhileReading(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	s := e.key("s")
	const n = 600
	groups := []string{"fast", "window", "slow"}
	for _, g := range groups {
		require.NoError(t, e.rdb.XGroupCreateMkStream(ctx, s, g, "$").Err())
	}

	var added []string
	var mu sync.Mutex
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		for i := 0; i < n; i += 20 {
			ids := e.addBatch(s, 20)
			mu.Lock()
			added = append(added, ids...)
			mu.Unlock()
		}
	}()

	stopTrim := make(chan struct{})
	trimDone := make(chan int64)
	go func() {
		var removed int64
		defer func() { trimDone <- removed }()
		for {
			select {
			case <-stopTrim:
				return
			default:
			}
			res, err := streamtx.TrimSafe(ctx, e.rdb, s, streamtx.TrimOptions{})
			if err != nil {
				t.Errorf("TrimSafe: %v", err)
				return
			}
			removed += res.Removed
		}
	}()

	got := make([][]string, len(groups))
	var wg sync.WaitGroup
	for gi, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rdb := e.rdb
			var held []string
			for len(got[gi]) < n {
				count := int64(7)
				if g == "slow" {
					count = 3
				}
				res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
					Group: g, Consumer: "c", Streams: []string{s, ">"}, Count: count, Block: 10 * time.Millisecond,
				}).Result()
				if err == redis.Nil {
					continue
				}
				if err != nil {
					t.Errorf("%s: XREADGROUP: %v", g, err)
					return
				}
				for _, m := range res[0].Messages {
					got[gi] = append(got[gi], m.ID)
					held = append(held, m.ID)
				}
				if g == "window" && len(held) < 25 && len(got[gi]) < n {
					continue // hold entries across several trims
				}
				for _, id := range held {
					ms, err := rdb.XRange(ctx, s, id, id).Result()
					if err != nil || len(ms) != 1 {
						t.Errorf("%s: entry %s it holds is gone (%v)", g, id, err)
					}
				}
				if err := rdb.XAck(ctx, s, g, held...).Err(); err != nil {
					t.Errorf("%s: XACK: %v", g, err)
				}
				held = held[:0]
			}
		}()
	}
	<-produced
	wg.Wait()
	close(stopTrim)
	removed := <-trimDone

	for gi, g := range groups {
		assert.Equal(t, added, got[gi], "group %s received every entry once, in order", g)
	}
	res, err := streamtx.TrimSafe(ctx, e.rdb, s, streamtx.TrimOptions{})
	require.NoError(t, err)
	removed += res.Removed
	assert.EqualValues(t, n, removed, "once every group is done, everything is trimmed")
	assert.Empty(t, e.streamIDs(s))
}

// addBatch appends n entries with generated IDs and returns the IDs.
func (e *env) addBatch(stream string, n int) []string {
	ctx := context.Background()
	pipe := e.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, n)
	for i := range cmds {
		cmds[i] = pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"i", i}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		e.t.Errorf("XADD: %v", err)
		return nil
	}
	ids := make([]string, n)
	for i, c := range cmds {
		ids[i] = c.Val()
	}
	return ids
}
