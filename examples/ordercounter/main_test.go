package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/streamtxtest"
)

// The count survives a crash between handling and commit: the consumer is
// replaced and counts no order twice.
func TestCountSurvivesACrash(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, newHandler(), streamtxtest.Options{Stream: "orders"})
	tt.Send(map[string]any{"order_id": "o-1"})
	id := tt.Send(map[string]any{"order_id": "o-2"})
	tt.Inject(id, streamtxtest.Crash)
	tt.Drain()
	require.Equal(t, OrderCounter{Count: 2}, streamtxtest.State[OrderCounter](tt, "order-counter"))
	require.Len(t, tt.Injected(), 1)
}

func TestHandlerIsReplaySafe(t *testing.T) {
	t.Parallel()
	streamtxtest.CheckReplaySafe(t, newHandler, []map[string]any{
		{"order_id": "o-1"}, {"order_id": "o-2"}, {"order_id": "o-3"}, {"order_id": "o-4"}, {"order_id": "o-5"},
	}, streamtxtest.ReplayOptions{})
}
