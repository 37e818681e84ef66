package keys_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/keys"
)

// refSlot is an independent transcription of Redis's keyHashSlot (cluster.c)
// with a table-driven CRC16/XMODEM, to check Slot against.
func refSlot(key string) int {
	s := -1
	for i := 0; i < len(key); i++ {
		if key[i] == '{' {
			s = i
			break
		}
	}
	if s == -1 {
		return int(refCRC16(key) & 0x3FFF)
	}
	e := -1
	for i := s + 1; i < len(key); i++ {
		if key[i] == '}' {
			e = i
			break
		}
	}
	if e == -1 || e == s+1 {
		return int(refCRC16(key) & 0x3FFF)
	}
	return int(refCRC16(key[s+1:e]) & 0x3FFF)
}

var crcTable = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

func refCRC16(s string) uint16 {
	var c uint16
	for i := 0; i < len(s); i++ {
		c = c<<8 ^ crcTable[byte(c>>8)^s[i]]
	}
	return c
}

func TestSlotKnownValues(t *testing.T) {
	t.Parallel()
	// From the Redis Cluster specification and the CLUSTER KEYSLOT docs.
	tests := []struct {
		key  string
		slot int
	}{
		{"123456789", 12739},
		{"foo", 12182},
		{"bar", 5061},
		{"somekey", 11058},
		{"foo{hash_tag}", 2515},
		{"{hash_tag}", 2515},
		{"hash_tag", 2515},
		{"", 0},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.slot, keys.Slot(tt.key), "Slot(%q)", tt.key)
		assert.Equal(t, tt.slot, refSlot(tt.key), "refSlot(%q)", tt.key)
	}
	assert.Equal(t, keys.Slot("{user1000}.following"), keys.Slot("{user1000}.followers"))
	assert.Equal(t, keys.Slot("user1000"), keys.Slot("{user1000}.following"))
}

func TestTag(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key, tag string
	}{
		{"orders", "orders"},
		{"{user1000}.following", "user1000"},
		{"foo{bar}baz", "bar"},
		{"{}", "{}"},                 // empty tag: the whole key is hashed
		{"foo{}{bar}", "foo{}{bar}"}, // only the first {…} counts, even if empty
		{"foo{", "foo{"},             // '{' without '}'
		{"foo{bar", "foo{bar"},       //
		{"}foo{bar", "}foo{bar"},     // '}' before '{' does not close it
		{"foo}{bar}", "bar"},         //
		{"{a}{b}", "a"},              // first pair only
		{"{{a}}", "{a"},              // the tag ends at the first '}'
		{"x{a:b}y", "a:b"},
		{"", ""},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.tag, keys.Tag(tt.key), "Tag(%q)", tt.key)
		assert.Equal(t, refSlot(tt.key), keys.Slot(tt.key), "Slot(%q)", tt.key)
	}
}

// streamNames are stream names of every shape NewSpace accepts.
var streamNames = []string{
	"orders",
	"o",
	"{orders}",
	"{orders}.in",
	"app:{orders}:in",
	"{a:b}c",
	"{a%b}:c%d",
	"a:b:c",
	"100%",
	"%3A",
	"a%3Ab",
	"naïve-流-🚀",
	"{流}ストリーム",
	"foo{",
	"{{x}y",
	"x{a}{b}",
	"has space",
	"tab\there",
	"nul\x00byte",
	"\xff\xfe invalid utf-8",
	"*?[glob]",
}

func allKeys(sp keys.Space) map[string]string {
	return map[string]string{
		"Offsets":         sp.Offsets(),
		"DeadLetters":     sp.DeadLetters(),
		"State(n)":        sp.State("n"),
		"State(a:b%c)":    sp.State("a:b%c"),
		"State()":         sp.State(""),
		"KeyedState(n,k)": sp.KeyedState("n", "k"),
		"KeyedState(:,%)": sp.KeyedState(":", "%"),
		"KeyedState(u,{)": sp.KeyedState("ü", "{x}"),
		"KeyedState(,)":   sp.KeyedState("", ""),
	}
}

func TestSpaceKeysShareTheStreamSlot(t *testing.T) {
	t.Parallel()
	for _, stream := range streamNames {
		for _, group := range []string{"g", "a:b", "50%", "{other}", "}"} {
			sp, err := keys.NewSpace(stream, group)
			require.NoError(t, err, "NewSpace(%q, %q)", stream, group)
			assert.Equal(t, stream, sp.Stream)
			assert.Equal(t, group, sp.Group)
			want := keys.Slot(stream)
			for what, k := range allKeys(sp) {
				assert.True(t, strings.HasPrefix(k, keys.Prefix), "%s = %q", what, k)
				assert.True(t, strings.HasPrefix(k, sp.Base()), "%s = %q", what, k)
				assert.Equal(t, want, keys.Slot(k), "stream %q group %q: %s = %q", stream, group, what, k)
				assert.Equal(t, want, refSlot(k), "stream %q group %q: %s = %q", stream, group, what, k)
			}
		}
	}
}

func TestNewSpaceRejects(t *testing.T) {
	t.Parallel()
	for _, stream := range []string{"a}b", "}", "}{", "{}", "x{}y}", "{}{a}", "}{a"} {
		_, err := keys.NewSpace(stream, "g")
		require.Error(t, err, "NewSpace(%q)", stream)
		assert.True(t, errors.Is(err, keys.ErrNoTag), "NewSpace(%q): %v", stream, err)
	}
	// A '}' is fine once there is a hash tag before it.
	for _, stream := range []string{"{a}}", "{a}b}", "x}{a}"} {
		_, err := keys.NewSpace(stream, "g")
		assert.NoError(t, err, "NewSpace(%q)", stream)
	}
	_, err := keys.NewSpace("", "g")
	assert.Error(t, err)
	_, err = keys.NewSpace("s", "")
	assert.Error(t, err)
}

