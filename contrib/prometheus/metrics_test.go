package prometheus_test

import (
	"context"
	"errors"
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
