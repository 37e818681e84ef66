package main

import (
	"bytes"
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
	"github.com/vmihailenco/msgpack/v5"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// fixture is one test's Redis, key prefix and REDIS_URL.
type fixture struct {
	t   *testing.T
	ctx context.Context
	rdb *redis.Client
	p   string
	url string
	env map[string]string // more of the command's environment (REDIS_TLS_CA…)
}

// fixtureVariants maps the name of a test that runs the tests of this file
// again under another server or user (acl_tls_test.go) to the function that
// makes their fixtures; newFixture uses it for every test below that name.
var fixtureVariants sync.Map // test name -> func(*testing.T) *fixture

func newFixture(t *testing.T) *fixture {
	t.Helper()
	var variant func(*testing.T) *fixture
	fixtureVariants.Range(func(name, mk any) bool {
		if strings.HasPrefix(t.Name(), name.(string)+"/") {
			variant = mk.(func(*testing.T) *fixture)
			return false
		}
		return true
	})
	if variant != nil {
		return variant(t)
	}
	rdb := redistest.Client(t)
	return &fixture{t: t, ctx: context.Background(), rdb: rdb, p: redistest.Prefix(t, rdb),
		url: "redis://" + redistest.Addr(t)}
}

// result is one run of the command.
type result struct {
	stdout, stderr string
	code           int
}

// run runs the command in-process with REDIS_URL set to the test server.
func (f *fixture) run(args ...string) result {
	f.t.Helper()
	var out, errb bytes.Buffer
	code := run(f.ctx, args, &out, &errb, f.getenv)
	return result{out.String(), errb.String(), code}
}

// getenv is the command's environment: REDIS_URL and f.env.
func (f *fixture) getenv(k string) string {
	if k == "REDIS_URL" {
		return f.url
	}
	return f.env[k]
}

// ok runs the command and requires exit status 0.
func (f *fixture) ok(args ...string) string {
	f.t.Helper()
	r := f.run(args...)
	require.Equalf(f.t, 0, r.code, "streamtx %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.stdout, r.stderr)
	return r.stdout
}

// fails runs the command and requires exit status code; it returns stderr.
func (f *fixture) fails(code int, args ...string) string {
	f.t.Helper()
	r := f.run(args...)
	require.Equalf(f.t, code, r.code, "streamtx %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.stdout, r.stderr)
	return r.stderr
}

func (f *fixture) addIDs(stream string, ids ...string) {
	f.t.Helper()
	pipe := f.rdb.Pipeline()
	for _, id := range ids {
		pipe.XAdd(f.ctx, &redis.XAddArgs{Stream: stream, ID: id, Values: []any{"n", id}})
	}
	_, err := pipe.Exec(f.ctx)
	require.NoError(f.t, err)
}

func seq(from, to int) []string {
	var ids []string
	for i := from; i <= to; i++ {
		ids = append(ids, strconv.Itoa(i)+"-0")
	}
	return ids
}

// readAck reads n entries of group as consumer and acks the first ack.
func (f *fixture) readAck(stream, group, consumer string, n, ack int) {
	f.t.Helper()
	res, err := f.rdb.XReadGroup(f.ctx, &redis.XReadGroupArgs{
		Group: group, Consumer: consumer, Streams: []string{stream, ">"}, Count: int64(n), Block: -1,
	}).Result()
	require.NoError(f.t, err)
	require.Len(f.t, res[0].Messages, n)
	var ids []string
	for _, m := range res[0].Messages[:ack] {
		ids = append(ids, m.ID)
	}
	if len(ids) > 0 {
		require.NoError(f.t, f.rdb.XAck(f.ctx, stream, group, ids...).Err())
	}
}

type totals struct{ Orders, Amount int }

type stock struct {
	SKU   string
	Count int
	Tags  []string
}

// consume runs a real consumer over stream until n entries are settled
// (committed or dead-lettered), then stops it.
func (f *fixture) consume(stream, group string, n int, h streamtx.Handler) {
	f.t.Helper()
	var mu sync.Mutex
	settled := 0
	done := make(chan struct{})
	c, err := streamtx.NewConsumer(f.rdb, streamtx.Config{
		Stream: stream, Group: group, Consumer: group + "-1", Block: 20 * time.Millisecond,
		Observer: streamtx.ObserverFunc(func(e streamtx.Event) {
			if e.Kind != streamtx.EventCommit && e.Kind != streamtx.EventDeadLetter {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if settled += len(e.IDs); settled == n {
				close(done)
			}
		}),
	}, h)
	require.NoError(f.t, err)
	ctx, cancel := context.WithCancel(f.ctx)
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		f.t.Error("consumer did not settle the entries within 10s")
	}
	cancel()
	require.NoError(f.t, <-errc)
}

// orders fills stream with five orders, the third of them bad, and runs
// two groups over it: billing (Stateful totals; the bad order is
// dead-lettered) and stock (Keyed per SKU).
func (f *fixture) orders(stream string) {
	f.t.Helper()
	for i := 1; i <= 5; i++ {
		amount := strconv.Itoa(i * 10)
		if i == 3 {
			amount = "oops"
		}
		require.NoError(f.t, f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: stream, ID: strconv.Itoa(i) + "-0",
			Values: []any{"amount", amount, "sku", "sku-" + strconv.Itoa(i%2)}}).Err())
	}
	f.consume(stream, "billing", 5, streamtx.Stateful("totals",
		func(ctx context.Context, msg *streamtx.Message, t *totals, tx *txn.Tx) error {
			a, err := strconv.Atoi(msg.Values["amount"])
			if err != nil {
				return streamtx.Permanent(err)
			}
			t.Orders++
			t.Amount += a
			return nil
		}))
	f.consume(stream, "stock", 5, streamtx.Keyed("stock",
		func(msg *streamtx.Message) string { return msg.Values["sku"] },
		func(ctx context.Context, msg *streamtx.Message, s *stock, tx *txn.Tx) error {
			s.SKU = msg.Values["sku"]
			s.Count++
			s.Tags = append(s.Tags, msg.ID)
			return nil
		}))
}

func TestHelpAndUsageErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	assert.Contains(t, f.ok("--help"), "Exit status:")
	assert.Contains(t, f.ok("help"), "streamtx [--redis URL] COMMAND")
	assert.Contains(t, f.ok("help", "trim"), "--keep-min-age D")
	assert.Contains(t, f.ok("inspect", "-h"), "Usage: streamtx inspect STREAM")
	assert.Contains(t, f.ok("dlq", "--help"), "streamtx dlq purge")
	assert.Contains(t, f.ok("dlq", "replay", "--help"), "--all")
	assert.Contains(t, f.ok("state", "--help"), "state get")

	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"--nope", "inspect", "s"},
		{"inspect"},
		{"inspect", "a", "b"},
		{"inspect", "s", "--nope"},
		{"inspect", "s", "--watch", "soon"},
		{"inspect", "s", "--count", "3"},
		{"pending", "s"},
		{"pending", "s", "g", "--count", "0"},
		{"dlq"},
		{"dlq", "list", "s"},
		{"dlq", "frob", "s", "g"},
		{"dlq", "show", "s", "g"},
		{"dlq", "replay", "s", "g"},
		{"dlq", "replay", "s", "g", "1-0", "--all"},
		{"dlq", "purge", "s", "g"},
		{"dlq", "purge", "s", "g", "--all"},
		{"trim", "s"},
		{"trim", "s", "--force"},
		{"trim", "s", "--safe", "--force"},
		{"trim", "s", "--safe", "--maxlen", "3"},
		{"trim", "s", "--force", "--maxlen", "3", "--minid", "1-0"},
		{"trim", "s", "--force", "--minid", "yesterday"},
		{"trim", "s", "--force", "--maxlen", "3", "--keep-min-age", "1h"},
		{"state"},
		{"state", "put", "s", "g", "n"},
		{"state", "get", "s", "g"},
		{"state", "get", "s", "g", "n", "k", "extra"},
		{"--redis", "http://nope", "inspect", "s"},
	} {
		stderr := f.fails(2, args...)
		assert.Contains(t, stderr, "streamtx: ", args)
		assert.Contains(t, stderr, "Run 'streamtx help' for usage.", args)
	}
	assert.Contains(t, f.fails(2, "dlq", "purge", "s", "g", "--all"), "--yes")
}

