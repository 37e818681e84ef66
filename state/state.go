// Package state encodes handler state as msgpack and reads state records
// from Redis.
//
// A state record is a Redis hash: "d", the msgpack-encoded value (opaque to
// Lua); "v", its version, incremented by every commit that writes it; "id",
// the ID of the last entry applied to it; and "t", a random token of the
// commit that wrote it. A commit checks version and token, so a record
// rolled back by a failover and rewritten to the same version by other
// commits is still seen as changed. An absent record is the zero value at
// version 0.
//
// Decoding never runs code and never panics: bytes that do not decode into
// the state type are an error.
package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/streamtx/streamtx/txn"
)

// Field names of a state record hash.
const (
	FieldData    = "d"
	FieldVersion = "v"
	FieldLastID  = "id"
	FieldToken   = "t"
)

// ErrCorrupt is returned for a state record whose fields are malformed (a
// version that is not a number, data without a version).
var ErrCorrupt = errors.New("state: corrupt record")

// Codec is the msgpack codec of state type S. Values are *S.
type Codec[S any] struct{}

// Decode decodes b into a new *S; nil or empty b gives the zero value.
func (Codec[S]) Decode(b []byte) (any, error) { return Decode[S](b) }

// Encode encodes v, which must be a *S.
func (Codec[S]) Encode(v any) ([]byte, error) {
	p, ok := v.(*S)
	if !ok {
		return nil, fmt.Errorf("state: encode: got %T, want %T", v, (*S)(nil))
	}
	return Encode(p)
}

// Decode decodes msgpack bytes into a new *S. Empty input is the zero value.
// Trailing bytes after the value are an error, and so is anything the
// decoder rejects; a panic inside the decoder is turned into an error.
func Decode[S any](b []byte) (v *S, err error) {
	v = new(S)
	if len(b) == 0 {
		return v, nil
	}
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("state: decode %T: %v", v, r)
		}
	}()
	if end, err := check(b, 0, 0); err != nil {
		return nil, fmt.Errorf("state: decode %T: %w", v, err)
	} else if end != len(b) {
		return nil, fmt.Errorf("state: decode %T: %d trailing bytes", v, len(b)-end)
	}
	r := bytes.NewReader(b)
	dec := msgpack.NewDecoder(r)
	if err := dec.Decode(v); err != nil {
		return nil, fmt.Errorf("state: decode %T: %w", v, err)
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("state: decode %T: %d trailing bytes", v, r.Len())
	}
	return v, nil
}

// Encode encodes v as msgpack.
func Encode[S any](v *S) ([]byte, error) {
	b, err := msgpack.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("state: encode %T: %w", v, err)
	}
	return b, nil
}

// Load reads the state record at key. An absent record is Record{} with no
// error.
func Load(ctx context.Context, rdb redis.Cmdable, key string) (txn.Record, error) {
	vals, err := rdb.HMGet(ctx, key, FieldData, FieldVersion, FieldLastID, FieldToken).Result()
	if err != nil {
		return txn.Record{}, err
	}
	return ParseRecord(key, vals)
}

// LoadMany reads the state records at keys in one pipelined round trip.
func LoadMany(ctx context.Context, rdb redis.Cmdable, keys []string) ([]txn.Record, error) {
	if len(keys) == 1 {
		rec, err := Load(ctx, rdb, keys[0])
		return []txn.Record{rec}, err
	}
	cmds := make([]*redis.SliceCmd, len(keys))
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.HMGet(ctx, k, FieldData, FieldVersion, FieldLastID, FieldToken)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	recs := make([]txn.Record, len(keys))
	for i, c := range cmds {
		if recs[i], err = ParseRecord(keys[i], c.Val()); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// ParseRecord builds a Record from the HMGET reply for (d, v, id) or
// (d, v, id, t).
func ParseRecord(key string, vals []any) (txn.Record, error) {
	if len(vals) == 4 {
		rec, err := ParseRecord(key, vals[:3])
		if err == nil && rec.Version > 0 {
			rec.Token, _ = vals[3].(string)
		}
		return rec, err
	}
	if len(vals) != 3 {
		return txn.Record{}, fmt.Errorf("%w: %q: %d fields", ErrCorrupt, key, len(vals))
	}
	if vals[0] == nil && vals[1] == nil && vals[2] == nil {
		return txn.Record{}, nil
	}
	d, ok1 := vals[0].(string)
	v, ok2 := vals[1].(string)
	id, _ := vals[2].(string)
	if !ok1 || !ok2 {
		return txn.Record{}, fmt.Errorf("%w: %q: missing data or version", ErrCorrupt, key)
	}
	ver, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ver < 1 {
		return txn.Record{}, fmt.Errorf("%w: %q: version %q", ErrCorrupt, key, v)
	}
	return txn.Record{Data: []byte(d), Version: ver, LastID: id}, nil
}
