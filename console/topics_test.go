package console

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
)

// topic creates topic name with partitions partitions; partitions 0 and 1
// get entries and the group billing (behind on both, with entries pending
// on 0), partition 2 and up no stream. billing's leases: 0 held by owner
// (live), 1 held by another instance whose lease expired, the rest never
// held; its members: owner (live) and the expired one.
func (f *fixture) topic(name string, partitions int, owner string) (*streamtx.Topic, string) {
	f.t.Helper()
	top, err := streamtx.CreateTopic(f.ctx, f.rdb, name, streamtx.TopicConfig{Partitions: partitions})
	require.NoError(f.t, err)
	for p := range 2 {
		f.addEntries(top.Stream(p), 10+p)
		f.group(top.Stream(p), "billing", "0")
	}
	f.read(top.Stream(0), "billing", "b1", 4)
	now, err := f.rdb.Time(f.ctx).Result()
	require.NoError(f.t, err)
	hour, ago := now.Add(time.Hour).UnixMilli(), now.Add(-time.Minute).UnixMilli()
	expired := "b2/fedcba9876543210"
	for p, fields := range [][]any{
		{"owner", owner, "epoch", 7, "until", hour},
		{"owner", expired, "epoch", 3, "until", ago},
	} {
		sp, err := keys.NewSpace(top.Stream(p), "billing")
		require.NoError(f.t, err)
		require.NoError(f.t, f.rdb.HSet(f.ctx, sp.Lease(), fields...).Err())
	}
	require.NoError(f.t, f.rdb.ZAdd(f.ctx, keys.Members(name, "billing"),
		redis.Z{Score: float64(hour), Member: owner}, redis.Z{Score: float64(ago), Member: expired}).Err())
	return top, expired
}

func TestTopicOverviewAndPage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	name := f.p + "orders"
	owner := "eu/b1/0123456789abcdef"
	top, expired := f.topic(name, 3, owner)
	plain := f.p + "plain"
	f.addEntries(plain, 2)
	_, b := f.console(Options{})

	code, body := b.get("/")
	require.Equal(t, http.StatusOK, code, body)
	var lag, pending int64
	for p := range 2 {
		g := f.inspect(top.Stream(p)).Groups[0]
		lag, pending = lag+g.Lag, pending+g.Pending
	}
	assert.Equal(t, []map[string]string{{
		"topic": name, "group": "billing", "partitions": "3",
		"lag": strconv.FormatInt(lag, 10), "pending": strconv.FormatInt(pending, 10),
		"owned": "1", "unowned": "2", "dead": "0",
	}}, rows(body, "topic"))
	assert.Equal(t, int64(17), lag) // 10-4 and 11
	assert.Equal(t, int64(4), pending)
	assert.Contains(t, body, "2 of 3 partitions unowned")
	assert.Contains(t, body, `href="/topic?name=`+url.QueryEscape(name)+`"`)
	// The partition streams are on the topic's row, not stream rows.
	streams := rows(body, "row")
	require.Len(t, streams, 1, body)
	assert.Equal(t, plain, streams[0]["stream"])

	code, body = b.get("/topic?name=" + url.QueryEscape(name))
	require.Equal(t, http.StatusOK, code, body)
	parts := rows(body, "part")
	require.Len(t, parts, 3, body)
	for p, want := range []struct{ consumer, owner, epoch, lease string }{
		{"eu/b1", owner, "7", ""}, // "59m59s left" or so
		{"b2", expired, "3", "expired"},
		{"", "", "0", "free"},
	} {
		r := parts[p]
		assert.Equal(t, top.Stream(p), r["stream"], p)
		assert.Equal(t, want.consumer, r["consumer"], p)
		assert.Equal(t, want.owner, r["owner"], p)
		assert.Equal(t, want.epoch, r["epoch"], p)
		if want.lease != "" {
			assert.Equal(t, want.lease, r["lease"], p)
		} else {
			assert.True(t, strings.HasSuffix(r["lease"], " left") && strings.HasPrefix(r["lease"], "59m"), r["lease"])
		}
		if p < 2 {
			g := f.inspect(top.Stream(p)).Groups[0]
			assert.Equal(t, strconv.FormatInt(g.Lag, 10), r["lag"], p)
			assert.Equal(t, strconv.FormatInt(g.Pending, 10), r["pending"], p)
		}
	}
	assert.Equal(t, "4", parts[0]["pending"])
	assert.Contains(t, body, "(no stream yet)")
	assert.Equal(t, []map[string]string{
		{"group": "billing", "id": expired, "consumer": "b2", "live": "false"},
		{"group": "billing", "id": owner, "consumer": "eu/b1", "live": "true"},
	}, rows(body, "member"))

	// A partition links to its group page, which leads back to the topic.
	g := url.Values{"stream": {top.Stream(0)}, "group": {"billing"}}
	assert.Contains(t, body, `href="/group?`+strings.ReplaceAll(g.Encode(), "&", "&amp;")+`"`)
	code, body = b.get("/group?" + g.Encode())
	require.Equal(t, http.StatusOK, code, body)
	assert.Len(t, rows(body, "pe"), 4)
	assert.Contains(t, body, `href="/topic?name=`+url.QueryEscape(name)+`"`)

	code, _ = b.get("/topic?name=" + url.QueryEscape(f.p+"nosuch"))
	assert.Equal(t, http.StatusNotFound, code)
	code, _ = b.get("/topic?name=")
	assert.Equal(t, http.StatusBadRequest, code)
	code, _ = b.get("/topic?name=a%0Ab")
	assert.Equal(t, http.StatusBadRequest, code)
}