func TestRedisFlagAndEnv(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.p + "s"
	f.addIDs(s, "1-0")
	// --redis before or after the command beats REDIS_URL.
	f.url = "redis://127.0.0.1:1/?dial_timeout=1s&max_retries=-1" // nothing listens there
	assert.Contains(t, f.fails(1, "inspect", s), "streamtx: ")
	good := "redis://" + redistest.Addr(t)
	assert.Contains(t, f.ok("--redis", good, "inspect", s), "length         1")
	assert.Contains(t, f.ok("inspect", s, "--redis", good), "length         1")
	// A password in --redis never shows in messages.
	stderr := f.fails(2, "--redis", "redis://u:hunter2@127.0.0.1:6379/notadb", "inspect", s)
	assert.NotContains(t, stderr, "hunter2")
}

func TestInspectCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.p + "orders"
	f.orders(s)
	// lagging: read 1..2, 2 pending: lag 3, oldest pending 1-0.
	require.NoError(t, f.rdb.XGroupCreate(f.ctx, s, "lagging", "0").Err())
	f.readAck(s, "lagging", "slow", 2, 0)

	out := f.ok("inspect", s)
	for _, want := range []string{
		"stream         " + s,
		"length         5",
		"first          1-0",
		"last           5-0",
		"GROUP    LAG  PENDING  OLDEST PENDING",
		"billing  0    0        -               -",
		"lagging  3    2        1-0",
		"GROUP    CONSUMER   PENDING  IDLE",
		"billing  billing-1  0",
		"5-0", // committed offsets
		`safe trim point: 1-0 (held back by group "lagging": its oldest pending entry is 1-0)`,
	} {
		assert.Contains(t, out, want)
	}

	var v inspectView
	require.NoError(t, json.Unmarshal([]byte(f.ok("inspect", s, "--json")), &v))
	assert.EqualValues(t, 5, v.Length)
	require.Len(t, v.Groups, 3)
	billing, lagging, stockG := v.Groups[0], v.Groups[1], v.Groups[2]
	assert.Equal(t, "billing", billing.Name)
	assert.EqualValues(t, 1, billing.DeadLetters)
	assert.Equal(t, map[string]string{"billing-1": "5-0"}, billing.Offsets)
	assert.Equal(t, "5-1", billing.TrimPoint)
	assert.Equal(t, "stock", stockG.Name)
	assert.Zero(t, stockG.DeadLetters)
	assert.EqualValues(t, 3, lagging.Lag)
	assert.True(t, lagging.LagExact)
	require.NotNil(t, lagging.OldestPending)
	assert.Equal(t, "1-0", lagging.OldestPending.ID)
	assert.Equal(t, "slow", lagging.OldestPending.Consumer)
	assert.Equal(t, "1-0", v.SafeTrimPoint)
	assert.Equal(t, "lagging", v.SafeTrimHeldBy)

	// --watch with a bounded count: three refreshes, each with a time.
	out = f.ok("inspect", s, "--watch", "5ms", "--count", "3")
	assert.Equal(t, 3, strings.Count(out, "stream         "+s))
	assert.Equal(t, 3, strings.Count(out, "time           "))
	out = f.ok("inspect", "--watch", "5ms", "--count", "2", "--json", s)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, "one JSON document per line")
	for _, l := range lines {
		require.NoError(t, json.Unmarshal([]byte(l), &v))
	}

	// A stream without groups; a missing stream; a key of another type.
	ng := f.p + "nogroups"
	f.addIDs(ng, "1-0")
	assert.Contains(t, f.ok("inspect", ng), "safe trim point: none (no consumer groups")
	assert.Contains(t, f.fails(1, "inspect", f.p+"missing"), "stream not found")
	require.NoError(t, f.rdb.Set(f.ctx, f.p+"str", "x", 0).Err())
	assert.Contains(t, f.fails(1, "inspect", f.p+"str"), "not a stream")
}

