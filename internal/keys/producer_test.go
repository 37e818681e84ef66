package keys_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/keys"
)

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	k, err := keys.Idempotency("orders", "req:1%")
	require.NoError(t, err)
	assert.Equal(t, "stx:{orders}:orders::idem:req%3A1%25", k)

	streams := []string{"orders", "{orders}.in", "app:{orders}:in", "{a:b}c", "a:b", "100%", "{x}}", "naïve-流"}
	ids := []string{"k", "a:b", "a%3Ab", "", "offsets", "dlq", "state:n", "{x}"}
	seen := map[string]string{}
	for _, stream := range streams {
		// Every key a consumer group derives, for groups that look like the
		// record's path, must differ from every record.
		for _, group := range []string{"idem", "g", ":idem", "%"} {
			sp, err := keys.NewSpace(stream, group)
			require.NoError(t, err)
			for _, name := range []string{"k", "offsets", "dlq", "state"} {
				for _, sk := range []string{sp.Offsets(), sp.DeadLetters(), sp.State(name), sp.KeyedState(name, "k"), sp.KeyedState("x", name)} {
					seen[sk] = "space " + stream + " " + group
				}
			}
		}
	}
	for _, stream := range streams {
		for _, id := range ids {
			k, err := keys.Idempotency(stream, id)
			if id == "" {
				require.Error(t, err)
				continue
			}
			require.NoError(t, err)
			assert.Equal(t, keys.Slot(stream), keys.Slot(k), "Idempotency(%q, %q) = %q", stream, id, k)
			what := "record " + stream + " " + id
			if prev, dup := seen[k]; dup {
				t.Errorf("%q is both %s and %s", k, prev, what)
			}
			seen[k] = what
		}
	}

	_, err = keys.Idempotency("a}b", "k")
	assert.True(t, errors.Is(err, keys.ErrNoTag), "%v", err)
	_, err = keys.Idempotency("", "k")
	assert.Error(t, err)
}
