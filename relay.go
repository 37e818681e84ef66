package streamtx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/txn"
)

// RelayConfig configures a relay: the consumer that forwards a group's
// cross-slot publishes (Config.CrossSlot = CrossSlotRelay) from its outbox
// to their targets.
type RelayConfig struct {
	// Stream and Group are the source consumer's: the relay reads their
	// outbox. Required.
	Stream, Group string
	// Consumer is the relay's name in the outbox's group. Required.
	Consumer string
	// Window is how long a forwarded outbox entry is remembered in its
	// target's slot: a re-delivery within it appends nothing. It must exceed
	// the longest time an outbox entry can wait (relay downtime plus
	// ClaimIdle). Default 24h.
	Window time.Duration
	// BatchSize, Block, ClaimIdle, MaxDeliveries, Logger, Observer: as in
	// Config.
	BatchSize     int
	Block         time.Duration
	ClaimIdle     time.Duration
	MaxDeliveries int64
	Logger        *slog.Logger
	Observer      Observer
	// Tracing: as in Config. A forward carries the context of the relay's
	// process span (a child of the handler run that published it); without
	// a Tracing, it carries the context the outbox entry has. Default: none.
	Tracing Tracing
	// Retention trims the outbox, never below what the relay group has
	// forwarded and acknowledged. Default: no trimming.
	Retention Retention
}

// RelayGroup is the consumer group relays use on an outbox stream.
const RelayGroup = "stx-relay"

// OutboxStream returns the outbox stream of stream and group.
func OutboxStream(stream, group string) (string, error) {
	sp, err := keys.NewSpace(stream, group)
	if err != nil {
		return "", err
	}
	return sp.Outbox(), nil
}

// NewRelay returns a Consumer that forwards the outbox of (Stream, Group) to
// the publishes' target streams. Each outbox entry is appended to its target
// by a script in the target's slot that first records the outbox entry's ID
// there (kept for Window), then the outbox entry is acknowledged: a relay
// that crashes between the two forwards nothing twice. Run it like any
// Consumer, in the source consumer's process or on its own; several relays
// under distinct names share the work.
func NewRelay(client redis.UniversalClient, cfg RelayConfig) (*Consumer, error) {
	if cfg.Window < 0 {
		return nil, configErr("Window", "negative (%s)", cfg.Window)
	}
	if cfg.Window == 0 {
		cfg.Window = 24 * time.Hour
	}
	if cfg.Stream == "" {
		return nil, configErr("Stream", "required")
	}
	if cfg.Group == "" {
		return nil, configErr("Group", "required")
	}
	outbox, err := OutboxStream(cfg.Stream, cfg.Group)
	if err != nil {
		return nil, configErr("Stream", "%v", err)
	}
	scripts, err := luaScripts()
	if err != nil {
		return nil, err
	}
	r := &relay{client: client, outbox: outbox, window: cfg.Window, script: scripts.Forward, tracing: cfg.Tracing}
	return NewConsumer(client, Config{
		Stream:        outbox,
		Group:         RelayGroup,
		Consumer:      cfg.Consumer,
		BatchSize:     cfg.BatchSize,
		Block:         cfg.Block,
		ClaimIdle:     cfg.ClaimIdle,
		MaxDeliveries: cfg.MaxDeliveries,
		Logger:        cfg.Logger,
		Observer:      cfg.Observer,
		Tracing:       cfg.Tracing,
		Retention:     cfg.Retention,
	}, r)
}

type relay struct {
	client redis.UniversalClient
	outbox string
	window time.Duration
	script *redis.Script

	tracing Tracing
}

// isMeta reports whether k is a field of streamtx's own ("stx.…" but not an
// escaped original field).
func isMeta(k string) bool {
	return strings.HasPrefix(k, metaPrefix) && !strings.HasPrefix(k, metaPrefix+metaPrefix)
}

// errRelayTarget is wrapped by the error for an outbox entry without a
// target.
var errRelayTarget = errors.New("outbox entry has no " + outboxTargetField)

func (r *relay) Handle(ctx context.Context, msg *Message, _ *txn.Tx) error {
	target := msg.Values[outboxTargetField]
	if target == "" {
		return Permanent(errRelayTarget)
	}
	rec, err := keys.Forwarded(target, r.outbox, msg.ID)
	if err != nil {
		return Permanent(err)
	}
	// The publish's own fields were escaped into the outbox entry; its
	// unescaped "stx." fields are the trace context it was made in, which
	// a traced forward replaces with its own.
	var trace []string
	if r.tracing != nil {
		trace = traceFields(r.tracing, ctx)
	}
	names := make([]string, 0, len(msg.Values))
	for k := range msg.Values {
		if k == outboxTargetField || trace != nil && isMeta(k) {
			continue
		}
		names = append(names, k)
	}
	if len(names) == 0 {
		return Permanent(fmt.Errorf("outbox entry %s has no fields to forward", msg.ID))
	}
	sort.Strings(names)
	args := make([]any, 0, 1+2*len(names)+len(trace))
	args = append(args, r.window.Milliseconds())
	for _, k := range names {
		v := msg.Values[k]
		if strings.HasPrefix(k, metaPrefix+metaPrefix) {
			k = k[len(metaPrefix):]
		}
		args = append(args, k, v)
	}
	for _, f := range trace {
		args = append(args, f)
	}
	reply, err := rdb.Run(ctx, r.client, r.script, []string{target, rec}, args...)
	if err != nil {
		return fmt.Errorf("streamtx: forward %s to %q: %w", msg.ID, target, err)
	}
	a, _ := reply.([]any)
	code := int64(-1)
	if len(a) > 0 {
		code, _ = a[0].(int64)
	}
	switch code {
	case 0, 1: // forwarded now, or before
		return nil
	case rdb.CodeWrongType:
		return Permanent(fmt.Errorf("%w: %q", ErrWrongType, target))
	default:
		return fmt.Errorf("streamtx: forward %s: unexpected reply %v", msg.ID, reply)
	}
}
