package streamtxtest_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/streamtxtest"
	"github.com/streamtx/streamtx/txn"
)

type Stock struct{ Left int }

// stock keeps a stock level per SKU: the entry's key on a topic.
func stock() streamtx.Handler {
	return streamtx.Keyed("stock", nil, func(ctx context.Context, msg *streamtx.Message, s *Stock, tx *txn.Tx) error {
		n, err := strconv.Atoi(msg.Values["n"])
		if err != nil {
			return streamtx.Permanent(err)
		}
		s.Left += n
		return tx.Publish("levels", map[string]any{"sku": msg.Key, "left": s.Left})
	})
}

// A Keyed handler on a topic, in a few lines.
func TestTopicKeyed(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, stock(), streamtxtest.Options{Topic: "stock", Partitions: 4, Config: streamtx.Config{MaxDeliveries: 2}})
	tt.SendKeyed("apple", map[string]any{"n": 3})
	tt.SendKeyed("pear", map[string]any{"n": 2})
	tt.SendKeyed("apple", map[string]any{"n": -1})
	tt.SendKeyed("plum", map[string]any{"n": "lots"})
	tt.Drain()

	assert.Equal(t, Stock{Left: 2}, streamtxtest.KeyedState[Stock](tt, "stock", "apple"))
	assert.Equal(t, Stock{Left: 2}, streamtxtest.KeyedState[Stock](tt, "stock", "pear"))
	assert.Equal(t, Stock{}, streamtxtest.KeyedState[Stock](tt, "stock", "plum"))
	assert.Len(t, tt.Published("levels"), 3)
	dl := tt.DeadLetters()
	require.Len(t, dl, 1)
	assert.Equal(t, "lots", dl[0].Values["n"])
	assert.Equal(t, tt.Topic().Stream(tt.Topic().PartitionOf("plum")), dl[0].Stream)
	assert.Contains(t, dl[0].Error, "invalid syntax")

	// A second round carries on from the committed state, a day later
	// (past any lease).
	tt.Advance(24 * time.Hour)
	tt.SendKeyed("apple", map[string]any{"n": 10})
	tt.Drain()
	assert.Equal(t, Stock{Left: 12}, streamtxtest.KeyedState[Stock](tt, "stock", "apple"))
}

// The keys of a topic spread over its partitions, each handled in its own
// partition, and every key's entries are applied in the order they were
// sent — also when entries fail and are retried meanwhile, and with
// parallel lanes.
func TestTopicOrderAcrossKeys(t *testing.T) {
	t.Parallel()
	type Seq struct{ Last, N int }
	const keys, per = 12, 15
	for _, parallelism := range []int{1, 4} {
		t.Run("parallelism="+strconv.Itoa(parallelism), func(t *testing.T) {
			t.Parallel()
			var failed sync.Map
			var mu sync.Mutex
			inversions, partitions := 0, map[int]bool{}
			var top *streamtx.Topic
			h := streamtx.Keyed("seq", nil, func(ctx context.Context, msg *streamtx.Message, s *Seq, tx *txn.Tx) error {
				seq, _ := strconv.Atoi(msg.Values["seq"])
				mu.Lock()
				if msg.Partition != top.PartitionOf(msg.Key) {
					mu.Unlock()
					return streamtx.Permanent(errors.New("key in the wrong partition"))
				}
				partitions[msg.Partition] = true
				mu.Unlock()
				if seq%4 == 0 {
					if _, again := failed.LoadOrStore(msg.ID, true); !again {
						return errors.New("first delivery fails")
					}
				}
				if seq != s.Last+1 {
					mu.Lock()
					inversions++
					mu.Unlock()
				}
				s.Last, s.N = seq, s.N+1
				return tx.Publish("out", map[string]any{"key": msg.Key, "seq": seq})
			})
			tt := streamtxtest.New(t, h, streamtxtest.Options{Topic: "events", Partitions: 4,
				Config: streamtx.Config{Parallelism: parallelism, BatchSize: 8}})
			top = tt.Topic()
			ids := map[string]bool{}
			for i := range keys * per {
				id := tt.SendKeyed("k"+strconv.Itoa(i%keys), map[string]any{"seq": i/keys + 1})
				require.False(t, ids[id], "SendKeyed returned %s twice", id)
				ids[id] = true
			}
			tt.Drain()

			spread := map[int]bool{}
			for k := range keys {
				spread[top.PartitionOf("k"+strconv.Itoa(k))] = true
			}
			require.Greater(t, len(spread), 1, "keys in more than one partition")
			mu.Lock()
			assert.Zero(t, inversions, "entries applied before an earlier entry of their key")
			assert.Equal(t, spread, partitions, "the partitions handled")
			mu.Unlock()
			last := map[string]int{}
			for _, m := range tt.Published("out") {
				seq, _ := strconv.Atoi(m.Values["seq"])
				require.Equal(t, last[m.Values["key"]]+1, seq, "output of key %s", m.Values["key"])
				last[m.Values["key"]] = seq
			}
			for k := range keys {
				key := "k" + strconv.Itoa(k)
				assert.Equal(t, Seq{Last: per, N: per}, streamtxtest.KeyedState[Seq](tt, "seq", key), key)
			}
			assert.Empty(t, tt.DeadLetters())
		})
	}
}

