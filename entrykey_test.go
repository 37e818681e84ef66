package streamtx_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

// Keyed with a nil key function keys state by the entry's own key (what
// PublishKeyed set); ReadKeyedState given the topic's name finds the key's
// partition; an entry without a key is dead-lettered, not counted under "".
func TestKeyedByTheEntrysKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	name := e.key("orders")
	topic, err := streamtx.CreateTopic(ctx, e.rdb, name, streamtx.TopicConfig{Partitions: 3})
	require.NoError(t, err)
	prod, err := streamtx.NewProducer(e.rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)
	want := map[string]int{"a": 3, "b": 1, "c": 2}
	for k, n := range want {
		for range n {
			_, err := prod.PublishKeyed(ctx, name, k, map[string]any{"v": 1})
			require.NoError(t, err)
		}
	}
	keyless := topic.Stream(topic.PartitionOf("a"))
	require.NoError(t, e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: keyless, Values: map[string]any{"v": 1}}).Err())

	h := streamtx.Keyed("n", nil, func(ctx context.Context, msg *streamtx.Message, s *counter, tx *txn.Tx) error {
		s.N++
		return nil
	})
	var dlqs []string
	for p := range topic.Partitions() {
		c, err := streamtx.NewConsumer(e.rdb, e.cfg(topic.Stream(p), "g", "c"), h)
		require.NoError(t, err)
		run(t, c)
		dlqs = append(dlqs, c.DeadLetterStream())
	}
	for p := range topic.Partitions() {
		e.drained(topic.Stream(p), "g")
	}
	for k, n := range want {
		s, err := streamtx.ReadKeyedState[counter](ctx, e.rdb, name, "g", "n", k)
		require.NoError(t, err)
		require.Equal(t, n, s.Value.N, "key %s", k)
	}
	var dead int
	for p, dlq := range dlqs {
		for _, d := range e.entries(dlq) {
			dead++
			require.Equal(t, topic.Stream(p), keyless)
			require.Contains(t, d.Values["stx.error"], "has no key")
		}
	}
	require.Equal(t, 1, dead)
}
