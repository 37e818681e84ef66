//go:build linux

package chaos

import (
	"context"
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

	// Optional, for the counter handler only.
	envHandlerDelay = "STREAMTX_CHAOS_HANDLER_DELAY" // work per entry; default handlerDelay
	envHoldAt       = "STREAMTX_CHAOS_HOLD_AT"       // k: on its k-th entry, say holdLine and block until killed
	envExitOn       = "STREAMTX_CHAOS_EXIT_ON"       // i: os.Exit(exitCode) whenever handling the entry with field i
)

// Handler kinds.
const (
	handlerCounter = "counter" // Stateful: one counter for the group
	handlerKeyed   = "keyed"   // Keyed by field k: one counter per key
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
)

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
	default:
		t.Fatalf("chaos worker: unknown handler kind %q", kind)
	}

	rdb := redis.NewClient(&redis.Options{
		Addr:        env(envAddr),
		MaxRetries:  atoi(envRetries),
		DialTimeout: time.Second,
	})
	defer rdb.Close()
	rdb.AddHook(readThrottle{pace: pace, stop: ctx})

	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream:          env(envStream),
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
			say("%s%s n=%d ids=%s deliveries=%d err=%q", eventPrefix, ev.Kind, len(ev.IDs), strings.Join(ids, ","), ev.Deliveries, msg)
		}),
	}, h)
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

// readThrottle delays every XREADGROUP by the current pace. It throttles
// new work without keeping entries in hand: an entry is pending only once
// the read returns it.
type readThrottle struct {
	pace *readPace
	stop context.Context // the worker's life: shutdown is not delayed
}

func (readThrottle) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h readThrottle) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "xreadgroup" {
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
