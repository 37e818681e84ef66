package streamtx

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/partition"
	"github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/internal/streamid"
	"github.com/streamtx/streamtx/internal/txnengine"
	"github.com/streamtx/streamtx/state"
)

// Config configures a Consumer. The zero value of every optional field means
// its default; no zero value blocks forever.
type Config struct {
	// Stream is the source stream. Required, unless Topic is set.
	Stream string
	// Topic is the partitioned topic to consume instead of a stream
	// (exclusive with Stream; create it with CreateTopic). The consumer
	// joins the group's membership and consumes the partitions it is
	// assigned, each under a fenced lease, keeping the order of the entries
	// of each key (see "Partitioned topics" in the package docs).
	Topic string
	// Group is the consumer group; created (with the stream) when missing.
	// Required.
	Group string
	// Consumer is this process's name in the group. On a topic it is the
	// member's name (each Run joins as a new instance of it). On a stream it must be stable across
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
	// Tracing, when set, gets a span for each handler run and each commit
	// and dead-letter move, and the trace context travels in the entries the
	// handler publishes and dead-letters (see Tracing; contrib/otel
	// implements it with OpenTelemetry). Default: none.
	Tracing Tracing
	// Clock gives the time written into dead letters. Default time.Now.
	Clock func() time.Time
	// Parallelism is how many entries of one batch may be handled at once,
	// in lanes by PartitionKey: entries with one key are handled in order,
	// in one lane. Handlers should then touch only the state of their own
	// key (Keyed): a record touched from two lanes in one batch gives the
	// later lane txn.ErrLaneConflict (return it), and that lane's remaining
	// entries run after the lanes, one at a time, in the same batch — no
	// retry, no delivery counted. Default 1: one entry at a time.
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

	// LeaseTTL (topics only) is how long a partition's lease lasts without
	// a heartbeat: a consumer that dies or pauses loses its partitions to
	// the other members within LeaseTTL + Heartbeat. Default 10s; at least
	// 100ms.
	LeaseTTL time.Duration
	// Heartbeat (topics only) is the pause between two heartbeats, which
	// renew membership and leases and rebalance partitions. Default
	// LeaseTTL/3; less than LeaseTTL/2.
	Heartbeat time.Duration
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
	case cfg.Stream == "" && cfg.Topic == "":
		return configErr("Stream", "required (or Topic)")
	case cfg.Stream != "" && cfg.Topic != "":
		return configErr("Topic", "set with Stream %q: a consumer reads a stream or a topic, not both", cfg.Stream)
	case cfg.Topic != "" && partition.CheckName(cfg.Topic) != nil:
		return configErr("Topic", "%q: %v", cfg.Topic, partition.CheckName(cfg.Topic))
	case cfg.Topic != "" && cfg.PartitionKey != nil:
		return configErr("PartitionKey", "set for topic %q: a topic's lanes are its entries' keys", cfg.Topic)
	case cfg.LeaseTTL < 0:
		return configErr("LeaseTTL", "negative (%s)", cfg.LeaseTTL)
	case cfg.Heartbeat < 0:
		return configErr("Heartbeat", "negative (%s)", cfg.Heartbeat)
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
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	if cfg.LeaseTTL < 100*time.Millisecond {
		return configErr("LeaseTTL", "%s is below 100ms", cfg.LeaseTTL)
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = cfg.LeaseTTL / 3
	}
	if cfg.Heartbeat >= cfg.LeaseTTL/2 {
		return configErr("Heartbeat", "%s is not less than half of LeaseTTL (%s): a lease would expire between two renewals", cfg.Heartbeat, cfg.LeaseTTL)
	}
	if cfg.Topic != "" {
		cfg.PartitionKey = entryKey
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
	topics   topicCache // for tx.PublishKeyed
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

	// Topics: a consumer of a topic runs a partition consumer (a Consumer
	// of the partition's stream, behind its lease) per partition it owns.
	orig      Handler                // the handler as given, for the partition consumers
	name      string                 // the consumer's name in events and logs (Config.Consumer)
	partition int                    // the partition this consumer consumes, or -1
	fence     *rdb.Fence             // the lease a partition consumer holds, or nil
	record    rdb.Record             // a partition consumer's commit record, as of its last commit
	topic     string                 // Config.Topic, also for the partition consumers
	ordered   bool                   // keep the order of each key's entries (a partition consumer)
	lost      func()                 // stops a partition consumer whose lease is gone
	members   atomic.Pointer[member] // a topic consumer's Run
}

// runner is the state of one Run, owned by its goroutine: what the stages
// (read → handle → commit → settle, see pipeline.go) leave for each other.
// The read stage consumes recoverOwn, retries and held; the settle stage
// produces them.
type runner struct {
	*Consumer

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

	// A partition consumer keeps each key's entries in order (see order.go).
	waiting []*Message        // entries held back behind an earlier entry of their key, in ID order
	keyOf   map[string]string // entry ID -> key, of the entries in retries
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
	if cfg.Topic != "" {
		if _, cluster := client.(*redis.ClusterClient); cluster && cfg.DeadLetterStream != "" {
			return nil, configErr("DeadLetterStream", "set for topic %q on a cluster: a partition's dead letters must be in its slot (leave it empty: each partition has its own)", cfg.Topic)
		}
		return &Consumer{
			rdb: client, cfg: cfg, h: Wrap(h, cfg.Middleware...), meta: meta, orig: h,
			name: cfg.Consumer, partition: -1, topic: cfg.Topic,
			log:   cfg.Logger.With("topic", cfg.Topic, "group", cfg.Group, "consumer", cfg.Consumer),
			ready: make(chan struct{}),
			done:  make(chan struct{}),
		}, nil
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
		rdb:       client,
		cfg:       cfg,
		h:         Wrap(h, cfg.Middleware...),
		meta:      meta,
		laneSeed:  maphash.MakeSeed(),
		space:     space,
		dlq:       dlq,
		cluster:   cluster,
		slot:      keys.Slot(cfg.Stream),
		scripts:   scripts,
		orig:      h,
		name:      cfg.Consumer,
		partition: -1,
		log:       cfg.Logger.With("stream", cfg.Stream, "group", cfg.Group, "consumer", cfg.Consumer),
		ready:     make(chan struct{}),
		done:      make(chan struct{}),
	}
	c.states = txnengine.NewStates(c.loadState, c.stateKey, cfg.StateCacheSize)
	c.states.DeferEncoding(true)
	c.env = &txnengine.Env{
		States:            c.states,
		Route:             c.route,
		IdempotencyPrefix: cfg.Stream + "/" + cfg.Group + "/",
		Topic:             c.topics.resolver(client),
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

// DeadLetterStream returns the stream that failed entries are moved to. For
// a consumer of a topic it is Config.DeadLetterStream, or "" when each
// partition has its own (Topic.DeadLetterStream).
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
	if c.cfg.Topic != "" {
		return c.runTopic(ctx)
	}
	if err := c.start(ctx); err != nil || ctx.Err() != nil {
		return err
	}
	c.readyOnce.Do(func() { close(c.ready) })
	c.states.Reset()
	r := c.newRunner()
	defer r.settleAndRerun(ctx, hctx)
	defer r.drainAhead(ctx, hctx)
	fails := 0
	for ctx.Err() == nil {
		if err := r.step(ctx, hctx); err != nil {
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

// newRunner returns the state of a new Run: this consumer's pending
// entries are read first.
func (c *Consumer) newRunner() *runner {
	r := &runner{
		Consumer:   c,
		retries:    make(map[string]time.Time),
		held:       make(map[string]*heldMsg),
		recoverOwn: true,
		ownCursor:  "0",
		idleCursor: "0-0",
		keyOf:      make(map[string]string),
	}
	return r
}

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
	if c.cfg.Topic == "" { // (a topic consumer's own events name their partition)
		e.Stream, e.Partition = c.cfg.Stream, c.partition
	} else if e.Stream == "" {
		e.Partition = -1
	}
	e.Topic = c.topic
	e.Group, e.Consumer = c.cfg.Group, c.name
	c.cfg.Observer.Observe(e)
}
