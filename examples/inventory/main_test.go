package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/streamtxtest"
)

var moves = []map[string]any{
	{"sku": "apple", "kind": "received", "quantity": 20},
	{"sku": "pear", "kind": "received", "quantity": 12},
	{"sku": "apple", "kind": "sold", "quantity": 6},
	{"sku": "pear", "kind": "sold", "quantity": 3},
	{"sku": "apple", "kind": "sold", "quantity": 5},
	{"sku": "plum", "kind": "returned", "quantity": 1},
}

func TestStockAndAlerts(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, newHandler("restock-alerts"), streamtxtest.Options{Stream: "stock-moves"})
	for _, m := range moves {
		tt.Send(m)
	}
	tt.Drain()
	require.Equal(t, Inventory{Stock: 9}, streamtxtest.KeyedState[Inventory](tt, "inventory", "apple"))
	require.Equal(t, Inventory{Stock: 9}, streamtxtest.KeyedState[Inventory](tt, "inventory", "pear"))
	alerts := tt.Published("restock-alerts")
	require.Len(t, alerts, 2)
	require.Equal(t, map[string]string{"sku": "pear", "stock": "9"}, alerts[0].Values)
	require.Len(t, tt.DeadLetters(), 1) // "returned" is not a kind
}

func TestHandlerIsReplaySafe(t *testing.T) {
	t.Parallel()
	streamtxtest.CheckReplaySafe(t, func() streamtx.Handler { return newHandler("restock-alerts") }, moves, streamtxtest.ReplayOptions{})
}
