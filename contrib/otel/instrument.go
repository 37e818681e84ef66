package otel

import (
	"reflect"

	"github.com/streamtx/streamtx"
)

// tracingWanted reports whether a Tracing would do anything: a tracer
// provider or a propagator was given or set globally. With neither — OTel's
// defaults, which record nothing and propagate nothing — the Instrument
// functions leave cfg.Tracing nil, so that the consumer adds no work and no
// allocation per entry. Set the global providers before instrumenting (or
// pass them as options).
func tracingWanted(opts []Option) bool {
	c := newConfig(opts)
	return !unset(c.tp) || !unset(c.prop)
}

// unset reports whether v is OTel's global default that nothing was set
// into (the delegate of go.opentelemetry.io/otel/internal/global), or a
// no-op tracer provider.
func unset(v any) bool {
	t := reflect.TypeOf(v)
	if t == nil {
		return true
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.PkgPath() {
	case "go.opentelemetry.io/otel/internal/global", "go.opentelemetry.io/otel/trace/noop":
		return true
	}
	return false
}

// InstrumentConsumer instruments a consumer's configuration before
// streamtx.NewConsumer, as go-redis's redisotel instruments a client: it sets
// cfg.Tracing (NewTracing; left nil when no tracer provider and no
// propagator is set, see tracingWanted), adds a Metrics to cfg.Observer (after the
// Observer already set, if any) and appends its handler timing to
// cfg.Middleware. Set cfg.Stream and cfg.Group first: the handler timing is
// labelled with them.
func InstrumentConsumer(cfg *streamtx.Config, opts ...Option) error {
	m, err := NewMetrics(opts...)
	if err != nil {
		return err
	}
	if tracingWanted(opts) {
		cfg.Tracing = NewTracing(opts...)
	}
	cfg.Observer = Observers(cfg.Observer, m)
	cfg.Middleware = append(cfg.Middleware, m.Middleware(cfg.Stream, cfg.Group))
	return nil
}

// InstrumentProducer sets cfg.Tracing (NewTracing): each publish gets a span
// and its entry carries the span's context.
func InstrumentProducer(cfg *streamtx.ProducerConfig, opts ...Option) {
	if tracingWanted(opts) {
		cfg.Tracing = NewTracing(opts...)
	}
}

// InstrumentRelay sets cfg.Tracing (NewTracing) and adds a Metrics to
// cfg.Observer. Its metrics have the outbox stream and the relay group
// (streamtx.RelayGroup) as destination and group.
func InstrumentRelay(cfg *streamtx.RelayConfig, opts ...Option) error {
	m, err := NewMetrics(opts...)
	if err != nil {
		return err
	}
	if tracingWanted(opts) {
		cfg.Tracing = NewTracing(opts...)
	}
	cfg.Observer = Observers(cfg.Observer, m)
	return nil
}

// Observers returns an Observer that passes each event to every non-nil one
// of obs, in order (nil when there is none).
func Observers(obs ...streamtx.Observer) streamtx.Observer {
	var list []streamtx.Observer
	for _, o := range obs {
		if o != nil {
			list = append(list, o)
		}
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	return streamtx.ObserverFunc(func(e streamtx.Event) {
		for _, o := range list {
			o.Observe(e)
		}
	})
}
