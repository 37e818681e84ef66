// Package state encodes handler state as msgpack and reads state records
// from Redis.
//
// A state record is a Redis string: a one-line header, then the
// msgpack-encoded value (opaque to Lua):
//
//	<version> <token> <last entry ID>\n<msgpack>
//
// The version is incremented by every commit that writes the record, the
// token is a random one of the commit that wrote it, and the last entry ID is
// that of the last entry applied to it. A commit checks version and token
// (the header's start, read with GETRANGE), so a record rolled back by a
// failover and rewritten to the same version by other commits is still seen
// as changed. An absent record is the zero value at version 0. A string
// rather than a hash makes a commit's check and write one cheap command each,
// and loading a batch's records one MGET.
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
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/streamtx/streamtx/txn"
)

// ErrCorrupt is returned for a state record that is malformed (no header,
// a version that is not a positive number).
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
	v, err := rdb.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return txn.Record{}, nil
	}
	if err != nil {
		return txn.Record{}, err
	}
	return ParseRecord(key, v)
}

// LoadMany reads the state records at keys with one MGET (the keys of one
// stream share its hash slot).
func LoadMany(ctx context.Context, rdb redis.Cmdable, keys []string) ([]txn.Record, error) {
	vals, err := rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, err
	}
	if len(vals) != len(keys) {
		return nil, fmt.Errorf("state: MGET of %d keys returned %d values", len(keys), len(vals))
	}
	recs := make([]txn.Record, len(keys))
	for i, v := range vals {
		if v == nil {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%w: %q: a %T", ErrCorrupt, keys[i], v)
		}
		if recs[i], err = ParseRecord(keys[i], s); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// FormatRecord returns the bytes of a state record.
func FormatRecord(version int64, token, lastID string, data []byte) []byte {
	b := make([]byte, 0, 24+len(token)+len(lastID)+len(data))
	b = strconv.AppendInt(b, version, 10)
	b = append(b, ' ')
	b = append(b, token...)
	b = append(b, ' ')
	b = append(b, lastID...)
	b = append(b, '\n')
	return append(b, data...)
}

// RecordPrefix returns the start of the record at version with token, up to
// and including the space after the token: a commit checks a record by
// comparing its first len(prefix) bytes. Version 0 (absent) has none.
func RecordPrefix(version int64, token string) string {
	if version == 0 {
		return ""
	}
	return strconv.FormatInt(version, 10) + " " + token + " "
}

// ValidToken reports whether a commit token can go into a record header:
// no space, no line break.
func ValidToken(token string) bool {
	return !strings.ContainsAny(token, " \n")
}

// ParseRecord parses the bytes of a state record (see the package comment).
func ParseRecord(key string, v string) (txn.Record, error) {
	nl := strings.IndexByte(v, '\n')
	if nl < 0 {
		return txn.Record{}, fmt.Errorf("%w: %q: no header", ErrCorrupt, key)
	}
	hdr := v[:nl]
	sp1 := strings.IndexByte(hdr, ' ')
	if sp1 < 0 {
		return txn.Record{}, fmt.Errorf("%w: %q: header %q", ErrCorrupt, key, hdr)
	}
	sp2 := strings.IndexByte(hdr[sp1+1:], ' ')
	if sp2 < 0 {
		return txn.Record{}, fmt.Errorf("%w: %q: header %q", ErrCorrupt, key, hdr)
	}
	sp2 += sp1 + 1
	// Only the canonical form: a commit compares the header's bytes.
	ver, err := strconv.ParseInt(hdr[:sp1], 10, 64)
	if err != nil || ver < 1 || strconv.FormatInt(ver, 10) != hdr[:sp1] {
		return txn.Record{}, fmt.Errorf("%w: %q: version %q", ErrCorrupt, key, hdr[:sp1])
	}
	return txn.Record{Data: []byte(v[nl+1:]), Version: ver, Token: hdr[sp1+1 : sp2], LastID: hdr[sp2+1:]}, nil
}
