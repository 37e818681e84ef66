package prometheus_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	stxprom "github.com/streamtx/streamtx/contrib/prometheus"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

func events(stream, group, consumer string) []streamtx.Event {
	ev := func(k streamtx.EventKind, ids ...string) streamtx.Event {
		return streamtx.Event{Kind: k, Stream: stream, Group: group, Consumer: consumer, IDs: ids}
	}
	commit := ev(streamtx.EventCommit, "1-0", "2-0", "3-0")
	commit.Duration = 3 * time.Millisecond
	commit2 := ev(streamtx.EventCommit, "4-0")
	commit2.Duration = 2 * time.Second
	return []streamtx.Event{
		commit, commit2,
		ev(streamtx.EventConflict, "5-0", "6-0"), // one refused commit
		ev(streamtx.EventFenced, "5-0", "6-0"),   // two entries
		ev(streamtx.EventRetry, "7-0"),
		ev(streamtx.EventRetry, "7-0"),
		ev(streamtx.EventDeadLetter, "7-0"),
		ev(streamtx.EventClaim, "8-0", "9-0", "10-0"),
		ev(streamtx.EventError),
		ev(streamtx.EventError, "11-0", "12-0"), // one error
		ev(streamtx.EventKind(99), "13-0"),      // unknown: ignored
	}
}

const wantCounters = `
# HELP streamtx_claims_total Entries claimed from consumers idle past the claim threshold.
# TYPE streamtx_claims_total counter
streamtx_claims_total{group="g",stream="s"} 3
# HELP streamtx_conflicts_total Commits refused because a state record changed since the handler read it; the handlers ran again.
# TYPE streamtx_conflicts_total counter
streamtx_conflicts_total{group="g",stream="s"} 1
# HELP streamtx_dead_letters_total Entries moved to the dead-letter stream.
# TYPE streamtx_dead_letters_total counter
streamtx_dead_letters_total{group="g",stream="s"} 1
# HELP streamtx_entries_committed_total Entries committed: their state changes, publishes and acknowledgement applied together.
# TYPE streamtx_entries_committed_total counter
streamtx_entries_committed_total{group="g",stream="s"} 4
# HELP streamtx_errors_total Operational errors: failed reads, commits of unknown outcome, dead letters that could not be written.
# TYPE streamtx_errors_total counter
streamtx_errors_total{group="g",stream="s"} 2
# HELP streamtx_fenced_total Entries whose commit or dead-lettering was refused because the consumer no longer owned them.
# TYPE streamtx_fenced_total counter
streamtx_fenced_total{group="g",stream="s"} 2
# HELP streamtx_retries_total Handler failures after which the entry is retried.
# TYPE streamtx_retries_total counter
streamtx_retries_total{group="g",stream="s"} 2
`

var counterNames = []string{
	"streamtx_entries_committed_total", "streamtx_conflicts_total", "streamtx_fenced_total",
	"streamtx_retries_total", "streamtx_dead_letters_total", "streamtx_claims_total", "streamtx_errors_total",
}

