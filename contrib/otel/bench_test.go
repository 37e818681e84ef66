package otel_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/streamtx/streamtx"
	stxotel "github.com/streamtx/streamtx/contrib/otel"
	"github.com/streamtx/streamtx/txn"
)

// BenchmarkConsumerTracing measures entries/s of one consumer (a handler
// that publishes one entry with tx.Publish) without tracing, instrumented
// with no tracer provider set (OTel's global no-op one), and with every span
// sampled and exported (to a no-op exporter, through the SDK's batch
// processor), side by side:
//
//	REDIS_ADDR=127.0.0.1:6379 go test -run '^$' -bench ConsumerTracing -benchtime 20000x -count 3 .
func BenchmarkConsumerTracing(b *testing.B) {
	for _, batch := range []int{1, 100} {
		for _, mode := range []string{"off", "noop", "on"} {
			name := fmt.Sprintf("batch=%d/tracing=%s", batch, mode)
			b.Run(name, func(b *testing.B) { benchConsumer(b, batch, mode) })
		}
	}
}

func benchConsumer(b *testing.B, batch int, mode string) {
	traced := mode == "on"
	rdb := redisClient(b)
	p := prefix(b, rdb)
	in, out := p+"in", p+"out"
	ctx := context.Background()
	cfg := streamtx.Config{Stream: in, Group: "g", Consumer: "c", BatchSize: batch, Block: 20 * time.Millisecond}
	var prod *streamtx.Producer
	pcfg := streamtx.ProducerConfig{}
	if traced {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		b.Cleanup(func() { tp.Shutdown(ctx) })
		tr := stxotel.NewTracing(stxotel.WithTracerProvider(tp),
			stxotel.WithPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})))
		cfg.Tracing, pcfg.Tracing = tr, tr
	}
	if mode == "noop" {
		// Instrumented, with no tracer provider or propagator set.
		if err := stxotel.InstrumentConsumer(&cfg); err != nil {
			b.Fatal(err)
		}
		cfg.Middleware, cfg.Observer = nil, nil // tracing only: metrics are not this benchmark's
	}
	prod, err := streamtx.NewProducer(rdb, pcfg)
	if err != nil {
		b.Fatal(err)
	}
	// The entries are published before the clock starts (by the Producer,
	// so that traced ones carry a trace context), in pipelines of 1,000.
	for i := 0; i < b.N; {
		pipe := rdb.Pipeline()
		for j := 0; j < 1000 && i < b.N; j, i = j+1, i+1 {
			if traced {
				if _, err := prod.Publish(ctx, in, map[string]any{"n": i}); err != nil {
					b.Fatal(err)
				}
				continue
			}
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: in, Values: map[string]any{"n": i}})
		}
		if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil && pipe.Len() > 0 {
			b.Fatal(err)
		}
	}
	var committed atomic.Int64
	done := make(chan struct{})
	cfg.Observer = streamtx.ObserverFunc(func(e streamtx.Event) {
		if e.Kind == streamtx.EventCommit && committed.Add(int64(len(e.IDs))) == int64(b.N) {
			close(done)
		}
	})
	c, err := streamtx.NewConsumer(rdb, cfg, streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		return tx.Publish(out, map[string]any{"n": msg.Values["n"]})
	}))
	if err != nil {
		b.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	errc := make(chan error, 1)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	go func() { errc <- c.Run(rctx) }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatal("not all entries committed")
	}
	elapsed := time.Since(start)
	b.StopTimer()
	stop()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "entries/s")
}
