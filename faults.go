package streamtx

// What the consumer does when something fails that is not the entry's
// fault: Redis refusing a command (an ACL without a rule, memory full,
// persistence failing, a read-only replica, a script error), Redis
// unreachable while a handler loads state, and a process that died while it
// held a batch. None of these may count against an entry: the entry keeps
// its delivery count where the consumer can manage it, is never
// acknowledged, and is never dead-lettered for it.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/rdb"
)

// refused reports whether err is an error reply from Redis: the command (or
// script) was refused or failed inside Redis, so it did not apply (streamtx's
// scripts check everything, ACLs included, before their first write). It is
// not a lost reply, whose outcome is unknown, and says nothing about the
// entries.
func refused(err error) bool {
	var re redis.Error
	return err != nil && errors.As(err, &re) && !errors.Is(err, redis.Nil)
}

// storeError wraps an error of Redis while a handler loads state: the
// handler could not run, which is not the entry's fault.
type storeError struct{ err error }

func (e *storeError) Error() string { return "streamtx: load state: " + e.err.Error() }

func (e *storeError) Unwrap() error { return e.err }

// unhealthy is what Health reports: the last failure of an operation that
// has not succeeded since.
type unhealthy struct {
	err   error
	since time.Time
}

// Health reports whether the consumer makes progress: nil while Run is
// running and its last reads and commits succeeded; otherwise an error that
// says since when, and why, it does not (for example a Redis error reply
// such as NOPERM or OOM, which the consumer retries without end while it
// lasts). It suits a readiness probe. Before Run starts and after it returns,
// Health reports that the consumer is not running.
//
// Health is safe to call from any goroutine.
func (c *Consumer) Health() error {
	if !c.running.Load() {
		return errors.New("streamtx: consumer is not running")
	}
	if u := c.health.Load(); u != nil {
		return fmt.Errorf("streamtx: unhealthy since %s: %w", u.since.Format(time.RFC3339), u.err)
	}
	if m := c.members.Load(); m != nil {
		// A consumer of a topic is as healthy as its partition consumers.
		return m.health()
	}
	return nil
}

// healthy records that an operation went through.
func (c *Consumer) healthy() {
	if c.health.Load() != nil {
		c.health.Store(nil)
	}
}

// fault records and reports a failure that keeps the consumer from making
// progress: it goes to the Observer (EventError, the entries concerned in
// IDs), to the log and to Health.
func (c *Consumer) fault(err error, ids []string, attempt int64) {
	if isFenced(err) && c.lost != nil {
		// Not a fault: another instance holds the partition now.
		c.report(Event{Kind: EventFenced, IDs: ids, Err: fmt.Errorf("%w: %w", ErrLeaseLost, err)})
		c.lost()
		return
	}
	since := time.Now()
	if u := c.health.Load(); u != nil {
		since = u.since
	}
	c.health.Store(&unhealthy{err: err, since: since})
	c.report(Event{Kind: EventError, IDs: ids, Err: err})
	c.log.Warn("streamtx: operation failed; retrying (nothing is acknowledged or dead-lettered for it)",
		"err", err, "entries", len(ids), "attempt", attempt, "unhealthy_for", time.Since(since).Round(time.Millisecond))
}

// untilAccepted runs send again as long as Redis refuses it with an error
// reply, after a backoff capped at 5s, reporting every refusal (see fault).
// The entries it concerns keep their delivery counts meanwhile: a refusal
// is never a delivery. It gives up, returning the refusal, when ctx is done:
// the entries stay pending for whoever runs next.
func (c *Consumer) untilAccepted(ctx context.Context, op string, ids []string, err error, send func() (rdb.Result, error)) (rdb.Result, error) {
	var res rdb.Result
	for attempt := int64(1); refused(err); attempt++ {
		c.fault(fmt.Errorf("streamtx: %s refused by Redis: %w", op, err), ids, attempt)
		c.sleep(ctx, backoff(attempt, 50*time.Millisecond, 5*time.Second))
		if ctx.Err() != nil {
			return res, err
		}
		res, err = send()
	}
	if err == nil {
		c.healthy()
	}
	return res, err
}

