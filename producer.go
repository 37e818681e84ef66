package streamtx

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/streamid"
	"github.com/streamtx/streamtx/internal/txnengine"
	"github.com/streamtx/streamtx/txn"
)

// ProducerConfig configures a Producer. The zero value of every field means
// its default.
type ProducerConfig struct {
	// Window is how long an idempotency key is remembered: a second publish
	// with the same key within Window appends nothing and returns the first
	// entry's ID. After it, the key may append again. The dedupe record
	// expires by the Redis server's clock (SET PX). Default 24h; at least
	// 1ms.
	Window time.Duration

	// MaxLen, when positive, trims the stream to about MaxLen entries on
	// every publish (XADD MAXLEN). Default 0: never trim. Trimming removes
	// entries whether or not every group has read them: set it only when
	// losing old entries is acceptable. At most one of MaxLen and MinID.
	MaxLen int64
	// MinID, when set, removes entries with IDs below it on every publish
	// (XADD MINID). Default "": never trim. At most one of MaxLen and MinID.
	MinID string
	// ApproxTrim trims with "~" instead of "=": Redis then removes only whole
	// macro nodes, keeping somewhat more entries than asked, which is
	// cheaper. Default false (exact). Meaningful only with MaxLen or MinID.
	ApproxTrim bool

	// Clock gives the time of an Envelope published with a zero Time by
	// PublishEnvelope. Default time.Now.
	Clock func() time.Time

	// Tracing, when set, gets a span for each publish, whose trace context
	// the entry carries (see Tracing). Default: none.
	Tracing Tracing
}

