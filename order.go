package streamtx

// Per-key order on a partition: an entry is handled only once every earlier
// entry of its key in the partition is committed or dead-lettered. An entry
// whose key has an earlier entry waiting for a retry (or held for a Redis
// fault, or itself waiting) is held back: it stays pending in the group and
// in memory (runner.waiting) until that entry is settled, and costs no
// delivery. Other keys flow. Reading pauses while too many entries wait.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/rdb"
)

// errHeldBack marks an entry of a batch that was not handled because an
// earlier entry of its key in the batch failed.
var errHeldBack = errors.New("streamtx: held back behind an earlier entry of its key")

// maxWaitingBatches bounds runner.waiting, in batches: past it, reading
// pauses until the retries holding the waiting entries back are settled.
const maxWaitingBatches = 10

// full reports whether reading must pause: too many entries wait.
func (r *runner) full() bool {
	return r.ordered && len(r.waiting) >= maxWaitingBatches*r.cfg.BatchSize
}

// blockers returns, per key, the lowest ID of the key's entries waiting for
// a retry or held; with waiting, of those held back too.
func (r *runner) blockers(waiting bool) map[string]string {
	low := make(map[string]string)
	add := func(key, id string) {
		if have, ok := low[key]; !ok || rdb.IDLess(id, have) {
			low[key] = id
		}
	}
	for id, key := range r.keyOf {
		if _, ok := r.retries[id]; !ok {
			delete(r.keyOf, id) // settled
			continue
		}
		add(key, id)
	}
	for id, h := range r.held {
		add(h.msg.Key, id)
	}
	if waiting {
		for _, m := range r.waiting {
			add(m.Key, m.ID)
		}
	}
	return low
}

// holdBack returns msgs in ID order without the entries that must wait
// behind an earlier entry of their key; those join r.waiting. A new copy of
// an entry replaces the one waiting or retried.
func (r *runner) holdBack(msgs []*Message) []*Message {
	if !r.ordered || len(msgs) == 0 {
		return msgs
	}
	msgs = unique(msgs)
	slices.SortStableFunc(msgs, func(a, b *Message) int { return cmpID(a.ID, b.ID) })
	in := make(map[string]bool, len(msgs))
	for _, m := range msgs {
		in[m.ID] = true
		delete(r.retries, m.ID)
	}
	r.waiting = slices.DeleteFunc(r.waiting, func(m *Message) bool { return in[m.ID] })
	low := r.blockers(true)
	out := msgs[:0:0]
	for _, m := range msgs {
		if id, ok := low[m.Key]; ok && rdb.IDLess(id, m.ID) {
			r.wait(m)
			continue
		}
		out = append(out, m)
	}
	return out
}

// wait adds m to r.waiting, in ID order.
func (r *runner) wait(m *Message) {
	i, found := slices.BinarySearchFunc(r.waiting, m.ID, func(w *Message, id string) int { return cmpID(w.ID, id) })
	if found {
		r.waiting[i] = m
		return
	}
	r.waiting = slices.Insert(r.waiting, i, m)
}

// releasable takes from r.waiting, at most a batch and in ID order, the
// entries no retried or held entry of their key comes before.
func (r *runner) releasable(take bool) []*Message {
	if len(r.waiting) == 0 {
		return nil
	}
	low := r.blockers(false)
	var out []*Message
	keep := r.waiting[:0]
	for _, m := range r.waiting {
		id, ok := low[m.Key]
		if len(out) < r.cfg.BatchSize && !(ok && rdb.IDLess(id, m.ID)) {
			out = append(out, m)
			if !take {
				return out
			}
			continue
		}
		keep = append(keep, m)
	}
	if take {
		clear(r.waiting[len(keep):])
		r.waiting = keep
	}
	return out
}

func cmpID(a, b string) int {
	switch {
	case a == b:
		return 0
	case rdb.IDLess(a, b):
		return -1
	}
	return 1
}

// keyHold tells the handle stage which entries of a batch follow a failed
// entry of their key (nil: the consumer does not keep key order).
type keyHold struct {
	mu     sync.Mutex
	failed map[string]int // key -> index of its first failed entry in the batch
}

func newKeyHold(ordered bool) *keyHold {
	if !ordered {
		return nil
	}
	return &keyHold{failed: make(map[string]int)}
}

// held reports whether entry i of key comes after a failed entry of key.
func (h *keyHold) held(key string, i int) bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	f, ok := h.failed[key]
	return ok && f < i
}

// fail records that entry i of key failed.
func (h *keyHold) fail(key string, i int) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if f, ok := h.failed[key]; !ok || i < f {
		h.failed[key] = i
	}
}

// loadRecord reads the partition's commit record (see rdb.Record): at the
// start of a lease, and after Redis lost commits.
func (c *Consumer) loadRecord(ctx context.Context) error {
	v, err := c.rdb.Get(context.WithoutCancel(ctx), c.record.Key).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("streamtx: read commit record %q: %w", c.record.Key, err)
	}
	c.record.Old, c.record.Seq = v, 0
	if n, _, ok := strings.Cut(v, " "); ok {
		c.record.Seq, _ = strconv.ParseInt(n, 10, 64)
	}
	return nil
}

// committedRecord moves the commit record on past commit j.
func (c *Consumer) committedRecord(j *commitJob) {
	if j.cm.Record != nil {
		c.record.Old, c.record.Seq = j.cm.Record.New, j.cm.Record.Seq+1
	}
}

// isLost reports whether err is a commit refused by the partition's commit
// record: Redis lost commits.
func isLost(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, rdb.LostPrefix)
}
