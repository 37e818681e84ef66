package streamtxtest_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/streamtxtest"
	"github.com/streamtx/streamtx/txn"
)

type OrderTotals struct{ Orders, Amount int }

func newTotals() streamtx.Handler {
	return streamtx.Stateful("totals", func(ctx context.Context, msg *streamtx.Message, t *OrderTotals, tx *txn.Tx) error {
		amount, err := strconv.Atoi(msg.Values["amount"])
		if err != nil {
			return streamtx.Permanent(err)
		}
		t.Orders++
		t.Amount += amount
		return tx.Publish("receipts", map[string]any{"order_id": msg.Values["order_id"], "total": t.Amount})
	})
}

func Example() {
	t := &testing.T{} // in a test: the test's t
	tt := streamtxtest.New(t, newTotals(), streamtxtest.Options{Stream: "orders", Config: streamtx.Config{MaxDeliveries: 3}})
	defer tt.Close()
	tt.Send(map[string]any{"order_id": "o-1", "amount": 20})
	tt.Send(map[string]any{"order_id": "o-2", "amount": "twenty"})
	id := tt.Send(map[string]any{"order_id": "o-3", "amount": 5})
	tt.Inject(id, streamtxtest.Crash) // the consumer dies before it commits o-3
	tt.Drain()

	fmt.Printf("%+v\n", streamtxtest.State[OrderTotals](tt, "totals"))
	for _, m := range tt.Published("receipts") {
		fmt.Println(m.Values["order_id"], m.Values["total"])
	}
	for _, d := range tt.DeadLetters() {
		fmt.Println("dead letter:", d.Values["order_id"], d.Error)
	}
	// Output:
	// {Orders:2 Amount:25}
	// o-1 20
	// o-3 25
	// dead letter: o-2 permanent: strconv.Atoi: parsing "twenty": invalid syntax
}

type Level struct{ Left int }

// A Keyed handler on a partitioned topic: its state is kept per key, in the
// key's partition.
func Example_topic() {
	t := &testing.T{} // in a test: the test's t
	stock := streamtx.Keyed("stock", nil, func(ctx context.Context, msg *streamtx.Message, s *Level, tx *txn.Tx) error {
		n, err := strconv.Atoi(msg.Values["n"])
		if err != nil {
			return streamtx.Permanent(err)
		}
		s.Left += n
		return nil
	})
	tt := streamtxtest.New(t, stock, streamtxtest.Options{Topic: "stock", Partitions: 4})
	defer tt.Close()
	tt.SendKeyed("apple", map[string]any{"n": 3})
	id := tt.SendKeyed("pear", map[string]any{"n": 2})
	tt.SendKeyed("apple", map[string]any{"n": -1})
	tt.Inject(id, streamtxtest.Crash) // the consumer dies before it commits pear
	tt.Drain()

	for _, sku := range []string{"apple", "pear"} {
		fmt.Printf("%s: partition %d, %+v\n", sku, tt.Topic().PartitionOf(sku), streamtxtest.KeyedState[Level](tt, "stock", sku))
	}
	// Output:
	// apple: partition 1, {Left:2}
	// pear: partition 3, {Left:2}
}

// A handler that publishes by key to another topic: the topic is declared
// in Options.Topics, and what was published to it is read partition by
// partition.
func ExampleTester_PublishedKeyed() {
	t := &testing.T{} // in a test: the test's t
	ship := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		return tx.PublishKeyed("shipments", msg.Values["customer"], map[string]any{"order": msg.Values["order"]})
	})
	tt := streamtxtest.New(t, ship, streamtxtest.Options{Stream: "orders", Topics: map[string]int{"shipments": 3}})
	defer tt.Close()
	tt.Send(map[string]any{"customer": "c-1", "order": "o-1"})
	tt.Send(map[string]any{"customer": "c-2", "order": "o-2"})
	tt.Send(map[string]any{"customer": "c-1", "order": "o-3"})
	tt.Drain()

	for _, m := range tt.PublishedKeyed("shipments") {
		fmt.Printf("partition %d: %s %s\n", m.Partition, m.Key, m.Values["order"])
	}
	// Output:
	// partition 1: c-2 o-2
	// partition 2: c-1 o-1
	// partition 2: c-1 o-3
}
