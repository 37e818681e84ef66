// Package clustertest runs streamtx consumers on a Redis Cluster of
// redis-server processes private to each test (see redistest.StartCluster):
// the exactly-once counter with streams on different masters, the refusal
// of a publish to another slot, a manual failover of the source stream's
// master in the middle of a run, and consumers of partitioned topics.
package clustertest

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

func TestMain(m *testing.M) { redistest.Main(m) }

const (
	group        = "g"
	consumersPer = 4 // consumers per source stream
	waitTimeout  = 30 * time.Second
)

type counter struct{ N int }

// countTo is the shared counter handler: it counts the entries of the stream
// and publishes (src, n) to out after every increment.
func countTo(out string) streamtx.Handler {
	return streamtx.Stateful("counter", func(ctx context.Context, msg *streamtx.Message, s *counter, tx *txn.Tx) error {
		s.N++
		return tx.Publish(out, map[string]any{"src": msg.ID, "n": s.N})
	})
}

// Two streams on two masters, four consumers each sharing one counter: every
// stream's published counters are exactly 1..N, each source entry appears
// once downstream, and the committed state is N.
func TestClusterCounterExactlyOnce(t *testing.T) {
	t.Parallel()
	const n = 2000
	c := redistest.StartCluster(t, 3, 0)
	rdb := c.Client(t)
	rec := newRecorder(t)

	srcs := []string{"{orders-a}", "{orders-b}"}
	require.NotEqual(t, keys.Slot(srcs[0]), keys.Slot(srcs[1]))
	require.NotEqual(t, c.MasterFor(srcs[0]), c.MasterFor(srcs[1]), "the two streams must live on different masters")
	for _, src := range srcs {
		out := src + ":out"
		require.Equal(t, keys.Slot(src), keys.Slot(out))
		require.Equal(t, c.Slot(src), keys.Slot(src), "keys.Slot agrees with CLUSTER KEYSLOT")
		require.Equal(t, c.MasterFor(src), c.MasterFor(out))
	}

	ids := make(map[string][]string)
	var stops []func()
	start := time.Now()
	for _, src := range srcs {
		ids[src] = addEntries(t, rdb, src, 1, n)
		stops = append(stops, startConsumers(t, rdb, src, countTo(src+":out"), rec)...)
	}
	for _, src := range srcs {
		waitDrained(t, rdb, src)
	}
	t.Logf("%d entries on each of %d streams consumed in %v", n, len(srcs), time.Since(start).Round(time.Millisecond))
	for _, stop := range stops {
		stop()
	}
	for _, src := range srcs {
		checkExactlyOnce(t, rdb, src, src+":out", ids[src])
	}
	rec.checkNoCrossSlot(t)
	checkNoCrossSlotAtServers(t, rdb)
	t.Logf("events: %s", rec.summary())
}

