package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

// orders builds a stream with two groups: "billing" behind with pending
// entries (two consumers), "audit" with dead letters.
func (f *fixture) orders() (stream string, pendingIDs []string) {
	stream = f.p + "orders"
	f.addEntries(stream, 30)
	f.group(stream, "billing", "0")
	f.group(stream, "audit", "0")
	pendingIDs = append(f.read(stream, "billing", "b1", 5), f.read(stream, "billing", "b2", 3)...)
	ids := f.read(stream, "audit", "a1", 30)
	require.NoError(f.t, f.rdb.XAck(f.ctx, stream, "audit", ids...).Err())
	f.deadLetters(stream, "audit", 3, func(i int) string { return fmt.Sprintf("boom %d: bad amount", i) })
	return stream, pendingIDs
}

func TestOverviewShowsInspect(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	stream, _ := f.orders()
	quiet := f.p + "quiet"
	f.addEntries(quiet, 2)
	f.group(quiet, "g", "$")
	lonely := f.p + "lonely"
	f.addEntries(lonely, 4)
	_, b := f.console(Options{})

	code, body := b.get("/")
	require.Equal(t, http.StatusOK, code, body)
	got := rows(body, "row")
	require.Len(t, got, 4, body)
	// What needs attention first: dead letters, then behind, then the rest.
	assert.Equal(t, []string{stream + "/audit", stream + "/billing", quiet + "/g", lonely + "/"},
		[]string{got[0]["stream"] + "/" + got[0]["group"], got[1]["stream"] + "/" + got[1]["group"],
			got[2]["stream"] + "/" + got[2]["group"], got[3]["stream"] + "/" + got[3]["group"]})
	info := f.inspect(stream)
	for _, r := range got[:2] {
		var g streamtx.GroupInfo
		for _, x := range info.Groups {
			if x.Name == r["group"] {
				g = x
			}
		}
		assert.Equal(t, strconv.FormatInt(info.Length, 10), r["length"])
		assert.Equal(t, strconv.FormatInt(g.Lag, 10), r["lag"], r["group"])
		assert.Equal(t, strconv.FormatInt(g.Pending, 10), r["pending"], r["group"])
		assert.Equal(t, strconv.FormatInt(g.DeadLetters, 10), r["dead"], r["group"])
		if g.OldestPending != nil {
			assert.Equal(t, g.OldestPending.ID, r["oldest"])
		}
	}
	assert.Equal(t, "22", got[1]["lag"])
	assert.Equal(t, "8", got[1]["pending"])
	assert.Equal(t, "3", got[0]["dead"])
	assert.Contains(t, body, "3 dead letters")
	assert.Contains(t, body, `<svg class="chart"`)
	assert.Equal(t, "4", got[3]["length"])
	assert.Contains(t, body, "no groups")
	// No dead-letter stream (under stx:) is listed as a stream.
	assert.NotContains(t, body, `data-stream="stx:`)
}

func TestOverviewConfiguredStreams(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	stream, _ := f.orders()
	f.addEntries(f.p+"other", 1)
	_, b := f.console(Options{Streams: []string{stream, f.p + "missing"}, RootPath: "/admin/stx"})
	code, body := b.get("/")
	require.Equal(t, http.StatusOK, code, body)
	got := rows(body, "row")
	require.Len(t, got, 3, body) // two groups, and the missing stream's error
	assert.Equal(t, f.p+"missing", got[0]["stream"])
	assert.Contains(t, body, "stream not found")
	assert.NotContains(t, body, f.p+"other")
	assert.Contains(t, body, `href="/admin/stx/group?group=audit&amp;stream=`)
	assert.Contains(t, body, `href="/admin/stx/static/style.css"`)
	code, _ = b.get("/static/style.css")
	assert.Equal(t, http.StatusOK, code)
}

