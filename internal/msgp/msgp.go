// Package msgp encodes and decodes msgpack defensively, for bytes that come
// from Redis: declared lengths are checked against the input before the
// decoder allocates, nesting is bounded, trailing bytes are an error, and a
// panic inside the decoder is turned into an error. Nothing it decodes runs
// code.
//
// The state package's msgpack codec and the envelope data of events use it.
package msgp

import (
	"bytes"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

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
			v, err = nil, fmt.Errorf("decode %T: %v", v, r)
		}
	}()
	if end, err := check(b, 0, 0); err != nil {
		return nil, fmt.Errorf("decode %T: %w", v, err)
	} else if end != len(b) {
		return nil, fmt.Errorf("decode %T: %d trailing bytes", v, len(b)-end)
	}
	r := bytes.NewReader(b)
	dec := msgpack.NewDecoder(r)
	if err := dec.Decode(v); err != nil {
		return nil, fmt.Errorf("decode %T: %w", v, err)
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("decode %T: %d trailing bytes", v, r.Len())
	}
	return v, nil
}

// Encode encodes v as msgpack.
func Encode[S any](v *S) ([]byte, error) {
	b, err := msgpack.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", v, err)
	}
	return b, nil
}
