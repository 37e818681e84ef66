package streamtx

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

type dedupeCounter struct{ N int }

// A batch that holds an entry twice (a re-run commit's entries together with
// the next batch, after a failover made Redis deliver them again) applies
// the entry once. Found by the chaos harness: a commit of 94,95,94,95.
func TestBatchWithRepeatedEntriesAppliesThemOnce(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Client(t)
	prefix := redistest.Prefix(t, rdb)
	src, out := prefix+"{d}src", prefix+"{d}out"
	require.NoError(t, rdb.XGroupCreateMkStream(ctx, src, "g", "$").Err())
	for range 2 {
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: src, Values: []any{"k", "v"}}).Err())
	}
	res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{src, ">"}, Count: 2, Block: -1}).Result()
	require.NoError(t, err)
	var msgs []*Message
	for _, m := range res[0].Messages {
		msgs = append(msgs, &Message{Stream: src, ID: m.ID, Values: map[string]string{"k": "v"}, Deliveries: 1})
	}
	require.Len(t, msgs, 2)

	h := Stateful("n", func(ctx context.Context, msg *Message, s *dedupeCounter, tx *txn.Tx) error {
		s.N++
		return tx.Publish(out, map[string]any{"src": msg.ID, "n": s.N})
	})
	c, err := NewConsumer(rdb, Config{Stream: src, Group: "g", Consumer: "c", BatchSize: 4}, h)
	require.NoError(t, err)
	copies := []*Message{msgs[0], msgs[1], {Stream: src, ID: msgs[0].ID, Values: msgs[0].Values, Deliveries: 1}, msgs[1]}
	c.newRunner().processSync(ctx, ctx, copies)

	got, err := rdb.XRange(ctx, out, "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, got, 2, "one publish per entry")
	require.Equal(t, "2", got[1].Values["n"])
	st, err := ReadState[dedupeCounter](ctx, rdb, src, "g", "n")
	require.NoError(t, err)
	require.Equal(t, 2, st.Value.N)
	n, err := rdb.XPending(ctx, src, "g").Result()
	require.NoError(t, err)
	require.Zero(t, n.Count)
}

func TestUniqueKeepsTheLastDelivery(t *testing.T) {
	a1 := &Message{ID: "1-1", Deliveries: 1}
	b := &Message{ID: "1-2", Deliveries: 1}
	a2 := &Message{ID: "1-1", Deliveries: 2}
	require.Equal(t, []*Message{a2, b}, unique([]*Message{a1, b, a2}))
	require.Equal(t, []*Message{a2, b}, unique([]*Message{a2, b, a1}))
	require.Equal(t, []*Message{b, a1}, unique([]*Message{b, a1}))
}