func TestGroupPage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	stream, pending := f.orders()
	_, b := f.console(Options{PageSize: 5})
	info := f.inspect(stream)

	q := url.Values{"stream": {stream}, "group": {"billing"}}
	code, body := b.get("/group?" + q.Encode())
	require.Equal(t, http.StatusOK, code, body)
	pe := rows(body, "pe")
	require.Len(t, pe, 5)
	for i, r := range pe {
		assert.Equal(t, pending[i], r["id"])
		assert.Equal(t, "b1", r["consumer"])
		assert.Equal(t, "1", r["deliveries"])
	}
	co := rows(body, "co")
	require.Len(t, co, 2)
	assert.Equal(t, map[string]string{"name": "b1", "pending": "5"}, co[0])
	assert.Equal(t, map[string]string{"name": "b2", "pending": "3"}, co[1])
	// The safe trim point and what holds it back, as Inspect says.
	assert.Equal(t, "billing", info.SafeTrimHeldBy)
	assert.Contains(t, body, `<code class="trim-point">`+info.SafeTrimPoint+`</code>`)
	assert.Contains(t, body, `<b class="held-by">billing</b> (this group)`)
	assert.Contains(t, body, "its oldest pending entry "+pending[0]+", held by consumer b1")

	// The next page starts after the first five.
	require.Contains(t, body, "next page")
	q.Set("from", pending[5])
	code, body = b.get("/group?" + q.Encode())
	require.Equal(t, http.StatusOK, code)
	pe = rows(body, "pe")
	require.Len(t, pe, 3)
	assert.Equal(t, pending[5], pe[0]["id"])
	assert.Equal(t, "b2", pe[0]["consumer"])
	assert.NotContains(t, body, "next page")

	// audit has nothing pending: its trim point is after its last delivery.
	code, body = b.get("/group?" + url.Values{"stream": {stream}, "group": {"audit"}}.Encode())
	require.Equal(t, http.StatusOK, code)
	assert.Empty(t, rows(body, "pe"))
	assert.Contains(t, body, "held back by group <b class=\"held-by\">billing</b>.")
	assert.Contains(t, body, "it has not read further (lag 0)")

	for _, bad := range []url.Values{
		{"stream": {stream}, "group": {"nosuch"}},
		{"stream": {f.p + "nosuch"}, "group": {"billing"}},
	} {
		code, _ = b.get("/group?" + bad.Encode())
		assert.Equal(t, http.StatusNotFound, code, bad)
	}
	code, _ = b.get("/group?" + url.Values{"stream": {stream}, "group": {"a\nb"}}.Encode())
	assert.Equal(t, http.StatusBadRequest, code)
	code, _ = b.get("/group?" + url.Values{"stream": {stream}, "group": {"billing"}, "from": {"0-0 +"}}.Encode())
	assert.Equal(t, http.StatusBadRequest, code)
}

func TestDeadLetterPages(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	stream, _ := f.orders()
	dlq, _ := streamtx.DeadLetterStreamFor(stream, "audit")
	// An envelope that failed.
	type Order struct{ ID, Amount int }
	fields, err := streamtx.Envelope[Order]{ID: "e1", Type: "order.placed", Source: "/shop", Subject: "o-7",
		Data: Order{7, 1250}}.Fields()
	require.NoError(t, err)
	values := []any{"stx.stream", stream, "stx.id", "901-1", "stx.group", "audit", "stx.consumer", "a1",
		"stx.error", "schema <b>v9</b> unknown", "stx.deliveries", "1", "stx.time", "1767225600000"}
	for k, v := range fields {
		values = append(values, k, v)
	}
	require.NoError(t, f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: dlq, ID: "2000-1", Values: values}).Err())
	_, b := f.console(Options{})

	base := url.Values{"stream": {stream}, "group": {"audit"}}
	code, body := b.get("/dlq?" + base.Encode())
	require.Equal(t, http.StatusOK, code, body)
	dl := rows(body, "dl")
	require.Len(t, dl, 4)
	assert.Equal(t, []string{"1000-1", "1000-2", "1000-3", "2000-1"}, []string{dl[0]["id"], dl[1]["id"], dl[2]["id"], dl[3]["id"]})
	assert.Contains(t, body, "boom 1: bad amount")
	assert.Contains(t, body, "schema &lt;b&gt;v9&lt;/b&gt; unknown") // escaped
	assert.Contains(t, body, "2026-01-02 03:04:05.000Z")

	q := url.Values{"stream": {stream}, "group": {"audit"}, "q": {"BOOM 2"}}
	code, body = b.get("/dlq?" + q.Encode())
	require.Equal(t, http.StatusOK, code)
	dl = rows(body, "dl")
	require.Len(t, dl, 1)
	assert.Equal(t, "1000-3", dl[0]["id"])

	show := url.Values{"stream": {stream}, "group": {"audit"}, "id": {"2000-1"}}
	code, body = b.get("/dlq/show?" + show.Encode())
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, "<h2>Envelope</h2>")
	assert.Contains(t, body, "order.placed")
	assert.Contains(t, body, "o-7")
	assert.Contains(t, body, "&#34;Amount&#34;: 1250")
	assert.Contains(t, body, "901-1")

	show.Set("id", "1000-1")
	code, body = b.get("/dlq/show?" + show.Encode())
	require.Equal(t, http.StatusOK, code)
	assert.NotContains(t, body, "<h2>Envelope</h2>")
	assert.Contains(t, body, "<th>order</th><td><pre>0</pre>")

	show.Set("id", "1000-99")
	code, _ = b.get("/dlq/show?" + show.Encode())
	assert.Equal(t, http.StatusNotFound, code)
}

