package state_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/state"
)

type audit struct {
	Seen  map[string]int64 `json:"seen"`
	Last  string           `json:"last,omitempty"`
	Notes []string
	Skip  string `json:"-"`
}

func TestJSONRoundTrip(t *testing.T) {
	c := state.JSON[audit]()
	in := &audit{Seen: map[string]int64{"a": 1, "b": -1 << 40}, Last: "héllo", Notes: []string{"x", ""}, Skip: "dropped"}
	b, err := c.Encode(in)
	require.NoError(t, err)
	assert.JSONEq(t, `{"seen":{"a":1,"b":-1099511627776},"last":"héllo","Notes":["x",""]}`, string(b), "readable with redis-cli")
	out, err := c.Decode(b)
	require.NoError(t, err)
	in.Skip = ""
	assert.Equal(t, in, out)

	zero, err := c.Decode(nil)
	require.NoError(t, err, "an absent record is the zero value")
	assert.Equal(t, &audit{}, zero)

	for name, bad := range map[string]string{
		"trailing data":  `{"last":"x"}{}`,
		"trailing brace": `{"last":"x"}}`,
		"wrong type":     `{"seen":[1]}`,
		"truncated":      `{"seen":{"a":`,
		"msgpack bytes":  "\x81\xa4last\xa1x",
	} {
		v, err := c.Decode([]byte(bad))
		assert.Error(t, err, name)
		assert.Nil(t, v, name)
	}
}

type withHidden struct {
	Visible int
	hidden  int
}

type tagged struct {
	Visible int
	hidden  int `msgpack:"-" json:"-"`
}

type nestedHidden struct {
	Items []map[string]*withHidden
}

// A codec refuses a type it would store unfaithfully, at every Encode and
// Decode, with an error naming the field: nothing panics, and the first use
// of the state reports it.
func TestCodecsRefuseUnexportedFields(t *testing.T) {
	for name, c := range map[string]state.Codec[withHidden]{"msgpack": state.Msgpack[withHidden](), "json": state.JSON[withHidden]()} {
		_, err := c.Decode(nil)
		require.ErrorContains(t, err, "withHidden.hidden", name)
		require.ErrorContains(t, err, name+`:"-"`, name)
		_, err = c.Encode(&withHidden{Visible: 1})
		require.ErrorContains(t, err, "withHidden.hidden", name)
	}
	_, err := state.Msgpack[nestedHidden]().Decode(nil)
	require.ErrorContains(t, err, "withHidden.hidden", "found through slices, maps and pointers")
	_, err = state.JSON[struct{ F func() }]().Decode(nil)
	require.ErrorContains(t, err, "func")

	for name, c := range map[string]state.Codec[tagged]{"msgpack": state.Msgpack[tagged](), "json": state.JSON[tagged]()} {
		b, err := c.Encode(&tagged{Visible: 2, hidden: 3})
		require.NoError(t, err, name)
		v, err := c.Decode(b)
		require.NoError(t, err, name)
		assert.Equal(t, &tagged{Visible: 2}, v, name)
	}
}