// A handler on a cluster client that publishes to a stream in another slot
// gets ErrCrossSlot from tx.Publish itself, before any commit; the entry is
// dead-lettered (the error is permanent) and Redis never sees a CROSSSLOT.
func TestClusterCrossSlotPublishRefused(t *testing.T) {
	t.Parallel()
	const n = 20
	ctx := context.Background()
	c := redistest.StartCluster(t, 3, 0)
	rdb := c.Client(t)
	rec := newRecorder(t)

	src, same, other := "{xs-src}", "{xs-src}:out", "{xs-other}:out"
	require.Equal(t, keys.Slot(src), keys.Slot(same))
	require.NotEqual(t, keys.Slot(src), keys.Slot(other))
	srcIDs := addEntries(t, rdb, src, 1, n)

	var mu sync.Mutex
	publishErrs := make(map[string]error) // entry ID -> what tx.Publish returned
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		target := same
		if i, _ := strconv.Atoi(msg.Values["i"]); i%2 == 0 {
			target = other
		}
		err := tx.Publish(target, map[string]any{"src": msg.ID})
		if target == other {
			mu.Lock()
			publishErrs[msg.ID] = err
			mu.Unlock()
		}
		return err
	})
	cfg := consumerConfig(t, src, "c0", rec)
	cfg.MaxDeliveries = 100 // only a permanent error dead-letters at once
	cons, err := streamtx.NewConsumer(rdb, cfg, h)
	require.NoError(t, err)
	stop := run(t, cons)
	waitDrained(t, rdb, src)
	stop()

	// Entries i = 2, 4, ... published to the other slot.
	var good, bad []string
	for i, id := range srcIDs {
		if (i+1)%2 == 0 {
			bad = append(bad, id)
		} else {
			good = append(good, id)
		}
	}
	mu.Lock()
	require.Len(t, publishErrs, len(bad))
	for id, err := range publishErrs {
		require.ErrorIs(t, err, streamtx.ErrCrossSlot, "entry %s", id)
		require.ErrorIs(t, err, txn.ErrBadPublish, "entry %s", id)
	}
	mu.Unlock()

	assert.Equal(t, good, fieldOf(t, readAll(t, rdb, same), "src"), "same-slot publishes commit")
	exists, err := rdb.Exists(ctx, other).Result()
	require.NoError(t, err)
	assert.Zero(t, exists, "nothing reached the other slot")
	dead := readAll(t, rdb, cons.DeadLetterStream())
	require.Equal(t, keys.Slot(src), keys.Slot(cons.DeadLetterStream()))
	assert.Equal(t, bad, fieldOf(t, dead, "stx.id"), "cross-slot entries dead-lettered")
	for _, m := range dead {
		assert.Contains(t, m.Values["stx.error"], streamtx.ErrCrossSlot.Error())
	}
	assert.Equal(t, bad, rec.ids(streamtx.EventDeadLetter))
	assert.Zero(t, pendingCount(t, rdb, src))

	rec.checkNoCrossSlot(t)
	checkNoCrossSlotAtServers(t, rdb)
	t.Logf("events: %s", rec.summary())
}

// A manual failover (CLUSTER FAILOVER) of the master that holds the source
// stream, while four consumers work through it: the run completes and every
// exactly-once invariant holds.
//
// A producer keeps a backlog of entries ahead of the consumers (it adds the
// next chunk when enough of the last ones have committed), so the consumers
// are busy reading, handling and committing when the failover starts; it
// adds the second half of the entries only once the failover is over, so
// that they are consumed from the new master.
func TestClusterFailoverMidRun(t *testing.T) {
	t.Parallel()
	const (
		n       = 2000
		chunk   = 50
		backlog = 200
	)
	c := redistest.StartCluster(t, 3, 1)
	r := startMidRun(t, c, "{orders-f}", n, chunk, backlog)
	src, rec := r.src, r.rec
	before := c.MasterFor(src)
	atStart := rec.committed(src)
	start := time.Now()
	c.Failover(t, src)
	after := c.MasterFor(src)
	atEnd := rec.committed(src)
	r.resume()
	t.Logf("failover of %s: %s -> %s in %v; %d entries committed before, %d after",
		src, before, after, time.Since(start).Round(time.Millisecond), atStart, atEnd)
	require.NotEqual(t, before, after)
	require.Less(t, atStart, n/2, "the failover started mid-run")
	r.finish()
}

// midRun is an exactly-once counter run through a cluster with a
// disruption in its middle. A producer keeps a backlog of entries ahead of
// four consumers (it adds the next chunk when enough of the last ones have
// committed), so that they are busy when the disruption starts; it adds the
// second half of the entries only after resume, so that they are consumed
// after it.
type midRun struct {
	t        *testing.T
	rdb      *redis.ClusterClient
	rec      *recorder
	src, out string
	prod     *producer
	prodDone chan error
	resumed  chan struct{}
	stops    []func()
}

