package streamtx

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/internal/streamid"
	"github.com/streamtx/streamtx/internal/txnengine"
	"github.com/streamtx/streamtx/state"
	"github.com/streamtx/streamtx/txn"
)

// Config configures a Consumer. The zero value of every optional field means
// its default; no zero value blocks forever.
type Config struct {
	// Stream is the source stream. Required.
	Stream string
	// Group is the consumer group; created (with the stream) when missing.
	// Required.
	Group string
	// Consumer is this process's name in the group. It must be stable across
	// restarts (a restarted process finds its pending entries by name) and
	// unique among live processes (two live processes with one name are
	// fenced against each other, which is safe but wasteful). Required.
	Consumer string

	// StartID is where a newly created group starts: "0" (default) for the
	// whole stream, "$" for new entries only, or an entry ID.
	StartID string
	// BatchSize is the most entries read at once and committed in one
	// script. Default 100; at most 1000. 1 commits each entry on its own.
	BatchSize int
	// Block is how long one read waits for new entries. Default 1s. It also
	// bounds how long Run takes to notice a cancelled context.
	Block time.Duration
	// MaxDeliveries is the number of deliveries after which an entry whose
	// handler fails is dead-lettered. Default 5. A delivery count also
	// counts deliveries cut short by a process that died or paused with the
	// entry's batch in hand: an entry past MaxDeliveries whose handler did
	// not fail is handled again alone (its own batch and commit), and
	// dead-lettered with ErrCrashLoop only after MaxDeliveries such attempts
	// that the process did not survive. A Redis error reply never counts as
	// a delivery (see Health).
	MaxDeliveries int64
	// Backoff gives the wait before retrying msg after its handler failed
	// with err on delivery msg.Deliveries. Default: 100ms doubling per
	// delivery, capped at 10s, with ±20% jitter. Whatever it returns is
	// capped at ClaimIdle/2, so that a consumer never waits on an entry
	// long enough for another one to claim it.
	Backoff func(msg *Message, err error) time.Duration
	// DeadLetterStream receives entries that failed for good. Default
	// "stx:{tag}:<stream>:<group>:dlq", in the source stream's hash slot.
	DeadLetterStream string
	// ClaimIdle is how long an entry must sit idle at another consumer
	// before this one claims it. It must exceed the slowest normal handling
	// of a batch — a handler that takes longer calls KeepAlive — and Block
	// and MaxBatchDelay (NewConsumer refuses a ClaimIdle that does not).
	// Default 30s.
	ClaimIdle time.Duration
	// ClaimInterval is the pause between two scans for idle entries. Default
	// ClaimIdle/2.
	ClaimInterval time.Duration
	// HandlerTimeout bounds one handler call: its context is cancelled
	// after it, and a handler that then returns an error is retried like
	// any failure. Default 0: no bound (Run's shutdown still cancels it).
	HandlerTimeout time.Duration
	// ShutdownTimeout is how long, after Run's context is cancelled, the
	// handler in hand may run before its context is cancelled too. Default
	// 10s.
	ShutdownTimeout time.Duration
	// CommitTimeout is how long a commit whose reply did not arrive is
	// retried before the batch is dropped (its entries stay pending and are
	// recovered). Default 30s.
	CommitTimeout time.Duration
	// StateCacheSize is the most state records kept in memory between
	// batches. Default 10,000.
	StateCacheSize int
	// Logger receives operational logs. Default: discard.
	Logger *slog.Logger
	// Observer receives events (commits, conflicts, retries, dead letters,
	// errors). Default: none.
	Observer Observer
	// Clock gives the time written into dead letters. Default time.Now.
	Clock func() time.Time
	// Parallelism is how many entries of one batch may be handled at once,
	// in lanes by PartitionKey: entries with one key are handled in order,
	// in one lane. Handlers must then touch only the state of their own key
	// (Keyed); a record touched from two lanes in one batch fails the later
	// entry with txn.ErrLaneConflict. Default 1: one entry at a time.
	Parallelism int
	// Middleware wraps the handler, Middleware[0] outermost, without hiding
	// it from the consumer (see Middleware). Default: none.
	Middleware []Middleware
	// PartitionKey maps an entry to its lane key when Parallelism > 1.
	// Default: the key function of a Keyed handler; required for other
	// handlers.
	PartitionKey func(*Message) string
	// MaxBatchDelay is how long a batch may wait to fill up to BatchSize
	// before it is handled and committed. Default 0: a batch is what one read
	// returns, committed at once, so a slow trickle is never held back.
	MaxBatchDelay time.Duration
	// Retention trims the source stream periodically, never below its safe
	// trim point (what every group has received and acknowledged). Default:
	// no trimming.
	Retention Retention
	// CrossSlot says what tx.Publish does with a target in another Redis
	// Cluster hash slot than the source stream. CrossSlotRefuse (default):
	// on a cluster client, Publish fails with ErrCrossSlot. CrossSlotRelay:
	// on any client, the publish is committed to this group's outbox stream
	// (in the source's slot) and a Relay forwards it exactly once.
	CrossSlot CrossSlotMode
}

// Retention is Config.Retention. An entry is trimmed when it is below the
// safe trim point and outside every limit that is set: among the newest
// MaxLen entries or younger than MaxAge, it is kept.
type Retention struct {
	// MaxLen keeps the newest MaxLen entries. 0: no length limit.
	MaxLen int64
	// MaxAge keeps entries younger than this (by the time in their IDs).
	// 0: no age limit.
	MaxAge time.Duration
	// Interval is the pause between two trims. Default 1 minute.
	Interval time.Duration
}

