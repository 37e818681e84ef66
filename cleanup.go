package streamtx

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RemoveIdleConsumers deletes the consumers of group that have been idle at
// least idle and have no pending entries, and returns their names. A
// consumer with pending entries is never deleted (that would drop its
// entries from the group's pending list): the check and the delete are one
// script per consumer. idle must be positive.
func RemoveIdleConsumers(ctx context.Context, client redis.UniversalClient, stream, group string, idle time.Duration) ([]string, error) {
	if idle <= 0 {
		return nil, fmt.Errorf("streamtx: RemoveIdleConsumers: idle must be positive, got %s", idle)
	}
	infos, err := client.XInfoConsumers(ctx, stream, group).Result()
	if err != nil {
		return nil, fmt.Errorf("streamtx: consumers of %q/%q: %w", stream, group, err)
	}
	scripts, err := luaScripts()
	if err != nil {
		return nil, err
	}
	s := scripts.DelConsumer
	var removed []string
	for _, ci := range infos {
		if ci.Pending > 0 || ci.Idle < idle {
			continue
		}
		n, err := s.Run(ctx, client, []string{stream}, group, ci.Name, idle.Milliseconds()).Int()
		if err != nil {
			return removed, fmt.Errorf("streamtx: remove consumer %q: %w", ci.Name, err)
		}
		if n == 1 {
			removed = append(removed, ci.Name)
		}
	}
	return removed, nil
}