// startMidRun starts the consumers and the producer on src (and src+":out")
// and returns once a tenth of the n entries are committed.
func startMidRun(t *testing.T, c *redistest.Cluster, src string, n, chunk, backlog int) *midRun {
	t.Helper()
	r := &midRun{t: t, rdb: c.Client(t), rec: newRecorder(t), src: src, out: src + ":out",
		prodDone: make(chan error, 1), resumed: make(chan struct{})}
	require.Equal(t, keys.Slot(r.src), keys.Slot(r.out))
	r.stops = startConsumers(t, r.rdb, r.src, countTo(r.out), r.rec)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r.prod = &producer{rdb: r.rdb, stream: src}
	go func() {
		r.prodDone <- r.prod.run(ctx, n, chunk, func(ctx context.Context, added int) error {
			if added >= n/2 {
				select {
				case <-r.resumed:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			select {
			case <-r.rec.whenCommitted(src, added-backlog):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	select {
	case <-r.rec.whenCommitted(src, n/10):
	case err := <-r.prodDone:
		t.Fatalf("producer stopped early: %v", err)
	case <-time.After(waitTimeout):
		t.Fatalf("fewer than %d entries committed after %v; events: %s", n/10, waitTimeout, r.rec.summary())
	}
	return r
}

// resume lets the producer add the second half.
func (r *midRun) resume() { close(r.resumed) }

// finish waits for the producer and the drain, stops the consumers and
// checks every exactly-once invariant.
func (r *midRun) finish() {
	t := r.t
	t.Helper()
	select {
	case err := <-r.prodDone:
		require.NoError(t, err, "producer")
	case <-time.After(waitTimeout):
		t.Fatalf("producer not done after %v; events: %s", waitTimeout, r.rec.summary())
	}
	waitDrained(t, r.rdb, r.src)
	for _, stop := range r.stops {
		stop()
	}
	checkExactlyOnce(t, r.rdb, r.src, r.out, r.prod.ids)
	r.rec.checkNoCrossSlot(t)
	checkNoCrossSlotAtServers(t, r.rdb)
	t.Logf("events: %s", r.rec.summary())
	logErrorStats(t, r.rdb)
}

// producer adds entries 1..n to a stream with explicit IDs 1-i, so that an
// XADD retried after an error whose outcome is unknown (a failover may cut a
// reply) is never added twice.
type producer struct {
	rdb    *redis.ClusterClient
	stream string
	ids    []string // read after run returns
}

// run adds the entries in chunks; before each chunk it calls gate with the
// number added so far, and stops if gate fails.
func (p *producer) run(ctx context.Context, n, chunk int, gate func(ctx context.Context, added int) error) error {
	for start := 1; start <= n; start += chunk {
		if err := gate(ctx, start-1); err != nil {
			return err
		}
		pipe := p.rdb.Pipeline()
		var ids []string
		for i := start; i < start+chunk && i <= n; i++ {
			id := "1-" + strconv.Itoa(i)
			ids = append(ids, id)
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: p.stream, ID: id, Values: map[string]any{"i": i}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			for k, id := range ids {
				got, err := p.addOne(ctx, id)
				if err != nil {
					return err
				}
				ids[k] = got
			}
		}
		p.ids = append(p.ids, ids...)
	}
	return nil
}

// addOne adds one entry unless it is there already, retrying errors for a
// while, and returns its ID. When the stream has moved past id without it
// (a failover lost it while later ones of its pipeline survived), the entry
// is added with a new ID, which it returns.
func (p *producer) addOne(ctx context.Context, id string) (string, error) {
	var err error
	i := strings.TrimPrefix(id, "1-")
	for range 50 {
		var got []redis.XMessage
		if got, err = p.rdb.XRange(ctx, p.stream, id, id).Result(); err == nil {
			if len(got) == 1 {
				return id, nil
			}
			if err = p.rdb.XAdd(ctx, &redis.XAddArgs{Stream: p.stream, ID: id, Values: map[string]any{"i": i}}).Err(); err == nil {
				return id, nil
			}
			if redis.HasErrorPrefix(err, "ERR The ID specified in XADD is equal or smaller") {
				var nid string
				if nid, err = p.rdb.XAdd(ctx, &redis.XAddArgs{Stream: p.stream, Values: map[string]any{"i": i}}).Result(); err == nil {
					return nid, nil
				}
			}
		}
		select {
		case <-time.After(100 * time.Millisecond): // backoff before retrying the failed command
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return "", fmt.Errorf("adding %s: %w", id, err)
}

// consumerConfig returns the config of one test consumer: short timings,
// logs to the test's output, events to rec.
func consumerConfig(t *testing.T, stream, name string, rec *recorder) streamtx.Config {
	return streamtx.Config{
		Stream:        stream,
		Group:         group,
		Consumer:      name,
		Block:         20 * time.Millisecond,
		ClaimIdle:     time.Second,
		Backoff:       func(*streamtx.Message, error) time.Duration { return 10 * time.Millisecond },
		CommitTimeout: 20 * time.Second,
		Logger:        slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
		Observer:      rec,
	}
}

// startConsumers starts consumersPer consumers of stream with handler h and
// mixed batch sizes, and returns their stop functions.
func startConsumers(t *testing.T, rdb *redis.ClusterClient, stream string, h streamtx.Handler, rec *recorder) []func() {
	t.Helper()
	var stops []func()
	for i := range consumersPer {
		cfg := consumerConfig(t, stream, "c"+strconv.Itoa(i), rec)
		cfg.BatchSize = 10 * (i + 1) // mixed batch sizes contend more
		cons, err := streamtx.NewConsumer(rdb, cfg, h)
		require.NoError(t, err)
		stops = append(stops, run(t, cons))
	}
	return stops
}

// run starts cons.Run in a goroutine and returns a stop function that
// cancels it and waits for Run to return nil; it is also run when the test
// ends.
func run(t *testing.T, cons *streamtx.Consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- cons.Run(ctx) }()
	select {
	case <-cons.Ready():
	case err := <-errc:
		cancel()
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(waitTimeout):
		cancel()
		t.Fatalf("consumer not ready after %v", waitTimeout)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				assert.NoError(t, err, "Run")
			case <-time.After(waitTimeout):
				t.Errorf("Run did not return %v after cancel", waitTimeout)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// addEntries appends entries i = from..to (field "i") to stream and returns
// their IDs.
func addEntries(t *testing.T, rdb *redis.ClusterClient, stream string, from, to int) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	for start := from; start <= to; start += 500 {
		pipe := rdb.Pipeline()
		var cmds []*redis.StringCmd
		for i := start; i < start+500 && i <= to; i++ {
			cmds = append(cmds, pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: map[string]any{"i": i}}))
		}
		_, err := pipe.Exec(ctx)
		require.NoError(t, err)
		for _, c := range cmds {
			ids = append(ids, c.Val())
		}
	}
	return ids
}

func readAll(t *testing.T, rdb *redis.ClusterClient, stream string) []redis.XMessage {
	t.Helper()
	ms, err := rdb.XRange(context.Background(), stream, "-", "+").Result()
	require.NoError(t, err)
	return ms
}

// fieldOf returns one field of every entry.
func fieldOf(t *testing.T, ms []redis.XMessage, field string) []string {
	t.Helper()
	vs := make([]string, len(ms))
	for i, m := range ms {
		v, ok := m.Values[field].(string)
		require.True(t, ok, "entry %s has no field %q: %v", m.ID, field, m.Values)
		vs[i] = v
	}
	return vs
}

func pendingCount(t *testing.T, rdb *redis.ClusterClient, stream string) int64 {
	t.Helper()
	p, err := rdb.XPending(context.Background(), stream, group).Result()
	require.NoError(t, err)
	return p.Count
}

// checkNoCrossSlotAtServers checks, on every node, that Redis never answered
// a command with a CROSSSLOT error (INFO errorstats).
func checkNoCrossSlotAtServers(t *testing.T, rdb *redis.ClusterClient) {
	t.Helper()
	err := rdb.ForEachShard(context.Background(), func(ctx context.Context, node *redis.Client) error {
		info, err := node.Info(ctx, "errorstats").Result()
		if err != nil {
			return err
		}
		if strings.Contains(info, "CROSSSLOT") {
			return fmt.Errorf("%s answered CROSSSLOT:\n%s", node.Options().Addr, info)
		}
		return nil
	})
	require.NoError(t, err)
}

// logErrorStats logs the errors each node answered with (INFO errorstats):
// after a failover, the MOVED redirections the clients followed.
func logErrorStats(t *testing.T, rdb *redis.ClusterClient) {
	t.Helper()
	var mu sync.Mutex
	err := rdb.ForEachShard(context.Background(), func(ctx context.Context, node *redis.Client) error {
		info, err := node.Info(ctx, "errorstats").Result()
		if err != nil {
			return err
		}
		var stats []string
		for _, line := range strings.Split(info, "\n") {
			if line = strings.TrimSpace(line); strings.HasPrefix(line, "errorstat_") {
				stats = append(stats, strings.TrimPrefix(line, "errorstat_"))
			}
		}
		mu.Lock()
		defer mu.Unlock()
		t.Logf("%s errors: %v", node.Options().Addr, stats)
		return nil
	})
	assert.NoError(t, err, "INFO errorstats")
}

// recorder is an Observer that keeps the events of every consumer of a
// test.
type recorder struct {
	t         *testing.T
	mu        sync.Mutex
	kinds     map[streamtx.EventKind]int
	errs      []string                        // EventError texts
	byKind    map[streamtx.EventKind][]string // IDs in order
	done      map[string]map[string]bool      // stream -> committed IDs
	total     int                             // committed IDs over all streams
	waiters   []waiter
	crossSlot []string
}

func newRecorder(t *testing.T) *recorder {
	return &recorder{
		t:      t,
		kinds:  make(map[streamtx.EventKind]int),
		byKind: make(map[streamtx.EventKind][]string),
		done:   make(map[string]map[string]bool),
	}
}

func (r *recorder) Observe(e streamtx.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kinds[e.Kind]++
	r.byKind[e.Kind] = append(r.byKind[e.Kind], e.IDs...)
	if e.Err != nil && strings.Contains(e.Err.Error(), "CROSSSLOT") {
		r.crossSlot = append(r.crossSlot, fmt.Sprintf("%s %s: %v", e.Consumer, e.Kind, e.Err))
	}
	switch e.Kind {
	case streamtx.EventError:
		r.errs = append(r.errs, fmt.Sprintf("%s/%s: %v", e.Stream, e.Consumer, e.Err))
	case streamtx.EventCommit:
		d := r.done[e.Stream]
		if d == nil {
			d = make(map[string]bool)
			r.done[e.Stream] = d
		}
		for _, id := range e.IDs {
			if d[id] {
				r.t.Errorf("%s: entry %s reported committed twice (by %s)", e.Stream, id, e.Consumer)
			} else {
				r.total++
			}
			d[id] = true
		}
		r.waiters = slices.DeleteFunc(r.waiters, func(w waiter) bool {
			if (w.stream == e.Stream && len(d) >= w.n) || (w.stream == "" && r.total >= w.n) {
				close(w.ch)
				return true
			}
			return false
		})
	}
}

// whenCommitted returns a channel closed once n entries of stream have been
// committed; stream "" counts the entries of every stream (the partitions of
// a topic).
func (r *recorder) whenCommitted(stream string, n int) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan struct{})
	if r.committedLocked(stream) >= n {
		close(ch)
		return ch
	}
	r.waiters = append(r.waiters, waiter{stream, n, ch})
	return ch
}

// waiter is a channel to close once n entries of stream (of every stream
// when "") have committed.
type waiter struct {
	stream string
	n      int
	ch     chan struct{}
}

// committed returns the number of entries of stream committed, of every
// stream when stream is "".
func (r *recorder) committed(stream string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.committedLocked(stream)
}

func (r *recorder) committedLocked(stream string) int {
	if stream == "" {
		return r.total
	}
	return len(r.done[stream])
}

// ids returns the IDs of every event of kind, sorted.
func (r *recorder) ids(kind streamtx.EventKind) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := append([]string(nil), r.byKind[kind]...)
	sort.Slice(ids, func(i, j int) bool { return lessID(ids[i], ids[j]) })
	return ids
}

// checkNoCrossSlot checks that no event carried a CROSSSLOT error from
// Redis.
func (r *recorder) checkNoCrossSlot(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	assert.Empty(t, r.crossSlot, "CROSSSLOT errors reached Redis")
}

// summary counts the events by kind and quotes the errors.
func (r *recorder) summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for k := streamtx.EventCommit; k <= streamtx.EventRevoked; k++ {
		fmt.Fprintf(&b, "%s=%d ", k, r.kinds[k])
	}
	const maxErrs = 20
	for i, e := range r.errs {
		if i == maxErrs {
			fmt.Fprintf(&b, "\n  ... %d more errors", len(r.errs)-maxErrs)
			break
		}
		fmt.Fprintf(&b, "\n  error: %s", e)
	}
	return b.String()
}

// lessID orders stream IDs numerically.
func lessID(a, b string) bool {
	am, as, _ := strings.Cut(a, "-")
	bm, bs, _ := strings.Cut(b, "-")
	if len(am) != len(bm) {
		return len(am) < len(bm)
	}
	if am != bm {
		return am < bm
	}
	if len(as) != len(bs) {
		return len(as) < len(bs)
	}
	return as < bs
}
