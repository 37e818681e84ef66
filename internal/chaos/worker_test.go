//go:build linux

package chaos

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	stxrdb "github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/txn"
)

// Environment variables that make the test binary a worker. TestChaos sets
// them when it re-executes itself; without envRole the worker test is a
// no-op that passes.
const (
	envRole          = "STREAMTX_CHAOS_ROLE" // "worker"
	envAddr          = "STREAMTX_CHAOS_ADDR" // Redis address (the fault proxy)
	envStream        = "STREAMTX_CHAOS_STREAM"
	envGroup         = "STREAMTX_CHAOS_GROUP"
	envConsumer      = "STREAMTX_CHAOS_CONSUMER"
	envHandler       = "STREAMTX_CHAOS_HANDLER" // handlerCounter or handlerKeyed
	envOut           = "STREAMTX_CHAOS_OUT"     // stream the handler publishes to
	envBatch         = "STREAMTX_CHAOS_BATCH"
	envRetries       = "STREAMTX_CHAOS_RETRIES" // go-redis MaxRetries
	envPace          = "STREAMTX_CHAOS_PACE"    // file holding the read delay in µs
	envBlock         = "STREAMTX_CHAOS_BLOCK"
	envClaimIdle     = "STREAMTX_CHAOS_CLAIM_IDLE"
	envClaimInterval = "STREAMTX_CHAOS_CLAIM_INTERVAL"
	envCommitTimeout = "STREAMTX_CHAOS_COMMIT_TIMEOUT"
	envMaxDeliveries = "STREAMTX_CHAOS_MAX_DELIVERIES"

	// A consumer of a topic (handlerTopic) instead of envStream.
	envTopic     = "STREAMTX_CHAOS_TOPIC"
	envLeaseTTL  = "STREAMTX_CHAOS_LEASE_TTL"
	envHeartbeat = "STREAMTX_CHAOS_HEARTBEAT"

	// Optional, for the counter handler only.
	envHandlerDelay = "STREAMTX_CHAOS_HANDLER_DELAY" // work per entry; default handlerDelay
	envHoldAt       = "STREAMTX_CHAOS_HOLD_AT"       // k: on its k-th entry, say holdLine and block until killed
	envExitOn       = "STREAMTX_CHAOS_EXIT_ON"       // i: os.Exit(exitCode) whenever handling the entry with field i

	// Optional, for the topic handler only: after handling the entry with
	// field i (the first time in this process), say holdLine and return
	// only once the file envRelease exists.
	envHoldI   = "STREAMTX_CHAOS_HOLD_I"
	envRelease = "STREAMTX_CHAOS_RELEASE"
)

// Handler kinds.
const (
	handlerCounter = "counter" // Stateful: one counter for the group
	handlerKeyed   = "keyed"   // Keyed by field k: one counter per key
	handlerTopic   = "topic"   // Keyed by the entry's key on a topic: last seq and count per key
)

// handlerDelay is how long a handler works on an entry by default: long
// enough that faults catch entries in hand, short enough that a batch stays
// far below ClaimIdle. envHandlerDelay overrides it.
const handlerDelay = time.Millisecond

// exitCode is the code a worker exits with when its handler meets the entry
// of envExitOn: a handler that kills its process.
const exitCode = 3

// stateName is the state name both handlers use.
const stateName = "counter"

// Lines a worker writes to its stdout for the harness.
const (
	readyLine   = "chaos-worker ready"
	stoppedLine = "chaos-worker stopped"
	eventPrefix = "chaos-event "
	holdLine    = "chaos-worker holding" // the handler blocks on its envHoldAt-th entry
	// orderPrefix starts the line of a topic handler given an entry that
	// does not follow the last one applied to its key's state: an earlier
	// entry of the key is missing (gap) or the entry was applied already
	// (replay).
	orderPrefix = "chaos-inversion "
	// refusedPrefix starts the line of a script refused by its lease's
	// fence (an error reply starting rdb.FencedPrefix).
	refusedPrefix = "chaos-refused "
)

// topicStateName is the keyed state of the topic handler.
const topicStateName = "seq"

// seqState is the topic handler's state of one key: the sequence number of
// the last entry applied and how many entries were applied.
type seqState struct {
	Seq int
	N   int
}

