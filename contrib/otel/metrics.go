package otel

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

// Metrics records a consumer's events through the OpenTelemetry metrics
// API. It implements streamtx.Observer, to be passed as Config.Observer (one
// Metrics may serve any number of consumers), and is safe for concurrent use.
//
// The instruments, each with messaging.system, messaging.destination.name
// (the stream) and messaging.consumer.group.name (and messaging.client.id,
// the consumer, with WithConsumerAttribute):
//
//	streamtx.entries.committed           counter    entries committed
//	streamtx.conflicts                   counter    commits refused for a state version conflict (handlers re-run)
//	streamtx.fenced                      counter    entries refused as no longer owned
//	streamtx.retries                     counter    handler failures that will be retried
//	streamtx.dead_letters                counter    entries moved to the dead-letter stream
//	streamtx.claims                      counter    entries claimed from idle consumers
//	streamtx.errors                      counter    operational errors (failed reads, commits of unknown outcome, …)
//	messaging.client.operation.duration  histogram commit round trips (s), messaging.operation.name "settle"
//	messaging.process.duration           histogram handler calls (s), through Middleware
//
// The last two are the semantic conventions' own; the conventions have no
// instrument for the others. Group gauges (lag, pending, oldest pending age)
// come from RegisterGroupStats.
type Metrics struct {
	meter       metric.Meter
	attrs       []attribute.KeyValue
	consumerAtt bool

	committed, conflicts, fenced, retries, deadLetters, claims, errors metric.Int64Counter
	commit, process                                                    metric.Float64Histogram
}

var _ streamtx.Observer = (*Metrics)(nil)

// Bucket boundaries, in seconds: commits from 0.5ms doubling to about 4s,
// handler calls from 0.1ms, ×4 per bucket, to about 26s (as
// contrib/prometheus).
var (
	commitBuckets  = exponential(0.0005, 2, 14)
	handlerBuckets = exponential(0.0001, 4, 10)
)

func exponential(start, factor float64, n int) []float64 {
	b := make([]float64, n)
	for i := range b {
		b[i] = start
		start *= factor
	}
	return b
}

// NewMetrics creates the instruments with the MeterProvider of opts
// (default: the global one).
func NewMetrics(opts ...Option) (*Metrics, error) {
	c := newConfig(opts)
	m := &Metrics{meter: c.mp.Meter(ScopeName), attrs: c.attrs, consumerAtt: c.consumerAtt}
	counters := []struct {
		c           *metric.Int64Counter
		name, unit  string
		description string
	}{
		{&m.committed, "streamtx.entries.committed", "{entry}", "Entries committed: their state changes, publishes and acknowledgement applied together."},
		{&m.conflicts, "streamtx.conflicts", "{commit}", "Commits refused because a state record changed since the handler read it; the handlers ran again."},
		{&m.fenced, "streamtx.fenced", "{entry}", "Entries whose commit or dead-lettering was refused because the consumer no longer owned them."},
		{&m.retries, "streamtx.retries", "{entry}", "Handler failures after which the entry is retried."},
		{&m.deadLetters, "streamtx.dead_letters", "{entry}", "Entries moved to the dead-letter stream."},
		{&m.claims, "streamtx.claims", "{entry}", "Entries claimed from consumers idle past the claim threshold."},
		{&m.errors, "streamtx.errors", "{error}", "Operational errors: failed reads, commits of unknown outcome, dead letters that could not be written."},
	}
	var err error
	for _, x := range counters {
		if *x.c, err = m.meter.Int64Counter(x.name, metric.WithUnit(x.unit), metric.WithDescription(x.description)); err != nil {
			return nil, err
		}
	}
	if m.commit, err = m.meter.Float64Histogram("messaging.client.operation.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of messaging operation initiated by a producer or consumer client: streamtx commits (one script per batch of entries)."),
		metric.WithExplicitBucketBoundaries(commitBuckets...)); err != nil {
		return nil, err
	}
	if m.process, err = m.meter.Float64Histogram("messaging.process.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of processing operation: streamtx handler calls, failed and panicking ones included."),
		metric.WithExplicitBucketBoundaries(handlerBuckets...)); err != nil {
		return nil, err
	}
	return m, nil
}

