package rdb_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"testing"

	"github.com/streamtx/streamtx/internal/rdb"
)

// A reply tree is what go-redis makes of a script's reply: int64, string, nil
// and []any, nested. The fuzz targets build one from bytes:
//
//	0 b        int64(int8(b))
//	1 b×8      int64, big-endian
//	2 n b×n    string of n bytes
//	3          nil
//	4 n …      []any of up to n items (fewer when the input ends)
//	5 b        a type scripts never return (RESP3 and error replies):
//	           bool, float64, []byte or error, by b%4
//
// The tag is taken modulo 6, so every byte string is a tree.

const maxDepth = 32

type treeReader struct{ b []byte }

func (r *treeReader) next() (byte, bool) {
	if len(r.b) == 0 {
		return 0, false
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c, true
}

func (r *treeReader) take(n int) []byte {
	n = min(n, len(r.b))
	s := r.b[:n]
	r.b = r.b[n:]
	return s
}

func (r *treeReader) value(depth int) any {
	tag, ok := r.next()
	if !ok {
		return nil
	}
	switch tag % 6 {
	case 0:
		b, _ := r.next()
		return int64(int8(b))
	case 1:
		var buf [8]byte
		copy(buf[:], r.take(8))
		return int64(binary.BigEndian.Uint64(buf[:]))
	case 2:
		n, _ := r.next()
		return string(r.take(int(n)))
	case 3:
		return nil
	case 4:
		n, _ := r.next()
		a := make([]any, 0, n)
		if depth >= maxDepth {
			return a
		}
		for i := 0; i < int(n) && len(r.b) > 0; i++ {
			a = append(a, r.value(depth+1))
		}
		return a
	default:
		b, _ := r.next()
		switch b % 4 {
		case 0:
			return b%8 == 0
		case 1:
			return math.Float64frombits(uint64(b) << 56)
		case 2:
			return []byte{b}
		default:
			return fmt.Errorf("ERR %d", b)
		}
	}
}

func tree(b []byte) any {
	r := &treeReader{b: b}
	return r.value(0)
}

// encodeTree is the inverse of tree for int64, string, nil and []any, to
// write seeds as reply values.
func encodeTree(v any) []byte {
	switch v := v.(type) {
	case nil:
		return []byte{3}
	case int64:
		if v == int64(int8(v)) {
			return []byte{0, byte(int8(v))}
		}
		return binary.BigEndian.AppendUint64([]byte{1}, uint64(v))
	case int:
		return encodeTree(int64(v))
	case string:
		if len(v) > 255 {
			panic("seed string too long")
		}
		return append([]byte{2, byte(len(v))}, v...)
	case []any:
		if len(v) > 255 {
			panic("seed list too long")
		}
		b := []byte{4, byte(len(v))}
		for _, x := range v {
			b = append(b, encodeTree(x)...)
		}
		return b
	default:
		panic(fmt.Sprintf("seed of type %T", v))
	}
}

func TestTreeEncoding(t *testing.T) {
	for _, v := range resultSeeds {
		got := tree(encodeTree(v))
		if fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", normalize(v)) {
			t.Fatalf("tree(encodeTree(%#v)) = %#v", v, got)
		}
	}
	for _, v := range claimSeeds {
		got := tree(encodeTree(v))
		if fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", normalize(v)) {
			t.Fatalf("tree(encodeTree(%#v)) = %#v", v, got)
		}
	}
}

func normalize(v any) any {
	switch v := v.(type) {
	case int:
		return int64(v)
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = normalize(x)
		}
		return out
	}
	return v
}

var resultSeeds = []any{
	[]any{0},
	[]any{0, "1700000000000-0"},
	[]any{1, 1},
	[]any{1, 1, 3, 4},
	[]any{2, 2},
	[]any{3, 1, 2},
	[]any{1},
	[]any{1, 0},
	[]any{1, -1},
	[]any{1, int64(1)<<20 + 1},
	[]any{4},
	[]any{-1},
	[]any{"0"},
	[]any{},
	"OK",
	int64(0),
	nil,
	[]any{0, 1},
	[]any{1, "1"},
	[]any{1, nil},
	[]any{1, []any{1}},
}

