package otel_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/streamtx/streamtx"
	stxotel "github.com/streamtx/streamtx/contrib/otel"
	"github.com/streamtx/streamtx/txn"
)

// run starts c and stops it when the test ends (or when the returned stop is
// called), failing the test if Run failed.
func run(t *testing.T, c *streamtx.Consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case <-c.Done():
		t.Fatalf("Run: %v", c.Err())
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func consumerConfig(stream, group, name string) streamtx.Config {
	return streamtx.Config{Stream: stream, Group: group, Consumer: name, Block: 20 * time.Millisecond,
		Backoff: func(*streamtx.Message, error) time.Duration { return time.Millisecond }}
}

// spans returns the ended spans named name.
func spans(rec *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, k attribute.Key) attribute.Value {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value
		}
	}
	return attribute.Value{}
}

func linkedTo(s sdktrace.ReadOnlySpan, sc trace.SpanContext) bool {
	for _, l := range s.Links() {
		if l.SpanContext.SpanID() == sc.SpanID() && l.SpanContext.TraceID() == sc.TraceID() {
			return true
		}
	}
	return false
}

// TestOneTraceFromProducerThroughTwoHandlers follows one order: the producer
// publishes it, the first consumer's handler publishes a receipt with
// tx.Publish, and a second consumer handles the receipt — one trace, each
// span a child of the one before, with the conventions' links and attributes.
func TestOneTraceFromProducerThroughTwoHandlers(t *testing.T) {
	rdb := redisClient(t)
	p := prefix(t, rdb)
	orders, receipts := p+"orders", p+"receipts"
	rec, opts := recorder()

	pcfg := streamtx.ProducerConfig{}
	stxotel.InstrumentProducer(&pcfg, opts...)
	prod, err := streamtx.NewProducer(rdb, pcfg)
	require.NoError(t, err)

	cfgA := consumerConfig(orders, "billing", "billing-1")
	require.NoError(t, stxotel.InstrumentConsumer(&cfgA, opts...))
	a, err := streamtx.NewConsumer(rdb, cfgA, streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		return tx.Publish(receipts, map[string]any{"order": msg.Values["order"]})
	}))
	require.NoError(t, err)

	type seen struct {
		sc  trace.SpanContext
		bag string
	}
	got := make(chan seen, 1)
	cfgB := consumerConfig(receipts, "mail", "mail-1")
	require.NoError(t, stxotel.InstrumentConsumer(&cfgB, opts...))
	b, err := streamtx.NewConsumer(rdb, cfgB, streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		got <- seen{trace.SpanContextFromContext(ctx), baggage.FromContext(ctx).Member("tenant").Value()}
		return nil
	}))
	require.NoError(t, err)
	stopA, stopB := run(t, a), run(t, b)

	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	member, _ := baggage.NewMember("tenant", "acme")
	bag, _ := baggage.New(member)
	ctx, root := tp.Tracer("test").Start(baggage.ContextWithBaggage(context.Background(), bag), "request")
	id, err := prod.Publish(ctx, orders, map[string]any{"order": "o-1"})
	require.NoError(t, err)
	root.End()

	var s seen
	select {
	case s = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the second handler did not run")
	}
	assert.Equal(t, "acme", s.bag, "baggage travels with the entries")
	stopA()
	stopB()

	tid := root.SpanContext().TraceID()
	pub := spans(rec, "publish "+orders)
	require.Len(t, pub, 1)
	assert.Equal(t, trace.SpanKindProducer, pub[0].SpanKind())
	assert.Equal(t, root.SpanContext().SpanID(), pub[0].Parent().SpanID())
	assert.Equal(t, id, attr(pub[0], "messaging.message.id").AsString())
	assert.Equal(t, "redis", attr(pub[0], "messaging.system").AsString())
	assert.Equal(t, "publish", attr(pub[0], "messaging.operation.name").AsString())
	assert.Equal(t, orders, attr(pub[0], "messaging.destination.name").AsString())

	procA := spans(rec, "process "+orders)
	require.Len(t, procA, 1)
	pa := procA[0]
	assert.Equal(t, trace.SpanKindConsumer, pa.SpanKind())
	assert.Equal(t, tid, pa.SpanContext().TraceID())
	assert.Equal(t, pub[0].SpanContext().SpanID(), pa.Parent().SpanID(), "process is a child of publish")
	assert.True(t, linkedTo(pa, pub[0].SpanContext()), "process links to the creation context")
	assert.Equal(t, id, attr(pa, "messaging.message.id").AsString())
	assert.Equal(t, "billing", attr(pa, "messaging.consumer.group.name").AsString())
	assert.Equal(t, "billing-1", attr(pa, "messaging.client.id").AsString())
	assert.Equal(t, "process", attr(pa, "messaging.operation.type").AsString())
	assert.Equal(t, int64(1), attr(pa, stxotel.AttemptKey).AsInt64())

	settleA := spans(rec, "settle "+orders)
	require.Len(t, settleA, 1)
	sa := settleA[0]
	assert.Equal(t, trace.SpanKindClient, sa.SpanKind())
	assert.Equal(t, pa.SpanContext().SpanID(), sa.Parent().SpanID(), "a batch of one trace settles in it")
	assert.True(t, linkedTo(sa, pa.SpanContext()))
	assert.Equal(t, "committed", attr(sa, stxotel.OutcomeKey).AsString())
	assert.Equal(t, int64(0), attr(sa, stxotel.RetriesKey).AsInt64())
	assert.Equal(t, "settle", attr(sa, "messaging.operation.name").AsString())

	procB := spans(rec, "process "+receipts)
	require.Len(t, procB, 1)
	pb := procB[0]
	assert.Equal(t, tid, pb.SpanContext().TraceID(), "one trace from the producer to the second handler")
	assert.Equal(t, pa.SpanContext().SpanID(), pb.Parent().SpanID(), "tx.Publish carries the handler's span")
	assert.True(t, linkedTo(pb, pa.SpanContext()))
	assert.Equal(t, "mail", attr(pb, "messaging.consumer.group.name").AsString())
	assert.Equal(t, pb.SpanContext().SpanID(), s.sc.SpanID(), "the handler runs in its process span")

	// The receipt carries the context in a reserved field.
	ms, err := rdb.XRange(context.Background(), receipts, "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, ms, 1)
	assert.Contains(t, ms[0].Values["stx.traceparent"], pa.SpanContext().SpanID().String())
	assert.Equal(t, "o-1", ms[0].Values["order"])
}

