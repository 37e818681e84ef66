package streamtx

import (
	"context"
	"sort"
	"strings"
)

// Tracing is the hook through which a tracing library follows entries
// through streamtx: a span for each handler run, for each commit and
// dead-letter move, and for each Producer publish, and a trace context that
// travels in the entries themselves. streamtx implements no tracing of its
// own and imports no tracing library; contrib/otel implements Tracing with
// OpenTelemetry. Set it in Config.Tracing, ProducerConfig.Tracing,
// RelayConfig.Tracing, and for ReplayDeadLetters in the context (WithTracing).
//
// The trace context travels in entry fields named "stx." followed by the
// propagator's key (for W3C Trace Context and Baggage: stx.traceparent,
// stx.tracestate, stx.baggage): a Producer publish, tx.Publish, a dead-letter
// move, a replay and a relay forward each write the context of the span they
// were made in (Inject); a consumer reads it back from the entry to start its
// process span (StartProcess, with TraceCarrier(msg.Values)). Without a
// Tracing, streamtx writes no such field, a dead letter keeps the fields the
// entry had, and a replay and a relay forward pass them on.
//
// Methods are called from the consumer's goroutines (several at once with
// Config.Parallelism): an implementation must be safe for concurrent use.
// The Start methods return an end function, which streamtx calls exactly
// once; with a nil Tracing, nothing of this is called and nothing is
// allocated.
type Tracing interface {
	// Inject writes the trace context of ctx into carrier (nothing when ctx
	// carries none).
	Inject(ctx context.Context, carrier TraceCarrier)
	// StartPublish starts the span of one Producer.Publish. end receives the
	// new entry's ID (empty on failure) and the error.
	StartPublish(ctx context.Context, p PublishTrace) (context.Context, func(id string, err error))
	// StartProcess starts the span of one handler run on one entry: the
	// handler runs in the context it returns, and its publishes carry that
	// context. end receives what the run returned (a panic as a
	// *PanicError).
	StartProcess(ctx context.Context, p ProcessTrace) (context.Context, func(err error))
	// StartSettle starts the span of one commit of a batch, or of one
	// dead-letter move (SettleTrace.DeadLetter); a dead letter carries the
	// context it returns. end receives the outcome.
	StartSettle(ctx context.Context, s SettleTrace) (context.Context, func(SettleResult))
}

// PublishTrace describes a Producer.Publish to Tracing.StartPublish.
type PublishTrace struct {
	Stream string
	// IdempotencyKey is the publish's key ("" without one).
	IdempotencyKey string
}

// ProcessTrace describes one handler run to Tracing.StartProcess.
type ProcessTrace struct {
	Stream, Group, Consumer string
	// Msg is the entry; its Values carry the trace context it was published
	// in (read it with TraceCarrier(Msg.Values)).
	Msg *Message
	// Attempt counts the handler's runs on this delivery of the entry: 1,
	// then 2, 3, … when the entry is handled again without a new delivery
	// (its commit was refused for a state version conflict, a batch-mate
	// failed after changing state it touched, Redis failed under it). A
	// retry after the handler failed is a new delivery (Msg.Deliveries).
	Attempt int
	// BatchSize is the number of entries handled in the batch.
	BatchSize int
}

// SettleTrace describes a commit or a dead-letter move to
// Tracing.StartSettle.
type SettleTrace struct {
	Stream, Group, Consumer string
	// Entries are the entries committed together (one for a dead-letter
	// move).
	Entries []*Message
	// Contexts are the contexts of the process spans of Entries, in order
	// (nil where there was none: an entry dead-lettered without a handler
	// run).
	Contexts []context.Context
	// DeadLetter: a dead-letter move, not a commit.
	DeadLetter bool
}

// SettleOutcome is how a commit or a dead-letter move ended.
type SettleOutcome int

// The outcomes of SettleResult.
const (
	// SettleCommitted: the batch committed (or the entry was dead-lettered,
	// for a dead-letter move).
	SettleCommitted SettleOutcome = iota + 1
	// SettleConflict: refused for a state version conflict; the entries are
	// handled again.
	SettleConflict
	// SettleFenced: refused because entries are no longer this consumer's
	// (SettleResult.Entries of them); their transactions are dropped.
	SettleFenced
	// SettleDeadLettered: refused because a publish target is not a stream;
	// the entries that published to it (SettleResult.Entries) are
	// dead-lettered, the others handled again.
	SettleDeadLettered
	// SettleError: the outcome is unknown or the script failed
	// (SettleResult.Err); the entries stay pending and are recovered.
	SettleError
)

var outcomeNames = [...]string{"", "committed", "conflict", "fenced", "dead_lettered", "error"}

func (o SettleOutcome) String() string {
	if o > 0 && int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

// SettleResult is the outcome passed to the end function of
// Tracing.StartSettle.
type SettleResult struct {
	Outcome SettleOutcome
	// Entries is how many entries the outcome concerns: all of the batch
	// for SettleCommitted and SettleConflict, the refused ones for
	// SettleFenced, the dead-lettered ones for SettleDeadLettered.
	Entries int
	// Retries counts the times the script was sent again after a lost reply
	// or a refusal by Redis (NOPERM, OOM, …).
	Retries int
	// Err is why, for SettleConflict, SettleFenced, SettleDeadLettered and
	// SettleError.
	Err error
}

// TraceCarrier is an entry's fields seen as a carrier of trace context
// (the Get/Set/Keys of OpenTelemetry's propagation.TextMapCarrier): key k
// is the field "stx."+k. Use TraceCarrier(msg.Values) to read an entry's
// context.
type TraceCarrier map[string]string

// Get returns the field "stx."+key, or "".
func (c TraceCarrier) Get(key string) string { return c[metaPrefix+key] }

// Set sets the field "stx."+key.
func (c TraceCarrier) Set(key, value string) { c[metaPrefix+key] = value }

// Keys returns the keys of the fields that start with "stx.", without it.
func (c TraceCarrier) Keys() []string {
	var ks []string
	for k := range c {
		if strings.HasPrefix(k, metaPrefix) {
			ks = append(ks, k[len(metaPrefix):])
		}
	}
	return ks
}

type tracingKey struct{}

// WithTracing returns a copy of ctx that carries t, for the functions that
// take no configuration: ReplayDeadLetters writes the trace context of ctx
// into the entries it replays through t.
func WithTracing(ctx context.Context, t Tracing) context.Context {
	return context.WithValue(ctx, tracingKey{}, t)
}

func tracingFrom(ctx context.Context) Tracing {
	t, _ := ctx.Value(tracingKey{}).(Tracing)
	return t
}

// traceFields returns the trace context of ctx as entry fields (name,
// value, …, sorted by name), or nil.
func traceFields(t Tracing, ctx context.Context) []string {
	c := make(TraceCarrier, 3)
	t.Inject(ctx, c)
	if len(c) == 0 {
		return nil
	}
	names := make([]string, 0, len(c))
	for k := range c {
		names = append(names, k)
	}
	sort.Strings(names)
	out := make([]string, 0, 2*len(names))
	for _, k := range names {
		out = append(out, k, c[k])
	}
	return out
}
