package streamtx

// The read stage: where the next batch comes from — the read sent ahead,
// this consumer's own pending entries after a restart or a lost reply,
// entries due for a retry, idle entries of other consumers, or new ones.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/partition"
	"github.com/streamtx/streamtx/internal/rdb"
)

// step does one unit of work: recover own entries, retry due ones, claim
// idle ones, or read new ones; then handles and commits what it got.
func (r *runner) step(ctx, hctx context.Context) error {
	now := time.Now()
	var msgs []*Message
	var err error
	var due []string
	claiming := false
	if r.ahead == nil {
		due = r.dueRetries(now)
		claiming = r.recoverOwn || due != nil || !now.Before(r.nextClaim)
	}
	var release []*Message
	if r.ahead == nil && !r.recoverOwn && r.ordered && len(r.waiting) > 0 && r.releasable(false) != nil {
		if r.inflight != nil {
			// The entry that held them back may be in this commit.
			r.settleAndRerun(ctx, hctx)
			return nil
		}
		release = r.releasable(true)
	}
	if claiming && r.inflight != nil {
		// A claim bumps delivery counts: settle the commit in flight first,
		// or the claim could fence it.
		r.settleAndRerun(ctx, hctx)
		return nil
	}
	switch {
	case r.ahead != nil:
		// The next batch was read while the last one was handled: handle it
		// before anything else (a claim of our own entries would re-deliver
		// it).
		msgs, err = r.takeAhead(ctx)
	case r.recoverOwn:
		msgs, err = r.claimOwn(ctx)
	case release != nil:
		msgs = release // no earlier entry of their keys is pending now
	case due != nil:
		msgs, err = r.retry(ctx, due)
	case !now.Before(r.nextClaim):
		msgs, err = r.claimIdle(ctx)
	case r.cfg.Retention.enabled() && !now.Before(r.nextTrim):
		r.nextTrim = now.Add(r.cfg.Retention.Interval)
		err = r.retain(ctx)
	case r.full():
		// Too many entries wait behind failed ones: read no more until
		// their retries are settled.
		r.settleAndRerun(ctx, hctx)
		r.sleep(ctx, r.untilRetry(now))
	default:
		msgs, err = r.read(ctx, now)
	}
	if err != nil {
		return err
	}
	if len(msgs) > 0 {
		r.process(ctx, hctx, msgs)
	} else {
		r.settleAndRerun(ctx, hctx)
	}
	return nil
}

// untilRetry returns how long to wait for new entries: Block, or less when
// a claim or retry is due sooner.
func (r *runner) untilRetry(now time.Time) time.Duration {
	block := r.cfg.Block
	if d := r.nextClaim.Sub(now); d < block {
		block = d
	}
	for _, due := range r.retries {
		if d := due.Sub(now); d < block {
			block = d
		}
	}
	return max(block, time.Millisecond)
}

// read reads new entries, blocking at most Block (less when a retry is due
// sooner).
func (r *runner) read(ctx context.Context, now time.Time) ([]*Message, error) {
	block := r.untilRetry(now)
	if r.inflight != nil {
		// Do not wait with a commit in flight: read what is there, and
		// settle the commit before blocking.
		block = -1
	}
	msgs, err := r.readOnce(ctx, r.cfg.BatchSize, block)
	if err != nil || len(msgs) == 0 || r.cfg.MaxBatchDelay == 0 {
		return msgs, err
	}
	// Fill the batch until MaxBatchDelay has passed.
	deadline := time.Now().Add(r.cfg.MaxBatchDelay)
	for len(msgs) < r.cfg.BatchSize {
		wait := time.Until(deadline)
		if wait < time.Millisecond || ctx.Err() != nil {
			break
		}
		more, err := r.readOnce(ctx, r.cfg.BatchSize-len(msgs), wait)
		if err != nil {
			// What was read is pending for us: handle it now.
			r.log.Warn("streamtx: read failed while filling a batch", "err", err)
			break
		}
		msgs = append(msgs, more...)
	}
	return msgs, nil
}

// readOnce reads up to count new entries, waiting at most block (no wait
// when block < 0).
func (r *runner) readOnce(ctx context.Context, count int, block time.Duration) ([]*Message, error) {
	msgs, err := r.fetch(ctx, count, block)
	if err != nil {
		return nil, r.readFailed(ctx, err)
	}
	if r.inflight == nil {
		r.healthy() // (with a commit in flight, its outcome decides)
	}
	return msgs, nil
}

