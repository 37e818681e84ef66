package streamtx_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

// This example runs a consumer from start to graceful stop: it forwards each
// entry's text, upper-cased, to another stream, and dead-letters entries
// without text.
func ExampleNewConsumer() {
	rdb, closeRedis := exampleRedis()
	defer closeRedis()
	ctx := context.Background()
	for _, text := range []string{"hello", "", "world"} {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: "chat", Values: map[string]any{"text": text}})
	}

	shout := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		text := msg.Values["text"]
		if text == "" {
			return streamtx.Permanent(errors.New("no text"))
		}
		return tx.Publish("shouts", map[string]any{"text": strings.ToUpper(text)})
	})

	// The Observer learns when all three entries are settled: committed or
	// dead-lettered.
	settled := make(chan struct{})
	n := 0
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream:   "chat",
		Group:    "shouter",
		Consumer: "shouter-1",
		Block:    100 * time.Millisecond,
		Observer: streamtx.ObserverFunc(func(e streamtx.Event) {
			if e.Kind == streamtx.EventCommit || e.Kind == streamtx.EventDeadLetter {
				if n += len(e.IDs); n == 3 {
					close(settled)
				}
			}
		}),
	}, shout)
	if err != nil {
		fmt.Println(err)
		return
	}

	// Run blocks until its context is cancelled, then drains and returns.
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	select {
	case <-settled:
	case <-time.After(10 * time.Second):
		fmt.Println("timed out")
	}
	stop()
	if err := <-done; err != nil {
		fmt.Println("Run:", err)
	}

	shouts, _ := rdb.XRange(ctx, "shouts", "-", "+").Result()
	for _, m := range shouts {
		fmt.Println(m.Values["text"])
	}
	dead, _ := rdb.XRange(ctx, c.DeadLetterStream(), "-", "+").Result()
	for _, m := range dead {
		fmt.Println("dead letter:", m.Values["stx.error"])
	}
	// Output:
	// HELLO
	// WORLD
	// dead letter: permanent: no text
}

// This example keeps running totals of orders in one state value, and
// publishes a receipt per order. For each order, the new totals, the receipt
// and the acknowledgement commit together, or not at all.
func ExampleStateful() {
	rdb, closeRedis := exampleRedis()
	defer closeRedis()
	ctx := context.Background()
	for _, amount := range []int{20, 15, 25} {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: "orders", Values: map[string]any{"amount": amount}})
	}

	type totals struct {
		Orders int
		Amount int
	}
	h := streamtx.Stateful("totals", func(ctx context.Context, msg *streamtx.Message, t *totals, tx *txn.Tx) error {
		amount, err := strconv.Atoi(msg.Values["amount"])
		if err != nil {
			return streamtx.Permanent(err)
		}
		t.Orders++
		t.Amount += amount
		return tx.Publish("receipts", map[string]any{"order": t.Orders, "running_total": t.Amount})
	})
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream:   "orders",
		Group:    "billing",
		Consumer: "billing-1",
		Block:    100 * time.Millisecond,
	}, h)
	if err != nil {
		fmt.Println(err)
		return
	}
	exampleRunUntilProcessed(c, rdb, "orders", "billing")

	snap, err := streamtx.ReadState[totals](ctx, rdb, "orders", "billing", "totals")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%+v\n", snap.Value)
	receipts, _ := rdb.XRange(ctx, "receipts", "-", "+").Result()
	for _, m := range receipts {
		fmt.Println("receipt", m.Values["order"], "running total", m.Values["running_total"])
	}
	// Output:
	// {Orders:3 Amount:60}
	// receipt 1 running total 20
	// receipt 2 running total 35
	// receipt 3 running total 60
}

// This example keeps the stock of each SKU in its own state record, and
// publishes an alert when a sale leaves a SKU with 10 or fewer.
func ExampleKeyed() {
	rdb, closeRedis := exampleRedis()
	defer closeRedis()
	ctx := context.Background()
	for _, v := range []map[string]any{
		{"sku": "apple", "delta": 20},
		{"sku": "pear", "delta": 12},
		{"sku": "apple", "delta": -6},
		{"sku": "pear", "delta": -3},
		{"sku": "apple", "delta": -5},
	} {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: "stock", Values: v})
	}

	type inventory struct{ Stock int }
	bySKU := func(msg *streamtx.Message) string { return msg.Values["sku"] }
	h := streamtx.Keyed("inventory", bySKU, func(ctx context.Context, msg *streamtx.Message, inv *inventory, tx *txn.Tx) error {
		delta, err := strconv.Atoi(msg.Values["delta"])
		if err != nil {
			return streamtx.Permanent(err)
		}
		inv.Stock += delta
		if delta < 0 && inv.Stock <= 10 {
			return tx.Publish("restock", map[string]any{"sku": msg.Values["sku"], "stock": inv.Stock})
		}
		return nil
	})
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream:   "stock",
		Group:    "tracker",
		Consumer: "tracker-1",
		Block:    100 * time.Millisecond,
	}, h)
	if err != nil {
		fmt.Println(err)
		return
	}
	exampleRunUntilProcessed(c, rdb, "stock", "tracker")

	for _, sku := range []string{"apple", "pear", "plum"} {
		snap, err := streamtx.ReadKeyedState[inventory](ctx, rdb, "stock", "tracker", "inventory", sku)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Printf("%s: %d in stock\n", sku, snap.Value.Stock)
	}
	alerts, _ := rdb.XRange(ctx, "restock", "-", "+").Result()
	for _, m := range alerts {
		fmt.Printf("restock %s (%s left)\n", m.Values["sku"], m.Values["stock"])
	}
	// Output:
	// apple: 9 in stock
	// pear: 9 in stock
	// plum: 0 in stock
	// restock pear (9 left)
	// restock apple (9 left)
}

// exampleRedis starts an embedded miniredis for an example and returns a
// client for it, and a function that closes both.
func exampleRedis() (*redis.Client, func()) {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	return rdb, func() {
		rdb.Close()
		mr.Close()
	}
}

// exampleRunUntilProcessed runs c until group has read every entry of stream
// and has none pending (each is committed or dead-lettered), then cancels Run
// and waits for it to return.
func exampleRunUntilProcessed(c *streamtx.Consumer, rdb *redis.Client, stream, group string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Println("Run:", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		last, err1 := rdb.XRevRangeN(ctx, stream, "+", "-", 1).Result()
		groups, err2 := rdb.XInfoGroups(ctx, stream).Result()
		if err1 == nil && err2 == nil && len(last) > 0 {
			for _, g := range groups {
				if g.Name == group && g.Pending == 0 && g.LastDeliveredID == last[0].ID {
					return
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Println("timed out")
}
