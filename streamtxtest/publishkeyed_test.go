package streamtxtest_test

import (
	"context"
	"sort"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/streamtxtest"
	"github.com/streamtx/streamtx/txn"
)

// ship forwards each order to the topic "shipments", by customer.
func ship() streamtx.Handler {
	return streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		return tx.PublishKeyed("shipments", msg.Values["customer"], map[string]any{"order": msg.Values["order"], "seq": msg.Values["seq"]})
	})
}

// A handler's tx.PublishKeyed to a topic of Options.Topics lands, under
// random faults, exactly once in the partition of its key, read back with
// PublishedKeyed — from a stream, and from a topic (which keeps each key's
// order). The same test runs on miniredis and on REDIS_ADDR.
func TestPublishKeyedToAnotherTopic(t *testing.T) {
	t.Parallel()
	const customers, per = 9, 6
	for _, tc := range []struct {
		name    string
		opts    streamtxtest.Options
		ordered bool // each key's entries published in the order sent
	}{
		{"from a stream", streamtxtest.Options{Stream: "orders"}, false},
		{"from a topic", streamtxtest.Options{Topic: "orders", Partitions: 4}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			opts := tc.opts
			opts.Topics = map[string]int{"shipments": 3}
			opts.Config.BatchSize = 4
			tt := streamtxtest.New(t, ship(), opts)
			tt.Faults(streamtxtest.Faults{Seed: 3, Rate: 0.4})
			for i := range customers * per {
				customer := "c" + strconv.Itoa(i%customers)
				vals := map[string]any{"customer": customer, "order": "o-" + strconv.Itoa(i), "seq": i/customers + 1}
				if tc.opts.Topic != "" {
					tt.SendKeyed(customer, vals)
				} else {
					tt.Send(vals)
				}
			}
			tt.Drain()

			// The topic as stored, under the test's prefix on REDIS_ADDR.
			top, err := streamtx.OpenTopic(context.Background(), tt.Client(), tt.Key("shipments"))
			require.NoError(t, err)
			got := tt.PublishedKeyed("shipments")
			require.Len(t, got, customers*per)
			seqs, used := map[string][]int{}, map[int]bool{}
			for _, m := range got {
				require.Equal(t, top.PartitionOf(m.Key), m.Partition, "entry %s of key %s", m.ID, m.Key)
				require.Equal(t, top.Stream(m.Partition), m.Stream)
				require.Equal(t, m.Key, m.Values["stx.key"])
				seq, _ := strconv.Atoi(m.Values["seq"])
				seqs[m.Key] = append(seqs[m.Key], seq)
				used[m.Partition] = true
			}
			assert.Greater(t, len(used), 1, "the keys spread over the partitions")
			for c := range customers {
				key := "c" + strconv.Itoa(c)
				s := seqs[key]
				if !tc.ordered {
					sort.Ints(s)
				}
				assert.Equal(t, []int{1, 2, 3, 4, 5, 6}, s, "key %s", key)
			}
			assert.Empty(t, tt.DeadLetters())
			assert.NotEmpty(t, tt.Injected())
		})
	}
}

// A handler on a topic may publish by key to its own topic: the entry goes
// to its key's partition, which the Tester consumes too, and Drain waits
// for it.
func TestPublishKeyedToSourceTopic(t *testing.T) {
	t.Parallel()
	h := streamtx.Keyed("stock", nil, func(ctx context.Context, msg *streamtx.Message, s *Stock, tx *txn.Tx) error {
		n, _ := strconv.Atoi(msg.Values["n"])
		s.Left += n
		if msg.Key == "all" {
			return nil
		}
		return tx.PublishKeyed("stock", "all", map[string]any{"n": n})
	})
	tt := streamtxtest.New(t, h, streamtxtest.Options{Topic: "stock", Partitions: 4})
	tt.Faults(streamtxtest.Faults{Seed: 5, Rate: 0.3})
	skus := []string{"apple", "pear", "plum", "fig", "kiwi"}
	for i, sku := range skus {
		tt.SendKeyed(sku, map[string]any{"n": i + 1})
	}
	tt.Drain()

	for i, sku := range skus {
		assert.Equal(t, Stock{Left: i + 1}, streamtxtest.KeyedState[Stock](tt, "stock", sku), sku)
	}
	assert.Equal(t, Stock{Left: 15}, streamtxtest.KeyedState[Stock](tt, "stock", "all"))
	var all int
	for _, m := range tt.PublishedKeyed("stock") {
		if m.Key == "all" {
			all++
			assert.Equal(t, tt.Topic().PartitionOf("all"), m.Partition)
		}
	}
	assert.Equal(t, len(skus), all)
	assert.Empty(t, tt.DeadLetters())
}