func TestMetricsCountEvents(t *testing.T) {
	t.Parallel()
	m := stxprom.NewMetrics(stxprom.Options{})
	for _, e := range events("s", "g", "c1") {
		m.Observe(e)
	}
	require.NoError(t, testutil.CollectAndCompare(m, strings.NewReader(wantCounters), counterNames...))

	h := histogram(t, m, "streamtx_commit_duration_seconds", map[string]string{"stream": "s", "group": "g"})
	assert.Equal(t, uint64(2), h.GetSampleCount())
	assert.InDelta(t, 2.003, h.GetSampleSum(), 1e-9)

	problems, err := testutil.CollectAndLint(m)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

func TestMetricsConsumerLabel(t *testing.T) {
	t.Parallel()
	m := stxprom.NewMetrics(stxprom.Options{ConsumerLabel: true, Namespace: "app", ConstLabels: prometheus.Labels{"service": "billing"}})
	for _, e := range events("s", "g", "c1") {
		m.Observe(e)
	}
	m.Observe(streamtx.Event{Kind: streamtx.EventCommit, Stream: "s", Group: "g", Consumer: "c2", IDs: []string{"20-0"}})
	assert.Equal(t, 4.0, counter(t, m, "app_entries_committed_total", map[string]string{"consumer": "c1", "stream": "s", "group": "g"}))
	assert.Equal(t, 1.0, counter(t, m, "app_entries_committed_total", map[string]string{"consumer": "c2"}))
	h := histogram(t, m, "app_commit_duration_seconds", map[string]string{"consumer": "c2", "service": "billing"})
	assert.Equal(t, uint64(1), h.GetSampleCount())
}

func TestMetricsInvalidUTF8Labels(t *testing.T) {
	t.Parallel()
	m := stxprom.NewMetrics(stxprom.Options{ConsumerLabel: true})
	require.NotPanics(t, func() {
		m.Observe(streamtx.Event{Kind: streamtx.EventCommit, Stream: "s\xff", Group: "g\xfe", Consumer: "c\xfd", IDs: []string{"1-0"}})
		m.InstrumentHandler(streamtx.HandlerFunc(func(context.Context, *streamtx.Message, *txn.Tx) error { return nil }), "s\xff", "g")
	})
	assert.Equal(t, 1, testutil.CollectAndCount(m, "streamtx_entries_committed_total"))
}

func TestInstrumentHandler(t *testing.T) {
	t.Parallel()
	m := stxprom.NewMetrics(stxprom.Options{})
	boom := errors.New("boom")
	calls := 0
	inner := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		calls++
		switch msg.Values["do"] {
		case "fail":
			return boom
		case "panic":
			panic("handler panic")
		}
		return nil
	})
	h := m.Middleware("s", "g")(inner)
	ctx, tx := context.Background(), new(txn.Tx) // the middleware only passes it on
	require.NoError(t, h.Handle(ctx, &streamtx.Message{Values: map[string]string{}}, tx))
	require.ErrorIs(t, h.Handle(ctx, &streamtx.Message{Values: map[string]string{"do": "fail"}}, tx), boom)
	require.PanicsWithValue(t, "handler panic", func() {
		h.Handle(ctx, &streamtx.Message{Values: map[string]string{"do": "panic"}}, tx)
	}, "the panic goes on to the consumer")
	assert.Equal(t, 3, calls)

	got := histogram(t, m, "streamtx_handler_duration_seconds", map[string]string{"stream": "s", "group": "g"})
	assert.Equal(t, uint64(3), got.GetSampleCount(), "every call is timed")
	other := m.InstrumentHandler(inner, "s2", "g")
	require.NoError(t, other.Handle(ctx, &streamtx.Message{Values: map[string]string{}}, tx))
	assert.Equal(t, 2, testutil.CollectAndCount(m, "streamtx_handler_duration_seconds"))
}

// TestMetricsWithConsumer runs a consumer on miniredis with Metrics as its
// Observer and an instrumented handler.
func TestMetricsWithConsumer(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	for _, amount := range []string{"1", "2", "x", "4"} {
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: "orders", Values: []any{"amount", amount}}).Err())
	}

	m := stxprom.NewMetrics(stxprom.Options{})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(m))
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if msg.Values["amount"] == "x" {
			return streamtx.Permanent(errors.New("bad amount"))
		}
		return nil
	})
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream: "orders", Group: "billing", Consumer: "c1", Block: 10 * time.Millisecond, Observer: m,
	}, m.InstrumentHandler(h, "orders", "billing"))
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	deadline := time.Now().Add(10 * time.Second)
	for counter(t, m, "streamtx_entries_committed_total", nil) < 3 ||
		counter(t, m, "streamtx_dead_letters_total", nil) < 1 {
		require.True(t, time.Now().Before(deadline), "the consumer did not commit 3 entries and dead-letter 1 within 10s")
		time.Sleep(5 * time.Millisecond) // polling the counters
	}
	cancel()
	require.NoError(t, <-done)

	mfs, err := reg.Gather()
	require.NoError(t, err)
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"streamtx_entries_committed_total", "streamtx_dead_letters_total", "streamtx_commit_duration_seconds", "streamtx_handler_duration_seconds"} {
		assert.True(t, names[n], "%s gathered", n)
	}
	hd := histogram(t, m, "streamtx_handler_duration_seconds", map[string]string{"stream": "orders", "group": "billing"})
	assert.Equal(t, uint64(4), hd.GetSampleCount())
}

