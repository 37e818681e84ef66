package otel_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/streamtx/streamtx"
	stxotel "github.com/streamtx/streamtx/contrib/otel"
	"github.com/streamtx/streamtx/txn"
)

// TestRelayForwardAndKeyedPublishKeepTheTrace: a handler's publish through
// the outbox (CrossSlotRelay) and a relay, and its tx.PublishKeyed to a
// topic's partition, both reach the next handler in the handler's trace —
// the forward as a child of the relay's process span, itself a child of the
// handler that published.
func TestRelayForwardAndKeyedPublishKeepTheTrace(t *testing.T) {
	rdb := redisClient(t)
	p := prefix(t, rdb)
	ctx := context.Background()
	orders, mail := p+"orders", p+"mail"
	audit := p + "audit"
	topic, err := streamtx.CreateTopic(ctx, rdb, audit, streamtx.TopicConfig{Partitions: 4})
	require.NoError(t, err)
	part := topic.Stream(topic.PartitionOf("o-1"))
	rec, opts := recorder()

	// The first handler publishes to mail through the outbox, and keyed to
	// the audit topic.
	cfgA := consumerConfig(orders, "billing", "billing-1")
	cfgA.CrossSlot = streamtx.CrossSlotRelay
	require.NoError(t, stxotel.InstrumentConsumer(&cfgA, opts...))
	a, err := streamtx.NewConsumer(rdb, cfgA, streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if err := tx.Publish(mail, map[string]any{"order": msg.Values["order"]}); err != nil {
			return err
		}
		return tx.PublishKeyed(audit, msg.Values["order"], map[string]any{"order": msg.Values["order"]})
	}))
	require.NoError(t, err)
	rcfg := streamtx.RelayConfig{Stream: orders, Group: "billing", Consumer: "relay-1", Block: 20 * time.Millisecond}
	require.NoError(t, stxotel.InstrumentRelay(&rcfg, opts...))
	relay, err := streamtx.NewRelay(rdb, rcfg)
	require.NoError(t, err)

	got := make(chan trace.SpanContext, 2)
	reader := func(stream, name string) *streamtx.Consumer {
		cfg := consumerConfig(stream, "readers", name)
		require.NoError(t, stxotel.InstrumentConsumer(&cfg, opts...))
		c, err := streamtx.NewConsumer(rdb, cfg, streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
			got <- trace.SpanContextFromContext(ctx)
			return nil
		}))
		require.NoError(t, err)
		return c
	}
	stops := []func(){run(t, a), run(t, relay), run(t, reader(mail, "mail-1")), run(t, reader(part, "audit-1"))}

	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	rctx, root := tp.Tracer("test").Start(ctx, "request")
	pcfg := streamtx.ProducerConfig{}
	stxotel.InstrumentProducer(&pcfg, opts...)
	prod, err := streamtx.NewProducer(rdb, pcfg)
	require.NoError(t, err)
	_, err = prod.Publish(rctx, orders, map[string]any{"order": "o-1"})
	require.NoError(t, err)
	root.End()
	for range 2 {
		select {
		case sc := <-got:
			assert.Equal(t, root.SpanContext().TraceID(), sc.TraceID(), "a downstream handler runs in the request's trace")
		case <-time.After(15 * time.Second):
			t.Fatal("a downstream handler did not run")
		}
	}
	for _, stop := range stops {
		stop()
	}

	tid := root.SpanContext().TraceID()
	procA := spans(rec, "process "+orders)
	require.Len(t, procA, 1)
	pa := procA[0]
	require.Equal(t, tid, pa.SpanContext().TraceID())

	outbox, err := streamtx.OutboxStream(orders, "billing")
	require.NoError(t, err)
	// Both publishes are in other slots than orders, so both went through
	// the outbox: the relay forwarded each in a process span, a child of
	// the handler's.
	procRelay := spans(rec, "process "+outbox)
	require.Len(t, procRelay, 2)
	relaySpans := map[trace.SpanID]bool{}
	for _, pr := range procRelay {
		assert.Equal(t, tid, pr.SpanContext().TraceID())
		assert.Equal(t, pa.SpanContext().SpanID(), pr.Parent().SpanID(), "the outbox entry carries the handler's span")
		relaySpans[pr.SpanContext().SpanID()] = true
	}
	for _, stream := range []string{mail, part} {
		proc := spans(rec, "process "+stream)
		require.Len(t, proc, 1, stream)
		assert.Equal(t, tid, proc[0].SpanContext().TraceID(), stream)
		assert.True(t, relaySpans[proc[0].Parent().SpanID()], "%s: the forward carries the relay's span", stream)
	}
}

// With no tracer provider and no propagator set (OTel's defaults), the
// Instrument functions leave Tracing nil: the consumer adds no work per
// entry. Given a provider, they set it.
func TestInstrumentWithoutProviderAddsNoTracing(t *testing.T) {
	var cfg streamtx.Config
	require.NoError(t, stxotel.InstrumentConsumer(&cfg))
	assert.Nil(t, cfg.Tracing)
	var pcfg streamtx.ProducerConfig
	stxotel.InstrumentProducer(&pcfg)
	assert.Nil(t, pcfg.Tracing)
	var rcfg streamtx.RelayConfig
	require.NoError(t, stxotel.InstrumentRelay(&rcfg))
	assert.Nil(t, rcfg.Tracing)

	_, opts := recorder()
	require.NoError(t, stxotel.InstrumentConsumer(&cfg, opts...))
	assert.NotNil(t, cfg.Tracing)
}
