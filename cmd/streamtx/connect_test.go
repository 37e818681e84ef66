package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

func TestParseRedisURL(t *testing.T) {
	t.Parallel()
	single := func(t *testing.T, raw string) *redis.Options {
		t.Helper()
		r, err := parseRedisURL(raw)
		require.NoError(t, err)
		require.NotNil(t, r.single, "one server")
		return r.single
	}
	cluster := func(t *testing.T, raw string) *redis.ClusterOptions {
		t.Helper()
		r, err := parseRedisURL(raw)
		require.NoError(t, err)
		require.NotNil(t, r.cluster, "a cluster")
		return r.cluster
	}
	failover := func(t *testing.T, raw string) *redis.FailoverOptions {
		t.Helper()
		r, err := parseRedisURL(raw)
		require.NoError(t, err)
		require.NotNil(t, r.failover, "Sentinel")
		return r.failover
	}

	t.Run("one server", func(t *testing.T) {
		o := single(t, "redis://u:p@h:7000/2?dial_timeout=3s")
		assert.Equal(t, "h:7000", o.Addr)
		assert.Equal(t, "u", o.Username)
		assert.Equal(t, "p", o.Password)
		assert.Equal(t, 2, o.DB)
		assert.Equal(t, 3*time.Second, o.DialTimeout)
		assert.Nil(t, o.TLSConfig)
		assert.Equal(t, "h:7000", single(t, "redis://h:7000?cluster=false").Addr)
		o = single(t, "rediss://h:7000")
		require.NotNil(t, o.TLSConfig)
		assert.Equal(t, "h", o.TLSConfig.ServerName)
		assert.Equal(t, "/tmp/redis.sock", single(t, "unix:///tmp/redis.sock").Addr)
	})
	t.Run("cluster", func(t *testing.T) {
		o := cluster(t, "redis://u:p@h1:7000,h2:7001,h3,[::1]:7003?cluster=true&addr=h5:7005&dial_timeout=2s")
		assert.Equal(t, []string{"h1:7000", "h2:7001", "h3:6379", "[::1]:7003", "h5:7005"}, o.Addrs)
		assert.Equal(t, "u", o.Username)
		assert.Equal(t, "p", o.Password)
		assert.Equal(t, 2*time.Second, o.DialTimeout)
		assert.Nil(t, o.TLSConfig)
		assert.Equal(t, []string{"h1:7000"}, cluster(t, "redis://h1:7000/?cluster=1").Addrs, "one seed node")
		o = cluster(t, "rediss://h1:7000,h2:7001?cluster=true")
		require.NotNil(t, o.TLSConfig)
		assert.Empty(t, o.TLSConfig.ServerName, "each node is verified against its own address")
	})
	t.Run("sentinel", func(t *testing.T) {
		o := failover(t, "redis-sentinel://u:p@s1:5000,s2,s3:5002/mymaster/3?sentinel_username=su&sentinel_password=sp&dial_timeout=4s")
		assert.Equal(t, []string{"s1:5000", "s2:26379", "s3:5002"}, o.SentinelAddrs)
		assert.Equal(t, "mymaster", o.MasterName)
		assert.Equal(t, 3, o.DB)
		assert.Equal(t, "u", o.Username, "the Redis user")
		assert.Equal(t, "p", o.Password)
		assert.Equal(t, "su", o.SentinelUsername)
		assert.Equal(t, "sp", o.SentinelPassword)
		assert.Equal(t, 4*time.Second, o.DialTimeout)
		assert.Nil(t, o.TLSConfig)
		o = failover(t, "redis-sentinel://s1/mymaster")
		assert.Equal(t, []string{"s1:26379"}, o.SentinelAddrs)
		assert.Zero(t, o.DB)
		assert.Empty(t, o.Password)
		assert.Empty(t, o.SentinelPassword)
		o = failover(t, "rediss-sentinel://s1:5000/mymaster")
		require.NotNil(t, o.TLSConfig)
		assert.Empty(t, o.TLSConfig.ServerName, "the master is verified against its own address")
	})
	t.Run("refused", func(t *testing.T) {
		for raw, want := range map[string]string{
			"redis://h1:7000,h2:7001":                      "cluster=true",
			"redis://h1:7000?addr=h2:7001":                 "cluster=true",
			"redis://h1:7000?cluster=maybe":                "cluster=\"maybe\"",
			"redis://h1:7000/2?cluster=true":               "database 0 only",
			"redis://h1:7000,,h2?cluster=true":             "empty address",
			"redis://h1:7000?cluster=true&nope=1":          "unexpected option: nope",
			"redis-sentinel://s1:26379":                    "master's name",
			"redis-sentinel://s1:26379/m/1/2":              "master's name",
			"redis-sentinel://s1:26379/m?master_name=x":    "takes no master_name",
			"redis-sentinel://s1:26379/m?password=x":       "takes no password",
			"redis-sentinel://s1:26379/m/x":                "database number",
			"redis-sentinel:///m":                          "empty address",
			"http://h:80":                                  "invalid URL scheme",
			"redis://u:hunter2@[::1]:7000,[::1]:7001":      "cluster=true",
			"redis://u:hunter2@h:7000/%zz":                 "invalid URL escape",
			"redis://u:hunter2@h:7000/?sentinel_password=": "unexpected option",
		} {
			_, err := parseRedisURL(raw)
			require.Error(t, err, raw)
			assert.Contains(t, err.Error(), want, raw)
			assert.NotContains(t, err.Error(), "hunter2", raw)
		}
	})
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		"redis://u:hunter2@h:7000/1":                                   "redis://u:xxxxx@h:7000/1",
		"redis://h1:7000,h2:7001?cluster=true":                         "redis://h1:7000,h2:7001?cluster=true",
		"redis-sentinel://:hunter2@s1,s2/m?sentinel_password=hunter2":  "redis-sentinel://:xxxxx@s1,s2/m?sentinel_password=xxxxx",
		"redis://u@h:7000":                                             "redis://u@h:7000",
		"redis://u:hunter2@[::1]:7000,[::1]:7001":                      "redis://u:xxxxx@[::1]:7000,[::1]:7001",
		"redis://u:hunter2@h:7000/%zz":                                 "(not a URL)",
		"nope":                                                         "nope",
		"rediss-sentinel://u:hunter2@s1/m?sentinel_username=su&db_x=1": "rediss-sentinel://u:xxxxx@s1/m?sentinel_username=su&db_x=1",
	} {
		assert.Equal(t, want, redactURL(raw), raw)
	}
}

