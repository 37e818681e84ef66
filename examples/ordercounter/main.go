// Command ordercounter is a stateful consumer that survives restarts: the
// order count is committed with every order, so a restarted consumer carries
// on from the last committed order and counts none twice. It is the Go port
// of atomic-redis-streams' "Stateful consumer with crash recovery" example.
//
//	go run ./examples/ordercounter
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

// OrderCounter is the consumer's state. It starts at its zero value and is
// stored as msgpack: only exported fields are kept.
type OrderCounter struct {
	Count int
}

func main() { exampleutil.Exit("ordercounter", run()) }

// newHandler returns the handler, which counts orders in its state.
func newHandler() streamtx.Handler {
	return streamtx.Stateful("order-counter", func(ctx context.Context, msg *streamtx.Message, s *OrderCounter, tx *txn.Tx) error {
		s.Count++
		fmt.Printf("Processed order %s (total: %d)\n", msg.Values["order_id"], s.Count)
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
	orders := env.Name("orders")

	handler := newHandler()
	cfg := streamtx.Config{
		Stream:   orders,
		Group:    "order-processor",
		Consumer: "order-processor-1",
		Block:    100 * time.Millisecond,
	}

	// Two runs of the same consumer stand for a process and its restart:
	// the second one starts with nothing in memory.
	batches := [][]string{{"o-1", "o-2", "o-3"}, {"o-4", "o-5"}}
	for i, batch := range batches {
		for _, id := range batch {
			if err := exampleutil.Add(ctx, rdb, orders, map[string]any{"order_id": id}); err != nil {
				return err
			}
		}
		fmt.Printf("-- run %d: %d new orders\n", i+1, len(batch))
		c, err := streamtx.NewConsumer(rdb, cfg, handler)
		if err != nil {
			return err
		}
		if err := exampleutil.RunUntilProcessed(ctx, c, rdb, orders, cfg.Group); err != nil {
			return err
		}
	}

	snap, err := streamtx.ReadState[OrderCounter](ctx, rdb, orders, cfg.Group, "order-counter")
	if err != nil {
		return err
	}
	fmt.Printf("committed count: %d (last order entry %s)\n", snap.Value.Count, snap.LastID)
	return nil
}
