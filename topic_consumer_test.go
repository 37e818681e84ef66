package streamtx_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

// seqState is what the order checker keeps per key: the last sequence
// number applied and how many entries were applied.
type seqState struct {
	Seq int
	N   int
}

// orderRun is a partitioned workload: entries over keys, each carrying its
// per-key sequence number, checked for order and exactly-once.
type orderRun struct {
	e          *env
	topic      *streamtx.Topic
	group      string
	out        string
	keys, n    int
	inversions atomic.Int64
	failOnce   sync.Map // entry ID -> failed once already
}

func newOrderRun(t *testing.T, e *env, partitions, keys, n int) *orderRun {
	t.Helper()
	top, err := streamtx.CreateTopic(context.Background(), e.rdb, e.key("orders"), streamtx.TopicConfig{Partitions: partitions})
	require.NoError(t, err)
	o := &orderRun{e: e, topic: top, group: "g", out: e.key("out"), keys: keys, n: n}
	p, err := streamtx.NewProducer(e.rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)
	for i := range n {
		k := i % keys
		_, err := p.PublishKeyed(context.Background(), e.key("orders"), "key-"+strconv.Itoa(k), map[string]any{"seq": i/keys + 1, "i": i})
		require.NoError(t, err)
	}
	return o
}

// handler applies an entry's sequence number to its key's state: one that
// does not follow the last one applied is an inversion. Entries whose index
// is a multiple of failEvery fail on their first delivery.
func (o *orderRun) handler(t *testing.T, failEvery int) streamtx.Handler {
	return streamtx.Keyed("seq", nil, func(ctx context.Context, msg *streamtx.Message, s *seqState, tx *txn.Tx) error {
		seq, err := strconv.Atoi(msg.Values["seq"])
		if err != nil {
			return streamtx.Permanent(err)
		}
		if msg.Partition != o.topic.PartitionOf(msg.Key) {
			return streamtx.Permanent(fmt.Errorf("entry of key %q in partition %d", msg.Key, msg.Partition))
		}
		if failEvery > 0 && atoi(t, msg.Values["i"])%failEvery == 0 {
			if _, again := o.failOnce.LoadOrStore(msg.ID, true); !again {
				return errors.New("first delivery fails")
			}
		}
		if seq != s.Seq+1 {
			o.inversions.Add(1)
		}
		s.Seq, s.N = seq, s.N+1
		return tx.Publish(o.out, map[string]any{"key": msg.Key, "seq": seq})
	})
}

func (o *orderRun) consumer(t *testing.T, name string, h streamtx.Handler, tune func(*streamtx.Config)) *streamtx.Consumer {
	t.Helper()
	cfg := streamtx.Config{
		Topic: o.topic.Name(), Group: o.group, Consumer: name,
		Block:     50 * time.Millisecond,
		Backoff:   func(*streamtx.Message, error) time.Duration { return 20 * time.Millisecond },
		LeaseTTL:  time.Second,
		Heartbeat: 100 * time.Millisecond,
		BatchSize: 50,
	}
	if tune != nil {
		tune(&cfg)
	}
	c, err := streamtx.NewConsumer(o.e.rdb, cfg, h)
	require.NoError(t, err)
	return c
}

// check waits until every partition is drained, then checks order and
// exactly-once: every key's state counts each of its entries once, in
// order, and the output holds each entry once.
func (o *orderRun) check(t *testing.T) {
	t.Helper()
	for p := range o.topic.Partitions() {
		o.e.drained(o.topic.Stream(p), o.group)
	}
	require.Zero(t, o.inversions.Load(), "entries applied before an earlier entry of their key")
	per := o.n / o.keys
	for k := range o.keys {
		key := "key-" + strconv.Itoa(k)
		s, err := streamtx.ReadKeyedState[seqState](context.Background(), o.e.rdb, o.topic.Name(), o.group, "seq", key)
		require.NoError(t, err)
		require.Equal(t, seqState{Seq: per, N: per}, s.Value, "key %s", key)
	}
	seen := map[string]int{}
	last := map[string]int{}
	for _, m := range o.e.entries(o.out) {
		key, seq := m.Values["key"].(string), atoi(t, m.Values["seq"].(string))
		seen[key+"/"+strconv.Itoa(seq)]++
		require.Equal(t, last[key]+1, seq, "output of key %s out of order", key)
		last[key] = seq
	}
	require.Len(t, seen, o.n)
	for k, n := range seen {
		require.Equal(t, 1, n, "output %s", k)
	}
	for p := range o.topic.Partitions() {
		n, err := o.e.rdb.XLen(context.Background(), o.topic.DeadLetterStream(o.group, p)).Result()
		require.NoError(t, err)
		require.Zero(t, n, "dead letters in partition %d", p)
	}
}

func TestTopicKeepsPerKeyOrder(t *testing.T) {
	for _, tc := range []struct {
		consumers, parallelism int
	}{{1, 1}, {2, 1}, {4, 1}, {2, 4}} {
		t.Run(fmt.Sprintf("consumers=%d/parallelism=%d", tc.consumers, tc.parallelism), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			o := newOrderRun(t, e, 8, 20, 2000)
			h := o.handler(t, 7)
			for i := range tc.consumers {
				run(t, o.consumer(t, "c"+strconv.Itoa(i), h, func(c *streamtx.Config) { c.Parallelism = tc.parallelism }))
			}
			o.check(t)
		})
	}
}