// A password never shows in the messages about a bad --redis, whatever the
// form.
func TestRedisURLErrorsHidePasswords(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"redis://u:hunter2@127.0.0.1:6379/notadb",
		"redis://u:hunter2@h1:1,h2:2",
		"redis://u:hunter2@[::1]:1,[::1]:2",
		"redis://u:hunter2@h:1/%zz",
		"redis-sentinel://u:hunter2@s1/m?sentinel_password=hunter2&nope=1",
		"redis://u:hunter2@h1:1?cluster=true&nope=1",
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), []string{"--redis", u, "inspect", "s"}, &out, &errb, func(string) string { return "" })
		assert.Equal(t, exitUsage, code, u)
		assert.Contains(t, errb.String(), "--redis", u)
		assert.NotContains(t, errb.String(), "hunter2", u)
	}
	var out, errb bytes.Buffer
	run(context.Background(), []string{"inspect", "--help"}, &out, &errb,
		func(k string) string { return map[string]string{"REDIS_URL": "redis-sentinel://:hunter2@s1/m"}[k] })
	assert.Contains(t, out.String(), "redis-sentinel://:xxxxx@s1/m")
	assert.NotContains(t, out.String(), "hunter2")
}

// cliRun runs the command in-process against redisURL and requires exit
// status 0; it returns stdout.
func cliRun(t *testing.T, redisURL string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"--redis", redisURL}, args...), &out, &errb, func(string) string { return "" })
	require.Equalf(t, exitOK, code, "streamtx --redis %s %s\nstdout:\n%s\nstderr:\n%s", redactURL(redisURL), strings.Join(args, " "), out.String(), errb.String())
	return out.String()
}

// deadLetterOne runs a consumer of group over stream on rdb whose handler
// dead-letters the entry with bad=1 and commits the others, until n entries
// are settled.
func deadLetterOne(t *testing.T, rdb redis.UniversalClient, stream, group string, n int) {
	t.Helper()
	settled := make(chan int, n)
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Stream: stream, Group: group, Consumer: group + "-1", Block: 20 * time.Millisecond,
		Observer: streamtx.ObserverFunc(func(e streamtx.Event) {
			if e.Kind == streamtx.EventCommit || e.Kind == streamtx.EventDeadLetter {
				settled <- len(e.IDs)
			}
		}),
	}, streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		if msg.Values["bad"] == "1" {
			return streamtx.Permanent(errors.New("a bad entry"))
		}
		return nil
	}))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	timeout := time.After(30 * time.Second)
	for got := 0; got < n; {
		select {
		case k := <-settled:
			got += k
		case <-timeout:
			t.Errorf("the consumer settled %d of %d entries in 30s", got, n)
			got = n
		}
	}
	cancel()
	require.NoError(t, <-errc)
}

