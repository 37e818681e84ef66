package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/txn"
)

// row matches a table row holding fields in order, separated by the
// tabwriter's spaces.
func row(fields ...string) *regexp.Regexp {
	q := make([]string, len(fields))
	for i, s := range fields {
		q[i] = regexp.QuoteMeta(s)
	}
	return regexp.MustCompile(`(?m)^` + strings.Join(q, ` +`) + ` *$`)
}

// topic creates topic name with n partitions.
func (f *fixture) topic(name string, n int) *streamtx.Topic {
	f.t.Helper()
	t, err := streamtx.CreateTopic(f.ctx, f.rdb, name, streamtx.TopicConfig{Partitions: n})
	require.NoError(f.t, err)
	return t
}

// lease writes the lease record of partition stream for group, as a
// consumer instance holding it would.
func (f *fixture) lease(stream, group, owner string, epoch int64, until time.Time) {
	f.t.Helper()
	sp, err := keys.NewSpace(stream, group)
	require.NoError(f.t, err)
	require.NoError(f.t, f.rdb.HSet(f.ctx, sp.Lease(), "owner", owner, "epoch", epoch,
		"until", until.UnixMilli()).Err())
}

// member adds instance to group's members of topic, its heartbeat expiring
// at until.
func (f *fixture) member(topic, group, instance string, until time.Time) {
	f.t.Helper()
	require.NoError(f.t, f.rdb.ZAdd(f.ctx, keys.Members(topic, group),
		redis.Z{Score: float64(until.UnixMilli()), Member: instance}).Err())
}

func (f *fixture) redisNow() time.Time {
	f.t.Helper()
	now, err := f.rdb.Time(f.ctx).Result()
	require.NoError(f.t, err)
	return now
}

func TestTopicCreateCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	name := f.p + "orders"

	out := f.ok("topic", "create", name, "--partitions", "3")
	assert.Contains(t, out, "topic "+name+": 3 partitions\n")
	tp, err := streamtx.OpenTopic(f.ctx, f.rdb, name)
	require.NoError(t, err)
	assert.Equal(t, 3, tp.Partitions())
	for p := range 3 {
		assert.Regexp(t, row(strconv.Itoa(p), tp.Stream(p)), out)
	}

	// Idempotent: the same configuration again prints the same.
	assert.Equal(t, out, f.ok("topic", "create", "--partitions", "3", name))
	// Another partition count or co-location name: refused, nothing changes.
	stderr := f.fails(1, "topic", "create", name, "--partitions", "4")
	assert.Contains(t, stderr, "streamtx: invalid config: Partitions: ")
	assert.Contains(t, stderr, "exists with 3 partitions, not 4")
	assert.Contains(t, f.fails(1, "topic", "create", name, "--partitions", "3", "--colocate", "x"), "Colocate")
	tp, err = streamtx.OpenTopic(f.ctx, f.rdb, name)
	require.NoError(t, err)
	assert.Equal(t, 3, tp.Partitions())

	// Co-located: the partition streams carry the co-location name.
	co := f.p + "payments"
	out = f.ok("topic", "create", co, "--partitions", "2", "--colocate", name)
	assert.Contains(t, out, "topic "+co+": 2 partitions, co-located as "+strconv.Quote(name)+"\n")
	assert.Regexp(t, row("1", co+":{"+name+".p1}"), out)

	// What the library refuses.
	assert.Contains(t, f.fails(1, "topic", "create", f.p+"bad{name}", "--partitions", "1"), "invalid config: name")
	assert.Contains(t, f.fails(1, "topic", "create", f.p+"zero", "--partitions", "0"), "Partitions")
}

