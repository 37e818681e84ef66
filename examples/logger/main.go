// Command logger is a stateless consumer: a HandlerFunc that prints each
// message. It is the Go port of atomic-redis-streams' "Stateless consumer"
// example.
//
//	go run ./examples/logger
//
// It uses the Redis at REDIS_ADDR, or an embedded miniredis when REDIS_ADDR is
// unset.
package main

import (
	"context"
	"fmt"
	"time"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/examples/internal/exampleutil"
	"github.com/streamtx/streamtx/txn"
)

func main() { exampleutil.Exit("logger", run()) }

// newHandler returns the handler, which prints each entry.
//
// Printing is a side effect outside Redis: like any handler, this one runs
// at least once per entry (a retry prints again), while everything done
// through tx applies exactly once. A side effect that must not repeat can be
// keyed by tx.IdempotencyKey().
func newHandler() streamtx.Handler {
	return streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		fmt.Printf("Received %s: %s\n", msg.ID, exampleutil.Fields(msg.Values))
		return nil
	})
}

func run() error {
	env, err := exampleutil.Connect()
	if err != nil {
		return err
	}
	defer env.Close()
	rdb, ctx := env.Client, context.Background()
	events := env.Name("events")

	err = exampleutil.Add(ctx, rdb, events,
		map[string]any{"user": "ada", "action": "signed_up"},
		map[string]any{"user": "ada", "action": "logged_in"},
		map[string]any{"user": "alan", "action": "signed_up"},
	)
	if err != nil {
		return err
	}

	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream:   events,
		Group:    "logger",
		Consumer: "logger-1",
		Block:    100 * time.Millisecond,
	}, newHandler())
	if err != nil {
		return err
	}
	return exampleutil.RunUntilProcessed(ctx, c, rdb, events, "logger")
}
