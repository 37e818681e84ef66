package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/streamtxtest"
)

var orders = []map[string]any{
	{"order_id": "o-1", "amount": 20},
	{"order_id": "o-2", "amount": 15},
	{"order_id": "o-3", "amount": "twenty"},
	{"order_id": "o-4", "amount": 25},
}

func TestTotalsAndReceipts(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, newHandler("receipts"), streamtxtest.Options{Stream: "orders"})
	for _, o := range orders {
		tt.Send(o)
	}
	tt.Drain()
	require.Equal(t, Totals{Orders: 3, Amount: 60}, streamtxtest.State[Totals](tt, "totals"))
	receipts := tt.Published("receipts")
	require.Len(t, receipts, 3)
	require.Equal(t, map[string]string{"order_id": "o-4", "running_total": "60"}, receipts[2].Values)
	dl := tt.DeadLetters()
	require.Len(t, dl, 1)
	require.Equal(t, "o-3", dl[0].Values["order_id"])
}

func TestHandlerIsReplaySafe(t *testing.T) {
	t.Parallel()
	streamtxtest.CheckReplaySafe(t, func() streamtx.Handler { return newHandler("receipts") }, orders, streamtxtest.ReplayOptions{})
}
