package streamid_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/streamtx/streamtx/internal/streamid"
)

func TestStreamIDs(t *testing.T) {
	assert.Equal(t, "5-1", streamid.Next("5-0"))
	assert.Equal(t, "5-1", streamid.Next("5"))
	assert.Equal(t, "6-0", streamid.Next("5-18446744073709551615"))
	assert.Equal(t, "x", streamid.Next("x"))
	assert.True(t, streamid.Less("5-0", "5-1"))
	assert.True(t, streamid.Less("5-9", "10-0"))
	assert.True(t, streamid.Less("100-2", "100-10"))
	assert.False(t, streamid.Less("10-0", "10-0"))
	assert.True(t, streamid.Less("", "0-0"))
	for _, id := range []string{"0", "0-0", "1700000000000-5", "18446744073709551615-18446744073709551615"} {
		assert.True(t, streamid.Valid(id), id)
	}
	for _, id := range []string{"", "-", "1-", "-1", "a-1", "1-a", "$", "18446744073709551616-0"} {
		assert.False(t, streamid.Valid(id), id)
	}
}

func FuzzLess(f *testing.F) {
	f.Add("1-0", "1-1")
	f.Add("x", "2")
	f.Fuzz(func(t *testing.T, a, b string) {
		if streamid.Less(a, b) && streamid.Less(b, a) {
			t.Fatalf("%q and %q sort before each other", a, b)
		}
		if streamid.Valid(a) && a != streamid.Next(a) && !streamid.Less(a, streamid.Next(a)) {
			t.Fatalf("Next(%q) = %q does not sort after it", a, streamid.Next(a))
		}
	})
}