// The CLI on a Redis Cluster: inspect, dlq list and dlq replay through a
// cluster URL, with every node as a seed and with one seed that does not
// serve the stream's slot.
func TestCLIOnCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, 3, 0)
	rdb := cl.Client(t)
	ctx := context.Background()
	addrs := cl.Addrs()
	// A stream whose slot the first node does not serve: with only that
	// node as the seed, the CLI must follow the cluster's redirections.
	var s string
	for i := 0; s == "" || cl.MasterFor(s) == addrs[0]; i++ {
		s = "cli-orders-" + strconv.Itoa(i)
	}
	for i := 1; i <= 4; i++ {
		values := map[string]any{"n": i}
		if i == 3 {
			values["bad"] = "1"
		}
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: s, ID: strconv.Itoa(i) + "-0", Values: values}).Err())
	}
	deadLetterOne(t, rdb, s, "billing", 4)

	every := "redis://" + strings.Join(addrs, ",") + "?cluster=true"
	oneSeed := "redis://" + addrs[0] + "?cluster=true"
	for _, u := range []string{every, oneSeed} {
		var v inspectView
		require.NoError(t, json.Unmarshal([]byte(cliRun(t, u, "inspect", s, "--json")), &v), u)
		assert.EqualValues(t, 4, v.Length, u)
		require.Len(t, v.Groups, 1, u)
		assert.Equal(t, "billing", v.Groups[0].Name, u)
		assert.EqualValues(t, 1, v.Groups[0].DeadLetters, u)
		assert.Equal(t, map[string]string{"billing-1": "4-0"}, v.Groups[0].Offsets, u)

		var page struct {
			DeadLetters []deadLetterView `json:"dead_letters"`
		}
		require.NoError(t, json.Unmarshal([]byte(cliRun(t, u, "dlq", "list", s, "billing", "--json")), &page), u)
		require.Len(t, page.DeadLetters, 1, u)
		assert.Equal(t, "3-0", page.DeadLetters[0].SourceID, u)
		assert.Equal(t, "1", page.DeadLetters[0].Values["bad"], u)
	}

	// Replay through the single seed: appended back to the source stream,
	// gone from the dead letters.
	out := cliRun(t, oneSeed, "dlq", "replay", s, "billing", "--all")
	assert.Regexp(t, `^replayed \d+-\d+ -> `+regexp.QuoteMeta(s)+` \d+-\d+\n$`, out)
	n, err := rdb.XLen(ctx, s).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 5, n)
	assert.Equal(t, "no dead letters\n", cliRun(t, every, "dlq", "list", s, "billing"))
	assert.Contains(t, cliRun(t, oneSeed, "inspect", s), "length         5")

	topicOnCluster(t, rdb, oneSeed)
}

// The CLI through Redis Sentinel: the URL names only the sentinels and the
// master's name.
func TestCLIThroughSentinel(t *testing.T) {
	t.Parallel()
	sn := redistest.StartSentinel(t, 1)
	rdb := sn.FailoverClient(t)
	ctx := context.Background()
	s := "cli-orders"
	for i := 1; i <= 3; i++ {
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: s, ID: strconv.Itoa(i) + "-0", Values: []any{"n", i}}).Err())
	}
	require.NoError(t, rdb.XGroupCreate(ctx, s, "billing", "0").Err())
	u := "redis-sentinel://" + strings.Join(sn.SentinelAddrs(), ",") + "/" + redistest.MasterName
	for _, addr := range sn.SentinelAddrs() {
		assert.NotEqual(t, sn.MasterAddr(), addr)
	}

	var v inspectView
	require.NoError(t, json.Unmarshal([]byte(cliRun(t, u, "inspect", s, "--json")), &v))
	assert.EqualValues(t, 3, v.Length)
	require.Len(t, v.Groups, 1)
	assert.Equal(t, "billing", v.Groups[0].Name)
	assert.EqualValues(t, 3, v.Groups[0].Lag)
	// One sentinel is enough to find the master.
	assert.Contains(t, cliRun(t, "redis-sentinel://"+sn.SentinelAddrs()[1]+"/"+redistest.MasterName, "inspect", s), "length         3")
}
