// Package record formats and parses state records: the only place that
// knows their layout. commit.lua compares and writes the bytes it is given
// (the start of the record read, the whole record to write), and the state
// package's codecs see only the value.
//
// A state record is a Redis string: a one-line header, then the encoded
// value (opaque to Lua):
//
//	<version> <token> <last entry ID>\n<value>
//
// The version is incremented by every commit that writes the record, the
// token is a random one of the commit that wrote it, and the last entry ID is
// that of the last entry applied to it. A commit checks version and token
// (the header's start, read with GETRANGE), so a record rolled back by a
// failover and rewritten to the same version by other commits is still seen
// as changed. An absent record is the zero value at version 0. A string
// rather than a hash makes a commit's check and write one cheap command each,
// and loading a batch's records one MGET.
package record

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/state"
)

// Record is a state record as stored in Redis.
type Record struct {
	Data    []byte // encoded value; nil when the record does not exist
	Version int64  // 0 when the record does not exist
	LastID  string // ID of the last entry applied to it
	Token   string // token of the commit that wrote it ("" when absent)
}

// Load reads the state record at key. An absent record is Record{} with no
// error; a malformed one is an error wrapping state.ErrCorrupt.
func Load(ctx context.Context, rdb redis.Cmdable, key string) (Record, error) {
	v, err := rdb.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return Record{}, nil
	}
	if err != nil {
		return Record{}, err
	}
	return Parse(key, v)
}

// LoadMany reads the state records at keys with one MGET (the keys of one
// stream share its hash slot).
func LoadMany(ctx context.Context, rdb redis.Cmdable, keys []string) ([]Record, error) {
	vals, err := rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, err
	}
	if len(vals) != len(keys) {
		return nil, fmt.Errorf("record: MGET of %d keys returned %d values", len(keys), len(vals))
	}
	recs := make([]Record, len(keys))
	for i, v := range vals {
		if v == nil {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%w: %q: a %T", state.ErrCorrupt, keys[i], v)
		}
		if recs[i], err = Parse(keys[i], s); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// Format returns the bytes of a state record.
func Format(version int64, token, lastID string, data []byte) []byte {
	b := make([]byte, 0, 24+len(token)+len(lastID)+len(data))
	b = strconv.AppendInt(b, version, 10)
	b = append(b, ' ')
	b = append(b, token...)
	b = append(b, ' ')
	b = append(b, lastID...)
	b = append(b, '\n')
	return append(b, data...)
}

// Prefix returns the start of the record at version with token, up to and
// including the space after the token: a commit checks a record by
// comparing its first len(prefix) bytes. Version 0 (absent) has none.
func Prefix(version int64, token string) string {
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

// Parse parses the bytes of the state record at key (see the package
// comment). A malformed record is an error wrapping state.ErrCorrupt.
func Parse(key string, v string) (Record, error) {
	nl := strings.IndexByte(v, '\n')
	if nl < 0 {
		return Record{}, fmt.Errorf("%w: %q: no header", state.ErrCorrupt, key)
	}
	hdr := v[:nl]
	sp1 := strings.IndexByte(hdr, ' ')
	if sp1 < 0 {
		return Record{}, fmt.Errorf("%w: %q: header %q", state.ErrCorrupt, key, hdr)
	}
	sp2 := strings.IndexByte(hdr[sp1+1:], ' ')
	if sp2 < 0 {
		return Record{}, fmt.Errorf("%w: %q: header %q", state.ErrCorrupt, key, hdr)
	}
	sp2 += sp1 + 1
	// Only the canonical form: a commit compares the header's bytes.
	ver, err := strconv.ParseInt(hdr[:sp1], 10, 64)
	if err != nil || ver < 1 || strconv.FormatInt(ver, 10) != hdr[:sp1] {
		return Record{}, fmt.Errorf("%w: %q: version %q", state.ErrCorrupt, key, hdr[:sp1])
	}
	return Record{Data: []byte(v[nl+1:]), Version: ver, Token: hdr[sp1+1 : sp2], LastID: hdr[sp2+1:]}, nil
}
