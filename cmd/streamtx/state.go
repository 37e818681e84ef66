package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"

	"github.com/streamtx/streamtx"
)

const stateHelp = `Prints the committed state record NAME of GROUP on STREAM (with KEY, the
record of that entity key of Keyed state) as JSON: its Redis key, version
(commits that wrote it), the ID of the last entry applied, and its value.

The value is msgpack decoded without the Go type: maps become JSON objects
(non-string keys are printed as strings), binary data that is valid UTF-8
becomes a string and other binary data {"$base64": "..."}, floats that JSON
cannot hold (NaN, ±Inf) strings, timestamps RFC 3339 strings, and other
msgpack extensions {"$ext": type, "$base64": "..."}.

Exit status 1 if the record does not exist or does not decode.
`

func runState(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 {
		return usagef("state: missing subcommand: get")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, "Usage: streamtx state get STREAM GROUP NAME [KEY]\n\n"+stateHelp)
		return errHelp
	case "get":
	default:
		return usagef("state: unknown subcommand %q: want get", args[0])
	}
	f := c.newFlags("state get STREAM GROUP NAME [KEY]", stateHelp)
	pos, err := f.parse(args[1:], 3, 4)
	if err != nil {
		return err
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	var snap streamtx.Snapshot[msgpack.RawMessage]
	if len(pos) == 4 {
		snap, err = streamtx.ReadKeyedState[msgpack.RawMessage](ctx, rdb, pos[0], pos[1], pos[2], pos[3])
	} else {
		snap, err = streamtx.ReadState[msgpack.RawMessage](ctx, rdb, pos[0], pos[1], pos[2])
	}
	if err != nil {
		return err
	}
	if snap.Version == 0 {
		return fmt.Errorf("%w: no state record %q", errNotFound, snap.Key)
	}
	value, err := decodeGeneric(snap.Value)
	if err != nil {
		return fmt.Errorf("state record %q (version %d): %w", snap.Key, snap.Version, err)
	}
	return writeJSON(c.stdout, struct {
		Key     string `json:"key"`
		Version int64  `json:"version"`
		LastID  string `json:"last_id"`
		Value   any    `json:"value"`
	}{snap.Key, snap.Version, snap.LastID, value})
}

// decodeGeneric decodes msgpack b into values encoding/json can print. b
// has passed the state package's checks (lengths within the input, nesting
// bounded), so decoding allocates no more than b's size suggests.
func decodeGeneric(b []byte) (v any, err error) {
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
