package streamtx_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/state"
	"github.com/streamtx/streamtx/txn"
)

type twoTotals struct{ N, Sum int }

type twoStock struct {
	Sold int      `json:"sold"`
	IDs  []string `json:"ids"`
}

var (
	twoTotalsState = txn.NewState[twoTotals]("totals")
	twoStockState  = txn.NewState[twoStock]("stock").WithCodec(state.JSON[twoStock]())
)

// Two State records — one plain (msgpack), one keyed (JSON) — changed by
// one handler commit together with the entry's publish, exactly once: with
// two consumers contending for the records (version conflicts re-run
// handlers), and a handler that fails after changing both (rolled back).
func TestTwoStatesInOneHandlerCommitTogetherOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("src"), e.key("out")
	const n = 120
	ids := e.add(src, n, func(i int) map[string]any { return map[string]any{"i": i, "sku": "sku-" + strconv.Itoa(i%3)} })

	var mu sync.Mutex
	failed := map[string]bool{}
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		i, err := strconv.Atoi(msg.Values["i"])
		if err != nil {
			return streamtx.Permanent(err) // a dead letter: the checks below fail
		}
		tot, err := twoTotalsState.Get(ctx, tx)
		if err != nil {
			return err
		}
		st, err := twoStockState.GetKey(ctx, tx, msg.Values["sku"])
		if err != nil {
			return err
		}
		tot.N++
		tot.Sum += i
		st.Sold++
		st.IDs = append(st.IDs, msg.ID)
		if err := tx.Publish(out, map[string]any{"n": i, "src": msg.ID}); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if i%7 == 0 && !failed[msg.ID] {
			failed[msg.ID] = true
			return errors.New("fails once after changing both states")
		}
		return nil
	})
	for _, name := range []string{"c1", "c2"} {
		cfg := e.cfg(src, "g", name)
		cfg.BatchSize = 10
		c, err := streamtx.NewConsumer(e.rdb, cfg, h)
		require.NoError(t, err)
		run(t, c)
	}
	e.drained(src, "g")

	e.requireExactlyOnce(out, ids)
	ctx := context.Background()
	sp, err := keys.NewSpace(src, "g")
	require.NoError(t, err)
	rec, err := record.Load(ctx, e.rdb, sp.State("totals"))
	require.NoError(t, err)
	tot, err := state.Msgpack[twoTotals]().Decode(rec.Data)
	require.NoError(t, err)
	assert.Equal(t, twoTotals{N: n, Sum: n * (n + 1) / 2}, *tot)

	seen := map[string]int{}
	for k := range 3 {
		rec, err := record.Load(ctx, e.rdb, sp.KeyedState("stock", fmt.Sprintf("sku-%d", k)))
		require.NoError(t, err)
		var st twoStock
		require.NoError(t, json.Unmarshal(rec.Data, &st), "the JSON codec's record holds JSON: %q", rec.Data)
		assert.Equal(t, n/3, st.Sold)
		snap, err := streamtx.ReadKeyedState(ctx, e.rdb, src, "g", "stock", fmt.Sprintf("sku-%d", k), state.JSON[twoStock]())
		require.NoError(t, err, "ReadKeyedState with the state's own codec")
		assert.Equal(t, st, snap.Value)
		_, err = streamtx.ReadKeyedState[twoStock](ctx, e.rdb, src, "g", "stock", fmt.Sprintf("sku-%d", k))
		require.ErrorIs(t, err, txn.ErrStateDecode, "JSON is not msgpack")
		for _, id := range st.IDs {
			seen[id]++
		}
	}
	require.Len(t, seen, n)
	for id, k := range seen {
		require.Equal(t, 1, k, "entry %s applied to its stock record once", id)
	}
}

type hiddenTotals struct {
	N     int
	cache map[string]int
}

// A State of a type its codec cannot store is refused at first use, as an
// error naming the field: no panic, nothing committed, the entry stays
// pending (it is retried, and dead-lettered after MaxDeliveries).
func TestStateWithUnexportedFieldFailsTheHandler(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, out := e.key("src"), e.key("out")
	e.add(src, 1, func(i int) map[string]any { return map[string]any{"i": i} })
	hidden := txn.NewState[hiddenTotals]("hidden")
	errc := make(chan error, 1)
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		_, err := hidden.Get(ctx, tx)
		select {
		case errc <- err:
		default:
		}
		if err != nil {
			return err
		}
		return tx.Publish(out, map[string]any{"x": 1})
	})
	c, err := streamtx.NewConsumer(e.rdb, e.cfg(src, "g", "c1"), h)
	require.NoError(t, err, "NewConsumer cannot see inside a HandlerFunc")
	run(t, c)
	err = <-errc
	require.ErrorContains(t, err, "hiddenTotals.cache")
	require.ErrorContains(t, err, `"hidden"`)
	assert.Empty(t, e.entries(out))
}