// A Stateful handler on a topic keeps a value per partition.
func TestTopicPartitionState(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, totals(), streamtxtest.Options{Topic: "orders", Partitions: 3})
	want := make([]Totals, 3)
	for i := 1; i <= 12; i++ {
		key := "customer-" + strconv.Itoa(i%5)
		tt.SendKeyed(key, map[string]any{"order_id": "o-" + strconv.Itoa(i), "amount": i})
		p := tt.Topic().PartitionOf(key)
		want[p].Orders++
		want[p].Amount += i
	}
	tt.Drain()
	for p := range 3 {
		assert.Equal(t, want[p], streamtxtest.PartitionState[Totals](tt, "totals", p), "partition %d", p)
	}
}

// Each fault that makes sense on a topic, injected at a chosen entry, runs
// the engine's own recovery and leaves exactly-once results.
func TestTopicEachFault(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		fault streamtxtest.Fault
		check func(t *testing.T, ev *events)
	}{
		{streamtxtest.Redeliver, func(t *testing.T, ev *events) {
			assert.Equal(t, 1, ev.kinds()[streamtx.EventRetry], "a retry after the injected error")
		}},
		{streamtxtest.Crash, func(t *testing.T, ev *events) {
			// The new instance acquired the partitions again, under new
			// epochs.
			assert.GreaterOrEqual(t, ev.kinds()[streamtx.EventAssigned], 2*4)
		}},
		{streamtxtest.LostReply, func(t *testing.T, ev *events) {
			assert.Zero(t, ev.kinds()[streamtx.EventFenced], "a retried commit that had applied is reported committed")
		}},
	} {
		t.Run(tc.fault.String(), func(t *testing.T) {
			t.Parallel()
			ev := &events{}
			tt := streamtxtest.New(t, stock(), streamtxtest.Options{Topic: "stock", Config: streamtx.Config{Observer: ev}})
			tt.SendKeyed("apple", map[string]any{"n": 1})
			tt.SendKeyed("pear", map[string]any{"n": 1})
			tt.Drain()
			id := tt.SendKeyed("apple", map[string]any{"n": 2})
			tt.SendKeyed("pear", map[string]any{"n": 2})
			tt.Inject(id, tc.fault)
			tt.Drain()
			tt.SendKeyed("apple", map[string]any{"n": 3})
			tt.Drain()

			inj := tt.Injected()
			require.Len(t, inj, 1)
			assert.Equal(t, tc.fault, inj[0].Fault)
			assert.Equal(t, id, inj[0].EntryID)
			assert.Equal(t, tt.Topic().PartitionOf("apple"), inj[0].Partition)
			assert.Equal(t, Stock{Left: 6}, streamtxtest.KeyedState[Stock](tt, "stock", "apple"))
			assert.Equal(t, Stock{Left: 3}, streamtxtest.KeyedState[Stock](tt, "stock", "pear"))
			var apple []string
			for _, m := range tt.Published("levels") {
				if m.Values["sku"] == "apple" {
					apple = append(apple, m.Values["left"])
				}
			}
			assert.Equal(t, []string{"1", "3", "6"}, apple)
			assert.Empty(t, tt.DeadLetters())
			tc.check(t, ev)
			if t.Failed() {
				ev.mu.Lock()
				for _, e := range ev.all {
					t.Logf("%s p=%d %v err=%v", e.Kind, e.Partition, e.IDs, e.Err)
				}
				ev.mu.Unlock()
				t.Logf("%v", inj)
			}
		})
	}
}

