package streamtx

// The pipeline: a batch goes read → handle → commit → settle, and what the
// settle stage cannot commit goes round handle → commit → settle again. The
// stages hand each other values; the state they share lives in runner, which
// Run owns.

import (
	"context"
	"time"

	"github.com/streamtx/streamtx/internal/txnengine"
)

// item is a handled entry with its sealed transaction.
type item struct {
	msg *Message
	tx  *txnengine.Tx
	ctx context.Context // the handler's context, with Config.Tracing (its process span)
}

// process runs the handler on msgs and sends their commit, which runs
// while the next batch is read and handled. The commit before it is settled
// first: if it was refused, the state this batch was handled on is gone, and
// both are handled again (synchronously).
func (r *runner) process(ctx, hctx context.Context, msgs []*Message) {
	read := len(msgs)
	if msgs = r.holdBack(msgs); len(msgs) == 0 {
		return
	}
	if msgs = r.isolateSuspects(ctx, hctx, msgs); len(msgs) == 0 {
		return
	}
	// With a backlog, read the next batch now: Redis serves it (and the
	// commit in flight) while the handlers run, instead of after.
	backlog := read == r.cfg.BatchSize && r.cfg.BatchSize > 1
	// (A partition consumer recovering its own entries reads none ahead:
	// they come before any new one.)
	if backlog && r.ahead == nil && ctx.Err() == nil && !r.stopping && !r.full() && !(r.ordered && r.recoverOwn) {
		r.startReadAhead(ctx)
	}
	items := r.handle(hctx, msgs)
	if rerun, ok := r.settle(ctx); !ok {
		if r.ordered && r.recoverOwn {
			// The commit before has an unknown outcome: committing this
			// batch could put an entry before an earlier one of its key.
			// Both stay pending and are recovered in stream order.
			r.states.Discard()
			return
		}
		r.processSync(ctx, hctx, append(rerun, messagesOf(items)...))
		return
	}
	if len(items) == 0 {
		return
	}
	// Overlap the commit with the next read only when there is a backlog:
	// otherwise it would only delay the outcome by a read.
	r.inflight = r.startCommit(ctx, items, backlog)
	if !backlog {
		r.settleAndRerun(ctx, hctx)
	}
}

// drainAhead handles what a read-ahead delivered, when Run stops with one
// in flight: those entries are pending for this consumer already.
func (r *runner) drainAhead(ctx, hctx context.Context) {
	r.stopping = true
	if r.ahead == nil {
		return
	}
	msgs, err := r.takeAhead(ctx)
	if err != nil {
		r.log.Warn("streamtx: read-ahead failed while stopping", "err", err)
		return
	}
	if len(msgs) > 0 {
		r.process(ctx, hctx, msgs)
	}
}

// settleAndRerun settles the commit in flight and handles again what it
// could not commit.
func (r *runner) settleAndRerun(ctx, hctx context.Context) {
	if rerun, ok := r.settle(ctx); !ok {
		r.processSync(ctx, hctx, rerun)
	}
}

// processSync handles and commits msgs, re-running them as long as the
// commit is refused for a reason a re-run can fix.
func (r *runner) processSync(ctx, hctx context.Context, msgs []*Message) {
	for attempt := 1; len(msgs) > 0; attempt++ {
		if ctx.Err() != nil && hctx.Err() != nil {
			return
		}
		if attempt > 2 {
			// Contended state: let the other consumer's commit through.
			r.sleep(hctx, backoff(int64(attempt-2), time.Millisecond, 100*time.Millisecond))
		}
		if msgs = r.holdBack(msgs); len(msgs) == 0 {
			return
		}
		items := r.handle(hctx, msgs)
		if len(items) == 0 {
			return
		}
		r.inflight = r.startCommit(ctx, items, false)
		msgs, _ = r.settle(ctx)
	}
}

// handle runs the handle stage (handleBatch) on msgs and the settle stage on its
// failures, and returns what is ready to commit.
func (r *runner) handle(hctx context.Context, msgs []*Message) []item {
	refresh := r.contended > 0
	if refresh {
		r.contended--
	}
	items, failed := r.handleBatch(hctx, msgs, refresh)
	r.settleFailures(hctx, items, failed)
	return items
}

func messagesOf(items []item) []*Message {
	msgs := make([]*Message, len(items))
	for i, it := range items {
		msgs[i] = it.msg
	}
	return msgs
}