func TestInspectWatchStopsOnCancel(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.p + "s"
	f.addIDs(s, "1-0")
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	// Cancel once the second report is out: it repeats, then stops.
	out := &cancelAfter{marker: "stream         " + s, n: 2, cancel: cancel}
	var errb bytes.Buffer
	code := run(ctx, []string{"inspect", s, "--watch", "5ms"}, out, &errb, f.getenv)
	require.Equal(t, 0, code, errb.String())
	assert.GreaterOrEqual(t, strings.Count(out.String(), "stream         "+s), 2)
}

// cancelAfter is an output that calls cancel once marker has been written n
// times.
type cancelAfter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	n      int
	cancel context.CancelFunc
}

func (w *cancelAfter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(b)
	if strings.Count(w.buf.String(), w.marker) >= w.n {
		w.cancel()
	}
	return n, err
}

func (w *cancelAfter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestPendingCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.p + "s"
	f.addIDs(s, seq(1, 6)...)
	require.NoError(t, f.rdb.XGroupCreate(f.ctx, s, "g", "0").Err())
	f.readAck(s, "g", "alice", 3, 1) // 2, 3 pending at alice
	f.readAck(s, "g", "bob", 2, 0)   // 4, 5 pending at bob

	out := f.ok("pending", s, "g")
	assert.Contains(t, out, "ID   CONSUMER  IDLE")
	assert.Contains(t, out, "DELIVERIES  AGE")
	for _, row := range []string{"2-0  alice", "3-0  alice", "4-0  bob", "5-0  bob"} {
		assert.Contains(t, out, row)
	}
	assert.NotContains(t, out, "1-0")
	assert.NotContains(t, out, "more:")

	out = f.ok("pending", s, "g", "--count", "3")
	assert.Contains(t, out, "4-0  bob")
	assert.Contains(t, out, "more: --from 5-0")
	out = f.ok("pending", s, "g", "--from", "5-0")
	assert.Contains(t, out, "5-0  bob")
	assert.NotContains(t, out, "4-0")
	out = f.ok("pending", s, "g", "--consumer", "bob")
	assert.NotContains(t, out, "alice")
	assert.Equal(t, "no pending entries\n", f.ok("pending", s, "g", "--older-than", "1h"))

	var v struct {
		Entries []pendingView `json:"entries"`
		Next    string        `json:"next"`
	}
	require.NoError(t, json.Unmarshal([]byte(f.ok("pending", s, "g", "--json", "--count", "1")), &v))
	require.Len(t, v.Entries, 1)
	assert.Equal(t, pendingView{ID: "2-0", Consumer: "alice", Deliveries: 1, IdleMS: v.Entries[0].IdleMS,
		AgeMS: v.Entries[0].AgeMS}, v.Entries[0])
	assert.Equal(t, "3-0", v.Next)
	assert.Greater(t, v.Entries[0].AgeMS, int64(time.Hour/time.Millisecond), "ID 2-0 is from 1970")

	assert.Contains(t, f.fails(1, "pending", s, "nogroup"), "not found")
	assert.Contains(t, f.fails(1, "pending", f.p+"missing", "g"), "not found")
}

