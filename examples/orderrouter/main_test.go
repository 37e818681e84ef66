package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/streamtxtest"
)

var orders = []map[string]any{
	{"order_id": "o-1"},
	{"order_id": "o-2", "fail": "true"},
	{"order_id": "o-3"},
}

func TestNoInvoiceForAFailedOrder(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, newHandler("invoices"), streamtxtest.Options{Stream: "orders"})
	for _, o := range orders {
		tt.Send(o)
	}
	tt.Drain()
	var invoiced []string
	for _, m := range tt.Published("invoices") {
		invoiced = append(invoiced, m.Values["order_id"])
	}
	require.Equal(t, []string{"o-1", "o-3"}, invoiced)
	dl := tt.DeadLetters()
	require.Len(t, dl, 1)
	require.Equal(t, "permanent: cannot bill order o-2", dl[0].Error)
}

func TestHandlerIsReplaySafe(t *testing.T) {
	t.Parallel()
	streamtxtest.CheckReplaySafe(t, func() streamtx.Handler { return newHandler("invoices") }, orders, streamtxtest.ReplayOptions{})
}
