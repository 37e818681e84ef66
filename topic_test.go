package streamtx_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/txn"
)

func requireConfigError(t *testing.T, err error, field string) {
	t.Helper()
	require.ErrorIs(t, err, streamtx.ErrConfig)
	var ce *streamtx.ConfigError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, field, ce.Field, "%v", err)
}

func TestCreateTopicIsIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	name := e.key("orders")

	top, err := streamtx.CreateTopic(ctx, e.rdb, name, streamtx.TopicConfig{Partitions: 8})
	require.NoError(t, err)
	require.Equal(t, 8, top.Partitions())
	require.Equal(t, name+":{"+name+".p3}", top.Stream(3))

	again, err := streamtx.CreateTopic(ctx, e.rdb, name, streamtx.TopicConfig{Partitions: 8})
	require.NoError(t, err)
	require.Equal(t, 8, again.Partitions())
	opened, err := streamtx.OpenTopic(ctx, e.rdb, name)
	require.NoError(t, err)
	for p := 0; p < 8; p++ {
		require.Equal(t, top.Stream(p), opened.Stream(p))
	}

	rec, err := e.rdb.Get(ctx, "stx:{"+name+"}:topic").Result()
	require.NoError(t, err)
	require.Equal(t, `{"v":1,"partitions":8}`, rec, "the metadata record, readable in redis-cli")
	n, err := e.rdb.Exists(ctx, top.Stream(0)).Result()
	require.NoError(t, err)
	require.Zero(t, n, "CreateTopic writes only the metadata record")
}

func TestCreateTopicRefusesAnotherConfig(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	name := e.key("orders")
	_, err := streamtx.CreateTopic(ctx, e.rdb, name, streamtx.TopicConfig{Partitions: 8})
	require.NoError(t, err)

	_, err = streamtx.CreateTopic(ctx, e.rdb, name, streamtx.TopicConfig{Partitions: 12})
	requireConfigError(t, err, "Partitions")
	require.ErrorContains(t, err, "exists with 8 partitions, not 12")
	_, err = streamtx.CreateTopic(ctx, e.rdb, name, streamtx.TopicConfig{Partitions: 8, Colocate: e.key("x")})
	requireConfigError(t, err, "Colocate")

	top, err := streamtx.OpenTopic(ctx, e.rdb, name)
	require.NoError(t, err)
	require.Equal(t, 8, top.Partitions(), "the refused calls changed nothing")
}

