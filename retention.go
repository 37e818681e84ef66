package streamtx

import (
	"context"
	"fmt"
	"strconv"

	"github.com/streamtx/streamtx/internal/rdb"
)

// retain applies Config.Retention once: it trims the source stream to the
// lower of its safe trim point and the retention bound.
func (c *Consumer) retain(ctx context.Context) error {
	r := c.cfg.Retention
	keepFrom := ""
	if r.MaxLen > 0 {
		newest, err := c.rdb.XRevRangeN(ctx, c.cfg.Stream, "+", "-", r.MaxLen).Result()
		if err != nil {
			return fmt.Errorf("streamtx: retention on %q: %w", c.cfg.Stream, err)
		}
		if int64(len(newest)) < r.MaxLen {
			return nil // within the length limit: nothing to trim
		}
		keepFrom = newest[len(newest)-1].ID
	}
	if r.MaxAge > 0 {
		now, err := c.rdb.Time(ctx).Result()
		if err != nil {
			return fmt.Errorf("streamtx: retention on %q: TIME: %w", c.cfg.Stream, err)
		}
		byAge := strconv.FormatInt(max(now.Add(-r.MaxAge).UnixMilli(), 0), 10) + "-0"
		if keepFrom == "" || rdb.IDLess(byAge, keepFrom) {
			keepFrom = byAge
		}
	}
	res, err := TrimSafe(ctx, c.rdb, c.cfg.Stream, TrimOptions{KeepFrom: keepFrom})
	if err != nil {
		return fmt.Errorf("streamtx: retention on %q: %w", c.cfg.Stream, err)
	}
	if res.Removed > 0 {
		c.log.Info("streamtx: retention trimmed the stream", "removed", res.Removed, "point", res.Point,
			"safe_point", res.SafePoint, "held_by", res.HeldBy)
	}
	return nil
}