// TestDeadLetterAndReplayKeepTheTrace: an entry that fails for good is
// dead-lettered in a span of its trace, and the dead letter carries that
// span's context; replayed, it is handled again in the same trace — as a
// child of the dead-letter move without a span in the replay's context, and
// of the replay's span with one.
func TestDeadLetterAndReplayKeepTheTrace(t *testing.T) {
	rdb := redisClient(t)
	p := prefix(t, rdb)
	orders := p + "orders"
	rec, opts := recorder()
	tr := stxotel.NewTracing(opts...)

	prod, err := streamtx.NewProducer(rdb, streamtx.ProducerConfig{Tracing: tr})
	require.NoError(t, err)
	handled := make(chan string, 4)
	cfg := consumerConfig(orders, "billing", "billing-1")
	cfg.Tracing = tr
	c, err := streamtx.NewConsumer(rdb, cfg, streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if msg.Values["stx.replay.of"] == "" {
			return streamtx.Permanent(errors.New("bad order"))
		}
		handled <- msg.Values["order"]
		return nil
	}))
	require.NoError(t, err)
	run(t, c)

	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ctx, root := tp.Tracer("test").Start(context.Background(), "request")
	_, err = prod.Publish(ctx, orders, map[string]any{"order": "o-1"})
	require.NoError(t, err)
	_, err = prod.Publish(ctx, orders, map[string]any{"order": "o-2"})
	require.NoError(t, err)
	root.End()
	tid := root.SpanContext().TraceID()

	var dls []streamtx.DeadLetter
	waitFor(t, 10*time.Second, "two dead letters", func() bool {
		dls, _, err = streamtx.ListDeadLetters(context.Background(), rdb, c.DeadLetterStream(), "", 10)
		return err == nil && len(dls) == 2
	})
	// The entry's own context round-trips (escaped in the dead letter), and
	// the dead letter carries its move's context.
	pubs := spans(rec, "publish "+orders)
	require.Len(t, pubs, 2)
	raw, err := rdb.XRange(context.Background(), c.DeadLetterStream(), "-", "+").Result()
	require.NoError(t, err)
	moves := spans(rec, "settle "+orders)
	require.Len(t, moves, 2)
	for i, dl := range dls {
		assert.Contains(t, dl.Values["stx.traceparent"], tid.String(), "the entry's own context is kept")
		assert.NotContains(t, dl.Values, "stx.stx.traceparent")
		assert.Contains(t, raw[i].Values, "stx.stx.traceparent")
		assert.Contains(t, raw[i].Values["stx.traceparent"], tid.String(), "the dead letter carries its move's context")
	}
	for _, m := range moves {
		assert.Equal(t, tid, m.SpanContext().TraceID())
		assert.Equal(t, "dead_lettered", attr(m, stxotel.OutcomeKey).AsString())
		assert.True(t, attr(m, stxotel.DeadLetterKey).AsBool())
	}
	for _, pr := range spans(rec, "process "+orders) {
		assert.Equal(t, "permanent", attr(pr, "error.type").AsString())
		assert.Equal(t, "Error", pr.Status().Code.String())
	}

	// Replay o-1 with no span in ctx: it continues from its dead-letter move.
	// Replay o-2 in a span of the operator's, with the Tracing in ctx.
	byOrder := map[string]streamtx.DeadLetter{}
	for _, dl := range dls {
		byOrder[dl.Values["order"]] = dl
	}
	_, err = streamtx.ReplayDeadLetters(context.Background(), rdb, c.DeadLetterStream(), byOrder["o-1"].ID)
	require.NoError(t, err)
	octx, op := tp.Tracer("test").Start(context.Background(), "operator replays")
	_, err = streamtx.ReplayDeadLetters(streamtx.WithTracing(octx, tr), rdb, c.DeadLetterStream(), byOrder["o-2"].ID)
	require.NoError(t, err)
	op.End()
	for range 2 {
		select {
		case <-handled:
		case <-time.After(10 * time.Second):
			t.Fatal("the replayed entries were not handled")
		}
	}
	waitFor(t, 5*time.Second, "four process spans", func() bool { return len(spans(rec, "process "+orders)) == 4 })

	moveOf := map[string]sdktrace.ReadOnlySpan{} // entry ID -> its dead-letter move
	for _, m := range moves {
		moveOf[attr(m, "messaging.message.id").AsString()] = m
	}
	var n int
	for _, pr := range spans(rec, "process "+orders) {
		if pr.Status().Code.String() == "Error" {
			continue
		}
		n++
		switch pr.Parent().SpanID() {
		case moveOf[byOrder["o-1"].SourceID].SpanContext().SpanID():
			assert.Equal(t, tid, pr.SpanContext().TraceID(), "a replay keeps the trace")
		case op.SpanContext().SpanID():
			assert.Equal(t, op.SpanContext().TraceID(), pr.SpanContext().TraceID())
		default:
			t.Errorf("replayed entry's process span has parent %s: neither the dead-letter move nor the replay", pr.Parent().SpanID())
		}
	}
	assert.Equal(t, 2, n)
	// A replayed entry carries one trace context, never two.
	ms, err := rdb.XRange(context.Background(), orders, "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, ms, 4)
	for _, m := range ms[2:] {
		assert.NotContains(t, m.Values, "stx.stx.traceparent")
		assert.NotEmpty(t, m.Values["stx.traceparent"])
	}
}

