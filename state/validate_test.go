package state_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/state"
)

type withSlice struct {
	Items []int
	Names map[string]string
}

// Lengths declared by the bytes are checked against what is there before
// the decoder allocates: a few bytes must not claim gigabytes.
func TestDecodeRefusesLengthsBeyondInput(t *testing.T) {
	tests := map[string]string{
		"array32 of 4e9":   "\x81\xa5Items\xdd\xff\xff\xff\xff",
		"map32 of 4e9":     "\x81\xa5Names\xdf\xff\xff\xff\xff",
		"str32 of 4e9":     "\x81\xa5Names\x81\xdb\xff\xff\xff\xff",
		"bin32 of 4e9":     "\xc6\xff\xff\xff\xff",
		"ext32 of 4e9":     "\xc9\xff\xff\xff\xff\x01",
		"truncated int":    "\x81\xa5Items\x91\xcd\x01",
		"invalid code":     "\xc1",
		"deep nesting":     strings.Repeat("\x91", 300) + "\x00",
		"trailing garbage": "\x80\x00",
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := state.Msgpack[withSlice]().Decode([]byte(in))
			require.Error(t, err)
		})
	}
	ok, err := state.Msgpack[withSlice]().Encode(&withSlice{Items: []int{1, 2, 3}, Names: map[string]string{"a": "b"}})
	require.NoError(t, err)
	v, err := state.Msgpack[withSlice]().Decode(ok)
	require.NoError(t, err)
	require.Equal(t, []int{1, 2, 3}, v.Items)
}
