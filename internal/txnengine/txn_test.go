package txnengine_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/msgp"
	txn "github.com/streamtx/streamtx/internal/txnengine"
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
	stored, err := msgp.Encode(&count{N: 41})
	require.NoError(t, err)
	st := txn.NewStates(func(ctx context.Context, keys []string) ([]txn.Record, error) {
		loads++
		return []txn.Record{{Data: stored, Version: 3, LastID: "1-0"}}, nil
	}, func(name, key string, keyed bool) string { return name + "/" + key }, 0)
	env := &txn.Env{States: st, IdempotencyPrefix: "s/g/"}
	codec := countCodec{}

	// A failed transaction leaves no trace.
	tx := txn.New(env, "2-0")
	require.Equal(t, "s/g/2-0", tx.IdempotencyKey())
	v, err := tx.State(ctx, "n", "", false, codec)
	require.NoError(t, err)
	v.(*count).N = 1000
	require.NoError(t, tx.Publish("out", map[string]any{"a": 1}))
	tx.Rollback()
	require.Empty(t, tx.Publishes())
	require.Empty(t, dirty(t, st))

	// A sealed one is dirty, based on the version read.
	tx = txn.New(env, "3-0")
	v, err = tx.State(ctx, "n", "", false, codec)
	require.NoError(t, err)
	require.Equal(t, 41, v.(*count).N, "rolled back to the stored value")
	v.(*count).N++
	require.NoError(t, tx.Seal())
	w := dirty(t, st)
	require.Len(t, w, 1)
	require.Equal(t, "n/", w[0].Key)
	require.Equal(t, int64(3), w[0].Version)
	require.Equal(t, mustEncode(t, 42), w[0].Data)
	require.Equal(t, "3-0", w[0].LastID)
	require.Equal(t, 1, loads, "cached between transactions")

	st.Committed(w, "tok")
	require.Empty(t, dirty(t, st))
	tx = txn.New(env, "4-0")
	v, err = tx.State(ctx, "n", "", false, codec)
	require.NoError(t, err)
	v.(*count).N++
	require.NoError(t, tx.Seal())
	require.Equal(t, int64(4), dirty(t, st)[0].Version)

	// Discard forgets uncommitted changes: the next access reloads.
	st.Discard()
	require.Zero(t, st.Len())
	tx = txn.New(env, "5-0")
	v, err = tx.State(ctx, "n", "", false, codec)
	require.NoError(t, err)
	require.Equal(t, 41, v.(*count).N)
	require.Equal(t, 2, loads)
}

func dirty(t *testing.T, st *txn.States) []txn.Write {
	t.Helper()
	w, err := st.Dirty()
	require.NoError(t, err)
	return w
}

func mustEncode(t *testing.T, n int) []byte {
	b, err := msgp.Encode(&count{N: n})
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
	codec := countCodec{}
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

// countingCodec counts encodings.
type countingCodec struct {
	countCodec
	encodes *int
}

func (c countingCodec) Encode(v any) ([]byte, error) {
	*c.encodes++
	return c.countCodec.Encode(v)
}

// With deferred encoding, a record changed by every transaction of a batch
// is encoded once; a failure after an earlier change asks for the batch to
// be restored, and RestoreBatch goes back to the last encoding.
func TestDeferredEncoding(t *testing.T) {
	ctx := context.Background()
	st := txn.NewStates(func(ctx context.Context, keys []string) ([]txn.Record, error) {
		return []txn.Record{{Data: mustEncode(t, 10), Version: 1, LastID: "1-0", Token: "t1"}}, nil
	}, func(name, key string, keyed bool) string { return name + "/" + key }, 0)
	st.DeferEncoding(true)
	encodes := 0
	codec := countingCodec{encodes: &encodes}
	env := &txn.Env{States: st}
	apply := func(id string, fail bool) {
		tx := txn.New(env, id)
		v, err := tx.State(ctx, "n", "", false, codec)
		require.NoError(t, err)
		v.(*count).N++
		if fail {
			tx.Rollback()
			return
		}
		require.NoError(t, tx.Seal())
	}

	// Batch 1: three changes, one encoding.
	apply("2-0", false)
	apply("3-0", false)
	apply("4-0", false)
	require.Zero(t, encodes)
	require.False(t, st.NeedsRestore())
	require.NoError(t, st.EncodeBatch())
	require.Equal(t, 1, encodes)
	w := dirty(t, st)
	require.Equal(t, []txn.Write{{Key: "n/", Version: 1, Token: "t1", Data: mustEncode(t, 13), LastID: "4-0"}}, clearGen(w))
	require.Equal(t, 1, encodes, "Dirty after EncodeBatch encodes nothing more")

	// Batch 2, while batch 1 commits: a change, then a failure touching the
	// same record.
	apply("5-0", false)
	apply("6-0", true)
	require.True(t, st.NeedsRestore())
	st.RestoreBatch()
	require.False(t, st.NeedsRestore())
	st.Committed(w, "t2")
	// Back to batch 1's value: 13, based on the committed version; batch 1's
	// write committed, so the record is clean.
	require.Empty(t, dirty(t, st))
	apply("5-0", false)
	w = dirty(t, st)
	require.Equal(t, []txn.Write{{Key: "n/", Version: 2, Token: "t2", Data: mustEncode(t, 14), LastID: "5-0"}}, clearGen(w))

	// A failure touching a record no earlier transaction of the batch
	// changed goes back on its own.
	st.Committed(w, "t3")
	apply("7-0", true)
	require.False(t, st.NeedsRestore())
	apply("7-0", false)
	require.Equal(t, 15, decode(t, dirty(t, st)[0].Data))
}

func clearGen(w []txn.Write) []txn.Write {
	out := make([]txn.Write, len(w))
	for i, x := range w {
		out[i] = txn.Write{Key: x.Key, Version: x.Version, Token: x.Token, Data: x.Data, LastID: x.LastID}
	}
	return out
}

func decode(t *testing.T, b []byte) int {
	v, err := countCodec{}.Decode(b)
	require.NoError(t, err)
	return v.(*count).N
}

// countCodec is the msgpack codec of count, as package txn adapts a
// state.Codec for the engine.
type countCodec struct{}

func (countCodec) Decode(b []byte) (any, error) {
	v, err := msgp.Decode[count](b)
	if err != nil {
		return nil, err
	}
	return v, nil
}

func (countCodec) Encode(v any) ([]byte, error) { return msgp.Encode(v.(*count)) }
