package streamtx

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/msgp"
	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/txn"
)

// Snapshot is a committed state value as stored in Redis.
type Snapshot[S any] struct {
	Key     string // the Redis key of the record
	Value   S      // the zero value when the record does not exist
	Version int64  // 0 when the record does not exist; +1 per commit
	LastID  string // ID of the last entry applied
}

// ReadState reads the committed value of Stateful state name for stream and
// group. It is safe to call while consumers run: it sees the last commit.
func ReadState[S any](ctx context.Context, rdb redis.Cmdable, stream, group, name string) (Snapshot[S], error) {
	sp, err := keys.NewSpace(stream, group)
	if err != nil {
		return Snapshot[S]{}, err
	}
	return readState[S](ctx, rdb, sp.State(name))
}

// ReadKeyedState reads the committed value of Keyed state name for one key.
func ReadKeyedState[S any](ctx context.Context, rdb redis.Cmdable, stream, group, name, key string) (Snapshot[S], error) {
	sp, err := keys.NewSpace(stream, group)
	if err != nil {
		return Snapshot[S]{}, err
	}
	return readState[S](ctx, rdb, sp.KeyedState(name, key))
}

func readState[S any](ctx context.Context, rdb redis.Cmdable, key string) (Snapshot[S], error) {
	rec, err := record.Load(ctx, rdb, key)
	if err != nil {
		return Snapshot[S]{Key: key}, fmt.Errorf("streamtx: read state %q: %w", key, err)
	}
	v, err := msgp.Decode[S](rec.Data)
	if err != nil {
		return Snapshot[S]{Key: key}, fmt.Errorf("%w: key %q (version %d): %w", txn.ErrStateDecode, key, rec.Version, err)
	}
	return Snapshot[S]{Key: key, Value: *v, Version: rec.Version, LastID: rec.LastID}, nil
}