var claimSeeds = []any{
	[]any{"0-0", []any{}, []any{}},
	[]any{"(1-1", []any{[]any{"1-1", 2, []any{"f", "v", "g", ""}}}, []any{"1-0"}},
	[]any{"0-0", []any{[]any{"1-1", 1, []any{}}, []any{"2-0", 3, []any{"a", "b", "a", "c"}}}, []any{}},
	[]any{"0-0", []any{[]any{"1-1", 2, []any{"f"}}}, []any{}},
	[]any{"0-0", []any{[]any{"1-1", "2", []any{"f", "v"}}}, []any{}},
	[]any{"0-0", []any{[]any{"1-1", 2, []any{"f", 1}}}, []any{}},
	[]any{"0-0", []any{[]any{"1-1", 2}}, []any{}},
	[]any{"0-0", []any{nil}, []any{}},
	[]any{"0-0", []any{}, []any{1}},
	[]any{"0-0", nil, []any{}},
	[]any{"0-0", []any{}},
	[]any{1, []any{}, []any{}},
	[]any{"a", "b", "c", "d"},
}

func addTreeSeeds(f *testing.F, seeds ...[]any) {
	for _, ss := range seeds {
		for _, s := range ss {
			b := encodeTree(s)
			f.Add(b)
			f.Add(b[:len(b)-1])
		}
	}
	f.Add([]byte{})
	f.Add([]byte{5, 0, 5, 1, 5, 2, 5, 3})
	f.Add([]byte{4, 3, 5, 3, 5, 1, 5, 2})
	f.Add([]byte{4, 2, 5, 8, 5, 0})
}

func FuzzParseResult(f *testing.F) {
	addTreeSeeds(f, resultSeeds, claimSeeds)
	f.Fuzz(func(t *testing.T, data []byte) {
		v := tree(data)
		r, err := rdb.ParseResult(v)
		if err != nil {
			return
		}
		a, ok := v.([]any)
		if !ok || len(a) == 0 {
			t.Fatalf("accepted %#v", v)
		}
		if code, _ := a[0].(int64); int64(r.Code) != code || r.Code < rdb.CodeOK || r.Code > rdb.CodeWrongType {
			t.Fatalf("code %v parsed as %d", a[0], r.Code)
		}
		if r.Code == rdb.CodeOK {
			if len(r.Index) != 0 {
				t.Fatalf("OK with indexes %v", r.Index)
			}
			return
		}
		if len(r.Index) != len(a)-1 || r.ID != "" {
			t.Fatalf("%#v parsed as %+v", v, r)
		}
		for i, x := range r.Index {
			if x < 0 || int64(x) != a[i+1].(int64)-1 {
				t.Fatalf("index %v parsed as %d", a[i+1], x)
			}
		}
	})
}

func FuzzParseClaim(f *testing.F) {
	addTreeSeeds(f, claimSeeds, resultSeeds)
	f.Fuzz(func(t *testing.T, data []byte) {
		v := tree(data)
		next, entries, deleted, err := rdb.ParseClaim(v)
		if err != nil {
			if next != "" || entries != nil || deleted != nil {
				t.Fatalf("error %v with results %q %v %v", err, next, entries, deleted)
			}
			return
		}
		a := v.([]any)
		es, ds := a[1].([]any), a[2].([]any)
		if next != a[0].(string) || len(entries) != len(es) || len(deleted) != len(ds) {
			t.Fatalf("%#v parsed as %q %+v %q", v, next, entries, deleted)
		}
		for i, e := range entries {
			raw := es[i].([]any)
			if e.ID != raw[0].(string) || e.Deliveries != raw[1].(int64) {
				t.Fatalf("entry %#v parsed as %+v", raw, e)
			}
			if fs := raw[2].([]any); len(e.Values) > len(fs)/2 || (len(fs) > 0 && len(e.Values) == 0) {
				t.Fatalf("fields %#v parsed as %v", fs, e.Values)
			}
		}
	})
}

