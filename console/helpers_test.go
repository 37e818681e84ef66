package console

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// fixture is a test's Redis client, key prefix and console.
type fixture struct {
	t   *testing.T
	ctx context.Context
	rdb *redis.Client
	p   string // key prefix
	rec *recorder
	dlq map[string]int // dead-letter stream -> calls of deadLetters
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	rdb := redistest.Client(t)
	f := &fixture{t: t, ctx: context.Background(), rdb: rdb, p: redistest.Prefix(t, rdb), rec: &recorder{}, dlq: map[string]int{}}
	return f
}

// console starts a Console on a client of its own (whose commands f.rec
// records) and an HTTP server for it, both stopped when the test ends.
func (f *fixture) console(opts Options) (*Console, *browser) {
	f.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: f.rdb.Options().Addr})
	c.AddHook(f.rec)
	f.t.Cleanup(func() { c.Close() })
	if len(opts.Streams) == 0 && opts.Match == "" {
		opts.Match = f.p + "*"
	}
	if opts.Interval == 0 {
		opts.Interval = time.Second
	}
	con, err := New(c, opts)
	require.NoError(f.t, err)
	f.t.Cleanup(func() { con.Close() })
	srv := httptest.NewServer(con)
	f.t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	return con, &browser{t: f.t, base: srv.URL + opts.RootPath, client: &http.Client{Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// addEntries appends n entries with field n=i to stream.
func (f *fixture) addEntries(stream string, n int) []string {
	f.t.Helper()
	var ids []string
	for lo := 0; lo < n; lo += 1000 {
		pipe := f.rdb.Pipeline()
		var cmds []*redis.StringCmd
		for i := lo; i < min(n, lo+1000); i++ {
			cmds = append(cmds, pipe.XAdd(f.ctx, &redis.XAddArgs{Stream: stream, Values: []any{"n", i}}))
		}
		_, err := pipe.Exec(f.ctx)
		require.NoError(f.t, err)
		for _, c := range cmds {
			ids = append(ids, c.Val())
		}
	}
	return ids
}

// read delivers up to n new entries of stream to consumer of group.
func (f *fixture) read(stream, group, consumer string, n int64) []string {
	f.t.Helper()
	res, err := f.rdb.XReadGroup(f.ctx, &redis.XReadGroupArgs{Group: group, Consumer: consumer,
		Streams: []string{stream, ">"}, Count: n, Block: -1}).Result()
	if err == redis.Nil {
		return nil
	}
	require.NoError(f.t, err)
	var ids []string
	for _, m := range res[0].Messages {
		ids = append(ids, m.ID)
	}
	return ids
}

func (f *fixture) group(stream, group, start string) {
	f.t.Helper()
	require.NoError(f.t, f.rdb.XGroupCreateMkStream(f.ctx, stream, group, start).Err())
}

// deadLetters writes n dead letters of stream and group as a consumer
// does (deadletter.lua's fields), with errors errOf(i), IDs 1000-1… (1001-1…
// the second time for the same stream and group, and so on).
func (f *fixture) deadLetters(stream, group string, n int, errOf func(int) string) []string {
	f.t.Helper()
	dlq, err := streamtx.DeadLetterStreamFor(stream, group)
	require.NoError(f.t, err)
	ms := 1000 + f.dlq[dlq]
	f.dlq[dlq]++
	var ids []string
	for lo := 0; lo < n; lo += 1000 {
		pipe := f.rdb.Pipeline()
		for i := lo; i < min(n, lo+1000); i++ {
			id := fmt.Sprintf("%d-%d", ms, i+1)
			ids = append(ids, id)
			pipe.XAdd(f.ctx, &redis.XAddArgs{Stream: dlq, ID: id, Values: []any{
				"order", strconv.Itoa(i),
				"stx.stream", stream, "stx.id", fmt.Sprintf("900-%d", i+1), "stx.group", group,
				"stx.consumer", "c1", "stx.error", errOf(i), "stx.deliveries", "5",
				"stx.time", strconv.FormatInt(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli(), 10),
			}})
		}
		_, err := pipe.Exec(f.ctx)
		require.NoError(f.t, err)
	}
	return ids
}

// inspect is streamtx.Inspect of stream.
func (f *fixture) inspect(stream string) *streamtx.StreamInfo {
	f.t.Helper()
	info, err := streamtx.Inspect(f.ctx, f.rdb, stream)
	require.NoError(f.t, err)
	return info
}

// browser is an HTTP client of a console with a cookie jar.
type browser struct {
	t      *testing.T
	base   string
	client *http.Client
	header http.Header
}

func (b *browser) do(req *http.Request) (int, string, http.Header) {
	b.t.Helper()
	for k, v := range b.header {
		req.Header[k] = v
	}
	res, err := b.client.Do(req)
	require.NoError(b.t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(b.t, err)
	return res.StatusCode, string(body), res.Header
}

func (b *browser) get(path string) (int, string) {
	b.t.Helper()
	req, err := http.NewRequest("GET", b.base+path, nil)
	require.NoError(b.t, err)
	code, body, _ := b.do(req)
	return code, body
}

func (b *browser) post(path string, form url.Values) (int, string, http.Header) {
	b.t.Helper()
	req, err := http.NewRequest("POST", b.base+path, strings.NewReader(form.Encode()))
	require.NoError(b.t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// confirmAndPost opens the confirmation page of action for ids (or all)
// and submits its form as a browser would.
func (b *browser) confirmAndPost(stream, group, action string, ids ...string) (int, string, http.Header) {
	b.t.Helper()
	q := url.Values{"stream": {stream}, "group": {group}, "action": {action}, "id": ids}
	code, body := b.get("/dlq/confirm?" + q.Encode())
	require.Equal(b.t, http.StatusOK, code, body)
	m := csrfRe.FindStringSubmatch(body)
	require.NotNil(b.t, m, "no CSRF token in the confirmation page:\n%s", body)
	form := url.Values{"csrf": {m[1]}, "stream": {stream}, "group": {group}, "id": ids}
	post := "/dlq/" + strings.TrimSuffix(action, "-all")
	if strings.HasSuffix(action, "-all") {
		form.Set("all", "1")
	}
	return b.post(post, form)
}

var attrRe = regexp.MustCompile(`data-([a-z]+)="([^"]*)"`)

// rows returns the data-* attributes of the elements of class cls.
func rows(body, cls string) []map[string]string {
	var out []map[string]string
	re := regexp.MustCompile(`<tr class="` + cls + `[^"]*"([^>]*)>`)
	for _, m := range re.FindAllStringSubmatch(body, -1) {
		a := map[string]string{}
		for _, kv := range attrRe.FindAllStringSubmatch(m[1], -1) {
			a[kv[1]] = htmlUnescape(kv[2])
		}
		out = append(out, a)
	}
	return out
}

func htmlUnescape(s string) string {
	return strings.NewReplacer("&#43;", "+", "&amp;", "&", "&lt;", "<", "&gt;", ">", "&#34;", `"`, "&#39;", "'").Replace(s)
}

// recorder is a go-redis hook that records every command sent.
type recorder struct {
	mu   sync.Mutex
	cmds [][]any
}

func (r *recorder) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *recorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.add(cmd)
		return next(ctx, cmd)
	}
}

func (r *recorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			r.add(c)
		}
		return next(ctx, cmds)
	}
}

func (r *recorder) add(c redis.Cmder) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmds = append(r.cmds, c.Args())
}

// take returns the commands recorded since the last take, and forgets them.
func (r *recorder) take() [][]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.cmds
	r.cmds = nil
	return c
}

// name is a command's name, with its subcommand for XINFO and the like.
func name(args []any) string {
	n := strings.ToUpper(fmt.Sprint(args[0]))
	if (n == "XINFO" || n == "XGROUP" || n == "SCRIPT") && len(args) > 1 {
		n += " " + strings.ToUpper(fmt.Sprint(args[1]))
	}
	return n
}