// TestMetricsWithTopicConsumer runs consumers of a topic on Redis with
// Metrics as their Observer: the assignment gauge follows the partitions as
// they move, and the entries committed are counted under the topic's name.
func TestMetricsWithTopicConsumer(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	pre := redistest.Prefix(t, rdb)
	ctx := context.Background()
	name := pre + "orders"
	_, err := streamtx.CreateTopic(ctx, rdb, name, streamtx.TopicConfig{Partitions: 2})
	require.NoError(t, err)
	p, err := streamtx.NewProducer(rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)
	const n = 20
	for i := range n {
		_, err := p.PublishKeyed(ctx, name, "key-"+strconv.Itoa(i), map[string]any{"i": i})
		require.NoError(t, err)
	}

	m := stxprom.NewMetrics(stxprom.Options{})
	h := streamtx.HandlerFunc(func(context.Context, *streamtx.Message, *txn.Tx) error { return nil })
	start := func(consumer string) (stop func() error) {
		c, err := streamtx.NewConsumer(rdb, streamtx.Config{
			Topic: name, Group: "billing", Consumer: consumer, Observer: m,
			Block: 10 * time.Millisecond, LeaseTTL: 600 * time.Millisecond, Heartbeat: 100 * time.Millisecond,
		}, m.InstrumentHandler(h, name, "billing"))
		require.NoError(t, err)
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(runCtx) }()
		t.Cleanup(cancel)
		return func() error { cancel(); return <-done }
	}
	owned := func(consumer string) int {
		return len(series(t, m, "streamtx_partition_assigned", map[string]string{"topic": name, "group": "billing", "consumer": consumer}))
	}

	stop1 := start("c1")
	waitFor(t, 10*time.Second, "c1 commits every entry and owns both partitions", func() bool {
		return counter(t, m, "streamtx_entries_committed_total", nil) == n && owned("c1") == 2
	})
	assert.Equal(t, float64(n), counter(t, m, "streamtx_entries_committed_total", map[string]string{"stream": name, "group": "billing"}))
	assert.Equal(t, 1, testutil.CollectAndCount(m, "streamtx_entries_committed_total"), "one series for the topic, not one per partition")
	for _, part := range []string{"0", "1"} {
		labels := map[string]string{"topic": name, "group": "billing", "consumer": "c1", "partition": part}
		assert.Equal(t, 1.0, gauge(t, m, "streamtx_partition_assigned", labels))
	}

	stop2 := start("c2")
	waitFor(t, 10*time.Second, "c1 hands a partition over to c2", func() bool {
		return owned("c1") == 1 && owned("c2") == 1
	})
	assert.GreaterOrEqual(t, counter(t, m, "streamtx_partition_revocations_total", map[string]string{"reason": "handover"}), 1.0)

	require.NoError(t, stop1())
	require.NoError(t, stop2())
	assert.Zero(t, testutil.CollectAndCount(m, "streamtx_partition_assigned"), "the consumers stopped: nothing owned")
	assert.Equal(t, counter(t, m, "streamtx_partition_assignments_total", nil), counter(t, m, "streamtx_partition_revocations_total", nil),
		"every assignment revoked")
	assert.Zero(t, counter(t, m, "streamtx_partition_revocations_total", map[string]string{"reason": "lease_lost"}))
}

// series gathers c and returns the series of name whose labels include
// labels.
func series(t *testing.T, c prometheus.Collector, name string, labels map[string]string) []*dto.Metric {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var found []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				if label(m, k) != v {
					continue metrics
				}
			}
			found = append(found, m)
		}
	}
	return found
}

// counter returns the sum of the counter series of name with labels; 0 when
// there is none.
func counter(t *testing.T, c prometheus.Collector, name string, labels map[string]string) float64 {
	t.Helper()
	var sum float64
	for _, m := range series(t, c, name, labels) {
		sum += m.GetCounter().GetValue()
	}
	return sum
}