func (cfg *ProducerConfig) setDefaults() error {
	switch {
	case cfg.Window < 0:
		return configErr("Window", "negative (%s)", cfg.Window)
	case cfg.Window > 0 && cfg.Window < time.Millisecond:
		return configErr("Window", "%s is below 1ms (Redis expires keys in milliseconds; 0 means the default)", cfg.Window)
	case cfg.MaxLen < 0:
		return configErr("MaxLen", "negative (%d)", cfg.MaxLen)
	case cfg.MaxLen > 0 && cfg.MinID != "":
		return configErr("MinID", "set together with MaxLen (%d): choose one trimming strategy", cfg.MaxLen)
	case cfg.MinID != "" && !streamid.Valid(cfg.MinID):
		return configErr("MinID", "%q is not a stream ID", cfg.MinID)
	case cfg.ApproxTrim && cfg.MaxLen == 0 && cfg.MinID == "":
		return configErr("ApproxTrim", "set without MaxLen or MinID")
	}
	if cfg.Window == 0 {
		cfg.Window = 24 * time.Hour
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return nil
}

// Producer appends entries to streams from outside a handler — an HTTP
// endpoint, a batch job — optionally idempotently: a publish carrying an
// idempotency key appends at most once per key within the configured window,
// however often it is retried. The check and the append are one script, so
// a retry after a lost reply (a timeout, a cut connection, a process that
// died before it learned the outcome) is safe as long as it reuses the key.
//
// Inside a handler, use tx.Publish instead: it is exactly once with the
// entry being handled.
//
// A Producer is safe for concurrent use.
type Producer struct {
	rdb    redis.UniversalClient
	cfg    ProducerConfig
	script *redis.Script
	trim   [3]any // strategy, operator, threshold: the script's ARGV[2..4]
	topics topicCache
}

// NewProducer validates cfg, applies its defaults and returns a Producer. It
// does not talk to Redis. Errors wrap ErrConfig and name the field at fault.
func NewProducer(client redis.UniversalClient, cfg ProducerConfig) (*Producer, error) {
	if client == nil {
		return nil, configErr("client", "nil Redis client")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	scripts, err := luaScripts()
	if err != nil {
		return nil, err
	}
	p := &Producer{rdb: client, cfg: cfg, script: scripts.Produce, trim: [3]any{"", "=", ""}}
	if cfg.ApproxTrim {
		p.trim[1] = "~"
	}
	switch {
	case cfg.MaxLen > 0:
		p.trim[0], p.trim[2] = "MAXLEN", cfg.MaxLen
	case cfg.MinID != "":
		p.trim[0], p.trim[2] = "MINID", cfg.MinID
	}
	return p, nil
}

// PublishOption modifies one Publish.
type PublishOption func(*publishOptions)

type publishOptions struct {
	key    string
	keySet bool
}

// WithIdempotencyKey makes the publish idempotent under key: the first
// publish with key appends the entry, and every later one within the
// Producer's Window — a retry, a duplicate request — appends nothing and
// returns the first entry's ID, even if its values differ. Keys are scoped
// to the stream. An empty key is an error.
func WithIdempotencyKey(key string) PublishOption {
	return func(o *publishOptions) { o.key, o.keySet = key, true }
}

// Publish appends values to stream and returns the entry's ID. Values are
// formatted like tx.Publish's: strings, []byte, booleans, integers, floats
// or fmt.Stringer, fields in sorted order.
//
// With WithIdempotencyKey, a publish whose key was already published to
// stream within the Window appends nothing and returns the ID of the first
// entry. Without a key, a publish whose reply was lost may have been appended
// or not, and retrying it (go-redis retries lost replies by itself, see
// redis.Options.MaxRetries) may append it twice.
//
// Errors:
//   - one wrapping txn.ErrBadPublish for a publish that can never succeed,
//     and nothing is sent: an empty stream name, no values, a value of an
//     unsupported type, an empty idempotency key, or a stream name with a '}'
//     but no {hash tag} (its dedupe record could not share its slot);
//   - one wrapping ErrWrongType when stream exists and is not a stream;
//     nothing is written;
//   - otherwise the Redis or network error, after which the publish may or
//     may not have happened: retry it with the same key.
func (p *Producer) Publish(ctx context.Context, stream string, values map[string]any, opts ...PublishOption) (string, error) {
	var o publishOptions
	for _, opt := range opts {
		opt(&o)
	}
	return p.publish(ctx, stream, values, o)
}

func (p *Producer) publish(ctx context.Context, stream string, values map[string]any, o publishOptions) (id string, err error) {
	tx := txnengine.New(nil, "")
	if t := p.cfg.Tracing; t != nil {
		var end func(string, error)
		ctx, end = t.StartPublish(ctx, PublishTrace{Stream: stream, IdempotencyKey: o.key})
		defer func() { end(id, err) }()
		tx.SetTrace(traceFields(t, ctx))
	}
	if err := tx.Publish(stream, values); err != nil {
		return "", fmt.Errorf("streamtx: publish: %w", err)
	}
	fields := tx.Publishes()[0].Fields

	ks := []string{stream}
	if o.keySet {
		if o.key == "" {
			return "", fmt.Errorf("streamtx: publish: %w: to %q: empty idempotency key", txn.ErrBadPublish, stream)
		}
		rec, err := keys.Idempotency(stream, o.key)
		if err != nil {
			return "", fmt.Errorf("streamtx: publish: %w: to %q: %w", txn.ErrBadPublish, stream, err)
		}
		ks = append(ks, rec)
	}
	args := make([]any, 0, 4+len(fields))
	args = append(args, p.cfg.Window.Milliseconds())
	args = append(args, p.trim[:]...)
	for _, f := range fields {
		args = append(args, f)
	}
	reply, err := p.script.Run(ctx, p.rdb, ks, args...).Slice()
	if err != nil {
		return "", fmt.Errorf("streamtx: publish to %q: %w", stream, err)
	}
	return parseProduceReply(stream, reply)
}

// parseProduceReply reads produce.lua's reply (see its header).
func parseProduceReply(stream string, reply []any) (string, error) {
	if len(reply) == 0 {
		return "", fmt.Errorf("streamtx: publish to %q: empty script reply", stream)
	}
	code, ok := reply[0].(int64)
	if !ok {
		return "", fmt.Errorf("streamtx: publish to %q: malformed script reply %v", stream, reply)
	}
	switch code {
	case 0, 1:
		if len(reply) != 2 {
			break
		}
		if id, ok := reply[1].(string); ok && streamid.Valid(id) {
			return id, nil
		}
	case 3:
		return "", fmt.Errorf("streamtx: publish to %q: %w", stream, ErrWrongType)
	}
	return "", fmt.Errorf("streamtx: publish to %q: malformed script reply %v", stream, reply)
}

// PublishEnvelope appends e to stream as its CloudEvents fields (see
// Envelope.Fields) and returns the entry's ID. A zero e.Time is set from the
// Producer's Clock.
//
// The publish is idempotent under e's (Source, ID) — CloudEvents' identity
// of an event — unless WithIdempotencyKey gives another key: publishing the
// same event twice within the Window appends it once.
//
// Errors are Publish's, plus one wrapping ErrBadEnvelope when e cannot be
// encoded (a missing ID, Type or Source, an unknown content type, data that
// does not encode).
func (p *Producer) PublishEnvelope(ctx context.Context, stream string, e AnyEnvelope, opts ...PublishOption) (string, error) {
	if e == nil {
		return "", fmt.Errorf("streamtx: publish to %q: %w: nil envelope", stream, ErrBadEnvelope)
	}
	fields, source, id, err := e.envelopeFields(p.cfg.Clock)
	if err != nil {
		return "", fmt.Errorf("streamtx: publish to %q: %w", stream, err)
	}
	o := publishOptions{key: envelopeKey(source, id), keySet: true}
	for _, opt := range opts {
		opt(&o)
	}
	return p.publish(ctx, stream, fields, o)
}

// envelopeKey is the default idempotency key of an envelope: its source
// (escaped so that it holds no ':') and its ID, so distinct (source, ID)
// pairs never share a key.
func envelopeKey(source, id string) string {
	return strings.NewReplacer("%", "%25", ":", "%3A").Replace(source) + ":" + id
}