// twin builds the same dead letters under two prefixes: one for the
// console, one for the CLI.
func twin(t *testing.T, f *fixture) (a, b string) {
	a, b = f.p+"a:orders", f.p+"b:orders"
	for _, s := range []string{a, b} {
		f.addEntries(s, 3)
		f.group(s, "audit", "0")
		f.group(s, "other", "$")
		f.deadLetters(s, "audit", 5, func(i int) string { return fmt.Sprintf("error %d", i) })
	}
	return a, b
}

// view is what a stream and its group's dead letters mean, with the prefix
// and the IDs Redis generated during the test replaced.
func view(t *testing.T, f *fixture, stream string, since string) []string {
	dlq, _ := streamtx.DeadLetterStreamFor(stream, "audit")
	var out []string
	for label, k := range map[string]string{"stream": stream, "dlq": dlq} {
		ms, err := f.rdb.XRange(f.ctx, k, "-", "+").Result()
		require.NoError(t, err)
		for _, m := range ms {
			id := m.ID
			if !lessID(id, since) {
				id = "new"
			}
			keys := make([]string, 0, len(m.Values))
			for k := range m.Values {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			line := label + " " + id
			for _, k := range keys {
				line += " " + k + "=" + strings.ReplaceAll(fmt.Sprint(m.Values[k]), stream, "S")
			}
			out = append(out, line)
		}
	}
	slices.Sort(out)
	for _, g := range []string{"audit", "other"} {
		gs, err := f.rdb.XInfoGroups(f.ctx, stream).Result()
		require.NoError(t, err)
		for _, x := range gs {
			if x.Name == g {
				out = append(out, fmt.Sprintf("group %s pending=%d", g, x.Pending))
			}
		}
	}
	return out
}

func lessID(a, b string) bool {
	pa, pb := strings.SplitN(a, "-", 2), strings.SplitN(b, "-", 2)
	ma, _ := strconv.ParseUint(pa[0], 10, 64)
	mb, _ := strconv.ParseUint(pb[0], 10, 64)
	if ma != mb {
		return ma < mb
	}
	sa, _ := strconv.ParseUint(pa[1], 10, 64)
	sb, _ := strconv.ParseUint(pb[1], 10, 64)
	return sa < sb
}

var (
	cliOnce sync.Once
	cliBin  string
	cliErr  error
)

// cli builds the streamtx command once per test binary.
func cli(t *testing.T) string {
	t.Helper()
	cliOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		dir, err := os.MkdirTemp("", "console-cli-")
		if err != nil {
			cliErr = err
			return
		}
		cliBin = filepath.Join(dir, "streamtx")
		out, err := exec.Command(goTool, "build", "-o", cliBin, "../cmd/streamtx").CombinedOutput()
		if err != nil {
			cliErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	require.NoError(t, cliErr)
	return cliBin
}

func runCLI(t *testing.T, f *fixture, args ...string) string {
	t.Helper()
	cmd := exec.Command(cli(t), args...)
	cmd.Env = append(os.Environ(), "REDIS_URL=redis://"+f.rdb.Options().Addr)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "streamtx %v: %s", args, out)
	return string(out)
}

func TestReplayAndPurgeLikeTheCLI(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, bs := twin(t, f)
	now := strconv.FormatInt(time.Now().Add(-time.Second).UnixMilli(), 10) + "-0"
	_, b := f.console(Options{})
	require.Equal(t, view(t, f, a, now), view(t, f, bs, now))

	steps := []struct {
		action string
		ids    []string
		cli    []string
	}{
		{"replay", []string{"1000-2", "1000-4"}, []string{"dlq", "replay", bs, "audit", "1000-2", "1000-4"}},
		{"purge", []string{"1000-1"}, []string{"dlq", "purge", bs, "audit", "1000-1"}},
		{"replay-all", nil, []string{"dlq", "replay", bs, "audit", "--all"}},
	}
	for _, s := range steps {
		code, body, h := b.confirmAndPost(a, "audit", s.action, s.ids...)
		require.Equal(t, http.StatusSeeOther, code, body)
		runCLI(t, f, s.cli...)
		assert.Equal(t, view(t, f, bs, now), view(t, f, a, now), s.action)
		code, body = b.get(strings.TrimPrefix(h.Get("Location"), ""))
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, body, `<p class="done">`)
	}
	// Everything replayed once: 3 + 4 entries, nothing left in the dead
	// letters, and only audit sees the replayed entries.
	v := view(t, f, a, now)
	assert.Len(t, slices.DeleteFunc(slices.Clone(v), func(s string) bool { return !strings.Contains(s, "stx.replay.group=audit") }), 4)
	assert.Equal(t, int64(7), f.rdb.XLen(f.ctx, a).Val())
	dlq, _ := streamtx.DeadLetterStreamFor(a, "audit")
	assert.Equal(t, int64(0), f.rdb.XLen(f.ctx, dlq).Val())

	// purge-all, against the CLI's purge --all --yes.
	for _, s := range []string{a, bs} {
		f.deadLetters(s, "audit", 3, func(int) string { return "again" })
	}
	code, body, _ := b.confirmAndPost(a, "audit", "purge-all")
	require.Equal(t, http.StatusSeeOther, code, body)
	runCLI(t, f, "dlq", "purge", bs, "audit", "--all", "--yes")
	assert.Equal(t, view(t, f, bs, now), view(t, f, a, now))
	assert.Equal(t, int64(0), f.rdb.XLen(f.ctx, dlq).Val())

	// The overview shows the change at once (no wait for the sampler).
	_, body = b.get("/")
	for _, r := range rows(body, "row") {
		if r["stream"] == a && r["group"] == "audit" {
			assert.Equal(t, "0", r["dead"])
			assert.Equal(t, "7", r["length"])
		}
	}
}

func TestRefusedPostsChangeNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	stream, _ := f.orders()
	snap := func() redistest.Snapshot { return redistest.TakeSnapshot(t, f.rdb, f.p+"*", "stx:{"+f.p+"*") }
	before := snap()
	form := url.Values{"stream": {stream}, "group": {"audit"}, "all": {"1"}}

	t.Run("no token", func(t *testing.T) {
		_, b := f.console(Options{})
		code, _, _ := b.post("/dlq/replay", form)
		assert.Equal(t, http.StatusForbidden, code)
		// A cookie but a forged token, and a token from another console.
		b.get("/dlq/confirm?" + url.Values{"stream": {stream}, "group": {"audit"}, "action": {"purge-all"}}.Encode())
		form := url.Values{"stream": {stream}, "group": {"audit"}, "all": {"1"}, "csrf": {"AAAA"}}
		code, _, _ = b.post("/dlq/purge", form)
		assert.Equal(t, http.StatusForbidden, code)
		_, other := f.console(Options{})
		_, page := other.get("/dlq/confirm?" + url.Values{"stream": {stream}, "group": {"audit"}, "action": {"purge-all"}}.Encode())
		form.Set("csrf", csrfRe.FindStringSubmatch(page)[1])
		code, _, _ = b.post("/dlq/purge", form)
		assert.Equal(t, http.StatusForbidden, code)
		assert.Empty(t, before.Diff(snap()))
	})
	t.Run("other origin", func(t *testing.T) {
		_, b := f.console(Options{})
		b.header = http.Header{"Origin": {"http://evil.example"}}
		code, _, _ := b.confirmAndPost(stream, "audit", "purge-all")
		assert.Equal(t, http.StatusForbidden, code)
		assert.Empty(t, before.Diff(snap()))
	})
	t.Run("read-only", func(t *testing.T) {
		_, b := f.console(Options{ReadOnly: true})
		_, body := b.get("/dlq/confirm?" + url.Values{"stream": {stream}, "group": {"audit"}, "action": {"replay-all"}}.Encode())
		assert.Contains(t, body, "read-only")
		assert.NotContains(t, body, `name="csrf"`)
		code, _, _ := b.post("/dlq/replay", form)
		assert.Equal(t, http.StatusForbidden, code)
		code, _, _ = b.post("/dlq/purge", form)
		assert.Equal(t, http.StatusForbidden, code)
		assert.Empty(t, before.Diff(snap()))
	})
	t.Run("bearer token", func(t *testing.T) {
		_, b := f.console(Options{BearerToken: "s3cret"})
		code, _ := b.get("/")
		assert.Equal(t, http.StatusUnauthorized, code)
		b.header = http.Header{"Authorization": {"Bearer wrong"}}
		code, _ = b.get("/")
		assert.Equal(t, http.StatusUnauthorized, code)
		code, _, _ = b.post("/dlq/purge", form)
		assert.Equal(t, http.StatusUnauthorized, code)
		// With the token: pages work, and a POST still needs its CSRF token.
		b.header = http.Header{"Authorization": {"Bearer s3cret"}}
		code, _ = b.get("/")
		assert.Equal(t, http.StatusOK, code)
		code, _, _ = b.post("/dlq/purge", form)
		assert.Equal(t, http.StatusForbidden, code)
		// A CSRF token obtained with the bearer token is useless without it.
		_, page := b.get("/dlq/confirm?" + url.Values{"stream": {stream}, "group": {"audit"}, "action": {"purge-all"}}.Encode())
		b.header = nil
		form := url.Values{"stream": {stream}, "group": {"audit"}, "all": {"1"}, "csrf": {csrfRe.FindStringSubmatch(page)[1]}}
		code, _, _ = b.post("/dlq/purge", form)
		assert.Equal(t, http.StatusUnauthorized, code)
		assert.Empty(t, before.Diff(snap()))
	})
	t.Run("basic auth", func(t *testing.T) {
		_, b := f.console(Options{Username: "ops", Password: "pw"})
		code, body, h := b.post("/dlq/purge", form)
		assert.Equal(t, http.StatusUnauthorized, code, body)
		assert.Contains(t, h.Get("WWW-Authenticate"), "Basic")
		assert.Empty(t, before.Diff(snap()))
	})
	t.Run("bad input", func(t *testing.T) {
		_, b := f.console(Options{})
		for _, ids := range [][]string{nil, {"1000-1 +"}, {"nope"}} {
			code, _, _ := b.confirmAndPostRaw(stream, stream, "audit", "replay", ids)
			assert.Equal(t, http.StatusBadRequest, code, ids)
		}
		code, _, _ := b.confirmAndPostRaw(stream, f.p+"nosuch", "audit", "replay", []string{"1000-1"})
		assert.Equal(t, http.StatusNotFound, code)
		assert.Empty(t, before.Diff(snap()))
	})
	// And with a valid token, the same POST does change Redis.
	_, b := f.console(Options{})
	code, _, _ := b.confirmAndPost(stream, "audit", "purge-all")
	assert.Equal(t, http.StatusSeeOther, code)
	assert.NotEmpty(t, before.Diff(snap()))
}