// readFailed deals with a failed read and returns the error to report.
func (r *runner) readFailed(ctx context.Context, err error) error {
	if redis.HasErrorPrefix(err, "NOGROUP") {
		r.log.Warn("streamtx: group or stream vanished; creating it again")
		return r.ensureGroup(ctx)
	}
	if !refused(err) {
		// Redis may have delivered entries whose reply was lost: they are
		// pending for this consumer, so look there before reading on. (A
		// refused read delivered nothing: recovering would only count one
		// more delivery of what this consumer holds.)
		r.recoverOwn, r.ownCursor = true, "0"
	}
	return fmt.Errorf("streamtx: read %q: %w", r.cfg.Stream, err)
}

// fetch reads up to count new entries with XREADGROUP. It touches nothing
// of the consumer but its configuration and client, so a read-ahead can run
// it beside the handlers.
func (c *Consumer) fetch(ctx context.Context, count int, block time.Duration) ([]*Message, error) {
	if c.fence != nil {
		return c.fetchFenced(ctx, count, block)
	}
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
			all = append(all, Message{Stream: c.cfg.Stream, ID: m.ID, Values: vals, Deliveries: 1, Key: vals[partition.KeyField], Partition: c.partition})
			msgs = append(msgs, &all[len(all)-1])
		}
	}
	return msgs, nil
}

// fetchFenced is fetch for a partition consumer: read.lua reads behind the
// lease's fence (a script cannot block), and when nothing is new, XREAD
// waits for an entry past the stream's last one before reading again.
func (c *Consumer) fetchFenced(ctx context.Context, count int, block time.Duration) ([]*Message, error) {
	ctx = context.WithoutCancel(ctx) // as fetch: Block bounds the wait
	read := func() (string, []*Message, error) {
		// A fresh token per read: go-redis sends the same one again when it
		// retries the script after a lost reply, and read.lua then returns
		// what the first run delivered.
		keys, args := c.fence.Append([]string{c.cfg.Stream, c.space.LastRead()}, []any{c.cfg.Group, c.cfg.Consumer, count, rdb.NewToken()})
		reply, err := rdb.Run(ctx, c.rdb, c.scripts.Read, keys, args...)
		if err != nil {
			return "", nil, err
		}
		top, entries, err := rdb.ParseRead(reply)
		if err != nil {
			return "", nil, err
		}
		return top, c.messages(entries), nil
	}
	top, msgs, err := read()
	if err != nil || len(msgs) > 0 || block < 0 {
		return msgs, err
	}
	err = c.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{c.cfg.Stream, top}, Count: 1, Block: block}).Err()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	_, msgs, err = read()
	return msgs, err
}

// claimOwn takes back this consumer's own pending entries, one batch per
// call, from the start of the pending list.
func (r *runner) claimOwn(ctx context.Context) ([]*Message, error) {
	keys, args := r.fence.Append([]string{r.cfg.Stream}, []any{r.cfg.Group, r.cfg.Consumer, "own", r.ownCursor, r.cfg.BatchSize})
	reply, err := rdb.Run(context.WithoutCancel(ctx), r.rdb, r.scripts.Claim, keys, args...)
	if err != nil {
		return nil, r.claimErr(ctx, err)
	}
	next, entries, deleted, err := rdb.ParseClaim(reply)
	if err != nil {
		return nil, err
	}
	if next == "0-0" {
		r.recoverOwn, r.ownCursor = false, "0"
	} else {
		r.ownCursor = next
	}
	r.reportDeleted(deleted)
	return r.messages(entries), nil
}

// retry returns the entries ids for another attempt: those held back for a
// Redis fault as they are, the others re-delivered by claimIDs.
func (r *runner) retry(ctx context.Context, ids []string) ([]*Message, error) {
	var msgs []*Message
	claim := ids[:0:0]
	for _, id := range ids {
		if h, ok := r.held[id]; ok {
			delete(r.retries, id) // (held stays, counting attempts, until dueRetries sees it done)
			msgs = append(msgs, h.msg)
		} else {
			claim = append(claim, id)
		}
	}
	if len(claim) == 0 {
		return msgs, nil
	}
	more, err := r.claimIDs(ctx, claim)
	return append(msgs, more...), err
}

// claimIDs re-delivers the given entries to this consumer if it still owns
// them: a retry after a handler error counts as a delivery.
func (r *runner) claimIDs(ctx context.Context, ids []string) ([]*Message, error) {
	args := make([]any, 0, 5+len(ids))
	args = append(args, r.cfg.Group, r.cfg.Consumer, "ids", len(ids))
	for _, id := range ids {
		args = append(args, id)
	}
	keys, args := r.fence.Append([]string{r.cfg.Stream}, args)
	reply, err := rdb.Run(context.WithoutCancel(ctx), r.rdb, r.scripts.Claim, keys, args...)
	if err != nil {
		return nil, r.claimErr(ctx, err)
	}
	for _, id := range ids {
		delete(r.retries, id)
	}
	_, entries, deleted, err := rdb.ParseClaim(reply)
	if err != nil {
		return nil, err
	}
	r.reportDeleted(deleted)
	return r.messages(entries), nil
}