// Concurrent creations with different partition counts agree on one: those
// that asked for it succeed, the others are refused.
func TestCreateTopicConcurrently(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	name := e.key("orders")
	const n = 12
	got := make([]int, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			top, err := streamtx.CreateTopic(context.Background(), e.rdb, name, streamtx.TopicConfig{Partitions: 2 + i%3})
			if err == nil {
				got[i] = top.Partitions()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	top, err := streamtx.OpenTopic(context.Background(), e.rdb, name)
	require.NoError(t, err)
	for i := range n {
		if 2+i%3 == top.Partitions() {
			require.NoError(t, errs[i])
			require.Equal(t, top.Partitions(), got[i])
		} else {
			requireConfigError(t, errs[i], "Partitions")
		}
	}
}

func TestCreateTopicRefusesInvalidConfig(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	for _, c := range []struct {
		name  string
		cfg   streamtx.TopicConfig
		field string
	}{
		{"", streamtx.TopicConfig{Partitions: 1}, "name"},
		{e.key("{orders}"), streamtx.TopicConfig{Partitions: 1}, "name"},
		{"stx:orders", streamtx.TopicConfig{Partitions: 1}, "name"},
		{e.key("orders"), streamtx.TopicConfig{}, "Partitions"},
		{e.key("orders"), streamtx.TopicConfig{Partitions: -2}, "Partitions"},
		{e.key("orders"), streamtx.TopicConfig{Partitions: 1025}, "Partitions"},
		{e.key("orders"), streamtx.TopicConfig{Partitions: 4, Colocate: "a}"}, "Colocate"},
	} {
		_, err := streamtx.CreateTopic(ctx, e.rdb, c.name, c.cfg)
		requireConfigError(t, err, c.field)
	}
	_, err := streamtx.CreateTopic(ctx, nil, e.key("orders"), streamtx.TopicConfig{Partitions: 1})
	requireConfigError(t, err, "client")
	_, err = streamtx.OpenTopic(ctx, e.rdb, e.key("orders"))
	require.ErrorIs(t, err, streamtx.ErrTopicNotFound, "nothing was created")
}

func TestOpenTopicErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()

	_, err := streamtx.OpenTopic(ctx, e.rdb, e.key("missing"))
	require.ErrorIs(t, err, streamtx.ErrTopicNotFound)
	require.ErrorContains(t, err, e.key("missing"))

	corrupt := e.key("corrupt")
	require.NoError(t, e.rdb.Set(ctx, "stx:{"+corrupt+"}:topic", `{"v":1,"partitions":0}`, 0).Err())
	_, err = streamtx.OpenTopic(ctx, e.rdb, corrupt)
	require.ErrorContains(t, err, "corrupt")
	require.NotErrorIs(t, err, streamtx.ErrTopicNotFound)
	_, err = streamtx.CreateTopic(ctx, e.rdb, corrupt, streamtx.TopicConfig{Partitions: 1})
	require.ErrorContains(t, err, "corrupt", "CreateTopic does not overwrite a record it cannot read")

	wrong := e.key("wrong")
	require.NoError(t, e.rdb.HSet(ctx, "stx:{"+wrong+"}:topic", "partitions", 1).Err())
	_, err = streamtx.OpenTopic(ctx, e.rdb, wrong)
	require.ErrorIs(t, err, streamtx.ErrWrongType)
	_, err = streamtx.CreateTopic(ctx, e.rdb, wrong, streamtx.TopicConfig{Partitions: 1})
	require.ErrorIs(t, err, streamtx.ErrWrongType)

	_, err = streamtx.OpenTopic(ctx, e.rdb, "a{b}")
	requireConfigError(t, err, "name")
}

func TestTopicPartitionOf(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	top, err := streamtx.CreateTopic(context.Background(), e.rdb, e.key("orders"), streamtx.TopicConfig{Partitions: 12})
	require.NoError(t, err)
	// Pinned in internal/partition; here through the public API.
	require.Equal(t, 10, top.PartitionOf("order-1"))
	require.Equal(t, 3, top.PartitionOf("order-2"))
	for i := range 1000 {
		p := top.PartitionOf("k" + strconv.Itoa(i))
		require.True(t, p >= 0 && p < 12)
		require.Equal(t, p, top.PartitionOf("k"+strconv.Itoa(i)))
	}
	require.Equal(t, "", top.Stream(12))
	require.Equal(t, "", top.Stream(-1))
}

// Partition p of two topics with one Colocate name shares a slot; the
// partitions of one topic spread over slots.
func TestTopicColocation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	group := e.key("shop")
	orders, err := streamtx.CreateTopic(ctx, e.rdb, e.key("orders"), streamtx.TopicConfig{Partitions: 8, Colocate: group})
	require.NoError(t, err)
	payments, err := streamtx.CreateTopic(ctx, e.rdb, e.key("payments"), streamtx.TopicConfig{Partitions: 8, Colocate: group})
	require.NoError(t, err)
	lone, err := streamtx.CreateTopic(ctx, e.rdb, e.key("lone"), streamtx.TopicConfig{Partitions: 8})
	require.NoError(t, err)
	require.Equal(t, e.key("orders")+":{"+group+".p5}", orders.Stream(5))
	slots := map[int]bool{}
	for p := range 8 {
		require.Equal(t, keys.Slot(orders.Stream(p)), keys.Slot(payments.Stream(p)), "partition %d", p)
		slots[keys.Slot(orders.Stream(p))] = true
	}
	require.Len(t, slots, 8, "the partitions of a topic are in 8 slots")
	same := 0
	for p := range 8 {
		if keys.Slot(lone.Stream(p)) == keys.Slot(orders.Stream(p)) {
			same++
		}
	}
	require.Less(t, same, 8, "a topic without the Colocate name is not co-located")
}