func TestTopicUsage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	assert.Contains(t, f.ok("help"), "topic describe TOPIC")
	assert.Contains(t, f.ok("topic", "--help"), "streamtx topic create TOPIC --partitions N")
	assert.Contains(t, f.ok("help", "topic"), "streamtx topic describe TOPIC")
	assert.Contains(t, f.ok("topic", "create", "--help"), "--partitions N")
	assert.Contains(t, f.ok("topic", "describe", "-h"), "--group GROUP")
	assert.Contains(t, f.ok("inspect", "--help"), "Given a topic")
	assert.Contains(t, f.ok("trim", "--help"), "Given a topic")
	for _, args := range [][]string{
		{"topic"},
		{"topic", "delete", "t"},
		{"topic", "create"},
		{"topic", "create", "t"},
		{"topic", "create", "t", "u", "--partitions", "2"},
		{"topic", "create", "t", "--partitions", "two"},
		{"topic", "describe"},
		{"topic", "describe", "t", "--nope"},
	} {
		stderr := f.fails(2, args...)
		assert.Contains(t, stderr, "streamtx: ", args)
		assert.Contains(t, stderr, "Run 'streamtx help' for usage.", args)
	}
	assert.Contains(t, f.fails(2, "topic", "create", "t"), "--partitions N is required")
}

func TestTopicDescribeCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	name := f.p + "orders"
	tp := f.topic(name, 3)
	s0, s1, s2 := tp.Stream(0), tp.Stream(1), tp.Stream(2)
	const owner = "stx-owner" // the one consumer name of a partition stream

	// Partition 0: 4 entries; billing read 3 and acknowledged 1 (2
	// pending, lag 1); audit read nothing (lag 4). Partition 1: 2 entries,
	// billing read and acknowledged both. Partition 2: no stream yet.
	f.addIDs(s0, seq(1, 4)...)
	f.addIDs(s1, seq(1, 2)...)
	for _, s := range []string{s0, s1} {
		require.NoError(t, f.rdb.XGroupCreate(f.ctx, s, "billing", "0").Err())
	}
	require.NoError(t, f.rdb.XGroupCreate(f.ctx, s0, "audit", "0").Err())
	f.readAck(s0, "billing", owner, 3, 1)
	f.readAck(s1, "billing", owner, 2, 2)

	// billing-a holds partition 0 (epoch 3), billing-b held partition 1
	// (epoch 5) and stopped renewing; nobody ever held partition 2.
	now := f.redisNow()
	a, b := "billing-a/0123456789abcdef", "billing-b/fedcba9876543210"
	f.lease(s0, "billing", a, 3, now.Add(time.Hour))
	f.lease(s1, "billing", b, 5, now.Add(-time.Minute))
	f.member(name, "billing", a, now.Add(time.Hour))
	f.member(name, "billing", b, now.Add(-time.Minute))

	out := f.ok("topic", "describe", name)
	for _, want := range []*regexp.Regexp{
		row("topic", name),
		row("partitions", "3"),
		row("colocate", "-"),
		row("PARTITION", "STREAM", "LENGTH", "GROUP", "OWNER", "INSTANCE", "EPOCH", "LEASE", "LAG", "PENDING"),
		row("0", s0, "4", "audit", "-", "-", "-", "free", "4", "0"),
		regexp.MustCompile(`(?m)^0 +` + regexp.QuoteMeta(s0) + ` +4 +billing +billing-a +0123456789abcdef +3 +(59m\d+s|1h0m0s|1h0m) +1 +2 *$`),
		row("1", s1, "2", "audit", "-", "-", "-", "free", "-", "-"),
		row("1", s1, "2", "billing", "billing-b", "fedcba9876543210", "5", "expired", "0", "0"),
		row("2", s2, "-", "audit", "-", "-", "-", "free", "-", "-"),
		row("2", s2, "-", "billing", "-", "-", "-", "free", "-", "-"),
		row("GROUP", "MEMBER", "INSTANCE", "OWNS", "HEARTBEAT"),
		row("audit", "(none)"),
		regexp.MustCompile(`(?m)^billing +billing-a +0123456789abcdef +1 +(59m\d+s|1h0m0s|1h0m) *$`),
		row("billing", "billing-b", "fedcba9876543210", "0", "expired"),
	} {
		assert.Regexp(t, want, out)
	}

	// --group: that group only; one no partition has is not found.
	out = f.ok("topic", "describe", name, "--group", "billing")
	assert.NotContains(t, out, "audit")
	assert.Regexp(t, row("1", s1, "2", "billing", "billing-b", "fedcba9876543210", "5", "expired", "0", "0"), out)
	assert.Contains(t, f.fails(1, "topic", "describe", name, "--group", "nope"), `group "nope" not found on any partition`)

	var v topicView
	require.NoError(t, json.Unmarshal([]byte(f.ok("topic", "describe", name, "--json", "--group", "billing")), &v))
	assert.Equal(t, name, v.Topic)
	assert.Equal(t, 3, v.Partitions)
	require.Len(t, v.Streams, 3)
	p0, p1, p2 := v.Streams[0], v.Streams[1], v.Streams[2]
	assert.Equal(t, s0, p0.Stream)
	assert.True(t, p0.Exists)
	assert.EqualValues(t, 4, p0.Length)
	require.Len(t, p0.Groups, 1)
	l0 := p0.Groups[0]
	assert.Equal(t, "billing", l0.Name)
	assert.True(t, l0.OnStream)
	assert.EqualValues(t, 1, l0.Lag)
	assert.EqualValues(t, 2, l0.Pending)
	assert.Equal(t, "live", l0.Lease.State)
	assert.Equal(t, a, l0.Lease.Owner)
	assert.Equal(t, "billing-a", l0.Lease.Consumer)
	assert.EqualValues(t, 3, l0.Lease.Epoch)
	require.NotNil(t, l0.Lease.Until)
	assert.Equal(t, now.Add(time.Hour).UnixMilli(), l0.Lease.Until.UnixMilli())
	assert.Positive(t, l0.Lease.RemainingMS)
	assert.Equal(t, "expired", p1.Groups[0].Lease.State)
	assert.Zero(t, p1.Groups[0].Lease.RemainingMS)
	assert.False(t, p2.Exists)
	assert.False(t, p2.Groups[0].OnStream)
	assert.Equal(t, leaseView{State: "free"}, p2.Groups[0].Lease)
	require.Len(t, v.Groups, 1)
	require.Len(t, v.Groups[0].Members, 2)
	ma, mb := v.Groups[0].Members[0], v.Groups[0].Members[1]
	assert.Equal(t, a, ma.ID)
	assert.True(t, ma.Live)
	assert.Equal(t, 1, ma.Owns)
	assert.Equal(t, b, mb.ID)
	assert.False(t, mb.Live)
	assert.Zero(t, mb.Owns)

	// A topic without groups; a topic that does not exist.
	bare := f.p + "bare"
	bt := f.topic(bare, 2)
	out = f.ok("topic", "describe", bare)
	assert.Regexp(t, row("1", bt.Stream(1), "-", "-", "-", "-", "-", "-", "-", "-"), out)
	assert.Contains(t, out, "\nno consumer groups\n")
	assert.Contains(t, f.fails(1, "topic", "describe", f.p+"missing"), "topic not found")

	// A corrupt lease record is an error, not a guess.
	sp, err := keys.NewSpace(s2, "billing")
	require.NoError(t, err)
	require.NoError(t, f.rdb.HSet(f.ctx, sp.Lease(), "owner", a, "epoch", "x").Err())
	assert.Contains(t, f.fails(1, "topic", "describe", name), "corrupt lease record")
}

