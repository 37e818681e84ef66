package streamtx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/streamtx/streamtx/internal/rdb"
)

// keepAliveKey marks a handler's context with its consumer.
type keepAliveKey struct{}

// KeepAlive tells the consumer that called the handler with ctx that the
// handler is still working: the entries of the batch in hand, while this
// consumer still owns them, get their idle time reset, so that no other
// consumer claims them after ClaimIdle. It counts no delivery. A handler
// that may run longer than ClaimIdle calls it more often than that; calls
// closer together than ClaimIdle/10 are merged into one.
//
// It returns an error when ctx is not (derived from) a handler's context,
// or when Redis fails; the entries are then left as they were.
func KeepAlive(ctx context.Context) error {
	c, _ := ctx.Value(keepAliveKey{}).(*Consumer)
	if c == nil {
		return errors.New("streamtx: KeepAlive: ctx is not a handler's context")
	}
	return c.keepAlive(ctx)
}

func (c *Consumer) keepAlive(ctx context.Context) error {
	now := time.Now().UnixNano()
	last := c.lastKeepAlive.Load()
	if now-last < int64(c.cfg.ClaimIdle/10) || !c.lastKeepAlive.CompareAndSwap(last, now) {
		return nil
	}
	if c.ordered {
		return nil // a partition's entries are never claimed: its lease keeps them
	}
	p := c.inHand.Load()
	if p == nil || len(*p) == 0 {
		return nil
	}
	msgs := *p
	args := make([]any, 0, 2+2*len(msgs))
	args = append(args, c.cfg.Group, c.cfg.Consumer)
	for _, m := range msgs {
		args = append(args, m.ID, strconv.FormatInt(m.Deliveries, 10))
	}
	if _, err := rdb.Run(ctx, c.rdb, c.scripts.KeepAlive, []string{c.cfg.Stream}, args...); err != nil {
		return fmt.Errorf("streamtx: KeepAlive: %w", err)
	}
	return nil
}
