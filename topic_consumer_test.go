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

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
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
	client     redis.UniversalClient // the consumers' (e.rdb by default)
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
	o := &orderRun{e: e, client: e.rdb, topic: top, group: "g", out: e.key("out"), keys: keys, n: n}
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
	c, err := streamtx.NewConsumer(o.client, cfg, h)
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

// owners tracks who owns which partition from the consumers' events.
type owners struct {
	mu       sync.Mutex
	owner    map[int]string
	assigned int // EventAssigned seen
	lost     int // EventRevoked with ErrLeaseLost
	fenced   int // EventFenced with ErrLeaseLost
	bad      []string
}

func newOwners() *owners { return &owners{owner: map[int]string{}} }

func (o *owners) Observe(e streamtx.Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if e.Topic == "" || (e.Partition >= 0 && e.Stream == "") {
		o.bad = append(o.bad, fmt.Sprintf("event of a topic consumer without its topic or stream: %+v", e))
	}
	switch e.Kind {
	case streamtx.EventAssigned:
		o.owner[e.Partition] = e.Consumer
		o.assigned++
	case streamtx.EventRevoked:
		if o.owner[e.Partition] == e.Consumer {
			delete(o.owner, e.Partition)
		}
		if errors.Is(e.Err, streamtx.ErrLeaseLost) {
			o.lost++
		}
	case streamtx.EventFenced:
		if errors.Is(e.Err, streamtx.ErrLeaseLost) {
			o.fenced++
		}
	}
}

// counts returns the partitions each consumer owns, and a copy of the
// assignment.
func (o *owners) snapshot() (map[string]int, map[int]string, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	counts := map[string]int{}
	own := map[int]string{}
	for p, c := range o.owner {
		counts[c]++
		own[p] = c
	}
	return counts, own, o.assigned
}

// balanced waits until the partitions are all owned, by exactly members,
// with counts differing by at most one.
func (o *owners) balanced(t *testing.T, partitions int, members ...string) map[int]string {
	t.Helper()
	var own map[int]string
	defer func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		require.Empty(t, o.bad)
	}()
	eventually(t, fmt.Sprintf("%d partitions balanced over %v", partitions, members), func() bool {
		counts, a, _ := o.snapshot()
		own = a
		if len(a) != partitions || len(counts) != len(members) {
			return false
		}
		lo, hi := partitions, 0
		for _, m := range members {
			n, ok := counts[m]
			if !ok {
				return false
			}
			lo, hi = min(lo, n), max(hi, n)
		}
		return hi-lo <= 1
	})
	return own
}

func moved(before, after map[int]string) int {
	n := 0
	for p, c := range after {
		if before[p] != c {
			n++
		}
	}
	return n
}

// Joins move about P/N partitions to the newcomer and leave the rest where
// they were; a leave moves only the leaver's partitions.
func TestTopicAssignmentIsBalancedAndSticky(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const P = 12
	o := newOrderRun(t, e, P, 24, 0)
	h := o.handler(t, 0)
	own := newOwners()
	tune := func(c *streamtx.Config) { c.Observer = own }

	run(t, o.consumer(t, "a", h, tune))
	a1 := own.balanced(t, P, "a")

	stopB := run(t, o.consumer(t, "b", h, tune))
	a2 := own.balanced(t, P, "a", "b")
	require.Equal(t, P/2, moved(a1, a2), "a join of a second member moves P/2: %v -> %v", a1, a2)

	run(t, o.consumer(t, "c", h, tune))
	a3 := own.balanced(t, P, "a", "b", "c")
	require.Equal(t, P/3, moved(a2, a3), "a join of a third member moves P/3: %v -> %v", a2, a3)

	stopB()
	a4 := own.balanced(t, P, "a", "c")
	for p, c := range a3 {
		if c != "b" {
			require.Equal(t, c, a4[p], "partition %d of %s moved when b left", p, c)
		}
	}
	require.Equal(t, 4, moved(a3, a4))
}

