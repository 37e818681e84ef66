package state_test

import (
	"reflect"
	"testing"

	"github.com/streamtx/streamtx/state"
)

// State types of the shapes handlers use.
type (
	flat struct {
		N   int
		I8  int8
		U32 uint32
		I64 int64
		S   string
		B   bool
		Raw []byte
	}
	node struct {
		X    int
		L    []int
		Next *node
	}
	nested struct {
		ID     int64
		Name   string `msgpack:"name"`
		Tags   []string
		Counts map[string]int
		Inner  *node
		Items  []flat
		ByID   map[int64]*node
		Matrix [][]uint16
		Skip   string `msgpack:"-"`
	}
	// counts is a non-struct state: a plain map.
	counts map[string]map[string]int64
)

func encode[S any](f *testing.F, v *S) []byte {
	f.Helper()
	b, err := state.Msgpack[S]().Encode(v)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// hostile are inputs crafted against msgpack decoders: huge length headers,
// truncation, deep nesting, wrong types, extension types.
var hostile = [][]byte{
	nil,
	{},
	{0xc0},                               // nil
	{0xc1},                               // never used
	{0x80},                               // empty map
	{0x90},                               // empty array
	{0xdf, 0xff, 0xff, 0xff, 0xff},       // map32 of 2^32-1 pairs, no content
	{0xdd, 0xff, 0xff, 0xff, 0xff},       // array32 of 2^32-1 items
	{0xdb, 0xff, 0xff, 0xff, 0xff},       // str32 of 4 GiB
	{0xc6, 0x7f, 0xff, 0xff, 0xff},       // bin32 of 2 GiB
	{0xc9, 0xff, 0xff, 0xff, 0xff, 0x01}, // ext32
	{0xd6, 0xff, 0, 0, 0, 0},             // timestamp ext
	{0xd4, 0x01, 0x00},                   // fixext1 of an unregistered type
	{0x81, 0xa1, 'N', 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},           // N: uint64 max
	{0x81, 0xa2, 'I', '8', 0xcd, 0x01, 0x2c},                                          // I8: 300
	{0x81, 0xa1, 'S', 0xc4, 0x02, 0xff, 0xfe},                                         // S from bin
	{0x81, 0xa1, 'N', 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1},                             // N from NaN
	{0x81, 0xa5, 'I', 'n', 'n', 'e', 'r', 0x81, 0xa4, 'N', 'e', 'x', 't', 0x81, 0xa4}, // truncated nesting
	{0x82, 0xa1, 'S', 0xa1, 'x', 0xa1, 'S', 0xa1, 'y'},                                // duplicate field
	{0x93, 0x01, 0xa1, 'x', 0xc3},                                                     // struct as array
	{0x81, 0xa4, 'B', 'y', 'I', 'D', 0x81, 0xa1, 'k', 0x80},                           // string key for int64 map
	{0x81, 0xa6, 'M', 'a', 't', 'r', 'i', 'x', 0x91, 0x91, 0xff},                      // uint16 from -1
}

func deepChain(n int) []byte {
	var b []byte
	for range n {
		b = append(b, 0x81, 0xa4, 'N', 'e', 'x', 't')
	}
	return append(b, 0xc0)
}

// checkDecode is the property every state decoder has: no panic (a panic
// fails the fuzz run by itself), and a value that decodes re-encodes to bytes
// that decode to an equal value.
func checkDecode[S any](t *testing.T, b []byte) {
	c := state.Msgpack[S]()
	v, err := c.Decode(b)
	if err != nil {
		if v != nil {
			t.Fatalf("Decode returned %+v with error %v", v, err)
		}
		return
	}
	if v == nil {
		t.Fatal("Decode returned nil without an error")
	}
	enc, err := c.Encode(v)
	if err != nil {
		t.Fatalf("re-encode %#v: %v", v, err)
	}
	v2, err := c.Decode(enc)
	if err != nil {
		t.Fatalf("decode of re-encoded %#v (% x): %v", v, enc, err)
	}
	if !reflect.DeepEqual(v, v2) {
		t.Fatalf("round trip changed the value:\n in: % x\nv1: %#v\nenc: % x\nv2: %#v", b, v, enc, v2)
	}
}

func addSeeds(f *testing.F, valid ...[]byte) {
	for _, b := range valid {
		f.Add(b)
		if len(b) > 1 {
			f.Add(b[:len(b)/2])                 // truncated
			f.Add(append(b[:len(b):len(b)], 0)) // trailing byte
		}
	}
	for _, b := range hostile {
		f.Add(b)
	}
	f.Add(deepChain(100))
}

func FuzzDecodeFlat(f *testing.F) {
	addSeeds(f,
		encode(f, &flat{}),
		encode(f, &flat{N: -1, I8: -128, U32: 1 << 31, I64: -1 << 63, S: "héllo", B: true, Raw: []byte{0, 1, 0xff}}),
		encode(f, &flat{Raw: []byte{}}),
	)
	f.Fuzz(checkDecode[flat])
}

func FuzzDecodeNested(f *testing.F) {
	full := &nested{
		ID:     42,
		Name:   "n",
		Tags:   []string{"a", "", "ü"},
		Counts: map[string]int{"a": 1, "": -2},
		Inner:  &node{X: 1, L: []int{1, 2}, Next: &node{X: 2}},
		Items:  []flat{{N: 1}, {S: "x", Raw: []byte("y")}},
		ByID:   map[int64]*node{1: {X: 1}, -5: nil},
		Matrix: [][]uint16{{1, 2}, nil, {}},
	}
	addSeeds(f,
		encode(f, &nested{}),
		encode(f, full),
		encode(f, &nested{Tags: []string{}, Counts: map[string]int{}, Items: []flat{}}),
	)
	f.Fuzz(checkDecode[nested])
}

func FuzzDecodeNode(f *testing.F) {
	addSeeds(f,
		encode(f, &node{}),
		encode(f, &node{X: 3, L: []int{-1}, Next: &node{Next: &node{X: 9}}}),
	)
	f.Fuzz(checkDecode[node])
}

func FuzzDecodeCounts(f *testing.F) {
	addSeeds(f,
		encode(f, &counts{}),
		encode(f, &counts{"a": {"x": 1, "y": -1 << 40}, "b": nil, "c": {}}),
	)
	f.Fuzz(checkDecode[counts])
}
