package clustertest

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

// A topic of 12 partitions on 3 masters: CreateTopic and PublishKeyed work
// through a cluster client, the partitions spread over all three masters,
// and a consumer of partition p of "orders" publishes by key to the
// co-located topic "payments" — whose partition p is in the same slot — in
// its commit, without the relay and without a CROSSSLOT.
func TestClusterTopics(t *testing.T) {
	t.Parallel()
	const partitions, n, nkeys = 12, 600, 60
	c := redistest.StartCluster(t, 3, 0)
	rdb := c.Client(t)
	rec := newRecorder(t)
	ctx := context.Background()

	orders, err := streamtx.CreateTopic(ctx, rdb, "orders", streamtx.TopicConfig{Partitions: partitions})
	require.NoError(t, err)
	_, err = streamtx.CreateTopic(ctx, rdb, "orders", streamtx.TopicConfig{Partitions: partitions})
	require.NoError(t, err, "idempotent on a cluster")
	_, err = streamtx.CreateTopic(ctx, rdb, "orders", streamtx.TopicConfig{Partitions: 6})
	require.ErrorIs(t, err, streamtx.ErrConfig)
	payments, err := streamtx.CreateTopic(ctx, rdb, "payments", streamtx.TopicConfig{Partitions: partitions, Colocate: "orders"})
	require.NoError(t, err)

	masters := map[string]int{}
	for p := range partitions {
		require.Equal(t, c.Slot(orders.Stream(p)), keys.Slot(orders.Stream(p)), "keys.Slot agrees with CLUSTER KEYSLOT")
		require.Equal(t, keys.Slot(orders.Stream(p)), keys.Slot(payments.Stream(p)))
		masters[c.MasterFor(orders.Stream(p))]++
	}
	require.Len(t, masters, 3, "partitions per master: %v", masters)

	prod, err := streamtx.NewProducer(rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)
	perPartition := make([]int, partitions)
	for i := range n {
		key := "order-" + strconv.Itoa(i%nkeys)
		_, err := prod.PublishKeyed(ctx, "orders", key, map[string]any{"i": i}, streamtx.WithIdempotencyKey("req-"+strconv.Itoa(i)))
		require.NoError(t, err)
		// A retry after a lost reply appends nothing.
		_, err = prod.PublishKeyed(ctx, "orders", key, map[string]any{"i": i}, streamtx.WithIdempotencyKey("req-"+strconv.Itoa(i)))
		require.NoError(t, err)
		perPartition[orders.PartitionOf(key)]++
	}

	forward := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if msg.Key == "" {
			return streamtx.Permanent(fmt.Errorf("entry %s has no key", msg.ID))
		}
		return tx.PublishKeyed("payments", msg.Key, map[string]any{"src": msg.ID, "i": msg.Values["i"]})
	})
	for p := range partitions {
		require.Len(t, readAll(t, rdb, orders.Stream(p)), perPartition[p], "partition %d", p)
		cons, err := streamtx.NewConsumer(rdb, consumerConfig(t, orders.Stream(p), "c", rec), forward)
		require.NoError(t, err)
		run(t, cons)
	}
	for p := range partitions {
		waitDrained(t, rdb, orders.Stream(p))
	}

	for p := range partitions {
		src := readAll(t, rdb, orders.Stream(p))
		out := readAll(t, rdb, payments.Stream(p))
		require.Len(t, out, len(src), "payments partition %d", p)
		keyOf := map[string]any{} // source entry ID -> its key
		for _, m := range src {
			keyOf[m.ID] = m.Values["stx.key"]
		}
		for _, m := range out {
			id, _ := m.Values["src"].(string)
			key, ok := keyOf[id]
			require.True(t, ok, "payments partition %d: %v is not from orders partition %d, or is there twice", p, m.Values, p)
			require.Equal(t, key, m.Values["stx.key"])
			delete(keyOf, id)
		}
	}
	rec.checkNoCrossSlot(t)
	checkNoCrossSlotAtServers(t, rdb)
}