// A consumer of a topic keeps per-key order and exactly-once while members
// join and leave during the run.
func TestTopicOrderWhileMembersJoinAndLeave(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	o := newOrderRun(t, e, 8, 20, 5000)
	own := newOwners()
	var applied atomic.Int64
	base := o.handler(t, 11)
	tune := func(c *streamtx.Config) {
		c.Observer = own
		c.BatchSize = 20
		c.Middleware = []streamtx.Middleware{func(next streamtx.Handler) streamtx.Handler {
			return streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
				applied.Add(1)
				return next.Handle(ctx, msg, tx)
			})
		}}
	}
	stopA := run(t, o.consumer(t, "a", base, tune))
	until := func(n int64) {
		eventually(t, fmt.Sprintf("%d entries handled", n), func() bool { return applied.Load() >= n })
	}
	until(500)
	stopB := run(t, o.consumer(t, "b", base, tune))
	until(1500)
	run(t, o.consumer(t, "c", base, tune))
	until(2500)
	stopA()
	until(3500)
	stopB()
	run(t, o.consumer(t, "d", base, tune))
	o.check(t)
}

// A consumer whose lease was taken while it held a batch (it paused past
// LeaseTTL) commits nothing: its commit is refused by the lease's epoch. It
// stops consuming the partition; once the partition is free again, the
// entries are handled once.
func TestTopicZombieCommitIsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	o := newOrderRun(t, e, 1, 1, 0)
	own := newOwners()
	blocked, release := make(chan struct{}), make(chan struct{})
	base := o.handler(t, 0)
	var first atomic.Bool
	mw := func(next streamtx.Handler) streamtx.Handler {
		return streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
			if first.CompareAndSwap(false, true) {
				close(blocked)
				<-release
			}
			return next.Handle(ctx, msg, tx)
		})
	}
	run(t, o.consumer(t, "a", base, func(c *streamtx.Config) {
		c.Observer = own
		c.Middleware = []streamtx.Middleware{mw}
	}))
	own.balanced(t, 1, "a")
	p, err := streamtx.NewProducer(e.rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)
	_, err = p.PublishKeyed(ctx, o.topic.Name(), "key-0", map[string]any{"seq": 1, "i": 0})
	require.NoError(t, err)
	<-blocked

	// Another instance takes the lease, as after a's lease expired.
	lease := leaseKey(t, o.topic, o.group, 0)
	epoch, err := e.rdb.HGet(ctx, lease, "epoch").Int64()
	require.NoError(t, err)
	require.NoError(t, e.rdb.HSet(ctx, lease, "owner", "thief/0", "epoch", epoch+1, "until", time.Now().Add(time.Hour).UnixMilli()).Err())
	close(release)

	eventually(t, "a's commit refused and its lease lost", func() bool {
		own.mu.Lock()
		defer own.mu.Unlock()
		return own.fenced > 0 && own.lost > 0
	})
	require.Empty(t, e.entries(o.out), "a zombie's commit wrote its publishes")
	s, err := streamtx.ReadKeyedState[seqState](ctx, e.rdb, o.topic.Name(), o.group, "seq", "key-0")
	require.NoError(t, err)
	require.Zero(t, s.Value, "a zombie's commit wrote its state")

	// The thief goes away: a takes the partition back and handles the entry once.
	require.NoError(t, e.rdb.HSet(ctx, lease, "owner", "", "until", 0).Err())
	o.n, o.keys = 1, 1
	o.check(t)
	got, err := e.rdb.HGet(ctx, lease, "epoch").Int64()
	require.NoError(t, err)
	require.Equal(t, epoch+2, got, "a took the partition back under a new epoch")
}

// A dead member's partitions move once its heartbeat and leases expire.
func TestTopicDeadOwnersPartitionsMove(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	const P = 4
	o := newOrderRun(t, e, P, 8, 400)
	// A member that died holding every partition: its heartbeat and leases
	// run out in a second.
	until := time.Now().Add(time.Second).UnixMilli()
	require.NoError(t, e.rdb.ZAdd(ctx, membersKey(o.topic, o.group), redis.Z{Score: float64(until), Member: "ghost/0"}).Err())
	for p := range P {
		require.NoError(t, e.rdb.HSet(ctx, leaseKey(t, o.topic, o.group, p), "owner", "ghost/0", "epoch", 7, "until", until).Err())
	}
	own := newOwners()
	run(t, o.consumer(t, "a", o.handler(t, 0), func(c *streamtx.Config) { c.Observer = own }))
	own.balanced(t, P, "a")
	o.check(t)
	for p := range P {
		epoch, err := e.rdb.HGet(ctx, leaseKey(t, o.topic, o.group, p), "epoch").Int64()
		require.NoError(t, err)
		require.Equal(t, int64(8), epoch, "partition %d", p)
	}
}

