// Package exampleutil holds the plumbing the streamtx examples share: a Redis
// to run on, per-run key names, waiting until a group has processed its
// stream, and printing a stream. None of it is needed to use streamtx.
package exampleutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
)

// Timeout bounds how long an example waits for its consumer.
const Timeout = 10 * time.Second

// Redis is the server an example runs on: the one at REDIS_ADDR, or an
// embedded miniredis.
type Redis struct {
	Client *redis.Client
	mr     *miniredis.Miniredis
	suffix string
	names  []string
}

// Connect connects to the Redis at REDIS_ADDR, or starts an embedded
// miniredis when REDIS_ADDR is unset, and prints one line saying which.
func Connect() (*Redis, error) {
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, fmt.Errorf("start miniredis: %w", err)
		}
		fmt.Printf("REDIS_ADDR is not set: using an embedded miniredis at %s\n", mr.Addr())
		return &Redis{Client: redis.NewClient(&redis.Options{Addr: mr.Addr()}), mr: mr}, nil
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("REDIS_ADDR=%s: %w", addr, err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	suffix := "-" + hex.EncodeToString(b)
	fmt.Printf("using Redis at %s (key names end in %s; deleted on exit)\n", addr, suffix)
	return &Redis{Client: rdb, suffix: suffix}, nil
}

// Name returns the key name to use for base. On miniredis it is base; on a
// shared Redis it carries a per-run suffix, so that runs do not see each
// other's entries. Close deletes the key and everything streamtx derived from
// it (state, offsets, dead letters).
func (r *Redis) Name(base string) string {
	name := base + r.suffix
	r.names = append(r.names, name)
	return name
}

// Close deletes the keys of this run on a shared Redis, closes the client and
// stops miniredis.
func (r *Redis) Close() {
	if r.mr != nil {
		r.Client.Close()
		r.mr.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, name := range r.names {
		keys := []string{name}
		// Keys streamtx derives from a stream start with "stx:{<tag>}:".
		iter := r.Client.Scan(ctx, 0, "stx:{"+name+"}:*", 100).Iterator()
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if err := errors.Join(iter.Err(), r.Client.Del(ctx, keys...).Err()); err != nil {
			fmt.Fprintf(os.Stderr, "cleanup of %s: %v\n", name, err)
		}
	}
	r.Client.Close()
}

// Add appends one entry per element of values to stream.
func Add(ctx context.Context, rdb redis.Cmdable, stream string, values ...map[string]any) error {
	for _, v := range values {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: v}).Err(); err != nil {
			return fmt.Errorf("add to %s: %w", stream, err)
		}
	}
	return nil
}

// WaitProcessed blocks until group has read every entry of stream and has
// none pending: each was committed or dead-lettered. It gives up after
// Timeout.
func WaitProcessed(ctx context.Context, rdb redis.Cmdable, stream, group string) error {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if processed(ctx, rdb, stream, group) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("group %s has not processed %s: %w", group, stream, ctx.Err())
		case <-tick.C:
		}
	}
}

func processed(ctx context.Context, rdb redis.Cmdable, stream, group string) bool {
	last, err := rdb.XRevRangeN(ctx, stream, "+", "-", 1).Result()
	if err != nil {
		return false
	}
	groups, err := rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return false
	}
	for _, g := range groups {
		if g.Name == group {
			return g.Pending == 0 && (len(last) == 0 || g.LastDeliveredID == last[0].ID)
		}
	}
	return false
}

// RunUntilProcessed runs c until group has processed every entry of stream,
// then cancels Run and returns its error.
func RunUntilProcessed(ctx context.Context, c *streamtx.Consumer, rdb redis.Cmdable, stream, group string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-errc:
		return fmt.Errorf("consumer stopped before it was ready: %w", err)
	case <-time.After(Timeout):
		cancel()
		<-errc
		return errors.New("consumer not ready in time")
	}
	werr := WaitProcessed(ctx, rdb, stream, group)
	cancel()
	return errors.Join(werr, <-errc)
}

// PrintStream prints every entry of stream under a title, fields in sorted
// order.
func PrintStream(ctx context.Context, rdb redis.Cmdable, title, stream string) error {
	msgs, err := rdb.XRange(ctx, stream, "-", "+").Result()
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	fmt.Printf("%s (%d):\n", title, len(msgs))
	for _, m := range msgs {
		fmt.Printf("  %s  %s\n", m.ID, Fields(m.Values))
	}
	return nil
}

// Fields formats entry values as "k=v k=v", keys sorted.
func Fields[V any](values map[string]V) string {
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%v", k, values[k])
	}
	return b.String()
}

// Exit prints err and exits with status 1 when err is not nil.
func Exit(name string, err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