func TestInspectAndTrimOnTopic(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	name := f.p + "orders"
	tp := f.topic(name, 3)
	s0, s1, s2 := tp.Stream(0), tp.Stream(1), tp.Stream(2)
	// Partition 0: billing has read and acknowledged 1-0..3-0 of 1-0..5-0.
	// Partition 1: 2 entries, no groups. Partition 2: no stream yet.
	f.addIDs(s0, seq(1, 5)...)
	require.NoError(t, f.rdb.XGroupCreate(f.ctx, s0, "billing", "0").Err())
	f.readAck(s0, "billing", "stx-owner", 3, 3)
	f.addIDs(s1, "1-0", "2-0")

	out := f.ok("inspect", name)
	assert.Contains(t, out, "topic "+name+": 3 partitions\n")
	assert.Contains(t, out, "== partition 0: "+s0+"\n")
	assert.Regexp(t, row("stream", s0), out)
	assert.Regexp(t, `(?m)^billing +2 +0 `, out)
	assert.Contains(t, out, "== partition 1: "+s1+"\n")
	assert.Regexp(t, row("stream", s1), out)
	assert.Contains(t, out, "== partition 2: "+s2+"\nno stream yet: nothing was published to it\n")

	var v inspectTopicView
	require.NoError(t, json.Unmarshal([]byte(f.ok("inspect", name, "--json")), &v))
	assert.Equal(t, name, v.Topic)
	require.Len(t, v.Streams, 3)
	require.NotNil(t, v.Streams[0])
	assert.Equal(t, s0, v.Streams[0].Stream)
	require.Len(t, v.Streams[0].Groups, 1)
	assert.EqualValues(t, 2, v.Streams[0].Groups[0].Lag)
	require.NotNil(t, v.Streams[1])
	assert.EqualValues(t, 2, v.Streams[1].Length)
	assert.Nil(t, v.Streams[2])
	out = f.ok("inspect", name, "--watch", "1ms", "--count", "2")
	assert.Equal(t, 2, strings.Count(out, "topic "+name+": 3 partitions"))

	// trim --safe trims each partition to its own point; partition 1 has no
	// groups, so the command fails after trimming the others.
	r := f.run("trim", name, "--safe", "--dry-run")
	assert.Equal(t, 1, r.code)
	assert.Equal(t, "partition 0 ("+s0+"): dry run: would trim 3 entries below 3-1\n"+
		`  held back by group "billing", which has not read the entries from 3-1 on`+"\n"+
		"partition 1 ("+s1+"): no consumer groups: nothing trimmed\n"+
		"partition 2 ("+s2+"): no stream yet: nothing to trim\n", r.stdout)
	assert.Contains(t, r.stderr, "partition 1 of topic "+strconv.Quote(name)+" has no consumer groups")
	assert.Contains(t, r.stderr, "streamtx trim "+s1+" --force --maxlen N")
	n, err := f.rdb.XLen(f.ctx, s0).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 5, n, "a dry run")

	require.NoError(t, f.rdb.XGroupCreate(f.ctx, s1, "billing", "$").Err())
	assert.Equal(t, "partition 0 ("+s0+"): trimmed 3 entries below 3-1\n"+
		`  held back by group "billing", which has not read the entries from 3-1 on`+"\n"+
		"partition 1 ("+s1+"): trimmed 2 entries below 2-1\n"+
		`  held back by group "billing", which has not read the entries from 2-1 on`+"\n"+
		"partition 2 ("+s2+"): no stream yet: nothing to trim\n", f.ok("trim", "--safe", name))
	n, err = f.rdb.XLen(f.ctx, s0).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 2, n)

	// --force takes a stream, not a topic.
	stderr := f.fails(1, "trim", name, "--force", "--maxlen", "1")
	assert.Contains(t, stderr, "is a topic of 3 partitions: trim --force trims one stream")
	n, err = f.rdb.XLen(f.ctx, s0).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 2, n, "nothing trimmed")

	// A stream of the topic's name comes first: inspect and trim work on it.
	f.addIDs(name, "1-0")
	out = f.ok("inspect", name)
	assert.Regexp(t, row("stream", name), out)
	assert.NotContains(t, out, "partition")
	assert.Contains(t, f.fails(1, "trim", name, "--safe"), strconv.Quote(name)+" has no consumer groups")
}

