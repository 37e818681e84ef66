package otel

import (
	"github.com/streamtx/streamtx"
)

// InstrumentConsumer instruments a consumer's configuration before
// streamtx.NewConsumer, as go-redis's redisotel instruments a client: it sets
// cfg.Tracing (NewTracing), adds a Metrics to cfg.Observer (after the
// Observer already set, if any) and appends its handler timing to
// cfg.Middleware. Set cfg.Stream and cfg.Group first: the handler timing is
// labelled with them.
func InstrumentConsumer(cfg *streamtx.Config, opts ...Option) error {
	m, err := NewMetrics(opts...)
	if err != nil {
		return err
	}
	cfg.Tracing = NewTracing(opts...)
	cfg.Observer = Observers(cfg.Observer, m)
	cfg.Middleware = append(cfg.Middleware, m.Middleware(cfg.Stream, cfg.Group))
	return nil
}

// InstrumentProducer sets cfg.Tracing (NewTracing): each publish gets a span
// and its entry carries the span's context.
func InstrumentProducer(cfg *streamtx.ProducerConfig, opts ...Option) {
	cfg.Tracing = NewTracing(opts...)
}

// InstrumentRelay sets cfg.Tracing (NewTracing) and adds a Metrics to
// cfg.Observer. Its metrics have the outbox stream and the relay group
// (streamtx.RelayGroup) as destination and group.
func InstrumentRelay(cfg *streamtx.RelayConfig, opts ...Option) error {
	m, err := NewMetrics(opts...)
	if err != nil {
		return err
	}
	cfg.Tracing = NewTracing(opts...)
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
