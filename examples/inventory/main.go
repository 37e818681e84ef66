// Command inventory tracks stock per SKU and publishes a restock alert when a
// sale leaves a SKU's stock at or below a threshold. The stock change, the
// alert and the acknowledgement commit together, or not at all. It is the Go
// port of atomic-redis-streams' "Full example", with Keyed state: one record
// per SKU instead of one for the whole stream.
//
//	go run ./examples/inventory
//
// It uses the Redis at REDIS_ADDR, or an embedded miniredis when REDIS_ADDR is
// unset.
package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/examples/internal/exampleutil"
	"github.com/streamtx/streamtx/txn"
)

// RestockThreshold is the stock at or below which a sale raises an alert.
const RestockThreshold = 10

// Inventory is the state of one SKU, stored as msgpack: only exported fields
// are kept.
type Inventory struct {
	Stock int
}

func main() { exampleutil.Exit("inventory", run()) }

// newHandler returns the handler: stock per SKU (Keyed), and an alert to
// alerts when a sale leaves a SKU at or below RestockThreshold.
func newHandler(alerts string) streamtx.Handler {
	bySKU := func(msg *streamtx.Message) string { return msg.Values["sku"] }
	return streamtx.Keyed("inventory", bySKU, func(ctx context.Context, msg *streamtx.Message, inv *Inventory, tx *txn.Tx) error {
		qty, err := strconv.Atoi(msg.Values["quantity"])
		if err != nil {
			return streamtx.Permanent(fmt.Errorf("quantity: %w", err))
		}
		switch msg.Values["kind"] {
		case "received":
			inv.Stock += qty
			return nil
		case "sold":
			inv.Stock -= qty
		default:
			return streamtx.Permanent(fmt.Errorf("unknown kind %q", msg.Values["kind"]))
		}
		if inv.Stock <= RestockThreshold {
			return tx.Publish(alerts, map[string]any{"sku": msg.Values["sku"], "stock": inv.Stock})
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
	moves, alerts := env.Name("stock-moves"), env.Name("restock-alerts")

	err = exampleutil.Add(ctx, rdb, moves,
		map[string]any{"sku": "apple", "kind": "received", "quantity": 20},
		map[string]any{"sku": "pear", "kind": "received", "quantity": 12},
		map[string]any{"sku": "apple", "kind": "sold", "quantity": 6},
		map[string]any{"sku": "pear", "kind": "sold", "quantity": 3},
		map[string]any{"sku": "apple", "kind": "sold", "quantity": 5},
		map[string]any{"sku": "plum", "kind": "received", "quantity": 30},
		map[string]any{"sku": "plum", "kind": "sold", "quantity": 4},
	)
	if err != nil {
		return err
	}

	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream:   moves,
		Group:    "inventory-tracker",
		Consumer: "inventory-tracker-1",
		Block:    100 * time.Millisecond,
	}, newHandler(alerts))
	if err != nil {
		return err
	}
	if err := exampleutil.RunUntilProcessed(ctx, c, rdb, moves, "inventory-tracker"); err != nil {
		return err
	}

	fmt.Println("stock per SKU:")
	for _, sku := range []string{"apple", "pear", "plum"} {
		snap, err := streamtx.ReadKeyedState[Inventory](ctx, rdb, moves, "inventory-tracker", "inventory", sku)
		if err != nil {
			return err
		}
		fmt.Printf("  %-5s stock=%d (last entry %s)\n", sku, snap.Value.Stock, snap.LastID)
	}
	return exampleutil.PrintStream(ctx, rdb, "restock alerts", alerts)
}
