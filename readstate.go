package streamtx

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/msgp"
	"github.com/streamtx/streamtx/internal/partition"
	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/state"
	"github.com/streamtx/streamtx/txn"
)

// Snapshot is a committed state value as stored in Redis.
type Snapshot[S any] struct {
	Key     string // the Redis key of the record
	Value   S      // the zero value when the record does not exist
	Version int64  // 0 when the record does not exist; +1 per commit
	LastID  string // ID of the last entry applied
}

// ReadState reads the committed value of the state name (Stateful, or a
// txn.State read with Get) for stream and group. It is safe to call while
// consumers run: it sees the last commit. The value is decoded with codec
// when one is given (the state's own, e.g. state.JSON), else as msgpack.
//
// On a topic, Stateful keeps one value per partition: pass the partition's
// stream (Topic.Stream(p)). Given a topic's name where no such record
// exists, ReadState fails with an ErrConfig error saying so, rather than
// return a zero value.
func ReadState[S any](ctx context.Context, client redis.UniversalClient, stream, group, name string, codec ...state.Codec[S]) (Snapshot[S], error) {
	sp, err := keys.NewSpace(stream, group)
	if err != nil {
		return Snapshot[S]{}, &ConfigError{Field: "stream", Reason: err.Error()}
	}
	snap, err := readState(ctx, client, sp.State(name), codec)
	if err == nil && snap.Version == 0 && partition.CheckName(stream) == nil {
		if t, terr := OpenTopic(ctx, client, stream); terr == nil {
			return snap, configErr("stream", "%q is a topic: its state %q is one value per partition, in each partition's stream (Topic.Stream(p), p < %d)",
				stream, name, t.Partitions())
		}
	}
	return snap, err
}

// ReadKeyedState reads the committed value of the keyed state name (Keyed,
// or a txn.State read with GetKey) for one key, as ReadState does. When
// stream names a topic (CreateTopic), the state is read in the key's
// partition (Topic.PartitionOf), where its consumer keeps it.
func ReadKeyedState[S any](ctx context.Context, client redis.UniversalClient, stream, group, name, key string, codec ...state.Codec[S]) (Snapshot[S], error) {
	if partition.CheckName(stream) == nil {
		t, err := OpenTopic(ctx, client, stream)
		switch {
		case err == nil:
			stream = t.Stream(t.PartitionOf(key))
		case !errors.Is(err, ErrTopicNotFound):
			return Snapshot[S]{}, err
		}
	}
	sp, err := keys.NewSpace(stream, group)
	if err != nil {
		return Snapshot[S]{}, &ConfigError{Field: "stream", Reason: err.Error()}
	}
	return readState(ctx, client, sp.KeyedState(name, key), codec)
}

func readState[S any](ctx context.Context, rdb redis.UniversalClient, key string, codec []state.Codec[S]) (Snapshot[S], error) {
	if len(codec) > 1 {
		return Snapshot[S]{Key: key}, &ConfigError{Field: "codec", Reason: "more than one"}
	}
	rec, err := record.Load(ctx, rdb, key)
	if err != nil {
		return Snapshot[S]{Key: key}, fmt.Errorf("streamtx: read state %q: %w", key, err)
	}
	var v *S
	if len(codec) == 1 && codec[0] != nil {
		v, err = codec[0].Decode(rec.Data)
	} else {
		v, err = msgp.Decode[S](rec.Data)
	}
	if err != nil {
		return Snapshot[S]{Key: key}, fmt.Errorf("%w: key %q (version %d): %w", txn.ErrStateDecode, key, rec.Version, err)
	}
	return Snapshot[S]{Key: key, Value: *v, Version: rec.Version, LastID: rec.LastID}, nil
}