// topicOnCluster runs the topic commands through url, a cluster URL with
// one seed: the partitions, their leases and the members' set are in
// different slots.
func topicOnCluster(t *testing.T, rdb redis.UniversalClient, url string) {
	t.Helper()
	ctx := context.Background()
	name := "cli-topic"
	out := cliRun(t, url, "topic", "create", name, "--partitions", "4")
	assert.Contains(t, out, "topic cli-topic: 4 partitions\n")
	tp, err := streamtx.OpenTopic(ctx, rdb, name)
	require.NoError(t, err)
	now, err := rdb.Time(ctx).Result()
	require.NoError(t, err)
	for p := range 4 {
		s := tp.Stream(p)
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: s, ID: "1-0", Values: []any{"n", p}}).Err())
		require.NoError(t, rdb.XGroupCreate(ctx, s, "billing", "$").Err())
		sp, err := keys.NewSpace(s, "billing")
		require.NoError(t, err)
		require.NoError(t, rdb.HSet(ctx, sp.Lease(), "owner", "billing-a/0123456789abcdef", "epoch", p+1,
			"until", now.Add(time.Hour).UnixMilli()).Err())
	}
	require.NoError(t, rdb.ZAdd(ctx, keys.Members(name, "billing"),
		redis.Z{Score: float64(now.Add(time.Hour).UnixMilli()), Member: "billing-a/0123456789abcdef"}).Err())

	var v topicView
	require.NoError(t, json.Unmarshal([]byte(cliRun(t, url, "topic", "describe", name, "--json")), &v))
	require.Len(t, v.Streams, 4)
	for p, s := range v.Streams {
		require.Len(t, s.Groups, 1)
		assert.Equal(t, "live", s.Groups[0].Lease.State, p)
		assert.EqualValues(t, p+1, s.Groups[0].Lease.Epoch, p)
	}
	require.Len(t, v.Groups, 1)
	require.Len(t, v.Groups[0].Members, 1)
	assert.Equal(t, 4, v.Groups[0].Members[0].Owns)

	out = cliRun(t, url, "trim", name, "--safe")
	assert.Equal(t, 4, strings.Count(out, "trimmed 1 entry below 1-1"), out)
}

