package txn_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/internal/txnengine"
	"github.com/streamtx/streamtx/state"
	"github.com/streamtx/streamtx/txn"
)

type totals struct{ Orders, Amount int }

type stock struct {
	Left int `json:"left"`
}

// newEnv returns an engine over an in-memory store, as the consumer makes
// one over Redis.
func newEnv(stored map[string][]byte) (*txnengine.Env, *txnengine.States) {
	st := txnengine.NewStates(func(_ context.Context, keys []string) ([]record.Record, error) {
		recs := make([]record.Record, len(keys))
		for i, k := range keys {
			if b, ok := stored[k]; ok {
				recs[i] = record.Record{Data: b, Version: 1, Token: "t"}
			}
		}
		return recs, nil
	}, func(name, key string, keyed bool) string {
		if keyed {
			return name + "/" + key
		}
		return name
	}, 0)
	return &txnengine.Env{States: st}, st
}

func TestTwoStatesInOneTx(t *testing.T) {
	ctx := context.Background()
	tot := txn.NewState[totals]("totals")
	inv := txn.NewState[stock]("stock").WithCodec(state.JSON[stock]())
	env, st := newEnv(map[string][]byte{"stock/a": []byte(`{"left":5}`)})

	etx := txnengine.New(env, "1-0")
	tx := (*txn.Tx)(etx)
	a, err := tot.Get(ctx, tx)
	require.NoError(t, err)
	s, err := inv.GetKey(ctx, tx, "a")
	require.NoError(t, err)
	require.Equal(t, 5, s.Left, "decoded with the JSON codec")
	a.Orders++
	s.Left--
	again, err := tot.Get(ctx, tx)
	require.NoError(t, err)
	require.Same(t, a, again, "one working value per record")
	require.NoError(t, etx.Seal())

	w, err := st.Dirty()
	require.NoError(t, err)
	require.Len(t, w, 2)
	got := map[string]string{}
	for _, x := range w {
		got[x.Key] = string(x.Data)
	}
	assert.JSONEq(t, `{"left":4}`, got["stock/a"])
	v, err := state.Msgpack[totals]().Decode([]byte(got["totals"]))
	require.NoError(t, err)
	assert.Equal(t, totals{Orders: 1}, *v)
}

type hidden struct {
	N     int
	notes []string
}

func TestStateErrorsNeverPanic(t *testing.T) {
	ctx := context.Background()
	env, _ := newEnv(map[string][]byte{"bad": []byte("\xc1"), "json": []byte(`{"left":`)})
	tx := (*txn.Tx)(txnengine.New(env, "1-0"))

	_, err := txn.NewState[hidden]("h").Get(ctx, tx)
	require.ErrorContains(t, err, "hidden.notes", "names the field")

	_, err = txn.NewState[totals]("bad").Get(ctx, tx)
	require.ErrorIs(t, err, txn.ErrStateDecode)
	_, err = txn.NewState[stock]("json").WithCodec(state.JSON[stock]()).Get(ctx, tx)
	require.ErrorIs(t, err, txn.ErrStateDecode)

	_, err = txn.NewState[totals]("twice").Get(ctx, tx)
	require.NoError(t, err)
	_, err = txn.NewState[stock]("twice").Get(ctx, tx)
	require.ErrorContains(t, err, "different types")

	_, err = txn.NewState[totals]("x").Get(ctx, nil)
	require.Error(t, err)
	_, err = txn.NewState[totals]("x").WithCodec(nil).Get(ctx, tx)
	require.Error(t, err)
	_, err = new(txn.State[totals]).Get(ctx, tx)
	require.Error(t, err)
	_, err = txn.NewState[totals]("x").Get(ctx, new(txn.Tx))
	require.Error(t, err, "a Tx without a state store")
}

func TestZeroTxPublishes(t *testing.T) {
	tx := new(txn.Tx)
	require.NoError(t, tx.Publish("out", map[string]any{"a": 1}))
	require.ErrorIs(t, tx.Publish("", map[string]any{"a": 1}), txn.ErrBadPublish)
	require.ErrorIs(t, tx.Err(), txn.ErrBadPublish, "sticks")
}
