package otel_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/streamtx/streamtx"
	stxotel "github.com/streamtx/streamtx/contrib/otel"
	"github.com/streamtx/streamtx/txn"
)

// sumOf returns the sum of the counter name over its points in rm.
func sumOf(t *testing.T, rm metricdata.ResourceMetrics, name string) int64 {
	t.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			var n int64
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				n += dp.Value
			}
			return n
		}
	}
	return 0
}

func histogramOf(rm metricdata.ResourceMetrics, name string) []metricdata.HistogramDataPoint[float64] {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m.Data.(metricdata.Histogram[float64]).DataPoints
			}
		}
	}
	return nil
}

func gaugeOf[N int64 | float64](rm metricdata.ResourceMetrics, name string) []metricdata.DataPoint[N] {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m.Data.(metricdata.Gauge[N]).DataPoints
			}
		}
	}
	return nil
}

// TestMetricsMatchObserver runs an instrumented consumer over entries that
// commit, retry and dead-letter, and reads the metrics back from a manual
// reader: they match what the consumer reported to a second Observer.
func TestMetricsMatchObserver(t *testing.T) {
	rdb := redisClient(t)
	p := prefix(t, rdb)
	orders := p + "orders"
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	var mu sync.Mutex
	counts := map[streamtx.EventKind]int{}
	entries := map[streamtx.EventKind]int{}
	cfg := consumerConfig(orders, "billing", "billing-1")
	cfg.BatchSize = 10
	cfg.MaxDeliveries = 3
	cfg.Observer = streamtx.ObserverFunc(func(e streamtx.Event) {
		mu.Lock()
		defer mu.Unlock()
		counts[e.Kind]++
		entries[e.Kind] += len(e.IDs)
	})
	require.NoError(t, stxotel.InstrumentConsumer(&cfg, stxotel.WithMeterProvider(mp)))
	var calls sync.Map
	c, err := streamtx.NewConsumer(rdb, cfg, streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		n, _ := calls.LoadOrStore(msg.ID, new(int))
		*n.(*int)++
		switch msg.Values["kind"] {
		case "poison":
			return errors.New("always fails")
		case "flaky":
			if *n.(*int) == 1 {
				return errors.New("fails once")
			}
		}
		return nil
	}))
	require.NoError(t, err)
	for i := range 20 {
		kind := "ok"
		switch i {
		case 3:
			kind = "poison"
		case 7, 11:
			kind = "flaky"
		}
		require.NoError(t, rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: orders, Values: map[string]any{"kind": kind}}).Err())
	}
	stop := run(t, c)
	waitFor(t, 20*time.Second, "19 commits and a dead letter", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return entries[streamtx.EventCommit] == 19 && counts[streamtx.EventDeadLetter] == 1
	})
	stop()

	m, err := stxotel.NewMetrics(stxotel.WithMeterProvider(mp))
	require.NoError(t, err)
	reg, err := m.RegisterGroupStats(stxotel.InspectStreams(rdb, orders))
	require.NoError(t, err)
	defer reg.Unregister()
	// Two entries more, unread: a lag of 2.
	for range 2 {
		require.NoError(t, rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: orders, Values: map[string]any{"kind": "late"}}).Err())
	}

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, int64(entries[streamtx.EventCommit]), sumOf(t, rm, "streamtx.entries.committed"))
	assert.Equal(t, int64(entries[streamtx.EventRetry]), sumOf(t, rm, "streamtx.retries"))
	assert.Equal(t, int64(4), sumOf(t, rm, "streamtx.retries"), "poison twice, the flaky ones once each")
	assert.Equal(t, int64(1), sumOf(t, rm, "streamtx.dead_letters"))
	assert.Equal(t, int64(counts[streamtx.EventConflict]), sumOf(t, rm, "streamtx.conflicts"))
	assert.Equal(t, int64(entries[streamtx.EventFenced]), sumOf(t, rm, "streamtx.fenced"))
	assert.Equal(t, int64(counts[streamtx.EventError]), sumOf(t, rm, "streamtx.errors"))

	commits := histogramOf(rm, "messaging.client.operation.duration")
	require.Len(t, commits, 1)
	assert.Equal(t, uint64(counts[streamtx.EventCommit]), commits[0].Count)
	want := attribute.NewSet(
		attribute.String("messaging.system", "redis"),
		attribute.String("messaging.destination.name", orders),
		attribute.String("messaging.consumer.group.name", "billing"),
		attribute.String("messaging.operation.name", "settle"),
		attribute.String("messaging.operation.type", "settle"),
	)
	assert.Equal(t, want, commits[0].Attributes)

	var handled uint64
	var failed uint64
	for _, dp := range histogramOf(rm, "messaging.process.duration") {
		handled += dp.Count
		if _, ok := dp.Attributes.Value("error.type"); ok {
			failed += dp.Count
		}
	}
	var runs int
	calls.Range(func(_, v any) bool { runs += *v.(*int); return true })
	assert.Equal(t, uint64(runs), handled, "every handler call timed")
	assert.Equal(t, uint64(5), failed, "poison three times, the flaky ones once each")

	info, err := streamtx.Inspect(context.Background(), rdb, orders)
	require.NoError(t, err)
	lag := gaugeOf[int64](rm, "streamtx.group.lag")
	require.Len(t, lag, 1)
	assert.Equal(t, info.Groups[0].Lag, lag[0].Value)
	assert.Equal(t, int64(2), lag[0].Value)
	pending := gaugeOf[int64](rm, "streamtx.group.pending")
	require.Len(t, pending, 1)
	assert.Equal(t, int64(0), pending[0].Value)
	age := gaugeOf[float64](rm, "streamtx.group.oldest_pending.age")
	require.Len(t, age, 1)
	assert.Equal(t, 0.0, age[0].Value)
}
