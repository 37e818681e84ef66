package redistest_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
)

// The snapshot must see every write, or the "writes nothing" tests built
// on it prove nothing.
func TestSnapshotSeesWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redistest.Client(t)
	p := redistest.Prefix(t, rdb)
	s := p + "s"
	ok := func(err error) { t.Helper(); require.NoError(t, err) }

	ok(rdb.Set(ctx, p+"str", "v", 0).Err())
	ok(rdb.HSet(ctx, p+"hash", "f", "v").Err())
	ok(rdb.RPush(ctx, p+"list", "a", "b").Err())
	ok(rdb.SAdd(ctx, p+"set", "a").Err())
	ok(rdb.ZAdd(ctx, p+"zset", redis.Z{Member: "a", Score: 1}).Err())
	var ids []string
	for i := range 4 {
		id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: s, Values: []any{"i", i}}).Result()
		ok(err)
		ids = append(ids, id)
	}
	ok(rdb.XGroupCreate(ctx, s, "g", "0").Err())
	ok(rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c1", Streams: []string{s, ">"},
		Count: 2, Block: -1}).Err())

	for _, w := range []struct {
		name  string
		write func() error
	}{
		{"string value", func() error { return rdb.Set(ctx, p+"str", "w", 0).Err() }},
		{"expiry", func() error { return rdb.Expire(ctx, p+"str", time.Hour).Err() }},
		{"new key", func() error { return rdb.Set(ctx, p+"new", "v", 0).Err() }},
		{"deleted key", func() error { return rdb.Del(ctx, p+"new").Err() }},
		{"hash field", func() error { return rdb.HSet(ctx, p+"hash", "f", "w").Err() }},
		{"list order", func() error { return rdb.LMove(ctx, p+"list", p+"list", "LEFT", "RIGHT").Err() }},
		{"set member", func() error { return rdb.SAdd(ctx, p+"set", "b").Err() }},
		{"zset score", func() error { return rdb.ZIncrBy(ctx, p+"zset", 1, "a").Err() }},
		{"stream append", func() error { return rdb.XAdd(ctx, &redis.XAddArgs{Stream: s, Values: []any{"i", 9}}).Err() }},
		{"entry deleted", func() error { return rdb.XDel(ctx, s, ids[3]).Err() }},
		{"delivery", func() error {
			return rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c1", Streams: []string{s, ">"},
				Count: 1, Block: -1}).Err()
		}},
		{"delivery count", func() error {
			return rdb.XClaim(ctx, &redis.XClaimArgs{Stream: s, Group: "g", Consumer: "c1", Messages: ids[:1]}).Err()
		}},
		{"owner", func() error {
			return rdb.XClaim(ctx, &redis.XClaimArgs{Stream: s, Group: "g", Consumer: "c2", Messages: ids[:1]}).Err()
		}},
		{"ack", func() error { return rdb.XAck(ctx, s, "g", ids[1]).Err() }},
		{"group position", func() error { return rdb.XGroupSetID(ctx, s, "g", ids[0]).Err() }},
		{"entries-read", func() error { return rdb.Do(ctx, "XGROUP", "SETID", s, "g", ids[0], "ENTRIESREAD", 1).Err() }},
		{"new consumer", func() error { return rdb.XGroupCreateConsumer(ctx, s, "g", "c3").Err() }},
		{"new group", func() error { return rdb.XGroupCreate(ctx, s, "g2", "$").Err() }},
	} {
		before := redistest.TakeSnapshot(t, rdb, p+"*")
		require.NoError(t, w.write(), w.name)
		assert.NotEmpty(t, before.Diff(redistest.TakeSnapshot(t, rdb, p+"*")), "snapshot missed: %s", w.name)
	}
}

// Since Redis 7.2 an XAUTOCLAIM, XCLAIM or XREADGROUP that delivers nothing
// still updates the consumer's seen-time, which changes the stream's DUMP:
// the snapshot must not see it, nor time passing.
func TestSnapshotIgnoresSeenTime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redistest.Client(t)
	p := redistest.Prefix(t, rdb)
	s := p + "s"
	id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: s, Values: []any{"i", 1}}).Result()
	require.NoError(t, err)
	require.NoError(t, rdb.XGroupCreate(ctx, s, "g", "0").Err())
	require.NoError(t, rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c1",
		Streams: []string{s, ">"}, Block: -1}).Err())
	require.NoError(t, rdb.XGroupCreateConsumer(ctx, s, "g", "c2").Err())

	before := redistest.TakeSnapshot(t, rdb, p+"*")
	dump := rdb.Dump(ctx, s).Val()
	waitNextMilli(t, rdb) // so that a seen-time set now differs from the last one

	claimed, _, err := rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: s, Group: "g", Consumer: "c2",
		MinIdle: time.Hour, Start: "0-0", Count: 10}).Result()
	require.NoError(t, err)
	require.Empty(t, claimed)
	claimed, err = rdb.XClaim(ctx, &redis.XClaimArgs{Stream: s, Group: "g", Consumer: "c2",
		MinIdle: time.Hour, Messages: []string{id}}).Result()
	require.NoError(t, err)
	require.Empty(t, claimed)

	assert.Empty(t, before.Diff(redistest.TakeSnapshot(t, rdb, p+"*")))
	if atLeast72(t, rdb) {
		assert.NotEqual(t, dump, rdb.Dump(ctx, s).Val(), "Redis 7.2+ changes the DUMP: the case this test is about")
	}
}

func TestSnapshotDiffNamesTheLine(t *testing.T) {
	t.Parallel()
	before := redistest.Snapshot{"s": "stream …", "s group g pending 1-1": `consumer="c1" deliveries=1`, "k": "string v"}
	after := redistest.Snapshot{"s": "stream …", "s group g pending 1-1": `consumer="c2" deliveries=2`, "n": "string v"}
	assert.Equal(t, []string{
		`changed: s group g pending 1-1: "consumer=\"c1\" deliveries=1" -> "consumer=\"c2\" deliveries=2"`,
		"gone: k",
		"new: n",
	}, before.Diff(after))
	assert.Empty(t, before.Diff(before))
}

// waitNextMilli waits until the server's clock has passed the millisecond
// it is in.
func waitNextMilli(t *testing.T, rdb *redis.Client) {
	t.Helper()
	ctx := context.Background()
	start, err := rdb.Time(ctx).Result()
	require.NoError(t, err)
	for {
		now, err := rdb.Time(ctx).Result()
		require.NoError(t, err)
		if now.UnixMilli() > start.UnixMilli() {
			return
		}
	}
}

// atLeast72 reports whether the server speaks Redis 7.2 or later (Valkey
// reports its Redis compatibility level, 7.2.4, as redis_version).
func atLeast72(t *testing.T, rdb *redis.Client) bool {
	t.Helper()
	info, err := rdb.Info(context.Background(), "server").Result()
	require.NoError(t, err)
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			parts := strings.SplitN(v, ".", 3)
			require.GreaterOrEqual(t, len(parts), 2, "redis_version %q", v)
			major, err1 := strconv.Atoi(parts[0])
			minor, err2 := strconv.Atoi(parts[1])
			require.NoError(t, err1)
			require.NoError(t, err2)
			return major > 7 || major == 7 && minor >= 2
		}
	}
	t.Fatal("INFO server has no redis_version")
	return false
}
