package otel

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/streamtx/streamtx"
)

// Attributes of streamtx's own, beside the messaging conventions'.
const (
	// AttemptKey is the handler run of a process span: 1, then 2, 3, … when
	// the entry is handled again without a new delivery (a version conflict).
	AttemptKey = attribute.Key("streamtx.attempt")
	// DeliveriesKey is the entry's delivery count.
	DeliveriesKey = attribute.Key("streamtx.deliveries")
	// OutcomeKey is how a settle span ended: committed, conflict, fenced,
	// dead_lettered or error.
	OutcomeKey = attribute.Key("streamtx.settle.outcome")
	// RetriesKey is how often a settle span's script was sent again.
	RetriesKey = attribute.Key("streamtx.settle.retries")
	// OutcomeEntriesKey is how many entries a settle outcome concerns.
	OutcomeEntriesKey = attribute.Key("streamtx.settle.entries")
	// DeadLetterKey marks the settle span of a dead-letter move.
	DeadLetterKey = attribute.Key("streamtx.dead_letter")
	// IdempotencyKeyKey is a Producer publish's idempotency key.
	IdempotencyKeyKey = attribute.Key("streamtx.idempotency_key")
)

// Tracing implements streamtx.Tracing with OpenTelemetry, after the
// semantic conventions for messaging:
//
//   - "publish <stream>", kind producer, for Producer.Publish: the entry
//     carries its context;
//   - "process <stream>", kind consumer, for each handler run on an entry:
//     a child of the context the entry carries, with a link to it (the
//     conventions require the link, and allow the parent for one message);
//     the handler's tx.Publish entries carry its context;
//   - "settle <stream>", kind client, for each commit of a batch, with a
//     link to each entry's process span, and a child of them when they all
//     belong to one trace; and for each dead-letter move (a child of the
//     failed run's process span: the dead letter carries its context).
//
// It is safe for concurrent use; one Tracing may serve any number of
// consumers and producers.
type Tracing struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	attrs  []attribute.KeyValue
}

var _ streamtx.Tracing = (*Tracing)(nil)

// NewTracing returns a Tracing with the providers of opts (default: the
// global ones).
func NewTracing(opts ...Option) *Tracing {
	c := newConfig(opts)
	return &Tracing{
		tracer: c.tp.Tracer(ScopeName),
		prop:   c.prop,
		attrs:  c.attrs,
	}
}

// Inject implements streamtx.Tracing.
func (t *Tracing) Inject(ctx context.Context, carrier streamtx.TraceCarrier) {
	t.prop.Inject(ctx, carrier)
}

// Extract returns ctx with the trace context and baggage that msg carries.
func (t *Tracing) Extract(ctx context.Context, msg *streamtx.Message) context.Context {
	return t.prop.Extract(ctx, streamtx.TraceCarrier(msg.Values))
}

var (
	systemAttr = semconv.MessagingSystemKey.String(System)
)