func FuzzValues(f *testing.F) {
	addTreeSeeds(f,
		[]any{[]any{}, []any{"f", "v"}, []any{"a", "1", "a", "2"}, []any{"f"}, []any{"f", nil}, []any{1, "v"}, []any{"", ""}},
		claimSeeds)
	f.Fuzz(func(t *testing.T, data []byte) {
		v := tree(data)
		fs, ok := v.([]any)
		if !ok {
			fs = []any{v}
		}
		m, err := rdb.Values(fs)
		if err != nil {
			if m != nil {
				t.Fatalf("error %v with map %v", err, m)
			}
			return
		}
		if len(fs)%2 != 0 {
			t.Fatalf("accepted %d items", len(fs))
		}
		want := make(map[string]string)
		for i := 0; i < len(fs); i += 2 {
			want[fs[i].(string)] = fs[i+1].(string)
		}
		if fmt.Sprint(m) != fmt.Sprint(want) || len(m) != len(want) {
			t.Fatalf("Values(%#v) = %v, want %v", fs, m, want)
		}
	})
}

// FuzzIDLess checks that IDLess, which orders entry IDs read from Redis, is a
// strict weak order that agrees with (ms, seq) order on valid IDs.
func FuzzIDLess(f *testing.F) {
	f.Add("1-0", "1-1", "2-0")
	f.Add("10-0", "9-9", "9")
	f.Add("18446744073709551615-18446744073709551615", "18446744073709551616-0", "")
	f.Add("x", "-", "1-")
	f.Add("0-0", "0", "00-00")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		if rdb.IDLess(a, a) {
			t.Fatalf("IDLess(%q, %q)", a, a)
		}
		if rdb.IDLess(a, b) && rdb.IDLess(b, a) {
			t.Fatalf("IDLess both ways for %q, %q", a, b)
		}
		if rdb.IDLess(a, b) && rdb.IDLess(b, c) && !rdb.IDLess(a, c) {
			t.Fatalf("not transitive: %q < %q < %q", a, b, c)
		}
		// Incomparability is transitive too (a strict weak order, as sort needs).
		eq := func(x, y string) bool { return !rdb.IDLess(x, y) && !rdb.IDLess(y, x) }
		if eq(a, b) && eq(b, c) && !eq(a, c) {
			t.Fatalf("equivalence not transitive: %q ~ %q ~ %q", a, b, c)
		}
		var am, as, bm, bs uint64
		if n, err := fmt.Sscanf(a+" "+b, "%d-%d %d-%d", &am, &as, &bm, &bs); n == 4 && err == nil &&
			a == fmt.Sprintf("%d-%d", am, as) && b == fmt.Sprintf("%d-%d", bm, bs) {
			want := am < bm || am == bm && as < bs
			if rdb.IDLess(a, b) != want {
				t.Fatalf("IDLess(%q, %q) = %v", a, b, !want)
			}
		}
	})
}

var readSeeds = []any{
	[]any{"0-0"},
	[]any{"", "1-1", int64(1), "f", "v"},
	[]any{"", "1-1", int64(2), "stx.key", "k", "f", "v", "1-2", int64(0)},
	[]any{"", "1-1", int64(2), "f", "v"}, // truncated
	[]any{"", "1-1", int64(-1)},
	[]any{"", "1-1"},
	[]any{int64(0)},
	[]any{},
	"0-0",
}

func FuzzParseRead(f *testing.F) {
	addTreeSeeds(f, readSeeds, claimSeeds)
	f.Fuzz(func(t *testing.T, data []byte) {
		v := tree(data)
		top, entries, err := rdb.ParseRead(v)
		if err != nil {
			if top != "" || entries != nil {
				t.Fatalf("error %v with results %q %v", err, top, entries)
			}
			return
		}
		a := v.([]any)
		if top != a[0].(string) {
			t.Fatalf("%#v: top %q", v, top)
		}
		// The entries account for every item after the head.
		n := 1
		for _, e := range entries {
			if e.ID != a[n].(string) || e.Deliveries != 1 {
				t.Fatalf("%#v: entry %+v at %d", v, e, n)
			}
			k := a[n+1].(int64)
			if int64(len(e.Values)) > k || (k > 0 && len(e.Values) == 0) {
				t.Fatalf("%#v: %d fields parsed as %v", v, k, e.Values)
			}
			n += 2 + int(2*k)
		}
		if n != len(a) {
			t.Fatalf("%#v: %d of %d items parsed", v, n, len(a))
		}
	})
}
