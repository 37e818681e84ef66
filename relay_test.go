package streamtx_test

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/faultproxy"
	"github.com/streamtx/streamtx/internal/keys"
)

// Cross-slot publishes go through the outbox and a relay that is stopped,
// restarted and loses replies: every publish arrives once in its target.
func TestRelayForwardsCrossSlotPublishesExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	src, far := e.key("src"), e.key("far")
	require.NotEqual(t, keys.Slot(src), keys.Slot(far))
	const n = 300
	ids := e.add(src, n, func(i int) map[string]any { return map[string]any{"i": i} })

	cfg := e.cfg(src, "g", "c")
	cfg.CrossSlot = streamtx.CrossSlotRelay
	c, err := streamtx.NewConsumer(e.rdb, cfg, countAndPublish("n", far))
	require.NoError(t, err)
	run(t, c)

	proxy := faultproxy.New(t, e.rdb.Options().Addr)
	sum := sha1.Sum([]byte(luaSource(t, "forward.lua")))
	require.NoError(t, e.rdb.ScriptLoad(ctx, luaSource(t, "forward.lua")).Err())
	proxy.DropReply(hex.EncodeToString(sum[:]), 5)
	client := redis.NewClient(&redis.Options{Addr: proxy.Addr(), MaxRetries: -1})
	t.Cleanup(func() { client.Close() })

	outbox, err := streamtx.OutboxStream(src, "g")
	require.NoError(t, err)
	t.Cleanup(func() { e.rdb.Del(context.Background(), outbox) })
	// Stop and restart the relay a few times, each after some commits.
	for round := 0; round < 4; round++ {
		ev := newEvents()
		r, err := streamtx.NewRelay(client, streamtx.RelayConfig{
			Stream: src, Group: "g", Consumer: "relay", BatchSize: 7, Block: e.cfg("", "", "").Block, Observer: ev,
			Retention: streamtx.Retention{MaxLen: 1, Interval: time.Millisecond},
		})
		require.NoError(t, err)
		stop := run(t, r)
		if round < 3 {
			ev.wait(t, streamtx.EventCommit, nil)
			stop()
		}
	}
	e.drained(src, "g")
	e.drained(outbox, streamtx.RelayGroup)
	require.Equal(t, 5, proxy.Fired())
	e.requireExactlyOnce(far, ids)
	// The relay's retention trims what it forwarded and acknowledged.
	eventually(t, "outbox trimmed", func() bool { return e.rdb.XLen(ctx, outbox).Val() <= 1 })
}

func TestRelayConfigErrors(t *testing.T) {
	_, rdb := miniClient(t)
	_, err := streamtx.NewRelay(rdb, streamtx.RelayConfig{Group: "g", Consumer: "r"})
	require.ErrorIs(t, err, streamtx.ErrConfig)
	require.Contains(t, err.Error(), "Stream")
	_, err = streamtx.NewRelay(rdb, streamtx.RelayConfig{Stream: "s", Group: "g", Consumer: "r", Window: -1})
	require.Contains(t, err.Error(), "Window")
	_, err = streamtx.NewConsumer(rdb, streamtx.Config{Stream: "s", Group: "g", Consumer: "c", CrossSlot: 7}, nop)
	require.Contains(t, err.Error(), "CrossSlot")
}