// confirmAndPostRaw posts ids for stream and group with a valid CSRF token
// (a token belongs to the browser's cookie, not to a stream), taken from
// the confirmation page of a valid request.
func (b *browser) confirmAndPostRaw(valid, stream, group, action string, ids []string) (int, string, http.Header) {
	b.t.Helper()
	code, body := b.get("/dlq/confirm?" + url.Values{"stream": {valid}, "group": {"audit"}, "action": {"replay-all"}}.Encode())
	require.Equal(b.t, http.StatusOK, code)
	m := csrfRe.FindStringSubmatch(body)
	require.NotNil(b.t, m)
	return b.post("/dlq/"+action, url.Values{"stream": {stream}, "group": {group}, "id": ids, "csrf": {m[1]}})
}

// TestLargeListsReadOnePage: with 10,000 pending entries and 10,000 dead
// letters, a page reads one page from Redis.
func TestLargeListsReadOnePage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	stream := f.p + "big"
	f.addEntries(stream, 10_000)
	f.group(stream, "g", "0")
	f.read(stream, "g", "c1", 10_000)
	f.deadLetters(stream, "g", 10_000, func(i int) string {
		if i == 9_990 {
			return "needle"
		}
		return fmt.Sprintf("error %d", i)
	})
	con, b := f.console(Options{})
	_, _ = b.get("/") // the first snapshot is there
	con.Close()       // no more sampling: what follows is the requests'
	f.rec.take()

	q := url.Values{"stream": {stream}, "group": {"g"}}
	code, body := b.get("/group?" + q.Encode())
	require.Equal(t, http.StatusOK, code)
	assert.Len(t, rows(body, "pe"), defaultPageSize)
	assert.Contains(t, body, "next page")
	assert.Contains(t, body, `<b class="pending">10,000</b>`)
	cmds := f.rec.take()
	assert.Equal(t, []string{"TIME", "XPENDING"}, names(cmds))
	assert.Equal(t, fmt.Sprint(defaultPageSize+1), fmt.Sprint(cmds[1][len(cmds[1])-1]), "XPENDING count: %v", cmds[1])

	q.Set("n", "100")
	code, body = b.get("/dlq?" + q.Encode())
	require.Equal(t, http.StatusOK, code)
	assert.Len(t, rows(body, "dl"), 100)
	assert.Contains(t, body, `<b class="dead">10,000</b>`)
	cmds = f.rec.take()
	assert.Equal(t, []string{"XRANGE"}, names(cmds))
	assert.Equal(t, "101", fmt.Sprint(cmds[0][len(cmds[0])-1]), "XRANGE count: %v", cmds[0])

	// A filter reads at most 1,000 dead letters per page, then offers to
	// go on; the match near the end is found after ten pages.
	q.Set("q", "needle")
	var found bool
	for i := 0; i < 11 && !found; i++ {
		code, body = b.get("/dlq?" + q.Encode())
		require.Equal(t, http.StatusOK, code)
		read := 0
		for _, c := range f.rec.take() {
			require.Equal(t, "XRANGE", name(c))
			n, _ := strconv.Atoi(fmt.Sprint(c[len(c)-1]))
			read += n - 1
		}
		assert.LessOrEqual(t, read, filterScanLimit)
		if dl := rows(body, "dl"); len(dl) > 0 {
			assert.Equal(t, "1000-9991", dl[0]["id"])
			found = true
			break
		}
		require.Contains(t, body, "at most 1,000 per page")
		next := nextFrom(t, body)
		q.Set("from", next)
	}
	assert.True(t, found)
}