// counterState is the state of both handlers.
type counterState struct{ N int }

// TestChaosWorker is the body of a worker process started by TestChaos. Run
// normally (without STREAMTX_CHAOS_ROLE=worker) it does nothing and passes.
// As a worker it runs one streamtx.Consumer through the fault proxy until
// SIGTERM, then returns, so the process exits 0.
func TestChaosWorker(t *testing.T) {
	if os.Getenv(envRole) != "worker" {
		return // not a worker process: nothing to do
	}
	env := func(name string) string {
		v := os.Getenv(name)
		if v == "" {
			t.Fatalf("chaos worker: %s is not set", name)
		}
		return v
	}
	atoi := func(name string) int {
		n, err := strconv.Atoi(env(name))
		if err != nil {
			t.Fatalf("chaos worker: %s: %v", name, err)
		}
		return n
	}
	dur := func(name string) time.Duration {
		d, err := time.ParseDuration(env(name))
		if err != nil {
			t.Fatalf("chaos worker: %s: %v", name, err)
		}
		return d
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	var outMu sync.Mutex // one line per write on stdout
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
	name, out := env(envConsumer), env(envOut)
	pace := &readPace{path: env(envPace)}
	var h streamtx.Handler
	switch kind := env(envHandler); kind {
	case handlerCounter:
		// The counter handler never returns an error (every entry has a
		// field i): whatever happens to its entries is the harness's doing.
		// Its work is not cut short by shutdown either.
		delay := handlerDelay
		if v := os.Getenv(envHandlerDelay); v != "" {
			delay = dur(envHandlerDelay)
		}
		holdAt, exitOn := 0, os.Getenv(envExitOn)
		if os.Getenv(envHoldAt) != "" {
			holdAt = atoi(envHoldAt)
		}
		handled := 0 // entries this process has started handling
		h = streamtx.Stateful(stateName, func(ctx context.Context, msg *streamtx.Message, s *counterState, tx *txn.Tx) error {
			if msg.Values["i"] == "" {
				return streamtx.Permanent(errors.New("entry has no field i"))
			}
			handled++
			if exitOn != "" && msg.Values["i"] == exitOn {
				say("chaos-exit src=%s i=%s d=%d code=%d", msg.ID, exitOn, msg.Deliveries, exitCode)
				os.Exit(exitCode)
			}
			if handled == holdAt {
				say("%s src=%s i=%s k=%d d=%d", holdLine, msg.ID, msg.Values["i"], handled, msg.Deliveries)
				for {
					time.Sleep(time.Hour) // until the harness kills the process
				}
			}
			time.Sleep(delay)
			s.N++
			say("chaos-handled src=%s n=%d d=%d", msg.ID, s.N, msg.Deliveries)
			return tx.Publish(out, map[string]any{
				"src": msg.ID, "n": s.N, "by": name, "d": msg.Deliveries,
			})
		})
	case handlerKeyed:
		key := func(msg *streamtx.Message) string { return msg.Values["k"] }
		h = streamtx.Keyed(stateName, key, func(ctx context.Context, msg *streamtx.Message, s *counterState, tx *txn.Tx) error {
			if msg.Values["k"] == "" {
				return streamtx.Permanent(errors.New("entry has no field k"))
			}
			if err := sleep(ctx, handlerDelay); err != nil {
				return err
			}
			s.N++
			say("chaos-handled src=%s k=%s n=%d d=%d", msg.ID, msg.Values["k"], s.N, msg.Deliveries)
			return tx.Publish(out, map[string]any{
				"src": msg.ID, "k": msg.Values["k"], "n": s.N, "by": name, "d": msg.Deliveries,
			})
		})
	case handlerTopic:
		h = topicHandler(t, name, out, say)
	default:
		t.Fatalf("chaos worker: unknown handler kind %q", kind)
	}

	rdb := redis.NewClient(&redis.Options{
		Addr:        env(envAddr),
		MaxRetries:  atoi(envRetries),
		DialTimeout: time.Second,
	})
	defer rdb.Close()
	names := scriptNames(t)
	rdb.AddHook(readThrottle{pace: pace, stop: ctx, read: names.read})
	rdb.AddHook(refusalLog{names: names.all, say: say})

	cfg := streamtx.Config{
		Group:           env(envGroup),
		Consumer:        name,
		BatchSize:       atoi(envBatch),
		Block:           dur(envBlock),
		ClaimIdle:       dur(envClaimIdle),
		ClaimInterval:   dur(envClaimInterval),
		CommitTimeout:   dur(envCommitTimeout),
		MaxDeliveries:   int64(atoi(envMaxDeliveries)),
		ShutdownTimeout: 5 * time.Second,
		Backoff: func(m *streamtx.Message, _ error) time.Duration {
			return min(time.Duration(m.Deliveries)*5*time.Millisecond, 50*time.Millisecond)
		},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Observer: streamtx.ObserverFunc(func(ev streamtx.Event) {
			msg := ""
			if ev.Err != nil {
				msg = ev.Err.Error()
			}
			ids := ev.IDs
			if len(ids) > 16 {
				ids = ids[:16]
			}
			say("%s%s n=%d ids=%s deliveries=%d p=%d epoch=%d err=%q", eventPrefix, ev.Kind, len(ev.IDs), strings.Join(ids, ","), ev.Deliveries, ev.Partition, ev.Epoch, msg)
		}),
	}
	if topic := os.Getenv(envTopic); topic != "" {
		cfg.Topic = topic
		cfg.LeaseTTL = dur(envLeaseTTL)
		cfg.Heartbeat = dur(envHeartbeat)
	} else {
		cfg.Stream = env(envStream)
	}
	c, err := streamtx.NewConsumer(rdb, cfg, h)
	if err != nil {
		t.Fatalf("chaos worker: %v", err)
	}

	pace.load() // before the first read
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		pace.run(ctx)
	}()
	go func() {
		defer wg.Done()
		select {
		case <-c.Ready():
			say("%s pid=%d", readyLine, os.Getpid())
		case <-ctx.Done():
		}
	}()
	err = c.Run(ctx)
	stop()
	wg.Wait()
	if err != nil {
		t.Fatalf("chaos worker: Run: %v", err)
	}
	say(stoppedLine)
}

