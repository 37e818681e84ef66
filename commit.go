package streamtx

// The commit stage: one script call per batch (commit.lua), sent in its own
// goroutine when it overlaps the next read, retried while its reply is lost.

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/internal/txnengine"
)

// commitJob is one commit script call, run in its own goroutine.
type commitJob struct {
	items    []item
	cm       rdb.Commit
	pubOwner []int // publish index -> item index
	start    time.Time
	took     time.Duration // the script's round trip
	done     chan struct{}
	res      rdb.Result
	err      error
	lost     bool // an attempt's reply was lost: it may have applied
	sends    int  // the script's sends (retries are sends-1)

	endSpan func(SettleResult) // ends the settle span, with Config.Tracing
}

// end ends j's settle span, if any, with outcome about n entries.
func (j *commitJob) end(o SettleOutcome, n int, err error) {
	if j.endSpan != nil {
		j.endSpan(SettleResult{Outcome: o, Entries: n, Retries: max(j.sends-1, 0), Err: err})
		j.endSpan = nil
	}
}

// startSettleSpan starts the settle span of a commit of items, with
// Config.Tracing.
func (c *Consumer) startSettleSpan(ctx context.Context, items []item) func(SettleResult) {
	t := c.cfg.Tracing
	if t == nil {
		return nil
	}
	st := SettleTrace{
		Stream: c.cfg.Stream, Group: c.cfg.Group, Consumer: c.cfg.Consumer,
		Entries:  make([]*Message, len(items)),
		Contexts: make([]context.Context, len(items)),
	}
	for i, it := range items {
		st.Entries[i], st.Contexts[i] = it.msg, it.ctx
	}
	_, end := t.StartSettle(ctx, st)
	return end
}

// startCommit builds the commit of the handled items and sends it: in its
// own goroutine when async, else before it returns. The caller must settle
// it before building the next one.
func (c *Consumer) startCommit(ctx context.Context, items []item, async bool) *commitJob {
	j := &commitJob{
		items: items,
		cm: rdb.Commit{
			Stream:   c.cfg.Stream,
			Offsets:  c.space.Offsets(),
			Group:    c.cfg.Group,
			Consumer: c.cfg.Consumer,
			Fence:    c.fence,
		},
		done: make(chan struct{}),
	}
	if c.fence != nil {
		rec := c.record
		j.cm.Record = &rec
	}
	j.endSpan = c.startSettleSpan(ctx, items)
	j.cm.IDs = make([]string, 0, len(items))
	j.cm.Deliveries = make([]int64, 0, len(items))
	np := 0
	for _, it := range items {
		np += len(it.tx.Publishes())
	}
	j.cm.Publishes = make([]txnengine.Publish, 0, np)
	j.pubOwner = make([]int, 0, np)
	for i, it := range items {
		j.cm.IDs = append(j.cm.IDs, it.msg.ID)
		j.cm.Deliveries = append(j.cm.Deliveries, it.msg.Deliveries)
		for _, p := range it.tx.Publishes() {
			j.cm.Publishes = append(j.cm.Publishes, p)
			j.pubOwner = append(j.pubOwner, i)
		}
	}
	var err error
	j.cm.States, err = c.states.Dirty()
	if err == nil {
		_, _, err = j.cm.Build()
	}
	j.start = time.Now()
	if err != nil {
		j.err = err
		close(j.done)
		return j
	}
	run := func() {
		defer close(j.done)
		j.res, j.err = c.retryScript(ctx, &j.lost, func(ctx context.Context) (any, error) {
			j.sends++
			return rdb.RunCommit(ctx, c.rdb, c.scripts, &j.cm)
		})
		j.took = time.Since(j.start)
	}
	if async {
		go run()
	} else {
		run()
	}
	return j
}

// runScript runs a status-returning script. A reply that did not arrive is
// retried with the same arguments until CommitTimeout: the scripts check
// before they write, so a retry of a script that did run is refused
// (NOT_OWNED) instead of applied twice.
func (c *Consumer) runScript(ctx context.Context, s *redis.Script, keys []string, args []any) (rdb.Result, error) {
	return c.retryScript(ctx, nil, func(ctx context.Context) (any, error) {
		return rdb.Run(ctx, c.rdb, s, keys, args...)
	})
}

// retryScript calls run, retrying as runScript describes. It sets *lost
// (when lost is not nil) if a reply was lost, so that the script may have
// applied before the attempt that answered.
func (c *Consumer) retryScript(ctx context.Context, lost *bool, run func(context.Context) (any, error)) (rdb.Result, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.CommitTimeout)
	defer cancel()
	for attempt := int64(1); ; attempt++ {
		reply, err := run(ctx)
		if err == nil {
			return rdb.ParseResult(reply)
		}
		if !retryable(err) || ctx.Err() != nil {
			return rdb.Result{}, err
		}
		if lost != nil && !refused(err) {
			*lost = true
		}
		c.log.Warn("streamtx: script failed transiently (lost reply, failover or resharding); retrying with the same arguments", "err", err, "attempt", attempt)
		c.sleep(ctx, backoff(attempt, 10*time.Millisecond, time.Second))
	}
}

// retryable reports whether err may pass: a network error or lost reply, a
// connection pool that is momentarily exhausted, or a server that is
// loading, busy, read-only or redirecting (a failover or resharding in
// progress).
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false // the caller's time is up
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout) {
		return true
	}
	if _, ok := redis.IsMovedError(err); ok {
		return true
	}
	if _, ok := redis.IsAskError(err); ok {
		return true
	}
	return redis.IsLoadingError(err) || redis.IsReadOnlyError(err) || redis.IsMasterDownError(err) ||
		redis.IsTryAgainError(err) || redis.IsClusterDownError(err) || redis.HasErrorPrefix(err, "BUSY")
}

// Dead-letter entries carry metadata in fields named "stx.<name>". An
// original field that starts with "stx." is stored with one more "stx."
// before it, and loses it again on replay.
const (
	metaPrefix        = "stx."
	replayGroupField  = "stx.replay.group"
	outboxTargetField = "stx.target"
)

func escapeField(f string) string {
	if strings.HasPrefix(f, metaPrefix) {
		return metaPrefix + f
	}
	return f
}
