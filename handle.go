package streamtx

// The handle stage: the handler runs on each entry of a batch in its own
// transaction, in order or in lanes. It decides nothing about failures: it
// returns them to the settle stage.

import (
	"context"
	"errors"
	"hash/maphash"
	"runtime/debug"
	"sort"
	"sync"

	"github.com/streamtx/streamtx/internal/txnengine"
	"github.com/streamtx/streamtx/txn"
)

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

// handleBatch runs the handler on every message, each in its own transaction,
// and returns the handled ones (in the order of msgs) and the failed ones
// (rolled back), for the commit and settle stages. With refresh, the
// batch's cached state records are reloaded first (another consumer changed
// them lately). It changes nothing of the Run's state.
func (c *Consumer) handleBatch(hctx context.Context, msgs []*Message, refresh bool) ([]item, []failure) {
	msgs = unique(msgs)
	c.inHand.Store(&msgs)
	defer c.inHand.Store(nil)
	txs := make([]*txnengine.Tx, len(msgs))
	errs := make([]error, len(msgs))
	var ctxs []context.Context // the handlers' contexts, with Config.Tracing
	if c.cfg.Tracing != nil {
		ctxs = make([]context.Context, len(msgs))
	}
	if p, ok := c.meta.(interface{ stateRef(*Message) txnengine.Ref }); ok {
		refs := make([]txnengine.Ref, len(msgs))
		for i, m := range msgs {
			refs[i] = p.stateRef(m)
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
	hold := newKeyHold(c.ordered)
	for len(run) > 0 {
		c.handlePass(hctx, msgs, run, txs, errs, ctxs, hold)
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
	var failed []failure
	for i, m := range msgs {
		var ctx context.Context
		if ctxs != nil {
			ctx = ctxs[i]
		}
		if errs[i] != nil {
			failed = append(failed, failure{m, errs[i], ctx})
			continue
		}
		items = append(items, item{m, txs[i], ctx})
	}
	return items, failed
}

// failure is an entry whose handler failed, and why.
type failure struct {
	msg *Message
	err error
	ctx context.Context // the handler's context, with Config.Tracing
}

// handlePass handles msgs[i] for every i in run, in order (in lanes when
// Parallelism asks for them), into txs[i] and errs[i] (and, with tracing,
// the handler's context into ctxs[i]).
func (c *Consumer) handlePass(hctx context.Context, msgs []*Message, run []int, txs []*txnengine.Tx, errs []error, ctxs []context.Context, hold *keyHold) {
	if c.cfg.Parallelism > 1 && len(run) > 1 {
		c.handleLanes(hctx, msgs, run, txs, errs, ctxs, hold)
		return
	}
	if c.cfg.Parallelism > 1 {
		// A new epoch: records touched in lanes before are free for lane 0.
		c.states.BeginBatch()
	}
	all := make([]txnengine.Tx, len(run)) // one allocation for the pass's transactions
	for k, i := range run {
		if hold.held(msgs[i].Key, i) {
			errs[i] = errHeldBack
			continue
		}
		all[k].Reset(c.env, msgs[i].ID, 0)
		txs[i] = &all[k]
		errs[i] = c.handleOne(hctx, msgs[i], txs[i], len(msgs), ctxs, i)
		if errs[i] != nil {
			hold.fail(msgs[i].Key, i)
			if c.states.NeedsRestore() {
				return // the rest would see a record the failure left behind
			}
		}
	}
}

// handleOne runs the handler in tx and seals it, or rolls it back. With
// Config.Tracing, it runs in a process span, whose context it leaves in
// ctxs[i] and whose trace context tx's publishes carry; batch is the size of
// the batch, for the span.
func (c *Consumer) handleOne(hctx context.Context, m *Message, tx *txnengine.Tx, batch int, ctxs []context.Context, i int) error {
	if g, ok := m.Values[replayGroupField]; ok && g != c.cfg.Group {
		// Replayed for another group: acknowledge, do not handle.
		return nil
	}
	var end func(error)
	if t := c.cfg.Tracing; t != nil {
		m.attempts++
		hctx, end = t.StartProcess(hctx, ProcessTrace{
			Stream: c.cfg.Stream, Group: c.cfg.Group, Consumer: c.cfg.Consumer,
			Msg: m, Attempt: m.attempts, BatchSize: batch,
		})
		ctxs[i] = hctx
		tx.SetTrace(traceFields(t, hctx))
	}
	err := c.call(hctx, m, tx)
	if err == nil {
		err = tx.Seal()
	}
	if err != nil {
		tx.Rollback()
	}
	if end != nil {
		end(err)
	}
	return err
}

// handleLanes handles the msgs run names in Parallelism lanes by partition key, each lane
// in order, and waits for all of them.
func (c *Consumer) handleLanes(hctx context.Context, msgs []*Message, run []int, txs []*txnengine.Tx, errs []error, ctxs []context.Context, hold *keyHold) {
	c.states.BeginBatch()
	n := c.cfg.Parallelism
	lanes := make([][]int, n)
	for _, i := range run {
		l := int(maphash.String(c.laneSeed, c.cfg.PartitionKey(msgs[i])) % uint64(n))
		lanes[l] = append(lanes[l], i)
	}
	deferred := make([][]int, n)
	var wg sync.WaitGroup
	for l, idx := range lanes {
		if len(idx) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k, i := range idx {
				if hold.held(msgs[i].Key, i) {
					errs[i] = errHeldBack
					continue
				}
				txs[i] = txnengine.NewInLane(c.env, msgs[i].ID, l+1)
				errs[i] = c.handleOne(hctx, msgs[i], txs[i], len(msgs), ctxs, i)
				if errors.Is(errs[i], txnengine.ErrLaneConflict) {
					// Another lane holds a record this entry needs: the
					// rest of this lane waits for the lanes to finish.
					deferred[l] = idx[k:]
					return
				}
				if errs[i] != nil {
					hold.fail(msgs[i].Key, i)
					if c.states.NeedsRestore() {
						return // the rest of the lane would see what the failure left
					}
				}
			}
		}()
	}
	wg.Wait()
	// What a lane conflict held back runs now, one entry at a time in
	// stream order, on the state the lanes left: a lane conflict is not the
	// entry's failure and costs it no delivery.
	var later []int
	for _, d := range deferred {
		later = append(later, d...)
	}
	if len(later) == 0 {
		return
	}
	sort.Ints(later)
	for _, i := range later {
		errs[i] = nil
	}
	c.states.BeginBatch()
	for _, i := range later {
		if hold.held(msgs[i].Key, i) {
			errs[i] = errHeldBack
			continue
		}
		txs[i] = txnengine.NewInLane(c.env, msgs[i].ID, 0)
		errs[i] = c.handleOne(hctx, msgs[i], txs[i], len(msgs), ctxs, i)
		if errs[i] != nil {
			hold.fail(msgs[i].Key, i)
			if c.states.NeedsRestore() {
				return // the rest would see what the failure left
			}
		}
	}
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
