package streamtx

// The settle stage: what a commit's outcome, or a handler's failure, means
// for the entries — acknowledged, handled again, retried after a backoff, or
// dead-lettered.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/txn"
)

// settle waits for the commit in flight, if any, and applies its outcome.
// It reports ok when there was none or it committed; otherwise the state
// changes made since were discarded, and rerun lists the entries to handle
// again.
func (r *runner) settle(ctx context.Context) (rerun []*Message, ok bool) {
	j := r.inflight
	if j == nil {
		return nil, true
	}
	r.inflight = nil
	<-j.done
	items := j.items
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.msg.ID
	}
	if isFenced(j.err) {
		// Another instance holds the partition now: nothing was written.
		r.fault(j.err, ids, 1)
		r.states.Discard()
		r.recoverOwn, r.ownCursor = true, "0"
		j.end(SettleFenced, len(ids), ErrLeaseLost)
		return nil, false
	}
	if isLost(j.err) {
		// The partition's commit record is not the last one this owner
		// wrote: Redis lost commits (a failover, a restore). What they
		// acknowledged is pending again: take every pending entry back in
		// stream order, on state loaded afresh — every record: those of
		// other keys cached from commits Redis lost are ahead of it too,
		// and a lease holder's commits check no record versions.
		r.states.Reset()
		r.recoverOwn, r.ownCursor = true, "0"
		err := fmt.Errorf("streamtx: partition %d lost commits: %w", r.partition, j.err)
		if lerr := r.loadRecord(ctx); lerr != nil {
			err = fmt.Errorf("%w (and reading its commit record again failed: %w)", err, lerr)
		}
		r.report(Event{Kind: EventError, IDs: ids, Err: err})
		r.log.Error("streamtx: Redis lost commits of this partition; recovering its pending entries in order", "err", err)
		j.end(SettleError, len(ids), err)
		return nil, false
	}
	if refused(j.err) {
		// Redis refused the script: nothing of it applied. Send it again,
		// same entries, same delivery counts, until Redis takes it.
		j.res, j.err = r.untilAccepted(ctx, "commit", ids, j.err, func() (rdb.Result, error) {
			return r.retryScript(ctx, &j.lost, func(ctx context.Context) (any, error) {
				j.sends++
				return rdb.RunCommit(ctx, r.rdb, r.scripts, &j.cm)
			})
		})
	}
	if j.err != nil {
		// The outcome is unknown: forget the state, re-scan our pending
		// entries. What did commit is acknowledged and will not come back;
		// what did not is handled again.
		r.states.Discard()
		r.recoverOwn, r.ownCursor = true, "0"
		r.report(Event{Kind: EventError, IDs: ids, Err: j.err})
		r.log.Error("streamtx: commit outcome unknown; entries stay pending and will be recovered", "err", j.err, "entries", len(ids))
		j.end(SettleError, len(ids), j.err)
		return nil, false
	}
	r.healthy()
	switch j.res.Code {
	case rdb.CodeOK:
		r.committedRecord(j)
		r.states.Committed(j.cm.States, j.cm.Token)
		r.report(Event{Kind: EventCommit, IDs: ids, Duration: j.took})
		j.end(SettleCommitted, len(ids), nil)
		return nil, true
	case rdb.CodeNotOwned:
		if j.lost && len(j.res.Index) == len(items) && r.acknowledged(ctx, ids) {
			// Refused as not owned after a lost reply, and every entry is
			// acknowledged: the attempt whose reply was lost committed.
			r.committedRecord(j)
			r.states.Committed(j.cm.States, j.cm.Token)
			r.report(Event{Kind: EventCommit, IDs: ids, Duration: time.Since(j.start)})
			r.log.Info("streamtx: a commit's reply was lost; its retry found it applied", "entries", len(ids))
			j.end(SettleCommitted, len(ids), nil)
			return nil, true
		}
		r.states.Discard()
		drop := make(map[int]bool, len(j.res.Index))
		var fenced []string
		for _, i := range j.res.Index {
			if i < len(items) {
				drop[i] = true
				fenced = append(fenced, items[i].msg.ID)
				delete(r.retries, items[i].msg.ID)
			}
		}
		r.report(Event{Kind: EventFenced, IDs: fenced, Err: ErrNotOwned})
		r.log.Info("streamtx: entries no longer owned; dropped", "ids", fenced)
		j.end(SettleFenced, len(fenced), ErrNotOwned)
		return remaining(items, drop), false
	case rdb.CodeConflict:
		// Other consumers write these records: refresh cached state before
		// the next batches instead of failing their commits.
		r.contended = 64
		stale := make([]string, 0, len(j.res.Index))
		for _, i := range j.res.Index {
			if i < len(j.cm.States) {
				stale = append(stale, j.cm.States[i].Key)
			}
		}
		r.states.Rollback(stale)
		r.report(Event{Kind: EventConflict, IDs: ids, Err: ErrVersionConflict})
		j.end(SettleConflict, len(ids), ErrVersionConflict)
		if r.ordered {
			// No one else writes a partition's state while its lease is
			// held: Redis lost commits (a failover or restore). Their
			// entries are pending again: take every pending entry back in
			// stream order before anything else, on state loaded afresh.
			r.states.Reset()
			r.recoverOwn, r.ownCursor = true, "0"
			return nil, false
		}
		return remaining(items, nil), false
	default: // rdb.CodeWrongType
		r.states.Rollback(nil)
		bad := make(map[string]bool, len(j.res.Index))
		for _, t := range j.res.Index {
			if t < len(j.cm.Targets) {
				bad[j.cm.Targets[t]] = true
			}
		}
		drop := make(map[int]bool)
		var wrong error
		for p, i := range j.pubOwner {
			if bad[j.cm.Publishes[p].Stream] && !drop[i] {
				drop[i] = true
				err := Permanent(fmt.Errorf("%w: %q", ErrWrongType, j.cm.Publishes[p].Stream))
				if wrong == nil {
					wrong = err
				}
				r.deadLetter(ctx, items[i].msg, err, items[i].ctx)
			}
		}
		j.end(SettleDeadLettered, len(drop), wrong)
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
	limit := int64(len(ids)) + 1000 // room for other consumers' entries in the range
	rows, err := c.rdb.XPendingExt(context.WithoutCancel(ctx), &redis.XPendingExtArgs{
		Stream: c.cfg.Stream, Group: c.cfg.Group, Start: lo, End: hi, Count: limit,
	}).Result()
	if err != nil || int64(len(rows)) == limit {
		return false // cannot tell (or the range was cut)
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
	return true
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
// cannot be done now, the entry stays pending and is retried. pctx is the
// context of m's last handler run (its process span, with Config.Tracing),
// or nil.
func (r *runner) deadLetter(ctx context.Context, m *Message, cause error, pctx context.Context) {
	text := cause.Error()
	if len(text) > 4096 {
		text = text[:4096]
	}
	args := make([]any, 0, 7+2*len(m.Values))
	args = append(args, r.cfg.Group, r.cfg.Consumer, m.ID, m.Deliveries, text,
		r.cfg.Clock().UnixMilli(), len(m.Values))
	names := make([]string, 0, len(m.Values))
	for k := range m.Values {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		args = append(args, escapeField(k), m.Values[k])
	}
	sends := 0
	var end func(SettleResult)
	if t := r.cfg.Tracing; t != nil {
		// The dead letter carries the context of its move's span (a child
		// of the failed handler run's), under the names the entry's own
		// context had: those are escaped with the other original fields.
		parent := pctx
		if parent == nil {
			parent = ctx
		}
		var sctx context.Context
		sctx, end = t.StartSettle(parent, SettleTrace{
			Stream: r.cfg.Stream, Group: r.cfg.Group, Consumer: r.cfg.Consumer,
			Entries: []*Message{m}, Contexts: []context.Context{pctx}, DeadLetter: true,
		})
		fields := traceFields(t, sctx)
		args = append(args, len(fields)/2)
		for _, f := range fields {
			args = append(args, f)
		}
	}
	send := func() (rdb.Result, error) {
		sends++
		keys, args := r.fence.Append([]string{r.cfg.Stream, r.dlq}, args)
		return r.runScript(ctx, r.scripts.DeadLetter, keys, args)
	}
	res, err := send()
	res, err = r.untilAccepted(ctx, "dead-letter move", []string{m.ID}, err, send)
	endSpan := func(o SettleOutcome, n int, err error) {
		if end != nil {
			end(SettleResult{Outcome: o, Entries: n, Retries: max(sends-1, 0), Err: err})
		}
	}
	switch {
	case err != nil:
	case res.Code == rdb.CodeOK:
		r.report(Event{Kind: EventDeadLetter, IDs: []string{m.ID}, Deliveries: m.Deliveries, Err: cause})
		r.log.Warn("streamtx: entry dead-lettered", "id", m.ID, "deliveries", m.Deliveries, "err", cause, "dlq", r.dlq)
		endSpan(SettleCommitted, 1, nil)
		return
	case res.Code == rdb.CodeNotOwned:
		r.report(Event{Kind: EventFenced, IDs: []string{m.ID}, Err: ErrNotOwned})
		endSpan(SettleFenced, 1, ErrNotOwned)
		return
	default:
		err = fmt.Errorf("%w: dead-letter stream %q", ErrWrongType, r.dlq)
	}
	endSpan(SettleError, 1, err)
	r.retries[m.ID] = time.Now().Add(r.backoff(m, err))
	r.keyOf[m.ID] = m.Key
	err = fmt.Errorf("streamtx: cannot dead-letter %s (it stays pending): %w", m.ID, err)
	r.report(Event{Kind: EventError, IDs: []string{m.ID}, Err: err})
	r.log.Error(err.Error(), "cause", cause)
}

// settleFailures settles a handled batch's entries: none of them waits for
// a retry any more, except the failed ones, which are retried, held or
// dead-lettered (see failed).
func (r *runner) settleFailures(hctx context.Context, items []item, failed []failure) {
	for _, it := range items {
		delete(r.retries, it.msg.ID)
	}
	for _, f := range failed {
		delete(r.retries, f.msg.ID)
		r.failed(hctx, f.msg, f.err, f.ctx)
	}
}

// failed decides what happens to an entry whose handler failed: retry after
// a backoff, or dead-letter it. pctx is the context of its handler run, or
// nil (see deadLetter).
func (r *runner) failed(hctx context.Context, m *Message, err error, pctx context.Context) {
	if errors.Is(err, errHeldBack) {
		r.wait(m)
		return
	}
	if hctx.Err() != nil {
		// Shutting down: the entry stays pending for the next owner.
		return
	}
	var se *storeError
	if errors.As(err, &se) {
		r.hold(m, err)
		return
	}
	permanent := IsPermanent(err) || errors.Is(err, txn.ErrBadPublish)
	if permanent || m.Deliveries >= r.cfg.MaxDeliveries {
		r.deadLetter(hctx, m, err, pctx)
		return
	}
	d := r.backoff(m, err)
	r.retries[m.ID] = time.Now().Add(d)
	r.keyOf[m.ID] = m.Key
	r.report(Event{Kind: EventRetry, IDs: []string{m.ID}, Deliveries: m.Deliveries, Err: err})
	r.log.Info("streamtx: handler failed; will retry", "id", m.ID, "deliveries", m.Deliveries, "in", d, "err", err)
}

// hold keeps m to handle again as it is, after a backoff: Redis failed
// under its handler (see storeError), which is not the entry's fault, so it
// must not cost it a delivery.
func (r *runner) hold(m *Message, err error) {
	h := r.held[m.ID]
	if h == nil {
		h = &heldMsg{}
	}
	h.msg = m
	h.attempts++
	r.held[m.ID] = h
	r.retries[m.ID] = time.Now().Add(backoff(h.attempts, 50*time.Millisecond, 5*time.Second))
	r.keyOf[m.ID] = m.Key
	r.fault(err, []string{m.ID}, h.attempts)
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
