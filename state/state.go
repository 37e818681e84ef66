// Package state holds the codecs that turn a handler's state value into the
// bytes of a state record and back.
//
// A state is declared with txn.NewState, which encodes with Msgpack unless
// told otherwise:
//
//	var totals = txn.NewState[Totals]("totals")                                   // msgpack
//	var audit = txn.NewState[Audit]("audit").WithCodec(state.JSON[Audit]()) // JSON
//
// Decoding never runs code and never panics: bytes that do not decode into
// the state type are an error. The msgpack codec checks every length the
// bytes declare against the input before it decodes, so a few bytes cannot
// claim gigabytes.
//
// Both codecs refuse a state type they cannot store faithfully: a struct
// field that is unexported (it would silently reset to zero on every reload,
// unless tagged "-" for that codec), a func, a channel. The refusal is an
// error from every Encode and Decode naming the field, so the first use of
// the state reports it.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/streamtx/streamtx/internal/msgp"
)

// ErrCorrupt is returned (wrapped, naming the key) for a state record that is
// malformed: no header, or a version that is not a positive number.
var ErrCorrupt = errors.New("state: corrupt record")

// Codec encodes and decodes state values of type S. Decode of nil or empty
// bytes (a record that does not exist yet) returns a pointer to the zero
// value. Implementations must not panic and must be safe for concurrent use.
type Codec[S any] interface {
	Encode(v *S) ([]byte, error)
	Decode(b []byte) (*S, error)
}

// Msgpack returns the msgpack codec of S, the default of txn.NewState. It
// refuses S, with an error from Encode and Decode, when S has an unexported
// field not tagged `msgpack:"-"`, a func or a channel.
func Msgpack[S any]() Codec[S] {
	return msgpackCodec[S]{err: checkType[S]("msgpack")}
}

type msgpackCodec[S any] struct{ err error }

func (c msgpackCodec[S]) Encode(v *S) ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	b, err := msgp.Encode(v)
	if err != nil {
		return nil, fmt.Errorf("state: msgpack: %w", err)
	}
	return b, nil
}

func (c msgpackCodec[S]) Decode(b []byte) (*S, error) {
	if c.err != nil {
		return nil, c.err
	}
	v, err := msgp.Decode[S](b)
	if err != nil {
		return nil, fmt.Errorf("state: msgpack: %w", err)
	}
	return v, nil
}

// JSON returns a codec of S that stores encoding/json text: larger and
// slower than msgpack, but readable with redis-cli and by other languages.
// Unknown fields are ignored, trailing data is an error. It refuses S when
// S has an unexported field not tagged `json:"-"`, a func or a channel.
func JSON[S any]() Codec[S] {
	return jsonCodec[S]{err: checkType[S]("json")}
}

type jsonCodec[S any] struct{ err error }

func (c jsonCodec[S]) Encode(v *S) ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("state: json: encode %T: %w", v, err)
	}
	return b, nil
}

func (c jsonCodec[S]) Decode(b []byte) (v *S, err error) {
	if c.err != nil {
		return nil, c.err
	}
	v = new(S)
	if len(b) == 0 {
		return v, nil
	}
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("state: json: decode %T: %v", v, r)
		}
	}()
	if err := json.Unmarshal(b, v); err != nil { // checks the whole input first
		return nil, fmt.Errorf("state: json: decode %T: %w", v, err)
	}
	return v, nil
}

// checkType refuses state types that a codec reading struct tag tag cannot
// store faithfully.
func checkType[S any](tag string) error {
	t := reflect.TypeFor[S]()
	if err := checkStateType(t, tag, map[reflect.Type]bool{}); err != nil {
		return fmt.Errorf("state: %s cannot store type %v: %w", tag, t, err)
	}
	return nil
}

func checkStateType(t reflect.Type, tag string, seen map[reflect.Type]bool) error {
	if seen[t] {
		return nil
	}
	seen[t] = true
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array:
		return checkStateType(t.Elem(), tag, seen)
	case reflect.Map:
		if err := checkStateType(t.Key(), tag, seen); err != nil {
			return err
		}
		return checkStateType(t.Elem(), tag, seen)
	case reflect.Func, reflect.Chan, reflect.UnsafePointer:
		return fmt.Errorf("a %v cannot be stored", t.Kind())
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if f.Tag.Get(tag) == "-" {
				continue
			}
			if !f.IsExported() && !f.Anonymous {
				return fmt.Errorf("unexported field %s.%s would not be stored (export it or tag it `%s:\"-\"`)", t.Name(), f.Name, tag)
			}
			if err := checkStateType(f.Type, tag, seen); err != nil {
				return err
			}
		}
	}
	return nil
}