// StartPublish implements streamtx.Tracing.
func (t *Tracing) StartPublish(ctx context.Context, p streamtx.PublishTrace) (context.Context, func(string, error)) {
	attrs := append([]attribute.KeyValue{
		systemAttr,
		semconv.MessagingOperationName("publish"),
		semconv.MessagingOperationTypeSend,
		semconv.MessagingDestinationName(p.Stream),
	}, t.attrs...)
	if p.IdempotencyKey != "" {
		attrs = append(attrs, IdempotencyKeyKey.String(p.IdempotencyKey))
	}
	ctx, span := t.tracer.Start(ctx, "publish "+p.Stream,
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	return ctx, func(id string, err error) {
		if id != "" {
			span.SetAttributes(semconv.MessagingMessageID(id))
		}
		fail(span, err)
		span.End()
	}
}

// StartProcess implements streamtx.Tracing.
func (t *Tracing) StartProcess(ctx context.Context, p streamtx.ProcessTrace) (context.Context, func(error)) {
	ctx = t.Extract(ctx, p.Msg)
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && sc.IsRemote() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	attrs := append([]attribute.KeyValue{
		systemAttr,
		semconv.MessagingOperationName("process"),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingDestinationName(p.Stream),
		semconv.MessagingConsumerGroupName(p.Group),
		semconv.MessagingClientID(p.Consumer),
		semconv.MessagingMessageID(p.Msg.ID),
		AttemptKey.Int(p.Attempt),
		DeliveriesKey.Int64(p.Msg.Deliveries),
	}, t.attrs...)
	opts = append(opts, trace.WithAttributes(attrs...))
	ctx, span := t.tracer.Start(ctx, "process "+p.Stream, opts...)
	return ctx, func(err error) {
		fail(span, err)
		span.End()
	}
}

// StartSettle implements streamtx.Tracing.
func (t *Tracing) StartSettle(ctx context.Context, s streamtx.SettleTrace) (context.Context, func(streamtx.SettleResult)) {
	links := make([]trace.Link, 0, len(s.Entries))
	var one trace.SpanContext // the entries' span when they are all of one trace
	same := true
	for i, m := range s.Entries {
		var sc trace.SpanContext
		if i < len(s.Contexts) && s.Contexts[i] != nil {
			sc = trace.SpanContextFromContext(s.Contexts[i])
		} else {
			sc = trace.SpanContextFromContext(t.Extract(context.Background(), m))
		}
		if !sc.IsValid() {
			same = false
			continue
		}
		links = append(links, trace.Link{SpanContext: sc})
		switch {
		case !one.IsValid():
			one = sc
		case one.TraceID() != sc.TraceID():
			same = false
		}
	}
	if same && one.IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, one)
	}
	attrs := append([]attribute.KeyValue{
		systemAttr,
		semconv.MessagingOperationName("settle"),
		semconv.MessagingOperationTypeSettle,
		semconv.MessagingDestinationName(s.Stream),
		semconv.MessagingConsumerGroupName(s.Group),
		semconv.MessagingClientID(s.Consumer),
	}, t.attrs...)
	if len(s.Entries) == 1 {
		attrs = append(attrs, semconv.MessagingMessageID(s.Entries[0].ID))
	} else {
		attrs = append(attrs, semconv.MessagingBatchMessageCount(len(s.Entries)))
	}
	if s.DeadLetter {
		attrs = append(attrs, DeadLetterKey.Bool(true))
	}
	ctx, span := t.tracer.Start(ctx, "settle "+s.Stream,
		trace.WithSpanKind(trace.SpanKindClient), trace.WithLinks(links...), trace.WithAttributes(attrs...))
	return ctx, func(r streamtx.SettleResult) {
		outcome := r.Outcome.String()
		if s.DeadLetter && r.Outcome == streamtx.SettleCommitted {
			outcome = streamtx.SettleDeadLettered.String()
		}
		span.SetAttributes(OutcomeKey.String(outcome), RetriesKey.Int(r.Retries), OutcomeEntriesKey.Int(r.Entries))
		if r.Retries > 0 {
			span.AddEvent("retried", trace.WithAttributes(RetriesKey.Int(r.Retries)))
		}
		span.AddEvent(outcome, trace.WithAttributes(OutcomeEntriesKey.Int(r.Entries)))
		switch r.Outcome {
		case streamtx.SettleError, streamtx.SettleDeadLettered:
			fail(span, r.Err)
		}
		span.End()
	}
}

// fail records err on span, with error status and error.type.
func fail(span trace.Span, err error) {
	if err == nil {
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
}

// errorType is a low-cardinality name for err.
func errorType(err error) string {
	var pe *streamtx.PanicError
	switch {
	case errors.As(err, &pe):
		return "panic"
	case errors.Is(err, streamtx.ErrWrongType):
		return "wrong_type"
	case errors.Is(err, streamtx.ErrNotOwned):
		return "not_owned"
	case streamtx.IsPermanent(err):
		return "permanent"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "_OTHER"
}