// Stateful on a topic keeps one value per partition.
func TestTopicStatefulIsPerPartition(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	const P = 3
	o := newOrderRun(t, e, P, 30, 300)
	h := streamtx.Stateful("count", func(ctx context.Context, msg *streamtx.Message, n *int, tx *txn.Tx) error {
		*n++
		return nil
	})
	run(t, o.consumer(t, "a", h, nil))
	run(t, o.consumer(t, "b", h, nil))
	total := 0
	for p := range P {
		e.drained(o.topic.Stream(p), o.group)
		s, err := streamtx.ReadState[int](ctx, e.rdb, o.topic.Stream(p), o.group, "count")
		require.NoError(t, err)
		n, err := e.rdb.XLen(ctx, o.topic.Stream(p)).Result()
		require.NoError(t, err)
		require.Equal(t, int(n), s.Value, "partition %d", p)
		total += s.Value
	}
	require.Equal(t, 300, total)
}

func TestTopicConfigErrors(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	h := streamtx.HandlerFunc(func(context.Context, *streamtx.Message, *txn.Tx) error { return nil })
	for _, tc := range []struct {
		field string
		cfg   streamtx.Config
	}{
		{"Topic", streamtx.Config{Stream: "s", Topic: "t", Group: "g", Consumer: "c"}},
		{"Topic", streamtx.Config{Topic: "a{b", Group: "g", Consumer: "c"}},
		{"PartitionKey", streamtx.Config{Topic: "t", Group: "g", Consumer: "c", PartitionKey: func(*streamtx.Message) string { return "" }}},
		{"LeaseTTL", streamtx.Config{Topic: "t", Group: "g", Consumer: "c", LeaseTTL: -1}},
		{"LeaseTTL", streamtx.Config{Topic: "t", Group: "g", Consumer: "c", LeaseTTL: time.Millisecond}},
		{"Heartbeat", streamtx.Config{Topic: "t", Group: "g", Consumer: "c", LeaseTTL: time.Second, Heartbeat: time.Second}},
		{"Stream", streamtx.Config{Group: "g", Consumer: "c"}},
	} {
		_, err := streamtx.NewConsumer(rdb, tc.cfg, h)
		requireConfigError(t, err, tc.field)
	}
}

// A consumer of a topic that does not exist fails at Run, naming it.
func TestTopicNotFound(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c, err := streamtx.NewConsumer(e.rdb, streamtx.Config{Topic: e.key("nope"), Group: "g", Consumer: "c"},
		streamtx.HandlerFunc(func(context.Context, *streamtx.Message, *txn.Tx) error { return nil }))
	require.NoError(t, err)
	err = c.Run(context.Background())
	require.ErrorIs(t, err, streamtx.ErrTopicNotFound)
	require.ErrorContains(t, err, e.key("nope"))
}

func leaseKey(t *testing.T, top *streamtx.Topic, group string, p int) string {
	t.Helper()
	space, err := keys.NewSpace(top.Stream(p), group)
	require.NoError(t, err)
	return space.Lease()
}

func membersKey(top *streamtx.Topic, group string) string { return keys.Members(top.Name(), group) }

