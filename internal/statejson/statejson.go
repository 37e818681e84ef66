// Package statejson decodes a msgpack state value without its Go type into
// values that encoding/json can print. The streamtx CLI (`state get`) and the
// web console (package console) both show state records with it.
//
// Maps become JSON objects (non-string keys are printed as JSON strings),
// binary data that is valid UTF-8 becomes a string and other binary data
// {"$base64": "..."}, floats that JSON cannot hold (NaN, ±Inf) strings,
// timestamps RFC 3339 strings, and other msgpack extensions
// {"$ext": type, "$base64": "..."}.
package statejson

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// Decode decodes msgpack b into values encoding/json can print. b
// has passed the state package's checks (lengths within the input, nesting
// bounded), so decoding allocates no more than b's size suggests.
func Decode(b []byte) (v any, err error) {
	if len(b) == 0 {
		return nil, nil
	}
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("decode: %v", r)
		}
	}()
	r := bytes.NewReader(b)
	v, err = genericValue(msgpack.NewDecoder(r))
	if err == nil && r.Len() > 0 {
		err = fmt.Errorf("decode: %d trailing bytes", r.Len())
	}
	return v, err
}

func genericValue(d *msgpack.Decoder) (any, error) {
	c, err := d.PeekCode()
	if err != nil {
		return nil, err
	}
	switch {
	case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		n, err := d.DecodeMapLen()
		if err != nil {
			return nil, err
		}
		m := make(map[string]any, n)
		for range n {
			k, err := genericValue(d)
			if err != nil {
				return nil, err
			}
			v, err := genericValue(d)
			if err != nil {
				return nil, err
			}
			m[keyString(k)] = v
		}
		return m, nil
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		n, err := d.DecodeArrayLen()
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		a := make([]any, n)
		for i := range a {
			if a[i], err = genericValue(d); err != nil {
				return nil, err
			}
		}
		return a, nil
	case msgpcode.IsExt(c):
		raw, err := d.DecodeRaw()
		if err != nil {
			return nil, err
		}
		var t time.Time
		if err := msgpack.Unmarshal(raw, &t); err == nil {
			return t.UTC().Format(time.RFC3339Nano), nil
		}
		ed := msgpack.NewDecoder(bytes.NewReader(raw))
		id, n, err := ed.DecodeExtHeader()
		if err != nil {
			return nil, err
		}
		data := make([]byte, n)
		if err := ed.ReadFull(data); err != nil {
			return nil, err
		}
		return map[string]any{"$ext": id, "$base64": base64.StdEncoding.EncodeToString(data)}, nil
	}
	v, err := d.DecodeInterface()
	if err != nil {
		return nil, err
	}
	switch x := v.(type) {
	case []byte:
		if utf8.Valid(x) {
			return string(x), nil
		}
		return map[string]any{"$base64": base64.StdEncoding.EncodeToString(x)}, nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return strconv.FormatFloat(x, 'g', -1, 64), nil
		}
	case float32:
		if f := float64(x); math.IsNaN(f) || math.IsInf(f, 0) {
			return strconv.FormatFloat(f, 'g', -1, 32), nil
		}
	}
	return v, nil
}

// keyString turns a decoded map key into a JSON object key: strings as they
// are, other values as JSON.
func keyString(k any) string {
	if s, ok := k.(string); ok {
		return s
	}
	if b, err := json.Marshal(k); err == nil {
		return string(b)
	}
	return fmt.Sprint(k)
}
