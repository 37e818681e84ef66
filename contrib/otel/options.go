package otel

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the tracer and the meter.
const ScopeName = "github.com/streamtx/streamtx/contrib/otel"

// System is the value of messaging.system on every span and metric. The
// semantic conventions list no value for Redis; the attribute names the
// system "as identified by the client instrumentation", and streamtx's
// broker is Redis (as db.system.name names it for the Redis client's own
// spans).
const System = "redis"

// Option configures Tracing, Metrics and the Instrument functions.
type Option func(*config)

type config struct {
	tp          trace.TracerProvider
	mp          metric.MeterProvider
	prop        propagation.TextMapPropagator
	attrs       []attribute.KeyValue
	consumerAtt bool
}

func newConfig(opts []Option) *config {
	c := &config{}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.prop == nil {
		c.prop = otel.GetTextMapPropagator()
	}
	return c
}

// WithTracerProvider sets the TracerProvider. Default: the global one
// (otel.GetTracerProvider), as it is when a span starts.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithMeterProvider sets the MeterProvider. Default: the global one
// (otel.GetMeterProvider).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// WithPropagator sets the propagator that writes and reads the trace
// context in entries. Default: the global one (otel.GetTextMapPropagator),
// which propagates nothing until the program sets one, for example
//
//	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
//		propagation.TraceContext{}, propagation.Baggage{}))
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.prop = p }
}

// WithAttributes adds attributes to every span and metric point.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return func(c *config) { c.attrs = append(c.attrs, attrs...) }
}

// WithConsumerAttribute adds messaging.client.id (the Consumer's name) to the
// consumer metrics. Default false: consumer names are often per pod, which
// multiplies the series. Spans always carry it.
func WithConsumerAttribute(on bool) Option {
	return func(c *config) { c.consumerAtt = on }
}