// set returns the attribute set of a consumer's points.
func (m *Metrics) set(stream, group, consumer string, extra ...attribute.KeyValue) metric.MeasurementOption {
	kv := make([]attribute.KeyValue, 0, 4+len(extra)+len(m.attrs))
	kv = append(kv, systemAttr, semconv.MessagingDestinationName(stream), semconv.MessagingConsumerGroupName(group))
	if m.consumerAtt && consumer != "" {
		kv = append(kv, semconv.MessagingClientID(consumer))
	}
	kv = append(kv, extra...)
	kv = append(kv, m.attrs...)
	return metric.WithAttributeSet(attribute.NewSet(kv...))
}

// Observe implements streamtx.Observer. Entries are counted for commits,
// fenced entries, retries, dead letters and claims; conflicts and errors
// once per event. Events of unknown kinds are ignored.
func (m *Metrics) Observe(e streamtx.Event) {
	ctx := context.Background()
	entries := int64(len(e.IDs))
	switch e.Kind {
	case streamtx.EventCommit:
		set := m.set(e.Stream, e.Group, e.Consumer)
		m.committed.Add(ctx, entries, set)
		m.commit.Record(ctx, e.Duration.Seconds(), m.set(e.Stream, e.Group, e.Consumer,
			semconv.MessagingOperationName("settle"), semconv.MessagingOperationTypeSettle))
	case streamtx.EventConflict:
		m.conflicts.Add(ctx, 1, m.set(e.Stream, e.Group, e.Consumer))
	case streamtx.EventFenced:
		m.fenced.Add(ctx, max(entries, 1), m.set(e.Stream, e.Group, e.Consumer))
	case streamtx.EventRetry:
		m.retries.Add(ctx, max(entries, 1), m.set(e.Stream, e.Group, e.Consumer))
	case streamtx.EventDeadLetter:
		m.deadLetters.Add(ctx, max(entries, 1), m.set(e.Stream, e.Group, e.Consumer))
	case streamtx.EventClaim:
		m.claims.Add(ctx, entries, m.set(e.Stream, e.Group, e.Consumer))
	case streamtx.EventError:
		m.errors.Add(ctx, 1, m.set(e.Stream, e.Group, e.Consumer))
	}
}

// InstrumentHandler returns h timed into messaging.process.duration, with
// the stream and group: every call, whether it returns nil, an error (then
// with error.type) or panics (the panic goes on to the consumer). The
// handler it returns unwraps to h, so a Stateful or Keyed h stays visible to
// the consumer.
func (m *Metrics) InstrumentHandler(h streamtx.Handler, stream, group string) streamtx.Handler {
	return &timedHandler{h: h, m: m, stream: stream, group: group,
		ok: m.set(stream, group, "", semconv.MessagingOperationName("process"), semconv.MessagingOperationTypeProcess)}
}

type timedHandler struct {
	h             streamtx.Handler
	m             *Metrics
	stream, group string
	ok            metric.MeasurementOption
}

func (t *timedHandler) Handle(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) (err error) {
	start := time.Now()
	failed := true
	defer func() {
		d := time.Since(start).Seconds()
		if !failed && err == nil {
			t.m.process.Record(ctx, d, t.ok)
			return
		}
		et := "panic"
		if err != nil {
			et = errorType(err)
		}
		t.m.process.Record(ctx, d, t.m.set(t.stream, t.group, "",
			semconv.MessagingOperationName("process"), semconv.MessagingOperationTypeProcess, semconv.ErrorTypeKey.String(et)))
	}()
	err = t.h.Handle(ctx, msg, tx)
	failed = false
	return err
}

// Unwrap returns the instrumented handler.
func (t *timedHandler) Unwrap() streamtx.Handler { return t.h }

// Middleware returns InstrumentHandler as a streamtx.Middleware.
func (m *Metrics) Middleware(stream, group string) streamtx.Middleware {
	return func(h streamtx.Handler) streamtx.Handler { return m.InstrumentHandler(h, stream, group) }
}