// readPace is the delay before each read of new entries, which the
// harness sets through a file so that the preloaded entries last as long as
// the fault phase.
type readPace struct {
	path  string
	delay atomic.Int64 // µs
}

// run re-reads the pace file every 50ms until ctx is done.
func (p *readPace) run(ctx context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		p.load()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// load reads the pace file.
func (p *readPace) load() {
	if b, err := os.ReadFile(p.path); err == nil {
		if us, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			p.delay.Store(us)
		}
	}
}

// readThrottle delays every read of new entries by the current pace: an
// XREADGROUP, or on a topic the fenced read script (read). It throttles
// new work without keeping entries in hand: an entry is pending only once
// the read returns it.
type readThrottle struct {
	pace *readPace
	stop context.Context // the worker's life: shutdown is not delayed
	read string          // SHA1 of the fenced read script
}

func (readThrottle) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h readThrottle) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "xreadgroup" || (cmd.Name() == "evalsha" && scriptArg(cmd) == h.read) {
			sleep(h.stop, time.Duration(h.pace.delay.Load())*time.Microsecond)
		}
		return next(ctx, cmd)
	}
}

func (readThrottle) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// sleep waits for d, or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// topicHandler is the handler of handlerTopic: Keyed by the entry's own
// key, it applies the entry's per-key sequence number (field seq) to the
// key's state {last seq, count} and publishes {src, k, seq, n, p, by, d}
// to out. An entry whose seq does not follow the state's last one is said
// on a line starting orderPrefix: the harness counts each as an inversion
// the handler saw.
func topicHandler(t *testing.T, name, out string, say func(string, ...any)) streamtx.Handler {
	holdI, release := os.Getenv(envHoldI), os.Getenv(envRelease)
	if holdI != "" && release == "" {
		t.Fatalf("chaos worker: %s without %s", envHoldI, envRelease)
	}
	var held atomic.Bool // the entry holdI was held once in this process
	return streamtx.Keyed(topicStateName, nil, func(ctx context.Context, msg *streamtx.Message, s *seqState, tx *txn.Tx) error {
		seq, err := strconv.Atoi(msg.Values["seq"])
		if err != nil || msg.Key == "" || msg.Values["k"] != msg.Key {
			return streamtx.Permanent(fmt.Errorf("entry %s: bad seq %q or key %q (field k %q)", msg.ID, msg.Values["seq"], msg.Key, msg.Values["k"]))
		}
		if seq != s.Seq+1 {
			kind := "gap"
			if seq <= s.Seq {
				kind = "replay"
			}
			say("%s%s src=%s k=%s seq=%d last=%d n=%d p=%d d=%d at=%d", orderPrefix, kind, msg.ID, msg.Key, seq, s.Seq, s.N, msg.Partition, msg.Deliveries, time.Now().UnixMicro())
		}
		if err := sleep(ctx, handlerDelay); err != nil {
			return err
		}
		s.Seq, s.N = seq, s.N+1
		say("chaos-handled src=%s k=%s seq=%d n=%d p=%d d=%d", msg.ID, msg.Key, seq, s.N, msg.Partition, msg.Deliveries)
		if err := tx.Publish(out, map[string]any{
			"src": msg.ID, "k": msg.Key, "seq": seq, "n": s.N, "p": msg.Partition, "by": name, "d": msg.Deliveries,
		}); err != nil {
			return err
		}
		if holdI != "" && msg.Values["i"] == holdI && held.CompareAndSwap(false, true) {
			// Handled and published, not committed: the harness stops the
			// process here and lets it go on once others took over.
			say("%s src=%s i=%s k=%s seq=%d p=%d d=%d", holdLine, msg.ID, holdI, msg.Key, seq, msg.Partition, msg.Deliveries)
			for {
				if _, err := os.Stat(release); err == nil {
					break
				}
				time.Sleep(5 * time.Millisecond) // polling for the harness's release file
			}
			say("chaos-worker released src=%s", msg.ID)
		}
		return nil
	})
}

