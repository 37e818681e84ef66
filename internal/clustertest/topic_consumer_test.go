package clustertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

// Consumers of partitioned topics (Config.Topic) on a cluster: membership,
// leases and partition consumers whose keys live in many slots on three
// masters, per-key order and exactly-once through a failover, and a
// co-located pipeline that publishes by key from one topic to another in
// its commit.

const (
	topicPartitions = 12
	failEvery       = 7 // entries with i%failEvery == 0 fail on their first delivery
)

// A topic of 12 partitions spread over the three masters of a cluster with
// a replica each, consumed by Config.Topic consumers with a Keyed handler
// that checks each key's sequence numbers; two consumers at first, a third
// joins after a manual failover of the master that holds the group's
// membership (and some partitions), in the middle of the run. Every entry
// is applied exactly once (state, output and commit events), in its key's
// order, and nothing is dead-lettered.
//
// The producer publishes round by round (round r is entry r of every key)
// and starts a round only once the last one is acknowledged, so each key's
// entries are in its partition in order whatever a failover does to a
// single publish; a publish that fails is retried with the same idempotency
// key, so one whose outcome is unknown is not appended twice (the plain
// stream producer of TestClusterFailoverMidRun re-adds such an entry with a
// new ID instead, which here could put it after a later entry of its key).
// It keeps a backlog ahead of the consumers, and publishes the second half
// only once the failover is over.
func TestTopicOnCluster(t *testing.T) {
	t.Parallel()
	const (
		keysPer = 4 // keys per partition
		per     = 40
		backlog = 300
	)
	ctx := context.Background()
	c := redistest.StartCluster(t, 3, 1)
	rdb := c.Client(t)
	rec := newRecorder(t)

	top, err := streamtx.CreateTopic(ctx, rdb, "tc", streamtx.TopicConfig{Partitions: topicPartitions})
	require.NoError(t, err)
	byMaster := partitionsByMaster(t, c, top)
	require.Len(t, byMaster, 3, "partitions per master: %v", byMaster)
	outOf := func(p int) string { return "{" + keys.Tag(top.Stream(p)) + "}:out" }
	for p := range topicPartitions {
		require.Equal(t, keys.Slot(top.Stream(p)), keys.Slot(outOf(p)))
	}

	w := newKeyedWork(rdb, top, balancedKeys(top, keysPer), per)
	n := w.total()
	h := newOrderHandler(top, func(msg *streamtx.Message, tx *txn.Tx, values map[string]any) error {
		return tx.Publish(outOf(msg.Partition), values)
	})
	var stops []func()
	for i := range 2 {
		stops = append(stops, run(t, topicConsumer(t, rdb, top, "c"+strconv.Itoa(i), h, rec)))
	}

	pctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	resumed := make(chan struct{})
	prodDone := make(chan error, 1)
	go func() {
		prodDone <- w.run(pctx, func(ctx context.Context, published int) error {
			if published >= n/2 {
				select {
				case <-resumed:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			select {
			case <-rec.whenCommitted("", published-backlog):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	select {
	case <-rec.whenCommitted("", n/10):
	case err := <-prodDone:
		t.Fatalf("producer stopped early: %v", err)
	case <-time.After(waitTimeout):
		t.Fatalf("fewer than %d entries committed after %v; events: %s", n/10, waitTimeout, rec.summary())
	}

	membersKey := keys.Members(top.Name(), group)
	before := c.MasterFor(membersKey)
	moved := byMaster[before]
	atStart := rec.committed("")
	start := time.Now()
	c.Failover(t, membersKey)
	after := c.MasterFor(membersKey)
	atEnd := rec.committed("")
	t.Logf("failover of %s (membership and partitions %v) -> %s in %v; %d entries committed before, %d after",
		before, moved, after, time.Since(start).Round(time.Millisecond), atStart, atEnd)
	require.NotEqual(t, before, after)
	require.NotEmpty(t, moved, "the failed-over master held partitions")
	for _, p := range moved {
		require.Equal(t, after, c.MasterFor(top.Stream(p)), "partition %d moved with the membership", p)
	}
	require.Less(t, atStart, n/2, "the failover started mid-run")
	close(resumed)
	stops = append(stops, run(t, topicConsumer(t, rdb, top, "c2", h, rec)))

	select {
	case err := <-prodDone:
		require.NoError(t, err, "producer")
	case <-time.After(waitTimeout):
		t.Fatalf("producer not done after %v; events: %s", waitTimeout, rec.summary())
	}
	for p := range topicPartitions {
		waitDrained(t, rdb, top.Stream(p))
	}
	t.Logf("c2 owns partitions %v", waitOwns(t, rdb, top, "c2"))
	for _, stop := range stops {
		stop()
	}

	w.checkSource(t)
	h.check(t)
	w.checkApplied(t, "seq")
	w.checkOutput(t, outOf)
	require.Len(t, rec.ids(streamtx.EventCommit), n, "commit events")
	rec.checkNoCrossSlot(t)
	checkNoCrossSlotAtServers(t, rdb)
	t.Logf("events: %s", rec.summary())
	logErrorStats(t, rdb)
}

// Two topics with one Colocate name and 12 partitions: partition p of both
// is in one slot, so Config.Topic consumers of the first with a Keyed
// handler that publishes each entry by its key to the second
// (tx.PublishKeyed) commit it on the cluster — no ErrCrossSlot, no relay —
// and each entry lands once in the second topic's partition of its key, the
// one it was read from, in its key's order.
func TestColocatedPipelineOnCluster(t *testing.T) {
	t.Parallel()
	const (
		keysPer = 3
		per     = 20
	)
	ctx := context.Background()
	c := redistest.StartCluster(t, 3, 0)
	rdb := c.Client(t)
	rec := newRecorder(t)

	a, err := streamtx.CreateTopic(ctx, rdb, "pipe-a", streamtx.TopicConfig{Partitions: topicPartitions, Colocate: "pipe"})
	require.NoError(t, err)
	b, err := streamtx.CreateTopic(ctx, rdb, "pipe-b", streamtx.TopicConfig{Partitions: topicPartitions, Colocate: "pipe"})
	require.NoError(t, err)
	for p := range topicPartitions {
		require.Equal(t, c.Slot(a.Stream(p)), c.Slot(b.Stream(p)), "partition %d", p)
	}
	byMaster := partitionsByMaster(t, c, a)
	require.Len(t, byMaster, 3, "partitions per master: %v", byMaster)

	w := newKeyedWork(rdb, a, balancedKeys(a, keysPer), per)
	require.NoError(t, w.run(ctx, func(context.Context, int) error { return nil }))

	var mu sync.Mutex
	var publishErrs []string
	h := newOrderHandler(a, func(msg *streamtx.Message, tx *txn.Tx, values map[string]any) error {
		err := tx.PublishKeyed(b.Name(), msg.Key, values)
		if err != nil {
			mu.Lock()
			publishErrs = append(publishErrs, fmt.Sprintf("%s (key %s, partition %d): %v", msg.ID, msg.Key, msg.Partition, err))
			mu.Unlock()
		}
		return err
	})
	var stops []func()
	for i := range 2 {
		stops = append(stops, run(t, topicConsumer(t, rdb, a, "c"+strconv.Itoa(i), h, rec)))
	}
	for p := range topicPartitions {
		waitDrained(t, rdb, a.Stream(p))
	}
	for _, stop := range stops {
		stop()
	}

	mu.Lock()
	require.Empty(t, publishErrs, "tx.PublishKeyed to the co-located topic")
	mu.Unlock()
	w.checkSource(t)
	h.check(t)
	w.checkApplied(t, "seq")
	w.checkOutput(t, b.Stream)
	for p := range topicPartitions {
		for _, m := range readAll(t, rdb, b.Stream(p)) {
			key, _ := m.Values["stx.key"].(string)
			require.Equal(t, m.Values["key"], key, "%s: entry %s", b.Stream(p), m.ID)
			require.Equal(t, p, b.PartitionOf(key), "%s: entry %s of key %q", b.Stream(p), m.ID, key)
		}
	}
	require.Len(t, rec.ids(streamtx.EventCommit), w.total(), "commit events")
	rec.checkNoCrossSlot(t)
	checkNoCrossSlotAtServers(t, rdb)
	t.Logf("events: %s", rec.summary())
}

// topicConsumer returns a consumer of topic top in the test's group, with
// short timings (a lease of 1s renewed every 100ms).
func topicConsumer(t *testing.T, rdb *redis.ClusterClient, top *streamtx.Topic, name string, h streamtx.Handler, rec *recorder) *streamtx.Consumer {
	t.Helper()
	cfg := consumerConfig(t, "", name, rec)
	cfg.Topic = top.Name()
	cfg.LeaseTTL = time.Second
	cfg.Heartbeat = 100 * time.Millisecond
	cfg.BatchSize = 20
	cons, err := streamtx.NewConsumer(rdb, cfg, h)
	require.NoError(t, err)
	return cons
}

// waitOwns polls until the consumer named name holds the lease of some
// partitions of top in the test's group, and returns them.
func waitOwns(t *testing.T, rdb *redis.ClusterClient, top *streamtx.Topic, name string) []int {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(waitTimeout)
	for {
		var owned []int
		owners := make([]string, top.Partitions())
		for p := range top.Partitions() {
			sp, err := keys.NewSpace(top.Stream(p), group)
			require.NoError(t, err)
			owner, err := rdb.HGet(ctx, sp.Lease(), "owner").Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				require.NoError(t, err, "lease of partition %d", p)
			}
			owners[p] = owner
			if strings.HasPrefix(owner, name+"/") {
				owned = append(owned, p)
			}
		}
		if len(owned) > 0 {
			return owned
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds no partition after %v; owners %v", name, waitTimeout, owners)
		}
		time.Sleep(10 * time.Millisecond) // polling for the assignment to move partitions to name
	}
}

// partitionsByMaster returns the partitions of top served by each master.
func partitionsByMaster(t *testing.T, c *redistest.Cluster, top *streamtx.Topic) map[string][]int {
	t.Helper()
	by := make(map[string][]int)
	for p := range top.Partitions() {
		require.Equal(t, c.Slot(top.Stream(p)), keys.Slot(top.Stream(p)), "keys.Slot agrees with CLUSTER KEYSLOT")
		m := c.MasterFor(top.Stream(p))
		by[m] = append(by[m], p)
	}
	return by
}

// balancedKeys returns keysPer keys in each partition of top: the first
// keys "key-0", "key-1", ... that fill every partition.
func balancedKeys(top *streamtx.Topic, keysPer int) []string {
	count := make([]int, top.Partitions())
	var ks []string
	for i := 0; len(ks) < keysPer*top.Partitions(); i++ {
		k := "key-" + strconv.Itoa(i)
		if p := top.PartitionOf(k); count[p] < keysPer {
			count[p]++
			ks = append(ks, k)
		}
	}
	return ks
}

// keyedWork is a keyed workload on a topic: per entries for each key, entry
// r of a key carrying its sequence number r ("seq"), the key ("key") and
// its index over the whole workload ("i").
type keyedWork struct {
	rdb   *redis.ClusterClient
	topic *streamtx.Topic
	keys  []string
	per   int

	mu  sync.Mutex
	ids []map[string]pub // per partition: entry ID -> what was published
}

// pub is an entry of a keyedWork.
type pub struct {
	key string
	seq int
}

func newKeyedWork(rdb *redis.ClusterClient, top *streamtx.Topic, ks []string, per int) *keyedWork {
	w := &keyedWork{rdb: rdb, topic: top, keys: ks, per: per, ids: make([]map[string]pub, top.Partitions())}
	for p := range w.ids {
		w.ids[p] = make(map[string]pub)
	}
	return w
}

func (w *keyedWork) total() int { return len(w.keys) * w.per }

// run publishes the workload round by round, round r being entry r of
// every key, published concurrently; a round starts once the last one is
// acknowledged, so every key's entries are in its partition in order.
// Before each round it calls gate with the number published so far, and
// stops if gate fails.
func (w *keyedWork) run(ctx context.Context, gate func(ctx context.Context, published int) error) error {
	const workers = 8
	prod, err := streamtx.NewProducer(w.rdb, streamtx.ProducerConfig{})
	if err != nil {
		return err
	}
	for seq := 1; seq <= w.per; seq++ {
		if err := gate(ctx, (seq-1)*len(w.keys)); err != nil {
			return err
		}
		errs := make([]error, workers)
		var wg sync.WaitGroup
		for g := range workers {
			wg.Go(func() {
				for k := g; k < len(w.keys) && errs[g] == nil; k += workers {
					errs[g] = w.publish(ctx, prod, k, seq)
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return nil
}

// publish publishes entry seq of key k, retrying failures for a while with
// one idempotency key, so that a publish whose reply a failover cut is not
// appended twice.
func (w *keyedWork) publish(ctx context.Context, prod *streamtx.Producer, k, seq int) error {
	key := w.keys[k]
	values := map[string]any{"key": key, "seq": seq, "i": (seq-1)*len(w.keys) + k}
	idem := streamtx.WithIdempotencyKey(key + "/" + strconv.Itoa(seq))
	var err error
	for range 100 {
		var id string
		if id, err = prod.PublishKeyed(ctx, w.topic.Name(), key, values, idem); err == nil {
			w.mu.Lock()
			w.ids[w.topic.PartitionOf(key)][id] = pub{key, seq}
			w.mu.Unlock()
			return nil
		}
		select {
		case <-time.After(100 * time.Millisecond): // backoff before retrying the failed publish
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return fmt.Errorf("publishing %s/%d: %w", key, seq, err)
}

// checkSource checks that each partition holds exactly the entries
// published to it, each key's in order: what the consumers had to work on.
func (w *keyedWork) checkSource(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for p := range w.topic.Partitions() {
		ms := readAll(t, w.rdb, w.topic.Stream(p))
		require.Len(t, ms, len(w.ids[p]), "%s: entries", w.topic.Stream(p))
		last := make(map[string]int)
		for _, m := range ms {
			e, ok := w.ids[p][m.ID]
			require.True(t, ok, "%s: entry %s %v was not published", w.topic.Stream(p), m.ID, m.Values)
			require.Equal(t, last[e.key]+1, e.seq, "%s: entry %s of key %s out of order in the source", w.topic.Stream(p), m.ID, e.key)
			last[e.key] = e.seq
		}
	}
}

// checkApplied checks every key's Keyed state: all per entries applied, the
// last one last.
func (w *keyedWork) checkApplied(t *testing.T, name string) {
	t.Helper()
	var wrong []string
	for _, key := range w.keys {
		s, err := streamtx.ReadKeyedState[seqState](context.Background(), w.rdb, w.topic.Name(), group, name, key)
		require.NoError(t, err)
		if want := (seqState{Seq: w.per, N: w.per}); s.Value != want {
			wrong = append(wrong, fmt.Sprintf("%s: %+v", key, s.Value))
		}
	}
	require.Empty(t, wrong, "keyed states, want {Seq:%d N:%d}", w.per, w.per)
	for p := range w.topic.Partitions() {
		n, err := w.rdb.XLen(context.Background(), w.topic.DeadLetterStream(group, p)).Result()
		require.NoError(t, err)
		require.Zero(t, n, "dead letters of partition %d", p)
	}
}

// checkOutput checks the handler's output, stream outOf(p) for partition p:
// it holds each entry of partition p exactly once (field "src"), with its
// key and sequence number, each key's in order. It reports every violation
// at once, with examples.
func (w *keyedWork) checkOutput(t *testing.T, outOf func(p int) string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var problems []string
	report := func(format string, args ...any) {
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	for p := range w.topic.Partitions() {
		out := outOf(p)
		seen := make(map[string]int)
		last := make(map[string]int)
		for _, m := range readAll(t, w.rdb, out) {
			src, _ := m.Values["src"].(string)
			key, _ := m.Values["key"].(string)
			seq, _ := strconv.Atoi(fmt.Sprint(m.Values["seq"]))
			seen[src]++
			e, ok := w.ids[p][src]
			switch {
			case !ok:
				report("%s: entry %s is from no entry of partition %d: %v", out, m.ID, p, m.Values)
			case seen[src] > 1:
				report("%s: entry %s: source %s published again (%d times)", out, m.ID, src, seen[src])
			case e.key != key || e.seq != seq:
				report("%s: entry %s: source %s is %s/%d, published as %s/%d", out, m.ID, src, e.key, e.seq, key, seq)
			case seq != last[key]+1:
				report("%s: entry %s: key %s seq %d after %d", out, m.ID, key, seq, last[key])
			}
			last[key] = max(last[key], seq)
		}
		var missing []string
		for id := range w.ids[p] {
			if seen[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			slices.SortFunc(missing, func(a, b string) int {
				if lessID(a, b) {
					return -1
				}
				return 1
			})
			report("%s: %d entries of partition %d missing, e.g. %v", out, len(missing), p, missing[:min(len(missing), 5)])
		}
	}
	if len(problems) > 0 {
		t.Fatalf("output of %s: exactly-once or order violated:\n  %s", w.topic.Name(), strings.Join(problems, "\n  "))
	}
}

// seqState is a key's state in the order check: the last sequence number
// applied and how many entries were applied.
type seqState struct{ Seq, N int }

// orderHandler is the Keyed handler ("seq") of the topic tests: it checks
// that an entry was read from its key's partition, fails the entries with
// i%failEvery == 0 on their first delivery, applies the entry's sequence
// number to its key's state — noting an inversion when it does not follow
// the last one applied — and emits (src, key, seq) with emit.
type orderHandler struct {
	streamtx.Handler
	topic    *streamtx.Topic
	emit     func(msg *streamtx.Message, tx *txn.Tx, values map[string]any) error
	failOnce sync.Map // entry ID -> failed once already

	mu         sync.Mutex
	inversions []string
}

func newOrderHandler(top *streamtx.Topic, emit func(msg *streamtx.Message, tx *txn.Tx, values map[string]any) error) *orderHandler {
	h := &orderHandler{topic: top, emit: emit}
	h.Handler = streamtx.Keyed("seq", nil, h.handle)
	return h
}

func (h *orderHandler) handle(ctx context.Context, msg *streamtx.Message, s *seqState, tx *txn.Tx) error {
	seq, err := strconv.Atoi(msg.Values["seq"])
	if err != nil {
		return streamtx.Permanent(err)
	}
	i, err := strconv.Atoi(msg.Values["i"])
	if err != nil {
		return streamtx.Permanent(err)
	}
	if msg.Partition != h.topic.PartitionOf(msg.Key) {
		return streamtx.Permanent(fmt.Errorf("entry of key %q in partition %d", msg.Key, msg.Partition))
	}
	if i%failEvery == 0 {
		if _, again := h.failOnce.LoadOrStore(msg.ID, true); !again {
			return errors.New("first delivery fails")
		}
	}
	if seq != s.Seq+1 {
		h.mu.Lock()
		h.inversions = append(h.inversions, fmt.Sprintf("partition %d entry %s: key %s seq %d applied to state %+v", msg.Partition, msg.ID, msg.Key, seq, *s))
		h.mu.Unlock()
	}
	s.Seq, s.N = seq, s.N+1
	return h.emit(msg, tx, map[string]any{"src": msg.ID, "key": msg.Key, "seq": seq})
}

// check checks that no entry was handled out of its key's order.
func (h *orderHandler) check(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	require.Empty(t, h.inversions, "entries handled with a state that is not their key's previous entry's")
}
