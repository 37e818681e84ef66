package streamtx

import (
	"context"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/internal/streamid"
)

func TestCountLag(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redistest.Client(t)
	s := redistest.Prefix(t, rdb) + "s"
	pipe := rdb.Pipeline()
	for i := 1; i <= 50; i++ {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: s, ID: strconv.Itoa(i) + "-0", Values: []any{"i", i}})
	}
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)

	for _, tc := range []struct {
		name        string
		last        string
		redisLag    int64
		limit, page int64
		wantLag     int64
		wantExact   bool
	}{
		{"tail side ends first", "40-0", -1, 1000, 7, 10, true},
		{"head side ends first", "5-0", -1, 1000, 7, 45, true},
		{"both ends long", "20-0", -1, 1000, 7, 30, true},
		{"exact page boundary", "43-0", -1, 1000, 7, 7, true},
		{"last between entries", "20-5", -1, 1000, 7, 30, true},
		{"bounded: lower bound", "20-0", -1, 14, 7, 7, false},
		{"bounded: Redis's figure within bounds", "20-0", 31, 14, 7, 31, false},
		{"bounded: Redis's figure out of bounds", "20-0", 44, 14, 7, 7, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lag, exact, err := countLag(ctx, rdb, s, tc.last, tc.redisLag, tc.limit, tc.page)
			require.NoError(t, err)
			assert.Equal(t, tc.wantLag, lag)
			assert.Equal(t, tc.wantExact, exact)
		})
	}
}

func TestIDHelpers(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "5-1", streamid.Next("5-0"))
	assert.Equal(t, "5-1", streamid.Next("5"))
	assert.Equal(t, "6-0", streamid.Next("5-18446744073709551615"))
	assert.Equal(t, "18446744073709551615-18446744073709551615", streamid.Next("18446744073709551615-18446744073709551615"))
	assert.True(t, streamid.Less("5-0", "5-1"))
	assert.True(t, streamid.Less("5-9", "10-0"))
	assert.False(t, streamid.Less("10-0", "10-0"))
	assert.True(t, streamid.Less("", "0-0"))
}