// A publish by key to a topic nobody created dead-letters the entry, on
// REDIS_ADDR as on miniredis.
func TestPublishKeyedToMissingTopic(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, ship(), streamtxtest.Options{Stream: "orders"})
	tt.Send(map[string]any{"customer": "c1", "order": "o-1", "seq": 1})
	tt.Drain()
	dl := tt.DeadLetters()
	require.Len(t, dl, 1)
	assert.Contains(t, dl[0].Error, "topic not found")
}

// A test can also put entries in one of Options.Topics itself, with a
// Producer on the Tester's client and the topic's name as stored (Key).
func TestPublishedKeyedReadsAProducersEntries(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, ship(), streamtxtest.Options{Topics: map[string]int{"shipments": 2}})
	p, err := streamtx.NewProducer(tt.Client(), streamtx.ProducerConfig{})
	require.NoError(t, err)
	_, err = p.PublishKeyed(context.Background(), tt.Key("shipments"), "c1", map[string]any{"order": "o-0"})
	require.NoError(t, err)
	tt.Send(map[string]any{"customer": "c1", "order": "o-1", "seq": 1})
	tt.Drain()
	got := tt.PublishedKeyed("shipments")
	require.Len(t, got, 2)
	assert.Equal(t, "o-0", got[0].Values["order"])
	assert.Equal(t, "o-1", got[1].Values["order"])
	assert.Equal(t, got[0].Partition, got[1].Partition)
}

// CheckReplaySafe compares what a handler published to Options.Topics too.
func TestPublishKeyedReplaySafe(t *testing.T) {
	t.Parallel()
	inputs := []map[string]any{
		{"customer": "c1", "order": "o-1", "seq": 1}, {"customer": "c2", "order": "o-2", "seq": 1},
		{"customer": "c1", "order": "o-3", "seq": 2}, {"customer": "c3", "order": "o-4", "seq": 1},
	}
	streamtxtest.CheckReplaySafe(t, ship, inputs, streamtxtest.ReplayOptions{
		Options: streamtxtest.Options{Stream: "orders", Topics: map[string]int{"shipments": 3}}, Seed: 9, Runs: 5})
}

// Reading a topic as a stream, or a topic that does not exist, fails the
// test and says what to do.
func TestPublishedKeyedMisuseFailsClearly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, want string
		use        func(tb testing.TB)
	}{
		{"Published of a topic", `read what was published to it with PublishedKeyed("shipments")`, func(tb testing.TB) {
			streamtxtest.New(tb, ship(), streamtxtest.Options{Topics: map[string]int{"shipments": 2}}).Published("shipments")
		}},
		{"PublishedKeyed of a missing topic", "declare the topics the handler publishes to in Options.Topics", func(tb testing.TB) {
			streamtxtest.New(tb, ship(), streamtxtest.Options{}).PublishedKeyed("shipments")
		}},
		{"Topics with another partition count than the source topic", "exists with 4 partitions, not 2", func(tb testing.TB) {
			streamtxtest.New(tb, ship(), streamtxtest.Options{Topic: "orders", Topics: map[string]int{"orders": 2}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			assert.Contains(t, failures(t, tc.use), tc.want)
		})
	}
}