// suspectTTL bounds how long a suspect counter outlives the last attempt it
// counts: longer than any crash loop's restart delays.
const suspectTTL = 24 * time.Hour

// isolateSuspects handles alone, one by one, the entries of msgs delivered
// more than MaxDeliveries times, and returns the others. A delivery count
// counts every delivery, including those cut short when the process holding
// the entry's batch died, was killed or paused, or lost its entries to a
// claim: a high count alone says nothing against the entry. Handled alone,
// an entry that kills the process is told apart from the batch-mates that
// died with it (see handleAlone).
func (r *runner) isolateSuspects(ctx, hctx context.Context, msgs []*Message) []*Message {
	n := 0
	for _, m := range msgs {
		if m.Deliveries > r.cfg.MaxDeliveries {
			n++
		}
	}
	if n == 0 {
		return msgs
	}
	// A suspect commits on its own, so the commit in flight goes first.
	r.settleAndRerun(ctx, hctx)
	if r.ordered {
		return r.isolateSuspectsInOrder(ctx, hctx, msgs)
	}
	rest := make([]*Message, 0, len(msgs)-n)
	for _, m := range unique(msgs) {
		if m.Deliveries <= r.cfg.MaxDeliveries {
			rest = append(rest, m)
		} else if ctx.Err() == nil || hctx.Err() == nil {
			r.handleAlone(ctx, hctx, m)
		}
	}
	return rest
}

// isolateSuspectsInOrder is isolateSuspects keeping each key's order: the
// entries before a suspect are committed before it is handled alone, and an
// entry whose key a failure holds back waits.
func (r *runner) isolateSuspectsInOrder(ctx, hctx context.Context, msgs []*Message) []*Message {
	var run []*Message
	for _, m := range msgs {
		if m.Deliveries <= r.cfg.MaxDeliveries {
			run = append(run, m)
			continue
		}
		if len(run) > 0 {
			r.processSync(ctx, hctx, run)
			run = nil
		}
		if ctx.Err() != nil && hctx.Err() != nil {
			continue // stays pending for the next owner
		}
		if free := r.holdBack([]*Message{m}); len(free) > 0 {
			r.handleAlone(ctx, hctx, m)
		}
	}
	return r.holdBack(run)
}

// handleAlone handles and commits m in a batch of its own, counting the
// attempt in Redis first; the count is dropped once the process has lived
// through the attempt, whatever its outcome. An entry whose count passes
// MaxDeliveries killed the process every time it was handled alone: it is
// dead-lettered with ErrCrashLoop without being handled again.
func (r *runner) handleAlone(ctx, hctx context.Context, m *Message) {
	key := r.space.Suspect(m.ID)
	reply, err := rdb.Run(context.WithoutCancel(ctx), r.rdb, r.scripts.Suspect, []string{key}, suspectTTL.Milliseconds())
	tries, ok := reply.(int64)
	if err == nil && !ok {
		err = fmt.Errorf("suspect.lua returned %T", reply)
	}
	if err != nil {
		// Cannot count the attempt: do not make it yet.
		r.hold(m, fmt.Errorf("streamtx: count an attempt at %s handled alone: %w", m.ID, err))
		return
	}
	if tries > r.cfg.MaxDeliveries {
		r.deadLetter(hctx, m, Permanent(fmt.Errorf("%w: handled alone, it did not finish %d times (%d deliveries in all)",
			ErrCrashLoop, tries-1, m.Deliveries)), nil)
	} else {
		r.log.Info("streamtx: entry delivered more than MaxDeliveries times without a handler error; handling it alone",
			"id", m.ID, "deliveries", m.Deliveries, "attempt_alone", tries)
		r.processSync(ctx, hctx, []*Message{m})
	}
	if err := r.rdb.Del(context.WithoutCancel(ctx), key).Err(); err != nil {
		r.log.Warn("streamtx: cannot delete a suspect counter; it expires", "key", key, "err", err, "ttl", suspectTTL)
	}
}