// claimIdle claims entries idle longer than ClaimIdle at other consumers.
func (r *runner) claimIdle(ctx context.Context) ([]*Message, error) {
	keys, args := r.fence.Append([]string{r.cfg.Stream}, []any{r.cfg.Group, r.cfg.Consumer, "idle", r.idleCursor, r.cfg.ClaimIdle.Milliseconds(), r.cfg.BatchSize})
	reply, err := rdb.Run(context.WithoutCancel(ctx), r.rdb, r.scripts.Claim, keys, args...)
	if err != nil {
		r.nextClaim = time.Now().Add(r.cfg.ClaimInterval)
		return nil, r.claimErr(ctx, err)
	}
	next, entries, deleted, err := rdb.ParseClaim(reply)
	if err != nil {
		return nil, err
	}
	r.idleCursor = next
	if next == "0-0" {
		r.nextClaim = time.Now().Add(r.cfg.ClaimInterval)
	}
	r.reportDeleted(deleted)
	msgs := r.messages(entries)
	if len(msgs) > 0 {
		ids := make([]string, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
		}
		r.report(Event{Kind: EventClaim, IDs: ids})
		r.log.Info("streamtx: claimed idle entries", "count", len(ids))
	}
	return msgs, nil
}

func (r *runner) claimErr(ctx context.Context, err error) error {
	// A claim whose reply was lost may have moved entries to this consumer.
	r.recoverOwn, r.ownCursor = true, "0"
	if redis.HasErrorPrefix(err, "NOGROUP") {
		r.log.Warn("streamtx: group or stream vanished; creating it again")
		return r.ensureGroup(ctx)
	}
	return fmt.Errorf("streamtx: claim on %q: %w", r.cfg.Stream, err)
}

func (r *runner) messages(entries []rdb.Entry) []*Message {
	msgs := r.Consumer.messages(entries)
	for _, m := range msgs {
		delete(r.held, m.ID) // delivered again: this copy replaces the one held
	}
	return msgs
}

// messages turns claimed or read entries into Messages.
func (c *Consumer) messages(entries []rdb.Entry) []*Message {
	all := make([]Message, len(entries))
	msgs := make([]*Message, len(entries))
	for i, e := range entries {
		all[i] = Message{Stream: c.cfg.Stream, ID: e.ID, Values: e.Values, Deliveries: e.Deliveries, Key: e.Values[partition.KeyField], Partition: c.partition}
		msgs[i] = &all[i]
	}
	return msgs
}

func (r *runner) reportDeleted(ids []string) {
	if len(ids) == 0 {
		return
	}
	for _, id := range ids {
		delete(r.retries, id)
	}
	err := fmt.Errorf("streamtx: %d pending entries were deleted from %q before they were processed", len(ids), r.cfg.Stream)
	r.report(Event{Kind: EventError, IDs: ids, Err: err})
	r.log.Warn(err.Error(), "ids", ids)
}

// dueRetries returns the entries whose backoff has passed, oldest first, at
// most one batch; nil when none is due.
func (r *runner) dueRetries(now time.Time) []string {
	var ids []string
	for id, due := range r.retries {
		if !due.After(now) {
			ids = append(ids, id)
		}
	}
	for id := range r.held {
		if _, ok := r.retries[id]; !ok {
			delete(r.held, id) // re-delivered and handled meanwhile
		}
	}
	if len(ids) == 0 {
		return nil
	}
	sort.Slice(ids, func(i, j int) bool { return rdb.IDLess(ids[i], ids[j]) })
	if len(ids) > r.cfg.BatchSize {
		ids = ids[:r.cfg.BatchSize]
	}
	return ids
}

// readAhead is a read sent before the batch in hand is handled.
type readAhead struct {
	done chan struct{}
	msgs []*Message
	err  error
}

func (r *runner) startReadAhead(ctx context.Context) {
	ra := &readAhead{done: make(chan struct{})}
	r.ahead = ra
	go func() {
		defer close(ra.done)
		ra.msgs, ra.err = r.fetch(ctx, r.cfg.BatchSize, -1)
	}()
}

// takeAhead waits for the read-ahead and returns what it read.
func (r *runner) takeAhead(ctx context.Context) ([]*Message, error) {
	ra := r.ahead
	r.ahead = nil
	<-ra.done
	if ra.err != nil {
		return nil, r.readFailed(ctx, ra.err)
	}
	if r.ordered && r.recoverOwn {
		// Read before a commit's outcome turned out unknown or lost: these
		// entries come after the ones to take back, which claimOwn (or the
		// next owner) delivers again, in order, with them.
		return nil, nil
	}
	return ra.msgs, nil
}