// tuple is what a derived key is a function of; unused components are empty.
type tuple struct {
	kind                     string
	stream, group, name, key string
}

type derived struct {
	key string
	tuple
}

// derive returns keys built from (stream, group, name, key), each with the
// components it depends on. ok is false when NewSpace refuses stream.
func derive(stream, group, name, key string) ([]derived, bool) {
	sp, err := keys.NewSpace(stream, group)
	if err != nil {
		return nil, false
	}
	return []derived{
		{sp.Offsets(), tuple{"offsets", stream, group, "", ""}},
		{sp.DeadLetters(), tuple{"dlq", stream, group, "", ""}},
		{sp.State(name), tuple{"state", stream, group, name, ""}},
		{sp.State(key), tuple{"state", stream, group, key, ""}},
		{sp.State(name + ":" + key), tuple{"state", stream, group, name + ":" + key, ""}},
		{sp.KeyedState(name, key), tuple{"kstate", stream, group, name, key}},
		{sp.KeyedState(key, name), tuple{"kstate", stream, group, key, name}},
		{sp.KeyedState(name, ""), tuple{"kstate", stream, group, name, ""}},
	}, true
}

// collisions fails t if two different tuples give the same key, or one tuple
// two different keys.
func collisions(t *testing.T, ds ...[]derived) {
	t.Helper()
	byKey := make(map[string]tuple)
	byTuple := make(map[tuple]string)
	for _, d := range ds {
		for _, x := range d {
			if prev, ok := byKey[x.key]; ok && prev != x.tuple {
				t.Fatalf("%+v and %+v both map to %q", prev, x.tuple, x.key)
			}
			if prev, ok := byTuple[x.tuple]; ok && prev != x.key {
				t.Fatalf("%+v maps to both %q and %q", x.tuple, prev, x.key)
			}
			byKey[x.key], byTuple[x.tuple] = x.tuple, x.key
		}
	}
}

func TestKeysNeverCollide(t *testing.T) {
	t.Parallel()
	// Components chosen so that naive joining with ':' or a naive escape
	// would collide.
	parts := []string{"", "a", ":", "a:b", "a%3Ab", "a%b", "%", "%3A", "%25", "::", "state", "kstate", "state:a", "offsets", "dlq", "g:state", "{a}", "}"}
	streams := []string{"s", "s:g", "s%3Ag", "{s}", "{s}:g", "x:{s}", "{s:g}", "s:g:state"}
	groups := []string{"g", "g:state", "g%3Astate", "g:offsets", ":"}
	var all [][]derived
	for _, s := range streams {
		for _, g := range groups {
			for _, n := range parts {
				for _, k := range parts {
					d, ok := derive(s, g, n, k)
					require.True(t, ok, "NewSpace(%q, %q)", s, g)
					all = append(all, d)
				}
			}
		}
	}
	collisions(t, all...)
}

func FuzzSlot(f *testing.F) {
	for _, k := range append(streamNames, "123456789", "{user1000}.following", "{}", "{}{a}", "a{", "}") {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if got, want := keys.Slot(key), refSlot(key); got != want {
			t.Fatalf("Slot(%q) = %d, Redis computes %d", key, got, want)
		}
	})
}

func FuzzSpace(f *testing.F) {
	f.Add("orders", "g", "counter", "k", "orders", "g", "counter", "k2")
	f.Add("{orders}.in", "g", "n", "k", "{orders}.out", "g", "n", "k")
	f.Add("a:b", "c", "d", "e", "a", "b:c", "d", "e")
	f.Add("s", "g:state", "x", "", "s", "g", "x", "")
	f.Add("s", "g", "a:b", "c", "s", "g", "a", "b:c")
	f.Add("s", "g", "a%3Ab", "", "s", "g", "a:b", "")
	f.Add("100%", "%", "%25", "%3A", "100%25", "%", "%", ":")
	f.Add("naïve-流", "g", "ü", "🚀", "{流}x", "g", "ü", "🚀")
	f.Add("a}b", "g", "n", "k", "{a}}", "g", "n", "k")
	f.Add("{}", "g", "n", "k", "x{", "g", "n", "k")
	f.Fuzz(func(t *testing.T, s1, g1, n1, k1, s2, g2, n2, k2 string) {
		d1, ok1 := derive(s1, g1, n1, k1)
		d2, ok2 := derive(s2, g2, n2, k2)
		for _, c := range []struct {
			stream, group string
			d             []derived
			ok            bool
		}{{s1, g1, d1, ok1}, {s2, g2, d2, ok2}} {
			if !c.ok {
				// Refused only for an empty name or a '}' that a derived
				// key could not carry.
				if c.stream != "" && c.group != "" && !strings.Contains(keys.Tag(c.stream), "}") {
					t.Fatalf("NewSpace(%q, %q) refused a usable stream", c.stream, c.group)
				}
				continue
			}
			want := keys.Slot(c.stream)
			for _, x := range c.d {
				k := x.key
				if keys.Slot(k) != want || refSlot(k) != want {
					t.Fatalf("stream %q: key %q in slot %d (Redis: %d), stream in slot %d",
						c.stream, k, keys.Slot(k), refSlot(k), want)
				}
			}
		}
		if ok1 && ok2 {
			collisions(t, d1, d2)
		}
	})
}

func ExampleNewSpace() {
	sp, _ := keys.NewSpace("{orders}.in", "billing")
	fmt.Println(sp.State("totals"))
	fmt.Println(keys.Slot("{orders}.in") == keys.Slot(sp.State("totals")))
	// Output:
	// stx:{orders}:{orders}.in:billing:state:totals
	// true
}