// histogram returns the one histogram series of name with labels.
func histogram(t *testing.T, c prometheus.Collector, name string, labels map[string]string) *dto.Histogram {
	t.Helper()
	found := series(t, c, name, labels)
	require.Len(t, found, 1, "histogram %s%v", name, labels)
	return found[0].GetHistogram()
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

type hiddenState struct {
	N      int
	secret int //nolint:unused // what the consumer's check must still find
}

type countState struct{ N int }

// InstrumentHandler, even twice, does not hide a Stateful or Keyed handler
// from the consumer: the state type is still checked, and Keyed's key still
// drives Parallelism's lanes.
func TestInstrumentHandlerTwiceKeepsTheHandlerVisible(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m := stxprom.NewMetrics(stxprom.Options{})
	twice := func(h streamtx.Handler) streamtx.Handler {
		return m.InstrumentHandler(m.InstrumentHandler(h, "s", "g"), "s", "g")
	}
	key := func(msg *streamtx.Message) string { return msg.Values["k"] }
	cfg := streamtx.Config{Stream: "s", Group: "g", Consumer: "c", Parallelism: 4}

	_, err := streamtx.NewConsumer(rdb, cfg, twice(streamtx.Keyed("k", key,
		func(context.Context, *streamtx.Message, *countState, *txn.Tx) error { return nil })))
	require.NoError(t, err, "Keyed's key function is found through the wrappers")

	for _, h := range []streamtx.Handler{
		streamtx.Stateful("h", func(context.Context, *streamtx.Message, *hiddenState, *txn.Tx) error { return nil }),
		streamtx.Keyed("h", key, func(context.Context, *streamtx.Message, *hiddenState, *txn.Tx) error { return nil }),
	} {
		_, err := streamtx.NewConsumer(rdb, streamtx.Config{Stream: "s", Group: "g", Consumer: "c"}, twice(h))
		require.ErrorIs(t, err, streamtx.ErrConfig)
		require.ErrorContains(t, err, "secret")
	}
}

// partitionEvent is an event of partition p of the topic "orders" in the
// group "billing", as a consumer of the topic reports it.
func partitionEvent(k streamtx.EventKind, consumer string, p int, err error, ids ...string) streamtx.Event {
	return streamtx.Event{
		Kind: k, Stream: fmt.Sprintf("orders:{orders.p%d}", p), Group: "billing", Consumer: consumer,
		Partition: p, Err: err, IDs: ids,
	}
}

const wantPartitions = `
# HELP streamtx_entries_committed_total Entries committed: their state changes, publishes and acknowledgement applied together.
# TYPE streamtx_entries_committed_total counter
streamtx_entries_committed_total{group="billing",stream="orders"} 4
streamtx_entries_committed_total{group="billing",stream="payments"} 1
# HELP streamtx_fenced_total Entries whose commit or dead-lettering was refused because the consumer no longer owned them.
# TYPE streamtx_fenced_total counter
streamtx_fenced_total{group="billing",stream="orders"} 1
# HELP streamtx_partition_assigned 1 while the consumer owns the topic partition (more while several of its running instances do); the series goes when it stops owning it.
# TYPE streamtx_partition_assigned gauge
streamtx_partition_assigned{consumer="c1",group="billing",partition="0",topic="orders"} 1
streamtx_partition_assigned{consumer="c2",group="billing",partition="1",topic="orders"} 1
streamtx_partition_assigned{consumer="c2",group="billing",partition="3",topic="payments"} 1
# HELP streamtx_partition_assignments_total Topic partitions a consumer acquired.
# TYPE streamtx_partition_assignments_total counter
streamtx_partition_assignments_total{group="billing",topic="orders"} 4
streamtx_partition_assignments_total{group="billing",topic="payments"} 1
# HELP streamtx_partition_revocations_total Topic partitions a consumer stopped consuming, by reason: handover (released to another member), lease_lost (lost without handing it over), other.
# TYPE streamtx_partition_revocations_total counter
streamtx_partition_revocations_total{group="billing",reason="handover",topic="orders"} 1
streamtx_partition_revocations_total{group="billing",reason="lease_lost",topic="orders"} 1
streamtx_partition_revocations_total{group="billing",reason="other",topic="orders"} 1
`

// TestMetricsPartitionEvents feeds the events of a topic's consumers to
// Metrics: the assignment gauge follows EventAssigned and EventRevoked, the
// revocations are counted by reason, and the event counters label the
// partitions' events with the topic's name, all partitions together.
func TestMetricsPartitionEvents(t *testing.T) {
	t.Parallel()
	m := stxprom.NewMetrics(stxprom.Options{})
	lost := fmt.Errorf("streamtx: partition 2: %w", streamtx.ErrLeaseLost)
	colocated := streamtx.Event{ // partition 3 of "payments", co-located with "orders"
		Kind: streamtx.EventAssigned, Stream: "payments:{orders.p3}", Group: "billing", Consumer: "c2", Partition: 3,
	}
	for _, e := range []streamtx.Event{
		partitionEvent(streamtx.EventAssigned, "c1", 0, nil),
		partitionEvent(streamtx.EventAssigned, "c1", 1, nil),
		partitionEvent(streamtx.EventAssigned, "c2", 2, nil),
		partitionEvent(streamtx.EventCommit, "c1", 0, nil, "1-0", "2-0"),
		partitionEvent(streamtx.EventCommit, "c1", 1, nil, "1-0"),
		partitionEvent(streamtx.EventCommit, "c2", 2, nil, "3-0"),
		partitionEvent(streamtx.EventFenced, "c2", 2, lost, "4-0"),
		partitionEvent(streamtx.EventRevoked, "c1", 1, nil), // handed over to c2
		partitionEvent(streamtx.EventAssigned, "c2", 1, nil),
		partitionEvent(streamtx.EventRevoked, "c2", 2, lost),
		partitionEvent(streamtx.EventRevoked, "c3", 5, errors.New("something else")), // never seen assigned
		colocated,
		{Kind: streamtx.EventCommit, Stream: colocated.Stream, Group: "billing", Consumer: "c2", Partition: 3, IDs: []string{"9-0"}},
		// Without a partition, an assignment says nothing: ignored.
		{Kind: streamtx.EventAssigned, Group: "billing", Consumer: "c4", Partition: -1},
		{Kind: streamtx.EventRevoked, Group: "billing", Consumer: "c1", Partition: -1},
	} {
		m.Observe(e)
	}
	require.NoError(t, testutil.CollectAndCompare(m, strings.NewReader(wantPartitions),
		"streamtx_entries_committed_total", "streamtx_fenced_total", "streamtx_partition_assigned",
		"streamtx_partition_assignments_total", "streamtx_partition_revocations_total"))
	h := histogram(t, m, "streamtx_commit_duration_seconds", map[string]string{"stream": "orders", "group": "billing"})
	assert.Equal(t, uint64(3), h.GetSampleCount(), "one commit histogram for the topic's partitions")

	problems, err := testutil.CollectAndLint(m)
	require.NoError(t, err)
	assert.Empty(t, problems)

	// Every partition revoked: no assignment series is left.
	for _, e := range []streamtx.Event{
		partitionEvent(streamtx.EventRevoked, "c1", 0, nil),
		partitionEvent(streamtx.EventRevoked, "c2", 1, nil),
		{Kind: streamtx.EventRevoked, Stream: colocated.Stream, Group: "billing", Consumer: "c2", Partition: 3},
	} {
		m.Observe(e)
	}
	assert.Zero(t, testutil.CollectAndCount(m, "streamtx_partition_assigned"))
	assert.Equal(t, 6.0, counter(t, m, "streamtx_partition_revocations_total", nil))
}

// Two running instances of one consumer may own a partition at once, for a
// moment (one lost its lease and has not noticed yet): the first to let go
// does not remove the series.
func TestMetricsPartitionOwnedTwice(t *testing.T) {
	t.Parallel()
	m := stxprom.NewMetrics(stxprom.Options{ConsumerLabel: true})
	labels := map[string]string{"topic": "orders", "group": "billing", "consumer": "c1", "partition": "4"}
	assigned := func() []*dto.Metric { return series(t, m, "streamtx_partition_assigned", labels) }

	m.Observe(partitionEvent(streamtx.EventAssigned, "c1", 4, nil))
	m.Observe(partitionEvent(streamtx.EventAssigned, "c1", 4, nil))
	require.Len(t, assigned(), 1)
	assert.Equal(t, 2.0, assigned()[0].GetGauge().GetValue())

	m.Observe(partitionEvent(streamtx.EventRevoked, "c1", 4, streamtx.ErrLeaseLost))
	require.Len(t, assigned(), 1)
	assert.Equal(t, 1.0, assigned()[0].GetGauge().GetValue())

	m.Observe(partitionEvent(streamtx.EventRevoked, "c1", 4, nil))
	assert.Empty(t, assigned())

	// With ConsumerLabel, the partition counters have it too.
	assert.Equal(t, 2.0, counter(t, m, "streamtx_partition_assignments_total", map[string]string{"consumer": "c1", "topic": "orders"}))
	assert.Equal(t, 1.0, counter(t, m, "streamtx_partition_revocations_total", map[string]string{"consumer": "c1", "reason": "lease_lost"}))
	assert.Equal(t, 1.0, counter(t, m, "streamtx_partition_revocations_total", map[string]string{"consumer": "c1", "reason": "handover"}))
}