func names(cmds [][]any) []string {
	var out []string
	for _, c := range cmds {
		out = append(out, name(c))
	}
	return out
}

func nextFrom(t *testing.T, body string) string {
	t.Helper()
	i := strings.Index(body, `class="next" href="`)
	require.True(t, i >= 0, "no next link")
	href := body[i+len(`class="next" href="`):]
	href = htmlUnescape(href[:strings.IndexByte(href, '"')])
	u, err := url.Parse(href)
	require.NoError(t, err)
	return u.Query().Get("from")
}

// TestRequestsSendOnlyWhatPagesNeed walks every page and action and checks
// the commands sent to Redis.
func TestRequestsSendOnlyWhatPagesNeed(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	stream, _ := f.orders()
	top, _ := f.topic(f.p+"topic", 3, "b1/0123456789abcdef")
	con, b := f.console(Options{})
	_, _ = b.get("/")
	con.Close()
	f.rec.take()
	g := url.Values{"stream": {stream}, "group": {"audit"}}
	tg := url.Values{"stream": {top.Stream(0)}, "group": {"billing"}}
	for _, p := range []string{"/", "/group?" + g.Encode(), "/dlq?" + g.Encode(), "/dlq?q=x&" + g.Encode(),
		"/dlq/show?id=1000-1&" + g.Encode(), "/state?name=totals&" + g.Encode(), "/state?name=stock&key=sku1&" + g.Encode(),
		"/topic?name=" + url.QueryEscape(top.Name()), "/group?" + tg.Encode(), "/dlq?" + tg.Encode()} {
		code, body := b.get(p)
		require.Equal(t, http.StatusOK, code, "%s: %s", p, body)
	}
	b.confirmAndPost(stream, "audit", "replay", "1000-1")
	b.confirmAndPost(stream, "audit", "purge", "1000-2")
	b.confirmAndPost(stream, "audit", "replay-all")
	allowed := []string{
		"TIME", "XPENDING", "XRANGE", "GET", // pages; the topic page sends nothing
		"EVALSHA", "EVAL", "XDEL", "XTRIM", // replay and purge, as streamtx does them
		"XINFO STREAM", "XINFO GROUPS", "XINFO CONSUMERS", "HGETALL", "XLEN", // Inspect after an action
	}
	for _, c := range f.rec.take() {
		assert.Contains(t, allowed, name(c), "%v", c)
	}
}

