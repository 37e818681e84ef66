package statejson

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/streamtx/streamtx/internal/msgp"
)

// FuzzDecodeGeneric feeds state data, as `streamtx state get` and the web
// console read it from Redis, through the state package's checks and Decode:
// no panic, and whatever decodes prints as JSON.
func FuzzDecodeGeneric(f *testing.F) {
	for _, v := range []any{
		map[string]any{"a": 1, "b": []any{"x", 2.5, nil, true}},
		map[any]any{1: []byte{0xff}, "t": time.Unix(1, 2)},
		[]any{math.NaN(), math.Inf(-1), float32(1.5), uint64(math.MaxUint64), int64(math.MinInt64)},
		"plain",
	} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xd4, 0x05, 0x2a})       // unknown fixext
	f.Add([]byte{0xc7, 0x02, 0xff, 1, 2}) // ext8 type -1 (timestamp) with a bad length
	f.Add([]byte{0xdc, 0xff, 0xff})       // array16 longer than the input
	f.Fuzz(func(t *testing.T, b []byte) {
		raw, err := msgp.Decode[msgpack.RawMessage](b)
		if err != nil {
			return
		}
		v, err := Decode(*raw)
		if err != nil {
			return
		}
		if _, err := json.Marshal(v); err != nil {
			t.Fatalf("decoded %#v does not print as JSON: %v", v, err)
		}
	})
}