// Redis loses commits (a restore of an older snapshot): the entry whose
// acknowledgement was lost is pending again, and the owner does not know.
// Its next commit is refused by the partition's commit record, and it takes
// the pending entries back in order before any new one — with a handler
// that keeps no state, no version check would tell it.
func TestTopicLostCommitsAreTakenBackInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	o := newOrderRun(t, e, 1, 1, 0)
	prod, err := streamtx.NewProducer(e.rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)
	publish := func(from, to int) {
		for seq := from; seq <= to; seq++ {
			_, err := prod.PublishKeyed(ctx, o.topic.Name(), "key-0", map[string]any{"seq": seq})
			require.NoError(t, err)
		}
	}
	blocked, release := make(chan struct{}), make(chan struct{})
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if msg.Values["seq"] == "6" && msg.Deliveries == 1 {
			close(blocked)
			<-release
		}
		return tx.Publish(o.out, map[string]any{"seq": msg.Values["seq"]})
	})
	run(t, o.consumer(t, "a", h, func(c *streamtx.Config) { c.BatchSize = 1 }))
	publish(1, 10)
	<-blocked

	// A snapshot with 1..5 committed and 6 delivered, not acknowledged.
	space, err := keys.NewSpace(o.topic.Stream(0), o.group)
	require.NoError(t, err)
	snap := map[string]string{}
	for _, k := range []string{o.topic.Stream(0), o.out, space.Commits(), space.Offsets()} {
		v, err := e.rdb.Dump(ctx, k).Result()
		require.NoError(t, err, k)
		snap[k] = v
	}
	close(release)
	o.e.drained(o.topic.Stream(0), o.group)
	require.Len(t, e.entries(o.out), 10)

	// Redis comes back from the snapshot: 6..10's commits are lost.
	for k, v := range snap {
		require.NoError(t, e.rdb.RestoreReplace(ctx, k, 0, v).Err())
	}
	publish(11, 11)
	o.e.drained(o.topic.Stream(0), o.group)
	var got []string
	for _, m := range e.entries(o.out) {
		got = append(got, m.Values["seq"].(string))
	}
	require.Equal(t, []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"}, got)
}

// A failing entry holds back only the later entries of its own key: the
// other keys of its partition flow past it, and its key resumes in order
// once it succeeds.
func TestTopicFailingEntryHoldsBackOnlyItsKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	o := newOrderRun(t, e, 1, 2, 0)
	var healed atomic.Bool
	base := o.handler(t, 0)
	fail := func(next streamtx.Handler) streamtx.Handler {
		return streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
			if msg.Key == "key-0" && msg.Values["seq"] == "1" && !healed.Load() {
				return errors.New("key-0's first entry fails until healed")
			}
			return next.Handle(ctx, msg, tx)
		})
	}
	run(t, o.consumer(t, "a", base, func(c *streamtx.Config) {
		c.Middleware = []streamtx.Middleware{fail}
		c.MaxDeliveries = 1000
		c.Backoff = func(*streamtx.Message, error) time.Duration { return 5 * time.Millisecond }
	}))
	prod, err := streamtx.NewProducer(e.rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)
	publish := func(key string, seq int) {
		_, err := prod.PublishKeyed(ctx, o.topic.Name(), key, map[string]any{"seq": seq})
		require.NoError(t, err)
	}
	publish("key-0", 1)
	for seq := 1; seq <= 10; seq++ {
		publish("key-1", seq)
		publish("key-0", seq+1)
	}
	eventually(t, "key-1's entries committed past key-0's failing one", func() bool {
		return len(e.entries(o.out)) == 10
	})
	for _, m := range e.entries(o.out) {
		require.Equal(t, "key-1", m.Values["key"], "only key-1 may pass while key-0's first entry fails")
	}
	healed.Store(true)
	publish("key-1", 11)
	o.n, o.keys = 22, 2
	o.check(t)
}

// ReadState given a topic's name says the state is per partition instead of
// returning a zero value.
func TestReadStateOfATopicNamesThePartitions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	o := newOrderRun(t, e, 3, 3, 0)
	_, err := streamtx.ReadState[int](context.Background(), e.rdb, o.topic.Name(), o.group, "count")
	requireConfigError(t, err, "stream")
	require.ErrorContains(t, err, "one value per partition")
	s, err := streamtx.ReadState[int](context.Background(), e.rdb, o.topic.Stream(1), o.group, "count")
	require.NoError(t, err)
	require.Zero(t, s.Value)
}
