// Package otel traces and measures streamtx with OpenTelemetry. It is a
// module of its own, so that streamtx itself does not depend on
// OpenTelemetry:
//
//	go get github.com/streamtx/streamtx/contrib/otel
//
// Its package name is otel, like OpenTelemetry's; import it under another
// name, such as stxotel.
//
// # Instrumenting
//
// As go-redis's redisotel instruments a client, the Instrument functions
// instrument a configuration before it is used:
//
//	cfg := streamtx.Config{Stream: "orders", Group: "billing", Consumer: "billing-1"}
//	if err := stxotel.InstrumentConsumer(&cfg); err != nil { // Tracing, Observer, Middleware
//		return err
//	}
//	c, err := streamtx.NewConsumer(rdb, cfg, h)
//
//	pcfg := streamtx.ProducerConfig{}
//	stxotel.InstrumentProducer(&pcfg)
//	prod, err := streamtx.NewProducer(rdb, pcfg)
//
// InstrumentRelay does the same for a relay. The providers and the
// propagator default to OpenTelemetry's globals; WithTracerProvider,
// WithMeterProvider and WithPropagator choose others. The global propagator
// propagates nothing until the program sets one (W3C Trace Context and
// Baggage: propagation.TraceContext{} and propagation.Baggage{}).
//
// # Traces
//
// [Tracing] implements [streamtx.Tracing] after the semantic conventions for
// messaging (messaging.system "redis", messaging.destination.name the
// stream, messaging.consumer.group.name, messaging.client.id the consumer,
// messaging.message.id, messaging.batch.message_count):
//
//   - publish <stream> (producer): a Producer publish; the entry carries its
//     context in the fields stx.traceparent, stx.tracestate, stx.baggage.
//   - process <stream> (consumer): one handler run, a child of the context
//     the entry carries and linked to it, with streamtx.attempt (1, then 2
//     when a version conflict made it run again: one message, two attempts)
//     and streamtx.deliveries. The handler's context is the span's, so its
//     own spans join the trace, and the entries it publishes with tx.Publish
//     carry it: the next consumer's process span is its child.
//   - settle <stream> (client): one commit, linked to the process spans of
//     its entries, and their child when they belong to one trace, with
//     streamtx.settle.outcome (committed, conflict, fenced, dead_lettered,
//     error), streamtx.settle.retries and an event per outcome; and one per
//     dead-letter move (streamtx.dead_letter), whose context the dead letter
//     carries. A replay carries the context of its caller's span when called
//     with streamtx.WithTracing, else the dead letter's: the trace goes on.
//
// Failed handler runs are recorded with error status and error.type
// (permanent, panic, wrong_type, timeout, _OTHER).
//
// # Metrics
//
// [Metrics] is a [streamtx.Observer] that records the instruments of
// contrib/prometheus through the OpenTelemetry metrics API, named after the
// conventions where they have one (messaging.client.operation.duration for
// commits, messaging.process.duration for handler calls) and streamtx.*
// otherwise; [Metrics.RegisterGroupStats] adds the groups' lag, pending
// entries and oldest pending age, read through [InspectStreams] or a
// function of yours at every collection.
//
// # Cost
//
// Without a Tracing, streamtx allocates nothing for tracing. With one, each
// entry costs its spans and a trace context in each entry it publishes; the
// README's "Tracing" section has the measured overhead.
//
// The command in example/ prints the spans of three orders to stdout.
package otel