type count struct{ N int }

// TestConflictRerunIsSecondAttempt: two consumers share one Stateful record;
// the first holds an entry while the second commits another, so the
// first's commit is refused for a conflict and its handler runs again — the
// same message, a second attempt, in the same trace.
func TestConflictRerunIsSecondAttempt(t *testing.T) {
	rdb := redisClient(t)
	p := prefix(t, rdb)
	orders := p + "orders"
	rec, opts := recorder()
	tr := stxotel.NewTracing(opts...)
	prod, err := streamtx.NewProducer(rdb, streamtx.ProducerConfig{Tracing: tr})
	require.NoError(t, err)

	holding, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h := streamtx.Stateful("n", func(ctx context.Context, msg *streamtx.Message, s *count, tx *txn.Tx) error {
		if msg.Values["order"] == "x" {
			once.Do(func() {
				close(holding)
				<-release
			})
		}
		s.N++
		return nil
	})
	committed := make(chan streamtx.Event, 8)
	newConsumer := func(name string) *streamtx.Consumer {
		cfg := consumerConfig(orders, "billing", name)
		cfg.Tracing = tr
		cfg.BatchSize = 1
		cfg.Observer = streamtx.ObserverFunc(func(e streamtx.Event) {
			if e.Kind == streamtx.EventCommit {
				committed <- e
			}
		})
		c, err := streamtx.NewConsumer(rdb, cfg, h)
		require.NoError(t, err)
		return c
	}
	a := newConsumer("a")
	run(t, a)
	idX, err := prod.Publish(context.Background(), orders, map[string]any{"order": "x"})
	require.NoError(t, err)
	<-holding // a holds x, with the record as it was before
	b := newConsumer("b")
	run(t, b)
	_, err = prod.Publish(context.Background(), orders, map[string]any{"order": "y"})
	require.NoError(t, err)
	select {
	case <-committed: // b committed y
	case <-time.After(10 * time.Second):
		t.Fatal("b did not commit y")
	}
	close(release)
	select {
	case <-committed: // a committed x, after a re-run
	case <-time.After(10 * time.Second):
		t.Fatal("a did not commit x")
	}
	st, err := streamtx.ReadState[count](context.Background(), rdb, orders, "billing", "n")
	require.NoError(t, err)
	assert.Equal(t, 2, st.Value.N, "each entry applied once")

	var runs []sdktrace.ReadOnlySpan
	for _, s := range spans(rec, "process "+orders) {
		if attr(s, "messaging.message.id").AsString() == idX {
			runs = append(runs, s)
		}
	}
	require.Len(t, runs, 2, "x was handled twice")
	attempts := map[int64]bool{}
	for _, r := range runs {
		attempts[attr(r, stxotel.AttemptKey).AsInt64()] = true
		assert.Equal(t, runs[0].Parent().SpanID(), r.Parent().SpanID(), "both runs are children of x's publish")
		assert.Equal(t, int64(1), attr(r, stxotel.DeliveriesKey).AsInt64(), "one delivery")
	}
	assert.Equal(t, map[int64]bool{1: true, 2: true}, attempts)
	var outcomes []string
	for _, s := range spans(rec, "settle "+orders) {
		if attr(s, "messaging.message.id").AsString() == idX {
			outcomes = append(outcomes, attr(s, stxotel.OutcomeKey).AsString())
		}
	}
	assert.ElementsMatch(t, []string{"conflict", "committed"}, outcomes)
}