func TestStatePage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	stream := f.p + "orders"
	f.addEntries(stream, 4)
	type Totals struct {
		Orders int
		Tags   []string
	}
	h := streamtx.Stateful("totals", func(_ context.Context, _ *streamtx.Message, s *Totals, _ *txn.Tx) error {
		s.Orders++
		s.Tags = append(s.Tags, "t"+strconv.Itoa(s.Orders))
		return nil
	})
	c, err := streamtx.NewConsumer(f.rdb, streamtx.Config{Stream: stream, Group: "billing", Consumer: "c1",
		Block: 50 * time.Millisecond}, h)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	require.Eventually(t, func() bool {
		s, err := streamtx.ReadState[Totals](f.ctx, f.rdb, stream, "billing", "totals")
		return err == nil && s.Value.Orders == 4
	}, 10*time.Second, 20*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	snap, err := streamtx.ReadState[Totals](f.ctx, f.rdb, stream, "billing", "totals")
	require.NoError(t, err)

	_, b := f.console(Options{})
	q := url.Values{"stream": {stream}, "group": {"billing"}, "name": {"totals"}}
	code, body := b.get("/state?" + q.Encode())
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, `<td class="version">`+strconv.FormatInt(snap.Version, 10)+`</td>`)
	assert.Contains(t, body, `<td class="last-id"><code>`+snap.LastID+`</code></td>`)
	assert.Contains(t, body, "&#34;Orders&#34;: 4")
	assert.Contains(t, body, "&#34;t4&#34;")
	assert.Contains(t, body, "<code>"+snap.Key+"</code>")

	q.Set("name", "nosuch")
	code, body = b.get("/state?" + q.Encode())
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "no state record")
}

func TestCloseLeavesNoGoroutine(t *testing.T) {
	f := newFixture(t) // first: it may start the shared redis-server, whose watcher outlives the test
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	f.addEntries(f.p+"s", 1)
	rdb := redis.NewClient(&redis.Options{Addr: f.rdb.Options().Addr})
	defer rdb.Close()
	c, err := New(rdb, Options{Match: f.p + "*", Interval: time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
	defer cancel()
	_, err = c.sampler.wait(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
}

func TestSamplerKeepsHistoryAndSharesInspects(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	stream, _ := f.orders()
	con, b := f.console(Options{})
	// Viewers do not add Inspects: ten page loads within one interval send
	// no XINFO.
	_, _ = b.get("/")
	time.Sleep(100 * time.Millisecond)
	f.rec.take()
	start := time.Now()
	for range 10 {
		b.get("/")
	}
	if time.Since(start) < 900*time.Millisecond {
		for _, c := range f.rec.take() {
			assert.NotEqual(t, "XINFO STREAM", name(c), "a page load inspected the stream")
		}
	}
	require.Eventually(t, func() bool { return len(con.sampler.history(stream, "billing")) >= 2 }, 5*time.Second, 50*time.Millisecond)
	h := con.sampler.history(stream, "billing")
	assert.Equal(t, int64(22), h[len(h)-1].Lag)
	assert.Equal(t, int64(8), h[len(h)-1].Pending)
}

func TestOptions(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	for _, o := range []Options{
		{RootPath: "admin"},
		{Interval: 10 * time.Millisecond},
		{Interval: time.Minute, History: time.Second},
		{PageSize: 10_000},
		{Username: "u"},
		{Password: "p"},
		{Streams: []string{"a\nb"}},
		{Topics: []string{"a{b}"}},
		{Topics: []string{""}},
	} {
		_, err := New(rdb, o)
		assert.ErrorIs(t, err, ErrOptions, "%+v", o)
	}
	_, err := New(nil, Options{})
	assert.ErrorIs(t, err, ErrOptions)
}