// With random faults on a topic, a replay-safe handler still applies every
// entry once.
func TestTopicRandomFaultsKeepExactlyOnce(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, stock(), streamtxtest.Options{Topic: "stock", Config: streamtx.Config{BatchSize: 4}})
	tt.Faults(streamtxtest.Faults{Seed: 11, Rate: 0.5})
	want := map[string]int{}
	for i := 1; i <= 40; i++ {
		sku := "sku-" + strconv.Itoa(i%7)
		tt.SendKeyed(sku, map[string]any{"n": i})
		want[sku] += i
	}
	tt.Drain()
	for sku, n := range want {
		assert.Equal(t, Stock{Left: n}, streamtxtest.KeyedState[Stock](tt, "stock", sku), sku)
	}
	require.Len(t, tt.Published("levels"), 40)
	kinds := map[streamtxtest.Fault]int{}
	for _, in := range tt.Injected() {
		kinds[in.Fault]++
	}
	t.Logf("injected: %v", kinds)
	require.Len(t, kinds, 3, "Redeliver, Crash and LostReply were injected")
}

// CheckReplaySafe on a topic: it passes a replay-safe Keyed handler and
// catches a counter kept outside the transaction.
func TestTopicReplaySafe(t *testing.T) {
	t.Parallel()
	inputs := []map[string]any{
		{"sku": "apple", "n": 3}, {"sku": "pear", "n": 2}, {"sku": "apple", "n": -1},
		{"sku": "plum", "n": "x"}, {"sku": "fig", "n": 4}, {"sku": "pear", "n": 1},
	}
	opts := streamtxtest.ReplayOptions{Options: streamtxtest.Options{Topic: "stock", Partitions: 3}, KeyField: "sku", Seed: 5, Runs: 5}
	t.Run("safe", func(t *testing.T) {
		t.Parallel()
		streamtxtest.CheckReplaySafe(t, stock, inputs, opts)
	})
	t.Run("counter in a closure", func(t *testing.T) {
		t.Parallel()
		unsafe := func() streamtx.Handler {
			calls := 0
			return streamtx.Keyed("stock", nil, func(ctx context.Context, msg *streamtx.Message, s *Stock, tx *txn.Tx) error {
				calls++
				n, _ := strconv.Atoi(msg.Values["n"])
				s.Left += n
				return tx.Publish("levels", map[string]any{"sku": msg.Key, "call": calls})
			})
		}
		msg := failures(t, func(tb testing.TB) { streamtxtest.CheckReplaySafe(tb, unsafe, inputs, opts) })
		assert.Contains(t, msg, "not replay-safe")
		assert.Contains(t, msg, "in partition")
		assert.Contains(t, msg, streamtxtest.ReplaySeedEnv)
	})
	t.Run("input without a key", func(t *testing.T) {
		t.Parallel()
		msg := failures(t, func(tb testing.TB) {
			streamtxtest.CheckReplaySafe(tb, stock, []map[string]any{{"n": 1}}, opts)
		})
		assert.Contains(t, msg, `has no field "sku"`)
	})
}