func TestDLQCommands(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.p + "orders"
	f.orders(s)
	dlq, err := streamtx.DeadLetterStreamFor(s, "billing")
	require.NoError(t, err)
	dead, _, err := streamtx.ListDeadLetters(f.ctx, f.rdb, dlq, "", 10)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	id := dead[0].ID

	out := f.ok("dlq", "list", s, "billing")
	assert.Contains(t, out, "ID")
	assert.Contains(t, out, "SOURCE ID")
	assert.Contains(t, out, id+"  3-0        billing-1  1")
	assert.Contains(t, out, `permanent: strconv.Atoi: parsing "oops": invalid syntax`)
	assert.Equal(t, "no dead letters\n", f.ok("dlq", "list", s, "stock"))

	out = f.ok("dlq", "show", s, "billing", id)
	for _, want := range []string{"id          " + id, "stream      " + s, "source id   3-0", "group       billing",
		"consumer    billing-1", "deliveries  1", "error       permanent:", "fields:", "amount  oops", "sku     sku-1"} {
		assert.Contains(t, out, want)
	}
	var dv deadLetterView
	require.NoError(t, json.Unmarshal([]byte(f.ok("dlq", "show", s, "billing", id, "--json")), &dv))
	assert.Equal(t, map[string]string{"amount": "oops", "sku": "sku-1"}, dv.Values)
	assert.Equal(t, "3-0", dv.SourceID)
	assert.Contains(t, f.fails(1, "dlq", "show", s, "billing", "1-0"), "not found")

	// Replay: appended back to the source stream, gone from the DLQ; a
	// second replay finds nothing.
	out = f.ok("dlq", "replay", s, "billing", id)
	assert.Regexp(t, `^replayed `+regexp.QuoteMeta(id+" -> "+s)+` \d+-\d+\n$`, out)
	n, err := f.rdb.XLen(f.ctx, s).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 6, n)
	assert.Contains(t, f.fails(1, "dlq", "replay", s, "billing", id), "not found: dead letter "+id)
	assert.Equal(t, "no dead letters to replay\n", f.ok("dlq", "replay", s, "billing", "--all"))

	// Dead letters written by hand, for paging, replay --all and purge.
	var ids []string
	for i := range 3 {
		id, err := f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: dlq, Values: []any{
			"stx.stream", s, "stx.id", "9-" + strconv.Itoa(i), "stx.group", "billing", "stx.consumer", "c",
			"stx.error", "boom", "stx.deliveries", "5", "stx.time", "1700000000000", "amount", strconv.Itoa(i)}}).Result()
		require.NoError(t, err)
		ids = append(ids, id)
	}
	out = f.ok("dlq", "list", s, "billing", "--count", "2")
	assert.Contains(t, out, ids[0])
	assert.Contains(t, out, ids[1])
	assert.Contains(t, out, "2023-11-14T22:13:20.000Z")
	assert.Contains(t, out, "more: --from "+ids[2])
	out = f.ok("dlq", "list", s, "billing", "--from", ids[2], "--json")
	var page struct {
		DeadLetters []deadLetterView `json:"dead_letters"`
		Next        string           `json:"next"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &page))
	require.Len(t, page.DeadLetters, 1)
	assert.Equal(t, ids[2], page.DeadLetters[0].ID)
	assert.Empty(t, page.Next)

	assert.Equal(t, "purged 1 dead letter\n", f.ok("dlq", "purge", s, "billing", ids[0]))
	r := f.run("dlq", "purge", s, "billing", ids[0], ids[1])
	assert.Equal(t, 1, r.code, "one of the two was gone")
	assert.Equal(t, "purged 1 dead letter\n", r.stdout)
	assert.Contains(t, r.stderr, "not found: 1 of 2")
	out = f.ok("dlq", "replay", s, "billing", "--all")
	assert.Contains(t, out, "replayed "+ids[2]+" -> "+s)
	assert.Equal(t, "purged 0 dead letters\n", f.ok("dlq", "purge", s, "billing", "--all", "--yes"))

	// A custom dead-letter stream.
	custom := f.p + "custom-dlq"
	require.NoError(t, f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: custom, Values: []any{"stx.stream", s, "x", "1"}}).Err())
	assert.Contains(t, f.ok("dlq", "list", s, "billing", "--dlq", custom), "ID")
	assert.Equal(t, "purged 1 dead letter\n", f.ok("dlq", "purge", s, "billing", "--all", "--yes", "--dlq", custom))
}

func TestTrimCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.p + "s"
	f.addIDs(s, seq(1, 10)...)
	require.NoError(t, f.rdb.XGroupCreate(f.ctx, s, "pending", "0").Err())
	f.readAck(s, "pending", "c", 6, 4) // 5, 6 pending
	require.NoError(t, f.rdb.XGroupCreate(f.ctx, s, "behind", "0").Err())
	f.readAck(s, "behind", "c", 2, 2)

	dry := f.ok("trim", s, "--safe", "--dry-run")
	assert.Equal(t, "dry run: would trim 2 entries below 2-1\n"+
		`held back by group "behind", which has not read the entries from 2-1 on`+"\n", dry)
	assert.Equal(t, "trimmed 2 entries below 2-1\n"+
		`held back by group "behind", which has not read the entries from 2-1 on`+"\n", f.ok("trim", s, "--safe"))
	f.readAck(s, "behind", "c", 8, 8)
	assert.Equal(t, "trimmed 2 entries below 5-0\n"+
		`held back by group "pending", whose oldest pending entry is 5-0`+"\n", f.ok("trim", "--safe", s))
	// These IDs are from 1970: the age does not hold them back.
	assert.Equal(t, "trimmed 0 entries below 5-0\n"+
		`held back by group "pending", whose oldest pending entry is 5-0`+"\n", f.ok("trim", s, "--safe", "--keep-min-age", "1h"))
	ids, err := f.rdb.XRange(f.ctx, s, "-", "+").Result()
	require.NoError(t, err)
	assert.Len(t, ids, 6)

	// Forced trims warn about what groups lose.
	r := f.run("trim", s, "--force", "--maxlen", "3", "--dry-run")
	assert.Equal(t, 0, r.code)
	assert.Equal(t, "dry run: would trim 3 entries (to the newest 3)\n", r.stdout)
	assert.Equal(t, `warning: group "pending" would lose entries it has not acknowledged (from 5-0 on) below 8-0`+"\n", r.stderr)
	r = f.run("trim", s, "--force", "--minid", "6-0")
	assert.Equal(t, 0, r.code)
	assert.Equal(t, "trimmed 1 entry (below 6-0)\n", r.stdout)
	assert.Contains(t, r.stderr, `group "pending" loses`)
	r = f.run("trim", s, "--force", "--minid", "8-0", "--dry-run")
	assert.Equal(t, "dry run: would trim 2 entries (below 8-0)\n", r.stdout)
	assert.Equal(t, "trimmed 5 entries (to the newest 0)\n", f.run("trim", s, "--force", "--maxlen", "0").stdout)

	// Fresh entries are held back by the age.
	fresh := f.p + "fresh"
	for range 3 {
		require.NoError(t, f.rdb.XAdd(f.ctx, &redis.XAddArgs{Stream: fresh, Values: []any{"a", 1}}).Err())
	}
	require.NoError(t, f.rdb.XGroupCreate(f.ctx, fresh, "g", "0").Err())
	f.readAck(fresh, "g", "c", 3, 3)
	assert.Regexp(t, `^trimmed 0 entries below \d+-0\nheld back by --keep-min-age 1h0m0s \(the safe point is \d+-\d+, held back by group "g", which has not read the entries from \d+-\d+ on\)\n$`,
		f.ok("trim", fresh, "--safe", "--keep-min-age", "1h"))
	assert.Equal(t, "trimmed 3 entries below ", f.ok("trim", fresh, "--safe")[:24])

	// No groups: a safe trim refuses and says how to trim anyway.
	ng := f.p + "nogroups"
	f.addIDs(ng, "1-0", "2-0")
	stderr := f.fails(1, "trim", ng, "--safe")
	assert.Contains(t, stderr, "no consumer groups")
	assert.Contains(t, stderr, "--force --maxlen N")
	assert.Equal(t, "trimmed 1 entry (to the newest 1)\n", f.ok("trim", ng, "--force", "--maxlen", "1"))
	assert.Contains(t, f.fails(1, "trim", f.p+"missing", "--safe"), "stream not found")
	assert.Contains(t, f.fails(1, "trim", f.p+"missing", "--force", "--maxlen", "1"), "stream not found")
}

func TestStateCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.p + "orders"
	f.orders(s)

	var v struct {
		Key     string         `json:"key"`
		Version int64          `json:"version"`
		LastID  string         `json:"last_id"`
		Value   map[string]any `json:"value"`
	}
	require.NoError(t, json.Unmarshal([]byte(f.ok("state", "get", s, "billing", "totals")), &v))
	sp, err := keys.NewSpace(s, "billing")
	require.NoError(t, err)
	assert.Equal(t, sp.State("totals"), v.Key)
	assert.Positive(t, v.Version)
	assert.Equal(t, "5-0", v.LastID)
	assert.Equal(t, map[string]any{"Orders": 4.0, "Amount": 120.0}, v.Value) // 10+20+40+50

	v.Value = nil
	require.NoError(t, json.Unmarshal([]byte(f.ok("state", "get", s, "stock", "stock", "sku-1")), &v))
	assert.Equal(t, "5-0", v.LastID)
	assert.Equal(t, map[string]any{"SKU": "sku-1", "Count": 3.0, "Tags": []any{"1-0", "3-0", "5-0"}}, v.Value)

	assert.Contains(t, f.fails(1, "state", "get", s, "billing", "nothing"), "not found: no state record")
	assert.Contains(t, f.fails(1, "state", "get", s, "stock", "stock", "sku-9"), "not found")

	// Values a Go type would not print as JSON directly.
	odd := map[any]any{
		"bin":   []byte{0xff, 0x00},
		"text":  []byte("hi"),
		1:       "int key",
		"nan":   nanFloat(),
		"when":  time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC),
		"list":  []any{uint64(1 << 63), int8(-3), nil, true},
		"inner": map[string]any{"a": 1.5},
	}
	b, err := msgpack.Marshal(odd)
	require.NoError(t, err)
	require.NoError(t, f.rdb.Set(f.ctx, sp.State("odd"), record.Format(7, "t", "9-9", b), 0).Err())
	out := f.ok("state", "get", s, "billing", "odd")
	assert.JSONEq(t, `{"key": "`+jsonEscape(sp.State("odd"))+`", "version": 7, "last_id": "9-9", "value": {
		"bin": {"$base64": "/wA="}, "text": "hi", "1": "int key", "nan": "NaN",
		"when": "2024-01-02T03:04:05Z", "list": [9223372036854775808, -3, null, true], "inner": {"a": 1.5}}}`, out)

	// An unknown extension type is printed, not refused.
	ext := []byte{0x81, 0xa1, 'x', 0xd4, 0x05, 0x2a} // {"x": fixext1 type 5 data 0x2a}
	require.NoError(t, f.rdb.Set(f.ctx, sp.State("ext"), record.Format(1, "t", "1-0", ext), 0).Err())
	assert.Contains(t, f.ok("state", "get", s, "billing", "ext"), `"$ext": 5`)

	// Corrupt data is an error, never a panic.
	require.NoError(t, f.rdb.Set(f.ctx, sp.State("bad"), record.Format(1, "t", "1-0", []byte{0xdc, 0xff, 0xff}), 0).Err())
	assert.Contains(t, f.fails(1, "state", "get", s, "billing", "bad"), "streamtx: ")
}

func nanFloat() float64 {
	var zero float64
	return zero / zero
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

func TestRunReportsRedisErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	require.NoError(t, f.rdb.Set(f.ctx, f.p+"str", "x", 0).Err())
	stderr := f.fails(1, "pending", f.p+"str", "g")
	assert.True(t, strings.HasPrefix(stderr, "streamtx: "), stderr)
	assert.Contains(t, stderr, "WRONGTYPE")
}
