// Command quickstart counts orders and totals their amounts exactly once,
// publishing one receipt per order. For every order, the new totals, the
// receipt and the acknowledgement are committed to Redis together, or not at
// all.
//
//	go run ./examples/quickstart
//
// It uses the Redis at REDIS_ADDR, or an embedded miniredis when REDIS_ADDR is
// unset.
package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/examples/internal/exampleutil"
	"github.com/streamtx/streamtx/txn"
)

// Totals is the consumer's state, stored in Redis as msgpack: only exported
// fields are kept.
type Totals struct {
	Orders int
	Amount int
}

func main() { exampleutil.Exit("quickstart", run()) }

// newHandler returns the handler: it updates the totals and publishes a
// receipt to receipts. Both are committed with the order's
// acknowledgement, or not at all.
func newHandler(receipts string) streamtx.Handler {
	return streamtx.Stateful("totals", func(ctx context.Context, msg *streamtx.Message, t *Totals, tx *txn.Tx) error {
		amount, err := strconv.Atoi(msg.Values["amount"])
		if err != nil {
			return streamtx.Permanent(err) // retrying will not help: dead-letter it
		}
		t.Orders++
		t.Amount += amount
		return tx.Publish(receipts, map[string]any{"order_id": msg.Values["order_id"], "running_total": t.Amount})
	})
}

func run() error {
	env, err := exampleutil.Connect()
	if err != nil {
		return err
	}
	defer env.Close()
	rdb, ctx := env.Client, context.Background()
	orders, receipts := env.Name("orders"), env.Name("receipts")

	err = exampleutil.Add(ctx, rdb, orders,
		map[string]any{"order_id": "o-1", "amount": 20},
		map[string]any{"order_id": "o-2", "amount": 15},
		map[string]any{"order_id": "o-3", "amount": 25},
	)
	if err != nil {
		return err
	}

	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream:   orders,
		Group:    "billing",
		Consumer: "billing-1",
		Block:    100 * time.Millisecond,
	}, newHandler(receipts))
	if err != nil {
		return err
	}

	// Run until every order is processed, then stop: cancelling Run's context
	// drains it gracefully.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	werr := exampleutil.WaitProcessed(ctx, rdb, orders, "billing")
	cancel()
	if err := errors.Join(werr, <-done); err != nil {
		return err
	}

	snap, err := streamtx.ReadState[Totals](ctx, rdb, orders, "billing", "totals")
	if err != nil {
		return err
	}
	fmt.Printf("committed state: %+v (last entry %s)\n", snap.Value, snap.LastID)
	return exampleutil.PrintStream(ctx, rdb, "receipts", receipts)
}
