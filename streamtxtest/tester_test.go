package streamtxtest_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/streamtxtest"
	"github.com/streamtx/streamtx/txn"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type Totals struct{ Orders, Amount int }

// totals is a replay-safe handler: everything it does goes through tx.
func totals() streamtx.Handler {
	return streamtx.Stateful("totals", func(ctx context.Context, msg *streamtx.Message, t *Totals, tx *txn.Tx) error {
		amount, err := strconv.Atoi(msg.Values["amount"])
		if err != nil {
			return streamtx.Permanent(err)
		}
		t.Orders++
		t.Amount += amount
		return tx.Publish("receipts", map[string]any{"order_id": msg.Values["order_id"], "total": t.Amount})
	})
}

func TestStateReceiptsAndDeadLetters(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, totals(), streamtxtest.Options{Stream: "orders", Config: streamtx.Config{MaxDeliveries: 3}})
	id := tt.Send(map[string]any{"order_id": "o-1", "amount": 20})
	require.NotEmpty(t, id)
	tt.Send(map[string]any{"order_id": "o-2", "amount": "x"})
	tt.Send(map[string]any{"order_id": "o-3", "amount": 5})
	tt.Drain()

	require.Equal(t, Totals{Orders: 2, Amount: 25}, streamtxtest.State[Totals](tt, "totals"))
	got := tt.Published("receipts")
	require.Len(t, got, 2)
	assert.Equal(t, map[string]string{"order_id": "o-1", "total": "20"}, got[0].Values)
	assert.Equal(t, map[string]string{"order_id": "o-3", "total": "25"}, got[1].Values)
	dl := tt.DeadLetters()
	require.Len(t, dl, 1)
	assert.Equal(t, "o-2", dl[0].Values["order_id"])
	assert.Contains(t, dl[0].Error, "invalid syntax")
	assert.Empty(t, tt.Injected())

	// A second round carries on from the committed state.
	tt.Send(map[string]any{"order_id": "o-4", "amount": 1})
	tt.Drain()
	require.Equal(t, Totals{Orders: 3, Amount: 26}, streamtxtest.State[Totals](tt, "totals"))
}

// Retries and the dead letter after MaxDeliveries take milliseconds: the
// Tester's Backoff is 1ms.
func TestRetriesThenDeadLetterAreFast(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	calls := 0
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		mu.Lock()
		calls++
		mu.Unlock()
		return errors.New("payment service down")
	})
	tt := streamtxtest.New(t, h, streamtxtest.Options{Config: streamtx.Config{MaxDeliveries: 4}})
	tt.Send(map[string]any{"order_id": "o-1"})
	start := time.Now()
	tt.Drain()
	require.Less(t, time.Since(start), 5*time.Second)
	dl := tt.DeadLetters()
	require.Len(t, dl, 1)
	assert.Equal(t, "payment service down", dl[0].Error)
	assert.EqualValues(t, 4, dl[0].Deliveries)
	mu.Lock()
	assert.Equal(t, 4, calls)
	mu.Unlock()
}

func TestKeyedState(t *testing.T) {
	t.Parallel()
	type Stock struct{ Left int }
	h := streamtx.Keyed("stock", func(m *streamtx.Message) string { return m.Values["sku"] },
		func(ctx context.Context, msg *streamtx.Message, s *Stock, tx *txn.Tx) error {
			n, _ := strconv.Atoi(msg.Values["n"])
			s.Left += n
			return nil
		})
	tt := streamtxtest.New(t, h, streamtxtest.Options{})
	tt.Send(map[string]any{"sku": "apple", "n": 3})
	tt.Send(map[string]any{"sku": "pear", "n": 2})
	tt.Send(map[string]any{"sku": "apple", "n": -1})
	tt.Drain()
	assert.Equal(t, Stock{Left: 2}, streamtxtest.KeyedState[Stock](tt, "stock", "apple"))
	assert.Equal(t, Stock{Left: 2}, streamtxtest.KeyedState[Stock](tt, "stock", "pear"))
	assert.Equal(t, Stock{}, streamtxtest.KeyedState[Stock](tt, "stock", "plum"))
}