func TestPublishKeyed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	top, err := streamtx.CreateTopic(ctx, e.rdb, e.key("orders"), streamtx.TopicConfig{Partitions: 4})
	require.NoError(t, err)
	prod, err := streamtx.NewProducer(e.rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)

	want := make([]int, 4)
	for i := range 40 {
		key := "order-" + strconv.Itoa(i%10)
		id, err := prod.PublishKeyed(ctx, e.key("orders"), key, map[string]any{"i": i})
		require.NoError(t, err)
		p := top.PartitionOf(key)
		want[p]++
		got, err := e.rdb.XRange(ctx, top.Stream(p), id, id).Result()
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.Equal(t, map[string]any{"i": strconv.Itoa(i), "stx.key": key}, got[0].Values)
	}
	for p := range 4 {
		n, err := e.rdb.XLen(ctx, top.Stream(p)).Result()
		require.NoError(t, err)
		require.Equal(t, int64(want[p]), n, "partition %d", p)
	}
}

func TestPublishKeyedIdempotencyKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	top, err := streamtx.CreateTopic(ctx, e.rdb, e.key("orders"), streamtx.TopicConfig{Partitions: 4})
	require.NoError(t, err)
	prod, err := streamtx.NewProducer(e.rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)

	first, err := prod.PublishKeyed(ctx, e.key("orders"), "order-7", map[string]any{"n": 1}, streamtx.WithIdempotencyKey("req-1"))
	require.NoError(t, err)
	again, err := prod.PublishKeyed(ctx, e.key("orders"), "order-7", map[string]any{"n": 2}, streamtx.WithIdempotencyKey("req-1"))
	require.NoError(t, err)
	require.Equal(t, first, again, "a retry with the same idempotency key appends nothing")
	other, err := prod.PublishKeyed(ctx, e.key("orders"), "order-7", map[string]any{"n": 3}, streamtx.WithIdempotencyKey("req-2"))
	require.NoError(t, err)
	require.NotEqual(t, first, other)

	got, err := e.rdb.XRange(ctx, top.Stream(top.PartitionOf("order-7")), "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, "1", got[0].Values["n"])
	require.Equal(t, "3", got[1].Values["n"])
}

func TestPublishKeyedErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	_, err := streamtx.CreateTopic(ctx, e.rdb, e.key("orders"), streamtx.TopicConfig{Partitions: 4})
	require.NoError(t, err)
	prod, err := streamtx.NewProducer(e.rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)

	_, err = prod.PublishKeyed(ctx, e.key("missing"), "k", map[string]any{"n": 1})
	require.ErrorIs(t, err, streamtx.ErrTopicNotFound)
	for _, c := range []struct {
		key    string
		values map[string]any
	}{
		{"", map[string]any{"n": 1}},
		{"k", map[string]any{"stx.key": "other"}},
		{"k", nil},
		{"k", map[string]any{"n": struct{}{}}},
	} {
		_, err := prod.PublishKeyed(ctx, e.key("orders"), c.key, c.values)
		require.ErrorIs(t, err, txn.ErrBadPublish, "key %q, values %v", c.key, c.values)
	}
	_, err = prod.PublishKeyed(ctx, e.key("orders"), "k", map[string]any{"n": 1}, streamtx.WithIdempotencyKey(""))
	require.ErrorIs(t, err, txn.ErrBadPublish)

	// A topic created after a failed publish is found: misses are not cached.
	_, err = streamtx.CreateTopic(ctx, e.rdb, e.key("missing"), streamtx.TopicConfig{Partitions: 2})
	require.NoError(t, err)
	_, err = prod.PublishKeyed(ctx, e.key("missing"), "k", map[string]any{"n": 1})
	require.NoError(t, err)
}