// topic describe on the records a running topic consumer writes: one
// instance owns both partitions, and after it stops their leases are free
// and it is no member.
func TestTopicDescribeRunningConsumer(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	name := f.p + "orders"
	tp := f.topic(name, 2)
	// Two keys per partition.
	prod, err := streamtx.NewProducer(f.rdb, streamtx.ProducerConfig{})
	require.NoError(t, err)
	perPartition := make([]int, 2)
	for i := 0; perPartition[0] < 2 || perPartition[1] < 2; i++ {
		key := "key-" + strconv.Itoa(i)
		if p := tp.PartitionOf(key); perPartition[p] < 2 {
			perPartition[p]++
			_, err := prod.PublishKeyed(f.ctx, name, key, map[string]any{"i": i})
			require.NoError(t, err)
		}
	}

	var mu sync.Mutex
	settled := 0
	done := make(chan struct{})
	c, err := streamtx.NewConsumer(f.rdb, streamtx.Config{
		Topic: name, Group: "billing", Consumer: "billing-1", Block: 20 * time.Millisecond, LeaseTTL: time.Minute,
		Observer: streamtx.ObserverFunc(func(e streamtx.Event) {
			if e.Kind != streamtx.EventCommit {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if settled += len(e.IDs); settled == 4 {
				close(done)
			}
		}),
	}, streamtx.HandlerFunc(func(context.Context, *streamtx.Message, *txn.Tx) error { return nil }))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(f.ctx)
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("the topic consumer did not commit the entries within 10s")
	}

	var v topicView
	require.NoError(t, json.Unmarshal([]byte(f.ok("topic", "describe", name, "--json")), &v))
	cancel()
	require.NoError(t, <-errc)
	require.Len(t, v.Groups, 1)
	require.Len(t, v.Groups[0].Members, 1)
	m := v.Groups[0].Members[0]
	assert.Equal(t, "billing-1", m.Consumer)
	assert.Regexp(t, `^billing-1/[0-9a-f]{16}$`, m.ID)
	assert.True(t, m.Live)
	assert.Equal(t, 2, m.Owns)
	for p, s := range v.Streams {
		require.Len(t, s.Groups, 1, p)
		g := s.Groups[0]
		assert.Equal(t, "live", g.Lease.State, p)
		assert.Equal(t, m.ID, g.Lease.Owner, p)
		assert.Equal(t, "billing-1", g.Lease.Consumer, p)
		assert.Positive(t, g.Lease.Epoch, p)
		assert.True(t, g.OnStream, p)
		assert.Zero(t, g.Lag, p)
		assert.Zero(t, g.Pending, p)
	}

	out := f.ok("topic", "describe", name)
	for p := range 2 {
		assert.Regexp(t, `(?m)^`+strconv.Itoa(p)+` +`+regexp.QuoteMeta(tp.Stream(p))+` +2 +billing +- +- +[1-9]\d* +free +0 +0 *$`, out)
	}
	assert.Regexp(t, row("billing", "(none)"), out)
}
