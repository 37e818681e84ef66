package streamtx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
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
		},
		done: make(chan struct{}),
	}
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

// settle waits for the commit in flight, if any, and applies its outcome.
// It reports ok when there was none or it committed; otherwise the state
// changes made since were discarded, and rerun lists the entries to handle
// again.
func (c *Consumer) settle(ctx context.Context) (rerun []*Message, ok bool) {
	j := c.inflight
	if j == nil {
		return nil, true
	}
	c.inflight = nil
	<-j.done
	items := j.items
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.msg.ID
	}
	if refused(j.err) {
		// Redis refused the script: nothing of it applied. Send it again,
		// same entries, same delivery counts, until Redis takes it.
		j.res, j.err = c.untilAccepted(ctx, "commit", ids, j.err, func() (rdb.Result, error) {
			return c.retryScript(ctx, &j.lost, func(ctx context.Context) (any, error) {
				return rdb.RunCommit(ctx, c.rdb, c.scripts, &j.cm)
			})
		})
	}
	if j.err != nil {
		// The outcome is unknown: forget the state, re-scan our pending
		// entries. What did commit is acknowledged and will not come back;
		// what did not is handled again.
		c.states.Discard()
		c.recoverOwn, c.ownCursor = true, "0"
		c.report(Event{Kind: EventError, IDs: ids, Err: j.err})
		c.log.Error("streamtx: commit outcome unknown; entries stay pending and will be recovered", "err", j.err, "entries", len(ids))
		return nil, false
	}
	c.healthy()
	switch j.res.Code {
	case rdb.CodeOK:
		c.states.Committed(j.cm.States, j.cm.Token)
		c.report(Event{Kind: EventCommit, IDs: ids, Duration: j.took})
		return nil, true
	case rdb.CodeNotOwned:
		if j.lost && len(j.res.Index) == len(items) && c.acknowledged(ctx, ids) {
			// Refused as not owned after a lost reply, and every entry is
			// acknowledged: the attempt whose reply was lost committed.
			c.states.Committed(j.cm.States, j.cm.Token)
			c.report(Event{Kind: EventCommit, IDs: ids, Duration: time.Since(j.start)})
			c.log.Info("streamtx: a commit's reply was lost; its retry found it applied", "entries", len(ids))
			return nil, true
		}
		c.states.Discard()
		drop := make(map[int]bool, len(j.res.Index))
		var fenced []string
		for _, i := range j.res.Index {
			if i < len(items) {
				drop[i] = true
				fenced = append(fenced, items[i].msg.ID)
				delete(c.retries, items[i].msg.ID)
			}
		}
		c.report(Event{Kind: EventFenced, IDs: fenced, Err: ErrNotOwned})
		c.log.Info("streamtx: entries no longer owned; dropped", "ids", fenced)
		return remaining(items, drop), false
	case rdb.CodeConflict:
		// Other consumers write these records: refresh cached state before
		// the next batches instead of failing their commits.
		c.contended = 64
		stale := make([]string, 0, len(j.res.Index))
		for _, i := range j.res.Index {
			if i < len(j.cm.States) {
				stale = append(stale, j.cm.States[i].Key)
			}
		}
		c.states.Rollback(stale)
		c.report(Event{Kind: EventConflict, IDs: ids, Err: ErrVersionConflict})
		return remaining(items, nil), false
	default: // rdb.CodeWrongType
		c.states.Rollback(nil)
		bad := make(map[string]bool, len(j.res.Index))
		for _, t := range j.res.Index {
			if t < len(j.cm.Targets) {
				bad[j.cm.Targets[t]] = true
			}
		}
		drop := make(map[int]bool)
		for p, i := range j.pubOwner {
			if bad[j.cm.Publishes[p].Stream] && !drop[i] {
				drop[i] = true
				err := Permanent(fmt.Errorf("%w: %q", ErrWrongType, j.cm.Publishes[p].Stream))
				c.deadLetter(ctx, items[i].msg, err)
			}
		}
		return remaining(items, drop), false
	}
}

// acknowledged reports whether none of ids is pending in the group any more
// (false when that cannot be told).
func (c *Consumer) acknowledged(ctx context.Context, ids []string) bool {
	lo, hi := ids[0], ids[0]
	for _, id := range ids {
		lo, hi = minID(lo, id), maxID(hi, id)
	}
	rows, err := c.rdb.XPendingExt(context.WithoutCancel(ctx), &redis.XPendingExtArgs{
		Stream: c.cfg.Stream, Group: c.cfg.Group, Start: lo, End: hi, Count: int64(len(ids)) + 1000,
	}).Result()
	if err != nil {
		return false
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	for _, r := range rows {
		if want[r.ID] {
			return false
		}
	}
	return len(rows) <= len(ids)+999 // the range was read whole
}

func minID(a, b string) string {
	if rdb.IDLess(b, a) {
		return b
	}
	return a
}

func maxID(a, b string) string {
	if rdb.IDLess(a, b) {
		return b
	}
	return a
}

func remaining(items []item, drop map[int]bool) []*Message {
	var msgs []*Message
	for i, it := range items {
		if !drop[i] {
			msgs = append(msgs, it.msg)
		}
	}
	return msgs
}

// deadLetter moves m to the dead-letter stream in one script. If that
// cannot be done now, the entry stays pending and is retried.
func (c *Consumer) deadLetter(ctx context.Context, m *Message, cause error) {
	text := cause.Error()
	if len(text) > 4096 {
		text = text[:4096]
	}
	args := make([]any, 0, 7+2*len(m.Values))
	args = append(args, c.cfg.Group, c.cfg.Consumer, m.ID, m.Deliveries, text,
		c.cfg.Clock().UnixMilli(), len(m.Values))
	names := make([]string, 0, len(m.Values))
	for k := range m.Values {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		args = append(args, escapeField(k), m.Values[k])
	}
	send := func() (rdb.Result, error) {
		return c.runScript(ctx, c.scripts.DeadLetter, []string{c.cfg.Stream, c.dlq}, args)
	}
	res, err := send()
	res, err = c.untilAccepted(ctx, "dead-letter move", []string{m.ID}, err, send)
	switch {
	case err != nil:
	case res.Code == rdb.CodeOK:
		c.report(Event{Kind: EventDeadLetter, IDs: []string{m.ID}, Deliveries: m.Deliveries, Err: cause})
		c.log.Warn("streamtx: entry dead-lettered", "id", m.ID, "deliveries", m.Deliveries, "err", cause, "dlq", c.dlq)
		return
	case res.Code == rdb.CodeNotOwned:
		c.report(Event{Kind: EventFenced, IDs: []string{m.ID}, Err: ErrNotOwned})
		return
	default:
		err = fmt.Errorf("%w: dead-letter stream %q", ErrWrongType, c.dlq)
	}
	c.retries[m.ID] = time.Now().Add(c.backoff(m, err))
	err = fmt.Errorf("streamtx: cannot dead-letter %s (it stays pending): %w", m.ID, err)
	c.report(Event{Kind: EventError, IDs: []string{m.ID}, Err: err})
	c.log.Error(err.Error(), "cause", cause)
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