// A handler publishes by key with tx.PublishKeyed: every source entry lands
// exactly once, in its key's partition, although two consumers compete and
// every fifth entry fails its first delivery.
func TestTxPublishKeyedExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	const n, nkeys = 500, 20
	top, err := streamtx.CreateTopic(ctx, e.rdb, e.key("orders"), streamtx.TopicConfig{Partitions: 4})
	require.NoError(t, err)
	src := e.key("src")
	ids := e.add(src, n, func(i int) map[string]any {
		return map[string]any{"k": "key-" + strconv.Itoa(i%nkeys), "i": i}
	})

	var failed sync.Map
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if msg.Partition != -1 || msg.Key != "" {
			return streamtx.Permanent(fmt.Errorf("plain entry read as partition %d, key %q", msg.Partition, msg.Key))
		}
		if atoi(t, msg.Values["i"])%5 == 0 {
			if _, again := failed.LoadOrStore(msg.ID, true); !again {
				return errors.New("first delivery fails")
			}
		}
		return tx.PublishKeyed(e.key("orders"), msg.Values["k"], map[string]any{"src": msg.ID, "i": msg.Values["i"]})
	})
	for i := range 2 {
		c, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "c"+strconv.Itoa(i)), h)
		require.NoError(t, err)
		run(t, c)
	}
	e.drained(src, "g")

	seen := map[string]int{}
	for p := range 4 {
		for _, m := range e.entries(top.Stream(p)) {
			key, _ := m.Values["stx.key"].(string)
			require.Equal(t, p, top.PartitionOf(key), "entry %v in partition %d", m.Values, p)
			i, _ := m.Values["i"].(string)
			require.Equal(t, "key-"+strconv.Itoa(atoi(t, i)%nkeys), key)
			seen[m.Values["src"].(string)]++
		}
	}
	require.Len(t, seen, n)
	for _, id := range ids {
		require.Equal(t, 1, seen[id], "source entry %s", id)
	}
	dl, err := e.rdb.XLen(ctx, "stx:{"+src+"}:"+src+":g:dlq").Result()
	require.NoError(t, err)
	require.Zero(t, dl)
}

// A keyed publish to a topic that does not exist is a bad publish: the
// entry is dead-lettered at once, nothing is published.
func TestTxPublishKeyedUnknownTopic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src := e.key("src")
	e.add(src, 1, func(int) map[string]any { return map[string]any{"k": "a"} })
	c, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "c"), streamtx.HandlerFunc(
		func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
			return tx.PublishKeyed(e.key("missing"), msg.Values["k"], map[string]any{"n": 1})
		}))
	require.NoError(t, err)
	run(t, c)
	e.drained(src, "g")
	dead := e.entries(c.DeadLetterStream())
	require.Len(t, dead, 1)
	reason, _ := dead[0].Values["stx.error"].(string)
	require.Contains(t, reason, "topic not found")
	require.Contains(t, reason, "bad publish")
	deliveries, _ := dead[0].Values["stx.deliveries"].(string)
	require.Equal(t, "1", deliveries, "dead-lettered without a retry")
}

// A consumer of one partition stream reads every entry's key back into
// Message.Key; an entry appended without a key has none.
func TestMessageKeyFromPartitionStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	top, err := streamtx.CreateTopic(ctx, e.rdb, e.key("orders"), streamtx.TopicConfig{Partitions: 2})
	require.NoError(t, err)
	prod, err := streamtx.NewProducer(e.rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)
	want := map[string]string{} // entry ID -> key
	for i := range 40 {
		key := "user:" + strconv.Itoa(i)
		id, err := prod.PublishKeyed(ctx, e.key("orders"), key, map[string]any{"i": i})
		require.NoError(t, err)
		if top.PartitionOf(key) == 0 {
			want[id] = key
		}
	}
	plain, err := prod.Publish(ctx, top.Stream(0), map[string]any{"i": "plain"})
	require.NoError(t, err)
	want[plain] = ""

	var mu sync.Mutex
	got := map[string]string{}
	c, err := streamtx.NewConsumer(e.rdb, e.cfg(top.Stream(0), "g", "c"), streamtx.HandlerFunc(
		func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
			if msg.Partition != -1 {
				return streamtx.Permanent(fmt.Errorf("partition %d", msg.Partition))
			}
			if msg.Key != msg.Values["stx.key"] {
				return streamtx.Permanent(fmt.Errorf("key %q, field %q", msg.Key, msg.Values["stx.key"]))
			}
			mu.Lock()
			got[msg.ID] = msg.Key
			mu.Unlock()
			return nil
		}))
	require.NoError(t, err)
	run(t, c)
	e.drained(top.Stream(0), "g")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, want, got)
	for _, key := range got {
		require.True(t, key == "" || strings.HasPrefix(key, "user:"))
	}
}
