package streamtx_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
)

// Retention trims to MaxLen but never below what another group still needs.
func TestRetentionNeverTrimsBelowTheSafePoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	src := e.key("in")
	ids := e.add(src, 100, func(i int) map[string]any { return map[string]any{"i": i} })
	// A slow group has read 40 entries and acknowledged 30 of them.
	require.NoError(t, e.rdb.XGroupCreateMkStream(ctx, src, "slow", "0").Err())
	read, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "slow", Consumer: "s", Streams: []string{src, ">"}, Count: 40, Block: -1}).Result()
	require.NoError(t, err)
	for _, m := range read[0].Messages[:30] {
		require.NoError(t, e.rdb.XAck(ctx, src, "slow", m.ID).Err())
	}

	cfg := e.cfg(src, "g", "c")
	cfg.Retention = streamtx.Retention{MaxLen: 10, Interval: time.Millisecond}
	c, err := streamtx.NewConsumer(e.rdb, cfg, nop)
	require.NoError(t, err)
	run(t, c)
	e.drained(src, "g")
	// The slow group's oldest pending entry (the 31st) holds the trim back.
	eventually(t, "trimmed to the slow group's oldest pending entry", func() bool {
		first, err := e.rdb.XRangeN(ctx, src, "-", "+", 1).Result()
		return err == nil && len(first) == 1 && first[0].ID == ids[30]
	})
	// Once the slow group acknowledges everything, MaxLen applies.
	for _, m := range read[0].Messages[30:] {
		require.NoError(t, e.rdb.XAck(ctx, src, "slow", m.ID).Err())
	}
	read, err = e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "slow", Consumer: "s", Streams: []string{src, ">"}, Count: 100, Block: -1}).Result()
	require.NoError(t, err)
	for _, m := range read[0].Messages {
		require.NoError(t, e.rdb.XAck(ctx, src, "slow", m.ID).Err())
	}
	eventually(t, "trimmed to the newest 10", func() bool { return e.rdb.XLen(ctx, src).Val() == 10 })
	first, err := e.rdb.XRangeN(ctx, src, "-", "+", 1).Result()
	require.NoError(t, err)
	require.Equal(t, ids[90], first[0].ID)
}

func TestRetentionConfigErrors(t *testing.T) {
	_, rdb := miniClient(t)
	for field, r := range map[string]streamtx.Retention{
		"Retention.MaxLen":   {MaxLen: -1},
		"Retention.MaxAge":   {MaxAge: -1},
		"Retention.Interval": {Interval: -1},
	} {
		_, err := streamtx.NewConsumer(rdb, streamtx.Config{Stream: "s", Group: "g", Consumer: "c", Retention: r}, nop)
		require.ErrorIs(t, err, streamtx.ErrConfig)
		require.Contains(t, err.Error(), field)
	}
}

func TestRetentionByAge(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	src := e.key("in")
	for i := 1; i <= 5; i++ { // from 1970: older than any MaxAge
		require.NoError(t, e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: src, ID: "1-" + string(rune('0'+i)), Values: map[string]any{"old": i}}).Err())
	}
	e.add(src, 3, func(i int) map[string]any { return map[string]any{"new": i} })
	cfg := e.cfg(src, "g", "c")
	cfg.Retention = streamtx.Retention{MaxAge: time.Hour, Interval: time.Millisecond}
	c, err := streamtx.NewConsumer(e.rdb, cfg, nop)
	require.NoError(t, err)
	run(t, c)
	e.drained(src, "g")
	eventually(t, "old entries trimmed", func() bool { return e.rdb.XLen(ctx, src).Val() == 3 })
}