func (r Retention) enabled() bool { return r.MaxLen > 0 || r.MaxAge > 0 }

// CrossSlotMode is Config.CrossSlot.
type CrossSlotMode int

// The modes of Config.CrossSlot.
const (
	CrossSlotRefuse CrossSlotMode = iota
	CrossSlotRelay
)

const maxBatch = 1000

func (cfg *Config) setDefaults() error {
	switch {
	case cfg.Stream == "":
		return configErr("Stream", "required")
	case cfg.Group == "":
		return configErr("Group", "required")
	case cfg.Consumer == "":
		return configErr("Consumer", "required")
	case cfg.BatchSize < 0 || cfg.BatchSize > maxBatch:
		return configErr("BatchSize", "%d is outside 0..%d", cfg.BatchSize, maxBatch)
	case cfg.Block < 0:
		return configErr("Block", "negative (%s)", cfg.Block)
	case cfg.Block > 0 && cfg.Block < time.Millisecond:
		return configErr("Block", "%s is below 1ms (Redis blocks in milliseconds; 0 means the default)", cfg.Block)
	case cfg.MaxDeliveries < 0:
		return configErr("MaxDeliveries", "negative (%d)", cfg.MaxDeliveries)
	case cfg.ClaimIdle < 0:
		return configErr("ClaimIdle", "negative (%s)", cfg.ClaimIdle)
	case cfg.ClaimInterval < 0:
		return configErr("ClaimInterval", "negative (%s)", cfg.ClaimInterval)
	case cfg.ShutdownTimeout < 0:
		return configErr("ShutdownTimeout", "negative (%s)", cfg.ShutdownTimeout)
	case cfg.CommitTimeout < 0:
		return configErr("CommitTimeout", "negative (%s)", cfg.CommitTimeout)
	case cfg.StateCacheSize < 0:
		return configErr("StateCacheSize", "negative (%d)", cfg.StateCacheSize)
	case cfg.Parallelism < 0 || cfg.Parallelism > 256:
		return configErr("Parallelism", "%d is outside 0..256", cfg.Parallelism)
	case cfg.Retention.MaxLen < 0:
		return configErr("Retention.MaxLen", "negative (%d)", cfg.Retention.MaxLen)
	case cfg.Retention.MaxAge < 0:
		return configErr("Retention.MaxAge", "negative (%s)", cfg.Retention.MaxAge)
	case cfg.Retention.Interval < 0:
		return configErr("Retention.Interval", "negative (%s)", cfg.Retention.Interval)
	case cfg.MaxBatchDelay < 0:
		return configErr("MaxBatchDelay", "negative (%s)", cfg.MaxBatchDelay)
	case cfg.HandlerTimeout < 0:
		return configErr("HandlerTimeout", "negative (%s)", cfg.HandlerTimeout)
	case cfg.CrossSlot != CrossSlotRefuse && cfg.CrossSlot != CrossSlotRelay:
		return configErr("CrossSlot", "unknown mode %d", cfg.CrossSlot)
	case strings.ContainsAny(cfg.Consumer, " \t\r\n"):
		return configErr("Consumer", "%q contains white space", cfg.Consumer)
	}
	if cfg.StartID == "" {
		cfg.StartID = "0"
	} else if cfg.StartID != "$" && !streamid.Valid(cfg.StartID) {
		return configErr("StartID", "%q is not \"0\", \"$\" or a stream ID", cfg.StartID)
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 100
	}
	if cfg.Block == 0 {
		cfg.Block = time.Second
	}
	if cfg.MaxDeliveries == 0 {
		cfg.MaxDeliveries = 5
	}
	if cfg.ClaimIdle == 0 {
		cfg.ClaimIdle = 30 * time.Second
	}
	if cfg.ClaimInterval == 0 {
		cfg.ClaimInterval = cfg.ClaimIdle / 2
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.CommitTimeout == 0 {
		cfg.CommitTimeout = 30 * time.Second
	}
	if cfg.Retention.Interval == 0 {
		cfg.Retention.Interval = time.Minute
	}
	// Entries wait in this consumer's hands while a read blocks or a batch
	// fills: another consumer must not find them idle meanwhile.
	if cfg.Block >= cfg.ClaimIdle {
		return configErr("ClaimIdle", "%s is not longer than Block (%s): entries waiting while a read blocks would be claimed", cfg.ClaimIdle, cfg.Block)
	}
	if cfg.MaxBatchDelay >= cfg.ClaimIdle {
		return configErr("ClaimIdle", "%s is not longer than MaxBatchDelay (%s): a filling batch would be claimed", cfg.ClaimIdle, cfg.MaxBatchDelay)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return nil
}

// Consumer consumes one stream through a consumer group, running a Handler
// on every entry and committing the handler's effects exactly once.
//
// A Consumer is safe to share between goroutines, but Run runs at most once
// at a time. Use several Consumers (with distinct Consumer names) for
// parallelism.
type Consumer struct {
	rdb      redis.UniversalClient
	cfg      Config
	h        Handler // with Config.Middleware
	meta     Handler // the handler under every wrapping (see unwrapAll)
	laneSeed maphash.Seed
	space    keys.Space
	dlq      string
	cluster  bool
	slot     int      // the source stream's cluster slot
	slots    sync.Map // publish target -> slot
	nslots   atomic.Int64
	scripts  *rdb.Scripts
	states   *txnengine.States
	env      *txnengine.Env
	log      *slog.Logger

	running   atomic.Bool
	readyOnce sync.Once
	doneOnce  sync.Once
	done      chan struct{} // closed when the first Run returns
	runErr    error         // what it returned; read after done
	ready     chan struct{}
	health    atomic.Pointer[unhealthy] // nil: healthy (see Health)

	inHand        atomic.Pointer[[]*Message] // the batch the handlers run on (see KeepAlive)
	lastKeepAlive atomic.Int64               // Unix nanoseconds

	// Owned by the Run goroutine.
	retries    map[string]time.Time // entry ID -> when to retry
	held       map[string]*heldMsg  // entries to retry as they are, without a re-delivery
	recoverOwn bool                 // re-scan own pending entries before reading new ones
	ownCursor  string
	idleCursor string
	nextClaim  time.Time
	nextTrim   time.Time
	inflight   *commitJob // the commit sent but not yet settled
	ahead      *readAhead // the read sent before the batch in hand was handled
	stopping   bool       // Run is returning: no more read-aheads
	contended  int        // batches left that refresh cached state first (after a conflict)
}

// NewConsumer validates cfg, applies its defaults and returns a Consumer. It
// does not talk to Redis: Run creates the group. Errors wrap ErrConfig and
// name the field at fault.
func NewConsumer(client redis.UniversalClient, cfg Config, h Handler) (*Consumer, error) {
	if client == nil {
		return nil, configErr("client", "nil Redis client")
	}
	if h == nil {
		return nil, configErr("handler", "nil Handler")
	}
	meta := unwrapAll(h) // what Stateful and Keyed tell the consumer
	if v, ok := meta.(interface{ validate() error }); ok {
		if err := v.validate(); err != nil {
			return nil, &ConfigError{Field: "handler", Reason: err.Error()}
		}
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.Parallelism > 1 && cfg.PartitionKey == nil {
		p, ok := meta.(interface{ partitionKey() func(*Message) string })
		if !ok || p.partitionKey() == nil {
			return nil, configErr("PartitionKey", "required with Parallelism %d for a handler that is not Keyed", cfg.Parallelism)
		}
		cfg.PartitionKey = p.partitionKey()
	}
	space, err := keys.NewSpace(cfg.Stream, cfg.Group)
	if err != nil {
		return nil, configErr("Stream", "%v", err)
	}
	_, cluster := client.(*redis.ClusterClient)
	dlq := cfg.DeadLetterStream
	if dlq == "" {
		dlq = space.DeadLetters()
	} else if cluster && keys.Slot(dlq) != keys.Slot(cfg.Stream) {
		return nil, configErr("DeadLetterStream", "%q is in another cluster slot than %q", dlq, cfg.Stream)
	}
	if dlq == cfg.Stream {
		return nil, configErr("DeadLetterStream", "is the source stream")
	}
	scripts, err := luaScripts()
	if err != nil {
		return nil, err
	}
	c := &Consumer{
		rdb:        client,
		cfg:        cfg,
		h:          Wrap(h, cfg.Middleware...),
		meta:       meta,
		laneSeed:   maphash.MakeSeed(),
		space:      space,
		dlq:        dlq,
		cluster:    cluster,
		slot:       keys.Slot(cfg.Stream),
		scripts:    scripts,
		log:        cfg.Logger.With("stream", cfg.Stream, "group", cfg.Group, "consumer", cfg.Consumer),
		ready:      make(chan struct{}),
		done:       make(chan struct{}),
		retries:    make(map[string]time.Time),
		held:       make(map[string]*heldMsg),
		ownCursor:  "0",
		idleCursor: "0-0",
	}
	c.states = txnengine.NewStates(c.loadState, c.stateKey, cfg.StateCacheSize)
	c.states.DeferEncoding(true)
	c.env = &txnengine.Env{
		States:            c.states,
		Route:             c.route,
		IdempotencyPrefix: cfg.Stream + "/" + cfg.Group + "/",
	}
	return c, nil
}

// Ready is closed once Run has created the group and starts consuming.
//
// Ready and Done together tell a caller how the first Run went, in one
// select:
//
//	select {
//	case <-c.Ready(): // consuming
//	case <-c.Done():  // Run returned before it was ready
//		return c.Err()
//	}
func (c *Consumer) Ready() <-chan struct{} { return c.ready }

// Done is closed when the first Run has returned (whether it was ready or
// not); Err then says what it returned.
func (c *Consumer) Done() <-chan struct{} { return c.done }

// Err returns what the first Run returned once Done is closed (nil for a
// cancelled context), and nil before.
func (c *Consumer) Err() error {
	select {
	case <-c.done:
		return c.runErr
	default:
		return nil
	}
}

// DeadLetterStream returns the stream that failed entries are moved to.
func (c *Consumer) DeadLetterStream() string { return c.dlq }

func (c *Consumer) stateKey(name, key string, keyed bool) string {
	if keyed {
		return c.space.KeyedState(name, key)
	}
	return c.space.State(name)
}

func (c *Consumer) loadState(ctx context.Context, keys []string) ([]record.Record, error) {
	recs, err := record.LoadMany(ctx, c.rdb, keys)
	if err != nil && !errors.Is(err, state.ErrCorrupt) {
		return nil, &storeError{err}
	}
	return recs, err
}

// slotOf returns the cluster slot of a publish target, memoised: handlers
// publish to few streams, many times.
func (c *Consumer) slotOf(stream string) int {
	if v, ok := c.slots.Load(stream); ok {
		return v.(int)
	}
	slot := keys.Slot(stream)
	if c.nslots.Add(1) <= 4096 { // bounded: some handlers publish to per-entity streams
		c.slots.Store(stream, slot)
	}
	return slot
}

// route vets a publish, and sends one for another cluster slot through the
// outbox when Config.CrossSlot says so.
func (c *Consumer) route(p *txnengine.Publish) error {
	if strings.HasPrefix(p.Stream, c.space.Base()) {
		return fmt.Errorf("%q is one of streamtx's own keys for this group", p.Stream)
	}
	if !c.cluster && c.cfg.CrossSlot != CrossSlotRelay {
		return nil // one server: every key is reachable from the script
	}
	if c.slotOf(p.Stream) == c.slot {
		return nil
	}
	switch {
	case c.cfg.CrossSlot == CrossSlotRelay:
		if _, err := keys.Forwarded(p.Stream, "", ""); err != nil {
			return err
		}
		fields := make([]string, 0, 2+len(p.Fields))
		fields = append(fields, outboxTargetField, p.Stream)
		for i := 0; i < len(p.Fields); i += 2 {
			fields = append(fields, escapeField(p.Fields[i]), p.Fields[i+1])
		}
		p.Stream, p.Fields = c.space.Outbox(), fields
	case c.cluster:
		return fmt.Errorf("%w: slot %d, source %q is in slot %d (set Config.CrossSlot to CrossSlotRelay)",
			ErrCrossSlot, c.slotOf(p.Stream), c.cfg.Stream, c.slot)
	}
	return nil
}

// Run consumes until ctx is cancelled, then drains: it stops reading, lets
// the handler in hand finish (its context is cancelled ShutdownTimeout after
// ctx), commits what succeeded, and returns nil. No goroutine of Run is left
// after it returns, and nothing of this consumer writes to Redis afterwards.
//
// Run first re-processes this consumer's own pending entries, then reads new
// ones. Connection errors and Redis error replies (NOPERM, OOM, MISCONF,
// READONLY, …) are logged, reported to the Observer and retried with backoff
// capped at 5s, and make Health return them; Run returns an error only for
// what retrying cannot fix (the stream key holds another type, or
// ErrRunning).
func (c *Consumer) Run(ctx context.Context) (err error) {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.doneOnce.Do(func() {
		c.runErr = err
		close(c.done)
	})
	defer c.running.Store(false)

	// The handler's context outlives ctx by ShutdownTimeout.
	hctx, hcancel := context.WithCancel(context.WithValue(context.WithoutCancel(ctx), keepAliveKey{}, c))
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		t := time.NewTimer(c.cfg.ShutdownTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			hcancel()
		case <-done:
		}
	}()
	defer func() {
		close(done)
		wg.Wait()
		hcancel()
	}()

	c.health.Store(nil)
	if err := c.start(ctx); err != nil || ctx.Err() != nil {
		return err
	}
	c.readyOnce.Do(func() { close(c.ready) })
	c.recoverOwn, c.ownCursor = true, "0"
	c.stopping = false
	c.states.Reset()
	defer c.settleAndRerun(ctx, hctx)
	defer c.drainAhead(ctx, hctx)
	fails := 0
	for ctx.Err() == nil {
		if err := c.step(ctx, hctx); err != nil {
			if errors.Is(err, errFatal) {
				return err
			}
			if ctx.Err() != nil {
				break // shutting down: not an operational error
			}
			fails++
			c.fault(err, nil, int64(fails))
			c.sleep(ctx, backoff(int64(fails), 50*time.Millisecond, 5*time.Second))
			continue
		}
		fails = 0
	}
	return nil
}

var errFatal = errors.New("streamtx: fatal")

// start creates the group (and stream) when missing, retrying connection
// errors until ctx is cancelled.
func (c *Consumer) start(ctx context.Context) error {
	for attempt := int64(1); ; attempt++ {
		err := c.ensureGroup(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, errFatal) {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		c.fault(err, nil, attempt)
		c.sleep(ctx, backoff(attempt, 100*time.Millisecond, 5*time.Second))
	}
}

func (c *Consumer) ensureGroup(ctx context.Context) error {
	err := c.rdb.XGroupCreateMkStream(ctx, c.cfg.Stream, c.cfg.Group, c.cfg.StartID).Err()
	if err == nil || redis.HasErrorPrefix(err, "BUSYGROUP") {
		return nil
	}
	if redis.HasErrorPrefix(err, "WRONGTYPE") {
		return fmt.Errorf("%w: stream %q: %w", errFatal, c.cfg.Stream, err)
	}
	return fmt.Errorf("streamtx: create group %q on %q: %w", c.cfg.Group, c.cfg.Stream, err)
}

// step does one unit of work: recover own entries, retry due ones, claim
// idle ones, or read new ones; then handles and commits what it got.
func (c *Consumer) step(ctx, hctx context.Context) error {
	now := time.Now()
	var msgs []*Message
	var err error
	var due []string
	claiming := false
	if c.ahead == nil {
		due = c.dueRetries(now)
		claiming = c.recoverOwn || due != nil || !now.Before(c.nextClaim)
	}
	if claiming && c.inflight != nil {
		// A claim bumps delivery counts: settle the commit in flight first,
		// or the claim could fence it.
		c.settleAndRerun(ctx, hctx)
		return nil
	}
	switch {
	case c.ahead != nil:
		// The next batch was read while the last one was handled: handle it
		// before anything else (a claim of our own entries would re-deliver
		// it).
		msgs, err = c.takeAhead(ctx)
	case c.recoverOwn:
		msgs, err = c.claimOwn(ctx)
	case due != nil:
		msgs, err = c.retry(ctx, due)
	case !now.Before(c.nextClaim):
		msgs, err = c.claimIdle(ctx)
	case c.cfg.Retention.enabled() && !now.Before(c.nextTrim):
		c.nextTrim = now.Add(c.cfg.Retention.Interval)
		err = c.retain(ctx)
	default:
		msgs, err = c.read(ctx, now)
	}
	if err != nil {
		return err
	}
	if len(msgs) > 0 {
		c.process(ctx, hctx, msgs)
	} else {
		c.settleAndRerun(ctx, hctx)
	}
	return nil
}

// read reads new entries, blocking at most Block (less when a retry is due
// sooner).
func (c *Consumer) read(ctx context.Context, now time.Time) ([]*Message, error) {
	block := c.cfg.Block
	if d := c.nextClaim.Sub(now); d < block {
		block = d
	}
	for _, due := range c.retries {
		if d := due.Sub(now); d < block {
			block = d
		}
	}
	if block < time.Millisecond {
		block = time.Millisecond
	}
	if c.inflight != nil {
		// Do not wait with a commit in flight: read what is there, and
		// settle the commit before blocking.
		block = -1
	}
	msgs, err := c.readOnce(ctx, c.cfg.BatchSize, block)
	if err != nil || len(msgs) == 0 || c.cfg.MaxBatchDelay == 0 {
		return msgs, err
	}
	// Fill the batch until MaxBatchDelay has passed.
	deadline := time.Now().Add(c.cfg.MaxBatchDelay)
	for len(msgs) < c.cfg.BatchSize {
		wait := time.Until(deadline)
		if wait < time.Millisecond || ctx.Err() != nil {
			break
		}
		more, err := c.readOnce(ctx, c.cfg.BatchSize-len(msgs), wait)
		if err != nil {
			// What was read is pending for us: handle it now.
			c.log.Warn("streamtx: read failed while filling a batch", "err", err)
			break
		}
		msgs = append(msgs, more...)
	}
	return msgs, nil
}

// readOnce reads up to count new entries, waiting at most block (no wait
// when block < 0).
func (c *Consumer) readOnce(ctx context.Context, count int, block time.Duration) ([]*Message, error) {
	msgs, err := c.fetch(ctx, count, block)
	if err != nil {
		return nil, c.readFailed(ctx, err)
	}
	if c.inflight == nil {
		c.healthy() // (with a commit in flight, its outcome decides)
	}
	return msgs, nil
}

// readFailed deals with a failed read and returns the error to report.
func (c *Consumer) readFailed(ctx context.Context, err error) error {
	if redis.HasErrorPrefix(err, "NOGROUP") {
		c.log.Warn("streamtx: group or stream vanished; creating it again")
		return c.ensureGroup(ctx)
	}
	if !refused(err) {
		// Redis may have delivered entries whose reply was lost: they are
		// pending for this consumer, so look there before reading on. (A
		// refused read delivered nothing: recovering would only count one
		// more delivery of what this consumer holds.)
		c.recoverOwn, c.ownCursor = true, "0"
	}
	return fmt.Errorf("streamtx: read %q: %w", c.cfg.Stream, err)
}

// fetch reads up to count new entries with XREADGROUP. It touches nothing
// of the consumer but its configuration and client, so a read-ahead can run
// it beside the handlers.
func (c *Consumer) fetch(ctx context.Context, count int, block time.Duration) ([]*Message, error) {
	// The read is not cancelled with ctx: a reply cut off mid-way would leave
	// entries delivered but unseen. Block bounds the wait instead.
	res, err := c.rdb.XReadGroup(context.WithoutCancel(ctx), &redis.XReadGroupArgs{
		Group:    c.cfg.Group,
		Consumer: c.cfg.Consumer,
		Streams:  []string{c.cfg.Stream, ">"},
		Count:    int64(count),
		Block:    block,
	}).Result()
	if errors.Is(err, redis.Nil) || (err == nil && len(res) == 0) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	n := 0
	for _, s := range res {
		n += len(s.Messages)
	}
	all := make([]Message, 0, n) // one allocation for the batch's messages
	msgs := make([]*Message, 0, n)
	for _, s := range res {
		for _, m := range s.Messages {
			vals := make(map[string]string, len(m.Values))
			for k, v := range m.Values {
				s, _ := v.(string)
				vals[k] = s
			}
			all = append(all, Message{Stream: c.cfg.Stream, ID: m.ID, Values: vals, Deliveries: 1})
			msgs = append(msgs, &all[len(all)-1])
		}
	}
	return msgs, nil
}

// claimOwn takes back this consumer's own pending entries, one batch per
// call, from the start of the pending list.
func (c *Consumer) claimOwn(ctx context.Context) ([]*Message, error) {
	reply, err := rdb.Run(context.WithoutCancel(ctx), c.rdb, c.scripts.Claim, []string{c.cfg.Stream},
		c.cfg.Group, c.cfg.Consumer, "own", c.ownCursor, c.cfg.BatchSize)
	if err != nil {
		return nil, c.claimErr(ctx, err)
	}
	next, entries, deleted, err := rdb.ParseClaim(reply)
	if err != nil {
		return nil, err
	}
	if next == "0-0" {
		c.recoverOwn, c.ownCursor = false, "0"
	} else {
		c.ownCursor = next
	}
	c.reportDeleted(deleted)
	return c.messages(entries), nil
}

// retry returns the entries ids for another attempt: those held back for a
// Redis fault as they are, the others re-delivered by claimIDs.
func (c *Consumer) retry(ctx context.Context, ids []string) ([]*Message, error) {
	var msgs []*Message
	claim := ids[:0:0]
	for _, id := range ids {
		if h, ok := c.held[id]; ok {
			delete(c.retries, id) // (held stays, counting attempts, until dueRetries sees it done)
			msgs = append(msgs, h.msg)
		} else {
			claim = append(claim, id)
		}
	}
	if len(claim) == 0 {
		return msgs, nil
	}
	more, err := c.claimIDs(ctx, claim)
	return append(msgs, more...), err
}

// claimIDs re-delivers the given entries to this consumer if it still owns
// them: a retry after a handler error counts as a delivery.
func (c *Consumer) claimIDs(ctx context.Context, ids []string) ([]*Message, error) {
	args := make([]any, 0, 5+len(ids))
	args = append(args, c.cfg.Group, c.cfg.Consumer, "ids", len(ids))
	for _, id := range ids {
		args = append(args, id)
	}
	reply, err := rdb.Run(context.WithoutCancel(ctx), c.rdb, c.scripts.Claim, []string{c.cfg.Stream}, args...)
	if err != nil {
		return nil, c.claimErr(ctx, err)
	}
	for _, id := range ids {
		delete(c.retries, id)
	}
	_, entries, deleted, err := rdb.ParseClaim(reply)
	if err != nil {
		return nil, err
	}
	c.reportDeleted(deleted)
	return c.messages(entries), nil
}

// claimIdle claims entries idle longer than ClaimIdle at other consumers.
func (c *Consumer) claimIdle(ctx context.Context) ([]*Message, error) {
	reply, err := rdb.Run(context.WithoutCancel(ctx), c.rdb, c.scripts.Claim, []string{c.cfg.Stream},
		c.cfg.Group, c.cfg.Consumer, "idle", c.idleCursor, c.cfg.ClaimIdle.Milliseconds(), c.cfg.BatchSize)
	if err != nil {
		c.nextClaim = time.Now().Add(c.cfg.ClaimInterval)
		return nil, c.claimErr(ctx, err)
	}
	next, entries, deleted, err := rdb.ParseClaim(reply)
	if err != nil {
		return nil, err
	}
	c.idleCursor = next
	if next == "0-0" {
		c.nextClaim = time.Now().Add(c.cfg.ClaimInterval)
	}
	c.reportDeleted(deleted)
	msgs := c.messages(entries)
	if len(msgs) > 0 {
		ids := make([]string, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
		}
		c.report(Event{Kind: EventClaim, IDs: ids})
		c.log.Info("streamtx: claimed idle entries", "count", len(ids))
	}
	return msgs, nil
}

func (c *Consumer) claimErr(ctx context.Context, err error) error {
	// A claim whose reply was lost may have moved entries to this consumer.
	c.recoverOwn, c.ownCursor = true, "0"
	if redis.HasErrorPrefix(err, "NOGROUP") {
		c.log.Warn("streamtx: group or stream vanished; creating it again")
		return c.ensureGroup(ctx)
	}
	return fmt.Errorf("streamtx: claim on %q: %w", c.cfg.Stream, err)
}

func (c *Consumer) messages(entries []rdb.Entry) []*Message {
	all := make([]Message, len(entries))
	msgs := make([]*Message, len(entries))
	for i, e := range entries {
		all[i] = Message{Stream: c.cfg.Stream, ID: e.ID, Values: e.Values, Deliveries: e.Deliveries}
		msgs[i] = &all[i]
		delete(c.held, e.ID) // delivered again: this copy replaces the one held
	}
	return msgs
}

func (c *Consumer) reportDeleted(ids []string) {
	if len(ids) == 0 {
		return
	}
	for _, id := range ids {
		delete(c.retries, id)
	}
	err := fmt.Errorf("streamtx: %d pending entries were deleted from %q before they were processed", len(ids), c.cfg.Stream)
	c.report(Event{Kind: EventError, IDs: ids, Err: err})
	c.log.Warn(err.Error(), "ids", ids)
}

// dueRetries returns the entries whose backoff has passed, oldest first, at
// most one batch; nil when none is due.
func (c *Consumer) dueRetries(now time.Time) []string {
	var ids []string
	for id, due := range c.retries {
		if !due.After(now) {
			ids = append(ids, id)
		}
	}
	for id := range c.held {
		if _, ok := c.retries[id]; !ok {
			delete(c.held, id) // re-delivered and handled meanwhile
		}
	}
	if len(ids) == 0 {
		return nil
	}
	sort.Slice(ids, func(i, j int) bool { return rdb.IDLess(ids[i], ids[j]) })
	if len(ids) > c.cfg.BatchSize {
		ids = ids[:c.cfg.BatchSize]
	}
	return ids
}

// item is a handled entry with its sealed transaction.
type item struct {
	msg *Message
	tx  *txnengine.Tx
}

// process runs the handler on msgs and sends their commit, which runs
// while the next batch is read and handled. The commit before it is settled
// first: if it was refused, the state this batch was handled on is gone, and
// both are handled again (synchronously).
func (c *Consumer) process(ctx, hctx context.Context, msgs []*Message) {
	if msgs = c.isolateSuspects(ctx, hctx, msgs); len(msgs) == 0 {
		return
	}
	// With a backlog, read the next batch now: Redis serves it (and the
	// commit in flight) while the handlers run, instead of after.
	backlog := len(msgs) == c.cfg.BatchSize && c.cfg.BatchSize > 1
	if backlog && c.ahead == nil && ctx.Err() == nil && !c.stopping {
		c.startReadAhead(ctx)
	}
	items := c.handle(hctx, msgs)
	if rerun, ok := c.settle(ctx); !ok {
		c.processSync(ctx, hctx, append(rerun, messagesOf(items)...))
		return
	}
	if len(items) == 0 {
		return
	}
	// Overlap the commit with the next read only when there is a backlog:
	// otherwise it would only delay the outcome by a read.
	c.inflight = c.startCommit(ctx, items, backlog)
	if !backlog {
		c.settleAndRerun(ctx, hctx)
	}
}

// drainAhead handles what a read-ahead delivered, when Run stops with one
// in flight: those entries are pending for this consumer already.
func (c *Consumer) drainAhead(ctx, hctx context.Context) {
	c.stopping = true
	if c.ahead == nil {
		return
	}
	msgs, err := c.takeAhead(ctx)
	if err != nil {
		c.log.Warn("streamtx: read-ahead failed while stopping", "err", err)
		return
	}
	if len(msgs) > 0 {
		c.process(ctx, hctx, msgs)
	}
}

// readAhead is a read sent before the batch in hand is handled.
type readAhead struct {
	done chan struct{}
	msgs []*Message
	err  error
}

func (c *Consumer) startReadAhead(ctx context.Context) {
	ra := &readAhead{done: make(chan struct{})}
	c.ahead = ra
	go func() {
		defer close(ra.done)
		ra.msgs, ra.err = c.fetch(ctx, c.cfg.BatchSize, -1)
	}()
}

// takeAhead waits for the read-ahead and returns what it read.
func (c *Consumer) takeAhead(ctx context.Context) ([]*Message, error) {
	ra := c.ahead
	c.ahead = nil
	<-ra.done
	if ra.err != nil {
		return nil, c.readFailed(ctx, ra.err)
	}
	return ra.msgs, nil
}

// settleAndRerun settles the commit in flight and handles again what it
// could not commit.
func (c *Consumer) settleAndRerun(ctx, hctx context.Context) {
	if rerun, ok := c.settle(ctx); !ok {
		c.processSync(ctx, hctx, rerun)
	}
}

// processSync handles and commits msgs, re-running them as long as the
// commit is refused for a reason a re-run can fix.
func (c *Consumer) processSync(ctx, hctx context.Context, msgs []*Message) {
	for attempt := 1; len(msgs) > 0; attempt++ {
		if ctx.Err() != nil && hctx.Err() != nil {
			return
		}
		if attempt > 2 {
			// Contended state: let the other consumer's commit through.
			c.sleep(hctx, backoff(int64(attempt-2), time.Millisecond, 100*time.Millisecond))
		}
		items := c.handle(hctx, msgs)
		if len(items) == 0 {
			return
		}
		c.inflight = c.startCommit(ctx, items, false)
		msgs, _ = c.settle(ctx)
	}
}

// unique drops repeated entries from msgs. Two copies of an entry reach one
// batch when a commit's entries are re-run together with the next batch and
// Redis delivered some of them again meanwhile (a failover to a replica that
// had not seen the first delivery). Both copies would pass the commit's
// ownership check, so both would apply. The copy delivered last (the highest
// delivery count, the one Redis holds now) is kept, at the first one's place.
func unique(msgs []*Message) []*Message {
	if len(msgs) < 2 {
		return msgs
	}
	at := make(map[string]int, len(msgs))
	out := make([]*Message, 0, len(msgs))
	for _, m := range msgs {
		if i, ok := at[m.ID]; ok {
			if m.Deliveries > out[i].Deliveries {
				out[i] = m
			}
			continue
		}
		at[m.ID] = len(out)
		out = append(out, m)
	}
	return out
}

func messagesOf(items []item) []*Message {
	msgs := make([]*Message, len(items))
	for i, it := range items {
		msgs[i] = it.msg
	}
	return msgs
}

// handle runs the handler on every message, each in its own transaction. A
// failed transaction is rolled back and its entry scheduled for retry or
// dead-lettered; the successful ones are returned, in the order of msgs.
func (c *Consumer) handle(hctx context.Context, msgs []*Message) []item {
	msgs = unique(msgs)
	c.inHand.Store(&msgs)
	defer c.inHand.Store(nil)
	txs := make([]*txnengine.Tx, len(msgs))
	errs := make([]error, len(msgs))
	if p, ok := c.meta.(interface{ stateRef(*Message) txnengine.Ref }); ok {
		refs := make([]txnengine.Ref, len(msgs))
		for i, m := range msgs {
			refs[i] = p.stateRef(m)
		}
		refresh := c.contended > 0
		if refresh {
			c.contended--
		}
		if err := c.states.Prefetch(hctx, refs, refresh); err != nil {
			// The handlers load what they need themselves, and fail if
			// Redis is really gone.
			c.log.Warn("streamtx: prefetching state failed", "err", err)
		}
	}
	// State changes are encoded once, at the end of the batch. A handler
	// that fails after an earlier entry of the batch changed a record it
	// touched leaves that record unusable: the batch's records go back to
	// where they were, and its other entries run again (each pass leaves
	// out one more failed entry). A value that does not encode sends the
	// batch round once more encoding at every entry, to fail just the entry
	// that made it.
	run := make([]int, len(msgs))
	for i := range run {
		run[i] = i
	}
	for len(run) > 0 {
		c.handlePass(hctx, msgs, run, txs, errs)
		restore := c.states.NeedsRestore()
		if !restore {
			if err := c.states.EncodeBatch(); err != nil {
				c.log.Warn("streamtx: state does not encode; handling the batch again, encoding after every entry", "err", err)
				c.states.DeferEncoding(false)
				restore = true
			}
		}
		if !restore {
			break
		}
		c.states.RestoreBatch()
		next := run[:0]
		for _, i := range run {
			if errs[i] == nil {
				next = append(next, i)
			}
		}
		run = next
	}
	c.states.DeferEncoding(true)
	items := make([]item, 0, len(msgs))
	for i, m := range msgs {
		delete(c.retries, m.ID)
		if errs[i] != nil {
			c.failed(hctx, m, errs[i])
			continue
		}
		items = append(items, item{m, txs[i]})
	}
	return items
}

// handlePass handles msgs[i] for every i in run, in order (in lanes when
// Parallelism asks for them), into txs[i] and errs[i].
func (c *Consumer) handlePass(hctx context.Context, msgs []*Message, run []int, txs []*txnengine.Tx, errs []error) {
	if c.cfg.Parallelism > 1 && len(run) > 1 {
		c.handleLanes(hctx, msgs, run, txs, errs)
		return
	}
	all := make([]txnengine.Tx, len(run)) // one allocation for the pass's transactions
	for k, i := range run {
		all[k].Reset(c.env, msgs[i].ID, 0)
		txs[i] = &all[k]
		errs[i] = c.handleOne(hctx, msgs[i], txs[i])
		if errs[i] != nil && c.states.NeedsRestore() {
			return // the rest would see a record the failure left behind
		}
	}
}

// handleOne runs the handler in tx and seals it, or rolls it back.
func (c *Consumer) handleOne(hctx context.Context, m *Message, tx *txnengine.Tx) error {
	if g, ok := m.Values[replayGroupField]; ok && g != c.cfg.Group {
		// Replayed for another group: acknowledge, do not handle.
		return nil
	}
	err := c.call(hctx, m, tx)
	if err == nil {
		err = tx.Seal()
	}
	if err != nil {
		tx.Rollback()
	}
	return err
}

// handleLanes handles the msgs run names in Parallelism lanes by partition key, each lane
// in order, and waits for all of them.
func (c *Consumer) handleLanes(hctx context.Context, msgs []*Message, run []int, txs []*txnengine.Tx, errs []error) {
	c.states.BeginBatch()
	n := c.cfg.Parallelism
	lanes := make([][]int, n)
	for _, i := range run {
		l := int(maphash.String(c.laneSeed, c.cfg.PartitionKey(msgs[i])) % uint64(n))
		lanes[l] = append(lanes[l], i)
	}
	var wg sync.WaitGroup
	for l, idx := range lanes {
		if len(idx) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, i := range idx {
				txs[i] = txnengine.NewInLane(c.env, msgs[i].ID, l+1)
				errs[i] = c.handleOne(hctx, msgs[i], txs[i])
				if errs[i] != nil && c.states.NeedsRestore() {
					return // the rest of the lane would see what the failure left
				}
			}
		}()
	}
	wg.Wait()
}

func (c *Consumer) call(ctx context.Context, m *Message, tx *txnengine.Tx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	if c.cfg.HandlerTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.HandlerTimeout)
		defer cancel()
	}
	return c.h.Handle(ctx, m, (*txn.Tx)(tx))
}

