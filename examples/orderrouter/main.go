// Command orderrouter publishes one invoice per order, atomically with the
// order's acknowledgement. An order whose handler fails after it published
// gets no invoice: the publish is rolled back with the failed transaction. It
// is the Go port of atomic-redis-streams' "Atomic downstream publishing"
// example.
//
//	go run ./examples/orderrouter
//
// It uses the Redis at REDIS_ADDR, or an embedded miniredis when REDIS_ADDR is
// unset.
package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/examples/internal/exampleutil"
	"github.com/streamtx/streamtx/txn"
)

func main() { exampleutil.Exit("orderrouter", run()) }

// newHandler returns the handler, which publishes an invoice to invoices
// for each order, and fails orders marked fail=true after publishing.
func newHandler(invoices string) streamtx.Handler {
	return streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if err := tx.Publish(invoices, map[string]any{"order_id": msg.Values["order_id"]}); err != nil {
			return err
		}
		if msg.Values["fail"] == "true" {
			// The handler fails after publishing: the invoice above is
			// discarded. Permanent sends the order to the dead-letter
			// stream at once instead of retrying it.
			return streamtx.Permanent(errors.New("cannot bill order " + msg.Values["order_id"]))
		}
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
	orders, invoices := env.Name("orders"), env.Name("invoices")

	err = exampleutil.Add(ctx, rdb, orders,
		map[string]any{"order_id": "o-1"},
		map[string]any{"order_id": "o-2", "fail": "true"},
		map[string]any{"order_id": "o-3"},
	)
	if err != nil {
		return err
	}

	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream:   orders,
		Group:    "order-router",
		Consumer: "order-router-1",
		Block:    100 * time.Millisecond,
	}, newHandler(invoices))
	if err != nil {
		return err
	}
	if err := exampleutil.RunUntilProcessed(ctx, c, rdb, orders, "order-router"); err != nil {
		return err
	}

	if err := exampleutil.PrintStream(ctx, rdb, "invoices", invoices); err != nil {
		return err
	}
	if err := exampleutil.PrintStream(ctx, rdb, "dead letters", c.DeadLetterStream()); err != nil {
		return err
	}

	// Check the claim rather than only print it.
	msgs, err := rdb.XRange(ctx, invoices, "-", "+").Result()
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Values["order_id"] == "o-2" {
			return errors.New("found an invoice for the failed order o-2")
		}
	}
	fmt.Println("no invoice for o-2: its publish was rolled back with the failed handler")
	return nil
}
