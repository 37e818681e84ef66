package txn_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/state"
	"github.com/streamtx/streamtx/txn"
)

func TestPublishFormatsValuesInSortedOrder(t *testing.T) {
	tx := txn.New(nil, "1-1")
	require.NoError(t, tx.Publish("out", map[string]any{
		"s": "x", "b": []byte("y"), "t": true, "i": -3, "u": uint8(7), "f": 1.5, "d": time.Second,
	}))
	require.Equal(t, []txn.Publish{{Stream: "out", Fields: []string{
		"b", "y", "d", "1s", "f", "1.5", "i", "-3", "s", "x", "t", "true", "u", "7",
	}}}, tx.Publishes())
	require.NoError(t, tx.Err())
}

func TestBadPublishIsStickyAndClear(t *testing.T) {
	tests := map[string]struct {
		stream string
		values map[string]any
		want   string
	}{
		"empty stream": {"", map[string]any{"a": 1}, "empty stream name"},
		"no values":    {"out", nil, "no values"},
		"nil value":    {"out", map[string]any{"a": nil}, `field "a": nil value`},
		"struct":       {"out", map[string]any{"a": struct{}{}}, "unsupported type struct {}"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			tx := txn.New(nil, "1-1")
			err := tx.Publish(tt.stream, tt.values)
			require.ErrorIs(t, err, txn.ErrBadPublish)
			require.Contains(t, err.Error(), tt.want)
			require.Empty(t, tx.Publishes())
			require.NoError(t, tx.Publish("fine", map[string]any{"a": 1}))
			require.ErrorIs(t, tx.Err(), txn.ErrBadPublish, "the first error sticks")
			require.ErrorIs(t, tx.Seal(), txn.ErrBadPublish)
		})
	}
}

func TestRouteRefusesOrRewritesPublish(t *testing.T) {
	refuse := errors.New("other slot")
	tx := txn.New(&txn.Env{Route: func(p *txn.Publish) error {
		switch p.Stream {
		case "far":
			return refuse
		case "moved":
			p.Stream = "outbox"
			p.Fields = append([]string{"target", "moved"}, p.Fields...)
		}
		return nil
	}}, "1-1")
	require.ErrorIs(t, tx.Publish("far", map[string]any{"a": 1}), refuse)
	tx = txn.New(&txn.Env{Route: func(p *txn.Publish) error {
		p.Stream = "outbox"
		return nil
	}}, "1-1")
	require.NoError(t, tx.Publish("moved", map[string]any{"a": 1}))
	require.Equal(t, []txn.Publish{{Stream: "outbox", Fields: []string{"a", "1"}}}, tx.Publishes())
	require.Equal(t, "1-1", tx.IdempotencyKey())
}

type count struct{ N int }

func TestStateRollbackAndSeal(t *testing.T) {
	ctx := context.Background()
	loads := 0
	stored, err := state.Encode(&count{N: 41})
	require.NoError(t, err)
	st := txn.NewStates(func(ctx context.Context, keys []string) ([]txn.Record, error) {
		loads++
		return []txn.Record{{Data: stored, Version: 3, LastID: "1-0"}}, nil
	}, func(name, key string, keyed bool) string { return name + "/" + key }, 0)
	env := &txn.Env{States: st, IdempotencyPrefix: "s/g/"}
	codec := state.Codec[count]{}

	// A failed transaction leaves no trace.
	tx := txn.New(env, "2-0")
	require.Equal(t, "s/g/2-0", tx.IdempotencyKey())
	v, err := tx.State(ctx, "n", "", false, codec)
	require.NoError(t, err)
	v.(*count).N = 1000
	require.NoError(t, tx.Publish("out", map[string]any{"a": 1}))
	tx.Rollback()
	require.Empty(t, tx.Publishes())
	require.Empty(t, st.Dirty())

	// A sealed one is dirty, based on the version read.
	tx = txn.New(env, "3-0")
	v, err = tx.State(ctx, "n", "", false, codec)
	require.NoError(t, err)
	require.Equal(t, 41, v.(*count).N, "rolled back to the stored value")
	v.(*count).N++
	require.NoError(t, tx.Seal())
	w := st.Dirty()
	require.Len(t, w, 1)
	require.Equal(t, "n/", w[0].Key)
	require.Equal(t, int64(3), w[0].Version)
	require.Equal(t, mustEncode(t, 42), w[0].Data)
	require.Equal(t, "3-0", w[0].LastID)
	require.Equal(t, 1, loads, "cached between transactions")

	st.Committed(w, "tok")
	require.Empty(t, st.Dirty())
	tx = txn.New(env, "4-0")
	v, err = tx.State(ctx, "n", "", false, codec)
	require.NoError(t, err)
	v.(*count).N++
	require.NoError(t, tx.Seal())
	require.Equal(t, int64(4), st.Dirty()[0].Version)

	// Discard forgets uncommitted changes: the next access reloads.
	st.Discard()
	require.Zero(t, st.Len())
	tx = txn.New(env, "5-0")
	v, err = tx.State(ctx, "n", "", false, codec)
	require.NoError(t, err)
	require.Equal(t, 41, v.(*count).N)
	require.Equal(t, 2, loads)
}

func mustEncode(t *testing.T, n int) []byte {
	b, err := state.Encode(&count{N: n})
	require.NoError(t, err)
	return b
}

func TestPrefetchRefreshesOnlyCleanRecords(t *testing.T) {
	ctx := context.Background()
	version := int64(1)
	st := txn.NewStates(func(ctx context.Context, keys []string) ([]txn.Record, error) {
		recs := make([]txn.Record, len(keys))
		for i := range keys {
			recs[i] = txn.Record{Data: mustEncode(t, int(version)), Version: version, Token: "t"}
		}
		return recs, nil
	}, func(name, key string, keyed bool) string { return name + "/" + key }, 0)
	env := &txn.Env{States: st}
	codec := state.Codec[count]{}
	refs := []txn.Ref{{Name: "a"}, {Name: "b"}}
	require.NoError(t, st.Prefetch(ctx, refs, false))

	// "b" gets an uncommitted change; then another consumer moves both on.
	tx := txn.New(env, "1-0")
	v, err := tx.State(ctx, "b", "", false, codec)
	require.NoError(t, err)
	v.(*count).N = 100
	require.NoError(t, tx.Seal())
	version = 7

	require.NoError(t, st.Prefetch(ctx, refs, false))
	tx = txn.New(env, "2-0")
	v, err = tx.State(ctx, "a", "", false, codec)
	require.NoError(t, err)
	require.Equal(t, 1, v.(*count).N, "no refresh: the cached record stays")
	tx.Rollback()

	require.NoError(t, st.Prefetch(ctx, refs, true))
	tx = txn.New(env, "3-0")
	v, err = tx.State(ctx, "a", "", false, codec)
	require.NoError(t, err)
	require.Equal(t, 7, v.(*count).N, "refreshed")
	v, err = tx.State(ctx, "b", "", false, codec)
	require.NoError(t, err)
	require.Equal(t, 100, v.(*count).N, "a record with uncommitted changes is kept")
}