// What does not fit a topic, or a stream, fails the test and says what to
// use instead.
func TestTopicMisuseFailsClearly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, want string
		use        func(tb testing.TB)
	}{
		{"SendKeyed on a stream", "keyed entries go to a topic: set Options.Topic", func(tb testing.TB) {
			streamtxtest.New(tb, stock(), streamtxtest.Options{}).SendKeyed("apple", map[string]any{"n": 1})
		}},
		{"Send on a topic", "use SendKeyed", func(tb testing.TB) {
			streamtxtest.New(tb, stock(), streamtxtest.Options{Topic: "t"}).Send(map[string]any{"n": 1})
		}},
		{"State on a topic", "read one with PartitionState", func(tb testing.TB) {
			streamtxtest.State[Totals](streamtxtest.New(tb, totals(), streamtxtest.Options{Topic: "t"}), "totals")
		}},
		{"PartitionState on a stream", "use State", func(tb testing.TB) {
			streamtxtest.PartitionState[Totals](streamtxtest.New(tb, totals(), streamtxtest.Options{}), "totals", 0)
		}},
		{"PartitionState out of range", "has partitions 0 to 1", func(tb testing.TB) {
			streamtxtest.PartitionState[Totals](streamtxtest.New(tb, totals(), streamtxtest.Options{Topic: "t", Partitions: 2}), "totals", 2)
		}},
		{"Claim on a topic", "never claimed by another", func(tb testing.TB) {
			streamtxtest.New(tb, stock(), streamtxtest.Options{Topic: "t"}).Inject("1-0", streamtxtest.Claim)
		}},
		{"Conflict on a topic", "no other writer while its lease is held", func(tb testing.TB) {
			streamtxtest.New(tb, stock(), streamtxtest.Options{Topic: "t"}).Faults(streamtxtest.Faults{Rate: 1, Kinds: []streamtxtest.Fault{streamtxtest.Conflict}})
		}},
		{"Stream and Topic", "a stream or a topic, not both", func(tb testing.TB) {
			streamtxtest.New(tb, stock(), streamtxtest.Options{Stream: "s", Topic: "t"})
		}},
		{"Partitions without Topic", "without Options.Topic", func(tb testing.TB) {
			streamtxtest.New(tb, stock(), streamtxtest.Options{Partitions: 2})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			assert.Contains(t, failures(t, func(tb testing.TB) {
				tc.use(tb)
			}), tc.want)
		})
	}
}

// A Drain that does not finish on a topic says, partition by partition,
// what is pending.
func TestTopicDrainReportsPartitions(t *testing.T) {
	t.Parallel()
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if msg.Key == "stuck" {
			return errors.New("payment service down")
		}
		return nil
	})
	msg := failures(t, func(tb testing.TB) {
		tt := streamtxtest.New(tb, h, streamtxtest.Options{Topic: "t", Partitions: 2, DrainTimeout: 300 * time.Millisecond,
			Config: streamtx.Config{MaxDeliveries: 1 << 20}})
		tt.SendKeyed("stuck", map[string]any{"a": 1})
		for i := range 10 {
			tt.SendKeyed("k"+strconv.Itoa(i), map[string]any{"a": 1})
		}
		tt.Drain()
	})
	assert.Contains(t, msg, "Drain: not done")
	assert.Contains(t, msg, "payment service down")
	assert.Regexp(t, `partition \d \(lease: test-1/[0-9a-f]+, epoch \d+\), pending entries:\n    \d+-\d+ consumer=stx-owner deliveries=\d+ .*a=1 stx.key=stuck`, msg)
	assert.Regexp(t, `partition \d: drained`, msg)
}