// failed decides what happens to an entry whose handler failed: retry after
// a backoff, or dead-letter it.
func (c *Consumer) failed(hctx context.Context, m *Message, err error) {
	if hctx.Err() != nil {
		// Shutting down: the entry stays pending for the next owner.
		return
	}
	var se *storeError
	if errors.As(err, &se) {
		c.hold(m, err)
		return
	}
	permanent := IsPermanent(err) || errors.Is(err, txn.ErrBadPublish)
	if permanent || m.Deliveries >= c.cfg.MaxDeliveries {
		c.deadLetter(hctx, m, err)
		return
	}
	d := c.backoff(m, err)
	c.retries[m.ID] = time.Now().Add(d)
	c.report(Event{Kind: EventRetry, IDs: []string{m.ID}, Deliveries: m.Deliveries, Err: err})
	c.log.Info("streamtx: handler failed; will retry", "id", m.ID, "deliveries", m.Deliveries, "in", d, "err", err)
}

// hold keeps m to handle again as it is, after a backoff: Redis failed
// under its handler (see storeError), which is not the entry's fault, so it
// must not cost it a delivery.
func (c *Consumer) hold(m *Message, err error) {
	h := c.held[m.ID]
	if h == nil {
		h = &heldMsg{}
	}
	h.msg = m
	h.attempts++
	c.held[m.ID] = h
	c.retries[m.ID] = time.Now().Add(backoff(h.attempts, 50*time.Millisecond, 5*time.Second))
	c.fault(err, []string{m.ID}, h.attempts)
}

// heldMsg is an entry held back by hold.
type heldMsg struct {
	msg      *Message
	attempts int64
}

func (c *Consumer) backoff(m *Message, err error) time.Duration {
	if c.cfg.Backoff != nil {
		return min(max(c.cfg.Backoff(m, err), 0), c.cfg.ClaimIdle/2)
	}
	return backoff(m.Deliveries, 100*time.Millisecond, min(10*time.Second, c.cfg.ClaimIdle/2))
}

// backoff is exponential from base, capped, with ±20% jitter.
func backoff(n int64, base, cap time.Duration) time.Duration {
	d := base
	for i := int64(1); i < n && d < cap; i++ {
		d *= 2
	}
	d = min(d, cap)
	j := time.Duration(float64(d) * 0.2 * (2*rand.Float64() - 1))
	return d + j
}

func (c *Consumer) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (c *Consumer) report(e Event) {
	if c.cfg.Observer == nil {
		return
	}
	e.Stream, e.Group, e.Consumer = c.cfg.Stream, c.cfg.Group, c.cfg.Consumer
	c.cfg.Observer.Observe(e)
}