// scripts names the scripts a worker runs, by SHA1.
type scripts struct {
	all  map[string]string // SHA1 -> file name, plain and fenced
	read string            // the fenced read script (a topic's read of new entries)
}

// scriptNames reads the scripts from the sources (the worker runs in the
// package directory, as TestChaos does).
func scriptNames(t *testing.T) scripts {
	plain, err := stxrdb.NewScripts(os.DirFS("../../lua"))
	if err != nil {
		t.Fatalf("chaos worker: %v", err)
	}
	fenced := plain.Fenced()
	out := scripts{all: make(map[string]string), read: fenced.Read.Hash()}
	for _, set := range []struct {
		s      *stxrdb.Scripts
		suffix string
	}{{plain, ""}, {fenced, "(fenced)"}} {
		for name, sc := range map[string]*redis.Script{
			"commit": set.s.Commit, "claim": set.s.Claim, "deadletter": set.s.DeadLetter,
			"keepalive": set.s.KeepAlive, "read": set.s.Read, "lease": set.s.Lease, "members": set.s.Members,
		} {
			if _, ok := out.all[sc.Hash()]; !ok {
				out.all[sc.Hash()] = name + set.suffix
			}
		}
	}
	return out
}

// scriptArg returns the SHA1 (EVALSHA) or the SHA1 of the source (EVAL) of
// a script command, or "".
func scriptArg(cmd redis.Cmder) string {
	args := cmd.Args()
	if len(args) < 2 {
		return ""
	}
	s, _ := args[1].(string)
	if cmd.Name() == "eval" {
		sum := sha1.Sum([]byte(s))
		return hex.EncodeToString(sum[:])
	}
	return s
}

// refusalLog says, on a line starting refusedPrefix, every script that a
// lease's fence refused: which script and the error reply.
type refusalLog struct {
	names map[string]string
	say   func(string, ...any)
}

func (refusalLog) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h refusalLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err != nil && redis.HasErrorPrefix(err, stxrdb.FencedPrefix) {
			name := h.names[scriptArg(cmd)]
			if name == "" {
				name = "unknown"
			}
			h.say("%sscript=%s err=%q", refusedPrefix, name, err.Error())
		}
		return err
	}
}

func (refusalLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