func TestTopicConfigured(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	name := f.p + "orders"
	f.topic(name, 2, "b1/0123456789abcdef")
	f.topic(f.p+"other", 2, "b1/0123456789abcdef")
	f.addEntries(f.p+"plain", 1)
	_, b := f.console(Options{Topics: []string{name, f.p + "missing"}})
	code, body := b.get("/")
	require.Equal(t, http.StatusOK, code, body)
	got := rows(body, "topic")
	require.Len(t, got, 2, body)
	assert.Equal(t, f.p+"missing", got[0]["topic"]) // failed inspections first
	assert.Contains(t, body, "topic not found")
	assert.Equal(t, name, got[1]["topic"])
	assert.Equal(t, "2", got[1]["partitions"])
	assert.NotContains(t, body, f.p+"other")
	assert.NotContains(t, body, f.p+"plain")
	assert.Empty(t, rows(body, "row"))
	code, _ = b.get("/topic?name=" + url.QueryEscape(f.p+"missing"))
	assert.Equal(t, http.StatusBadGateway, code)
}

// Names from Redis (topic, group, owner) are escaped on every page.
func TestTopicNamesAreEscaped(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	evil := `<script>alert(1)</script>`
	name := f.p + evil
	top, err := streamtx.CreateTopic(f.ctx, f.rdb, name, streamtx.TopicConfig{Partitions: 1})
	require.NoError(t, err)
	f.addEntries(top.Stream(0), 1)
	f.group(top.Stream(0), evil, "0")
	sp, err := keys.NewSpace(top.Stream(0), evil)
	require.NoError(t, err)
	require.NoError(t, f.rdb.HSet(f.ctx, sp.Lease(), "owner", evil+"/0123456789abcdef", "epoch", 1, "until", 1).Err())
	_, b := f.console(Options{})
	for _, p := range []string{"/", "/topic?name=" + url.QueryEscape(name),
		"/group?" + url.Values{"stream": {top.Stream(0)}, "group": {evil}}.Encode()} {
		code, body := b.get(p)
		require.Equal(t, http.StatusOK, code, "%s: %s", p, body)
		assert.NotContains(t, body, evil, p)
		assert.Contains(t, body, "&lt;script&gt;alert(1)&lt;/script&gt;", p)
	}
	_, body := b.get("/")
	assert.Equal(t, name, rows(body, "topic")[0]["topic"])
	_, body = b.get("/topic?name=" + url.QueryEscape(name))
	assert.Equal(t, evil, rows(body, "part")[0]["consumer"])
	assert.Equal(t, "expired", rows(body, "part")[0]["lease"])
}

// TestSamplerOnlyReads checks the commands the sampler sends for streams
// and topics: reads only, and topics found by their metadata records.
func TestSamplerOnlyReads(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.orders()
	f.topic(f.p+"topic", 3, "b1/0123456789abcdef")
	con, b := f.console(Options{})
	code, body := b.get("/")
	require.Equal(t, http.StatusOK, code, body)
	require.Len(t, rows(body, "topic"), 1, body)
	con.Close()
	allowed := []string{
		"HELLO", "CLIENT", // connection handshake
		"SCAN",                             // discovery
		"GET", "TIME", "ZRANGE", "HGETALL", // InspectTopic
		"XINFO STREAM", "XINFO GROUPS", "XINFO CONSUMERS", "XLEN", "XPENDING", // Inspect
	}
	var scans []string
	for _, c := range f.rec.take() {
		assert.Contains(t, allowed, name(c), "%v", c)
		if name(c) == "SCAN" {
			var args []string
			for _, a := range c[2:] {
				args = append(args, fmt.Sprint(a))
			}
			scans = append(scans, strings.Join(args, " "))
		}
	}
	assert.Contains(t, scans, "match stx:{"+f.p+"*}:topic count 1000 type string")
}
