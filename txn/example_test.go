package txn_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/state"
	"github.com/streamtx/streamtx/txn"
)

type Totals struct{ Orders, Amount int }

type Stock struct {
	Left int `json:"left"`
}

// Declared once: a running total (msgpack) and the stock of each SKU (JSON).
var (
	orderTotals = txn.NewState[Totals]("totals")
	skuStock    = txn.NewState[Stock]("stock").WithCodec(state.JSON[Stock]())
)

// One handler changes two state records; both commit with the entry, once.
func ExampleNewState() {
	mr, err := miniredis.Run() // any Redis; an embedded one here
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	for _, o := range []struct{ sku, amount string }{{"apple", "3"}, {"pear", "5"}, {"apple", "4"}} {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: "orders", Values: map[string]any{"sku": o.sku, "amount": o.amount}})
	}

	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		amount, err := strconv.Atoi(msg.Values["amount"])
		if err != nil {
			return streamtx.Permanent(err)
		}
		t, err := orderTotals.Get(ctx, tx)
		if err != nil {
			return err
		}
		s, err := skuStock.GetKey(ctx, tx, msg.Values["sku"])
		if err != nil {
			return err
		}
		t.Orders++
		t.Amount += amount
		s.Left -= amount
		return nil
	})
	done := make(chan struct{})
	n := 0
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream: "orders", Group: "shop", Consumer: "shop-1",
		Block: 100 * time.Millisecond,
		Observer: streamtx.ObserverFunc(func(e streamtx.Event) {
			if e.Kind == streamtx.EventCommit {
				if n += len(e.IDs); n == 3 {
					close(done)
				}
			}
		}),
	}, h)
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error)
	go func() { ran <- c.Run(runCtx) }()
	<-done
	stop()
	<-ran

	t, _ := streamtx.ReadState[Totals](ctx, rdb, "orders", "shop", "totals")
	fmt.Printf("%+v version %d\n", t.Value, t.Version)
	// The JSON records are readable as they are: a header line, then JSON.
	for _, k := range mr.Keys() { // sorted
		if strings.Contains(k, ":stock:") {
			v, _ := mr.Get(k)
			fmt.Println(v[strings.IndexByte(v, '\n')+1:])
		}
	}
	// Output:
	// {Orders:3 Amount:12} version 1
	// {"left":-7}
	// {"left":-5}
}
