package streamtx_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
)

func TestInspectTopic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	name := e.key("orders")
	top, err := streamtx.CreateTopic(ctx, e.rdb, name, streamtx.TopicConfig{Partitions: 4, Colocate: e.key("co")})
	require.NoError(t, err)

	// Partitions 0 to 2 have a stream and the group billing; partition 1
	// the group audit too; partition 3 has no stream.
	for p := range 3 {
		e.add(top.Stream(p), p+1, topicEntry)
		require.NoError(t, e.rdb.XGroupCreate(ctx, top.Stream(p), "billing", "0").Err())
	}
	require.NoError(t, e.rdb.XGroupCreate(ctx, top.Stream(1), "audit", "$").Err())

	// billing's leases: 0 live, 1 expired, 2 released (owner "", the epoch
	// stays), 3 never held. A consumer name may hold a '/'.
	now, err := e.rdb.Time(ctx).Result()
	require.NoError(t, err)
	a, b := "eu/billing-a/0123456789abcdef", "billing-b/fedcba9876543210"
	lease := func(p int, fields ...any) {
		sp, err := keys.NewSpace(top.Stream(p), "billing")
		require.NoError(t, err)
		require.NoError(t, e.rdb.HSet(ctx, sp.Lease(), fields...).Err())
	}
	hour, ago := now.Add(time.Hour).UnixMilli(), now.Add(-time.Minute).UnixMilli()
	lease(0, "owner", a, "epoch", 7, "until", hour)
	lease(1, "owner", b, "epoch", 3, "until", ago)
	lease(2, "owner", "", "epoch", 2, "until", ago)
	members := keys.Members(name, "billing")
	require.NoError(t, e.rdb.ZAdd(ctx, members,
		redis.Z{Score: float64(ago), Member: b},
		redis.Z{Score: float64(hour), Member: a}).Err())

	info, err := streamtx.InspectTopic(ctx, e.rdb, name)
	require.NoError(t, err)
	assert.Equal(t, name, info.Name)
	assert.Equal(t, 4, info.Partitions)
	assert.Equal(t, e.key("co"), info.Colocate)
	assert.False(t, info.Time.Before(now))
	require.Len(t, info.Streams, 4)
	require.Len(t, info.Inspected, 4)
	for p := range 4 {
		assert.Equal(t, top.Stream(p), info.Streams[p])
	}
	for p := range 3 {
		require.NotNil(t, info.Inspected[p], p)
		assert.Equal(t, top.Stream(p), info.Inspected[p].Stream)
		assert.EqualValues(t, p+1, info.Inspected[p].Length)
	}
	assert.Len(t, info.Inspected[1].Groups, 2)
	assert.Nil(t, info.Inspected[3], "no stream yet")

	require.Len(t, info.Groups, 2)
	audit, billing := info.Groups[0], info.Groups[1]
	assert.Equal(t, "audit", audit.Name)
	assert.Equal(t, make([]leaseRow, 4), leaseRows(audit.Leases), "never held")
	assert.Empty(t, audit.Members)

	assert.Equal(t, "billing", billing.Name)
	assert.Equal(t, []leaseRow{
		{Owner: a, Consumer: "eu/billing-a", Epoch: 7, Until: hour, Live: true},
		{Owner: b, Consumer: "billing-b", Epoch: 3, Until: ago},
		{Epoch: 2, Until: ago},
		{},
	}, leaseRows(billing.Leases))
	assert.Equal(t, []memberRow{
		{ID: b, Consumer: "billing-b", Until: ago}, // sorted by ID
		{ID: a, Consumer: "eu/billing-a", Until: hour, Live: true},
	}, memberRows(billing.Members))
}

func TestInspectTopicErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()

	_, err := streamtx.InspectTopic(ctx, e.rdb, e.key("missing"))
	require.ErrorIs(t, err, streamtx.ErrTopicNotFound)

	name := e.key("orders")
	top, err := streamtx.CreateTopic(ctx, e.rdb, name, streamtx.TopicConfig{Partitions: 2})
	require.NoError(t, err)
	e.add(top.Stream(0), 1, topicEntry)
	require.NoError(t, e.rdb.XGroupCreate(ctx, top.Stream(0), "g", "0").Err())
	sp, err := keys.NewSpace(top.Stream(1), "g")
	require.NoError(t, err)
	for _, bad := range []string{"epoch", "until"} {
		require.NoError(t, e.rdb.Del(ctx, sp.Lease()).Err())
		require.NoError(t, e.rdb.HSet(ctx, sp.Lease(), "owner", "g/0123456789abcdef", bad, "soon").Err())
		_, err = streamtx.InspectTopic(ctx, e.rdb, name)
		require.ErrorContains(t, err, "corrupt lease record: "+bad)
	}
	require.NoError(t, e.rdb.Set(ctx, sp.Lease(), "x", 0).Err())
	_, err = streamtx.InspectTopic(ctx, e.rdb, name)
	require.ErrorContains(t, err, "WRONGTYPE")

	require.NoError(t, e.rdb.Set(ctx, top.Stream(1), "x", 0).Err())
	_, err = streamtx.InspectTopic(ctx, e.rdb, name)
	require.ErrorIs(t, err, streamtx.ErrNotAStream)
}

func topicEntry(i int) map[string]any { return map[string]any{"n": i} }

// leaseRow and memberRow are LeaseInfo and MemberInfo with times in Unix
// milliseconds (0 for none), for comparison.
type leaseRow struct {
	Owner, Consumer string
	Epoch, Until    int64
	Live            bool
}

type memberRow struct {
	ID, Consumer string
	Until        int64
	Live         bool
}

func unixMilli(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func leaseRows(ls []streamtx.LeaseInfo) []leaseRow {
	out := make([]leaseRow, len(ls))
	for i, l := range ls {
		out[i] = leaseRow{l.Owner, l.Consumer, l.Epoch, unixMilli(l.Until), l.Live}
	}
	return out
}

func memberRows(ms []streamtx.MemberInfo) []memberRow {
	out := make([]memberRow, len(ms))
	for i, m := range ms {
		out[i] = memberRow{m.ID, m.Consumer, unixMilli(m.Until), m.Live}
	}
	return out
}
