package streamtx

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/streamtx/streamtx/internal/txnengine"
	"github.com/streamtx/streamtx/state"
	"github.com/streamtx/streamtx/txn"
)

// Message is one stream entry delivered to a handler.
//
// Values holds the entry's fields as strings, exactly as Redis stores them
// (Redis stream values are byte strings; a field repeated in the entry keeps
// its last value). The handler must not keep Values after it returns.
type Message struct {
	Stream     string
	ID         string
	Values     map[string]string
	Deliveries int64 // 1 on the first delivery; more after retries, claims and restarts

	// Key is the entry's key when it was published by key
	// (Producer.PublishKeyed, tx.PublishKeyed): the value of its reserved
	// field "stx.key", which Values holds too. "" for an entry without one.
	Key string
	// Partition is the topic partition the entry was read from (a consumer
	// with Config.Topic), or -1 when the consumer reads a plain stream
	// (Config.Stream), even a partition's stream.
	Partition int

	attempts int // handler runs on this delivery, counted only with Config.Tracing
}

// Handler processes one entry. Everything it does through tx — state changes
// and publishes — is committed atomically with the entry's acknowledgement, or
// not at all. Returning an error (or panicking) drops tx; the entry is retried
// after a backoff, and dead-lettered after Config.MaxDeliveries or at once for
// a Permanent error.
//
// A handler may run more than once for one entry (a retry, a version conflict
// with another consumer, a commit whose reply was lost, another entry of the
// batch failing after it changed state this entry touched): its effects through
// tx still apply once, but side effects outside Redis run at least once. Use
// tx.IdempotencyKey() to make them idempotent.
type Handler interface {
	Handle(ctx context.Context, msg *Message, tx *txn.Tx) error
}

// HandlerFunc adapts a function to the Handler interface.
type HandlerFunc func(ctx context.Context, msg *Message, tx *txn.Tx) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, msg *Message, tx *txn.Tx) error {
	return f(ctx, msg, tx)
}

// Middleware wraps a Handler, for logging, tracing or metrics.
//
// The consumer reads what it needs of a Stateful or Keyed handler (its state
// type, which it checks; its key function, for lanes; the records a batch
// will touch, to load them at once) from the handler itself. A wrapper
// written as func(Handler) Handler hides that, so apply middleware in one of
// the ways that keep it visible: Config.Middleware, Wrap, or a wrapper type
// with an Unwrap() Handler method returning what it wraps (NewConsumer
// follows Unwrap).
type Middleware func(Handler) Handler

// Wrap returns h wrapped in mw, mw[0] outermost, in a Handler whose
// Unwrap method returns h, so that NewConsumer still sees h (see Middleware).
func Wrap(h Handler, mw ...Middleware) Handler {
	if len(mw) == 0 || h == nil {
		return h
	}
	w := h
	for i := len(mw) - 1; i >= 0; i-- {
		if mw[i] != nil {
			w = mw[i](w)
		}
	}
	return &wrapped{Handler: w, inner: h}
}

type wrapped struct {
	Handler
	inner Handler
}

// Unwrap returns the handler the middleware wraps.
func (w *wrapped) Unwrap() Handler { return w.inner }

// unwrapAll follows Unwrap down to the handler that all the wrapping is
// around.
func unwrapAll(h Handler) Handler {
	for range 1000 { // a bound, in case of a cycle
		u, ok := h.(interface{ Unwrap() Handler })
		if !ok {
			return h
		}
		next := u.Unwrap()
		if next == nil {
			return h
		}
		h = next
	}
	return h
}

// StateFunc is a handler of typed state: state points at the value left by
// the last committed entry (the zero value at first). Changes to *state are
// committed with the entry, or rolled back if the function fails.
type StateFunc[S any] func(ctx context.Context, msg *Message, state *S, tx *txn.Tx) error

// Stateful returns a Handler with one state value of type S per (stream,
// group, name), stored as msgpack. The same name on two streams, or for two
// groups, gives two independent values.
//
// Consumers of one group share the value: their commits are serialised by
// the record's version, so concurrent updates are re-run, never lost.
func Stateful[S any](name string, fn StateFunc[S]) Handler {
	return &stateHandler[S]{name: name, fn: fn, state: txn.NewState[S](name)}
}

// Keyed returns a Handler with one state value of type S per (stream, group,
// name, key(msg)), for example one per SKU. Entries with different keys touch
// different records, so consumers of one group rarely contend.
//
// A nil key means the entry's own key (Message.Key: what PublishKeyed set);
// an entry without one fails with a Permanent error (it is dead-lettered).
func Keyed[S any](name string, key func(*Message) string, fn StateFunc[S]) Handler {
	h := &stateHandler[S]{name: name, key: key, fn: fn, state: txn.NewState[S](name)}
	if key == nil {
		h.key, h.ownKey = entryKey, true
	}
	return h
}

func entryKey(m *Message) string { return m.Key }

type stateHandler[S any] struct {
	name  string
	key   func(*Message) string
	fn    StateFunc[S]
	state *txn.State[S]
	// ownKey: keyed by the entry's own key (Keyed with a nil key function).
	ownKey bool
}

func (h *stateHandler[S]) Handle(ctx context.Context, msg *Message, tx *txn.Tx) error {
	var v *S
	var err error
	if h.key != nil {
		k := h.key(msg)
		if h.ownKey && k == "" {
			return Permanent(fmt.Errorf("streamtx: Keyed %q: entry %s has no key (it was not published with PublishKeyed)", h.name, msg.ID))
		}
		v, err = h.state.GetKey(ctx, tx, k)
	} else {
		v, err = h.state.Get(ctx, tx)
	}
	if err != nil {
		return err
	}
	return h.fn(ctx, msg, v, tx)
}

func (h *stateHandler[S]) partitionKey() func(*Message) string { return h.key }

// stateRef names the record Handle will touch, so that a batch's records
// are loaded in one round trip.
func (h *stateHandler[S]) stateRef(m *Message) txnengine.Ref {
	if h.key == nil {
		return txnengine.Ref{Name: h.name}
	}
	return txnengine.Ref{Name: h.name, Key: h.key(m), Keyed: true}
}

func (h *stateHandler[S]) validate() error {
	if h.fn == nil {
		return errors.New("streamtx: Stateful/Keyed " + strconv.Quote(h.name) + ": nil function")
	}
	// The codec refuses a type it cannot store faithfully (an unexported
	// field would reset to zero at every reload); decoding an absent record
	// tells.
	if _, err := state.Msgpack[S]().Decode(nil); err != nil {
		return fmt.Errorf("streamtx: Stateful/Keyed %q: %w", h.name, err)
	}
	return nil
}
