package txnengine_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/partition"
	txn "github.com/streamtx/streamtx/internal/txnengine"
)

func TestPublishKeyedRoutesByKey(t *testing.T) {
	orders, err := partition.New("orders", 8, "")
	require.NoError(t, err)
	calls := 0
	env := &txn.Env{Topic: func(name string) (*partition.Meta, error) {
		calls++
		require.Equal(t, "orders", name)
		return orders, nil
	}}
	tx := txn.New(env, "1-1")
	require.NoError(t, tx.PublishKeyed("orders", "order-1", map[string]any{"n": 1}))
	require.NoError(t, tx.PublishKeyed("orders", "order-2", map[string]any{"n": 2}))
	require.Equal(t, []txn.Publish{
		{Stream: "orders:{orders.p6}", Fields: []string{"n", "1", "stx.key", "order-1"}},
		{Stream: "orders:{orders.p3}", Fields: []string{"n", "2", "stx.key", "order-2"}},
	}, tx.Publishes())
	require.Equal(t, 2, calls)
	require.NoError(t, tx.Err())
}

func TestPublishKeyedErrors(t *testing.T) {
	orders, err := partition.New("orders", 8, "")
	require.NoError(t, err)
	errDown := errors.New("connection refused")
	env := &txn.Env{Topic: func(name string) (*partition.Meta, error) {
		switch name {
		case "orders":
			return orders, nil
		case "missing":
			return nil, errors.Join(txn.ErrBadPublish, partition.ErrNotFound)
		}
		return nil, errDown
	}}
	for _, c := range []struct {
		name       string
		env        *txn.Env
		topic, key string
		values     map[string]any
		permanent  bool
	}{
		{"no resolver", nil, "orders", "k", map[string]any{"n": 1}, true},
		{"unknown topic", env, "missing", "k", map[string]any{"n": 1}, true},
		{"empty key", env, "orders", "", map[string]any{"n": 1}, true},
		{"reserved field", env, "orders", "k", map[string]any{"stx.key": "x"}, true},
		{"no values", env, "orders", "k", nil, true},
		{"bad value", env, "orders", "k", map[string]any{"n": struct{}{}}, true},
		{"metadata unreadable", env, "down", "k", map[string]any{"n": 1}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			tx := txn.New(c.env, "1-1")
			err := tx.PublishKeyed(c.topic, c.key, c.values)
			require.Error(t, err)
			require.Equal(t, c.permanent, errors.Is(err, txn.ErrBadPublish), "%v", err)
			require.Equal(t, err, tx.Err(), "the error sticks to the Tx")
			require.Empty(t, tx.Publishes())
		})
	}
}
