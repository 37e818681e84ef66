package streamtxtest_test

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/streamtxtest"
	"github.com/streamtx/streamtx/txn"
)

// recorder is a testing.TB that records failures instead of failing the
// test, to show CheckReplaySafe failing.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Helper()             {}
func (r *recorder) Logf(string, ...any) {}
func (r *recorder) Log(...any)          {}
func (r *recorder) Errorf(f string, a ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, fmt.Sprintf(f, a...))
}
func (r *recorder) Error(a ...any) { r.Errorf("%s", fmt.Sprint(a...)) }
func (r *recorder) Fatalf(f string, a ...any) {
	r.Errorf(f, a...)
	runtime.Goexit()
}
func (r *recorder) Fatal(a ...any) { r.Fatalf("%s", fmt.Sprint(a...)) }
func (r *recorder) FailNow()       { r.Fatalf("FailNow") }
func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs) > 0
}

// failures runs check with a recorder and returns what it failed with.
func failures(t *testing.T, check func(tb testing.TB)) string {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		check(r)
	}()
	<-done
	return strings.Join(r.msgs, "\n")
}

type Count struct{ N, Failed int }

var orders = []map[string]any{
	{"order_id": "o-1", "amount": 20},
	{"order_id": "o-2", "amount": 15},
	{"order_id": "o-3", "amount": "not a number"},
	{"order_id": "o-4", "amount": 25},
	{"order_id": "o-5", "amount": 5},
}

func TestReplaySafeHandlerPasses(t *testing.T) {
	t.Parallel()
	streamtxtest.CheckReplaySafe(t, totals, orders, streamtxtest.ReplayOptions{Seed: 1})
}

func TestReplaySafeKeyedWithBatches(t *testing.T) {
	t.Parallel()
	type Stock struct{ Left int }
	h := func() streamtx.Handler {
		return streamtx.Keyed("stock", func(m *streamtx.Message) string { return m.Values["sku"] },
			func(ctx context.Context, msg *streamtx.Message, s *Stock, tx *txn.Tx) error {
				n, _ := strconv.Atoi(msg.Values["n"])
				s.Left += n
				if s.Left < 3 {
					return tx.Publish("low", map[string]any{"sku": msg.Values["sku"], "left": s.Left})
				}
				return nil
			})
	}
	var in []map[string]any
	for i := range 12 {
		in = append(in, map[string]any{"sku": []string{"apple", "pear", "plum"}[i%3], "n": 5 - i})
	}
	streamtxtest.CheckReplaySafe(t, h, in, streamtxtest.ReplayOptions{Seed: 2, Runs: 10, Options: streamtxtest.Options{Config: streamtx.Config{BatchSize: 3}}})
}

// dedupe remembers, in a struct field, the orders it has handled.
type dedupe struct{ seen map[string]bool }

func (d *dedupe) Handle(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
	if d.seen[msg.Values["order_id"]] {
		return nil // "already done"
	}
	d.seen[msg.Values["order_id"]] = true
	return tx.Publish("receipts", map[string]any{"order_id": msg.Values["order_id"]})
}

func TestCheckReplaySafeCatches(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		newHandler func() streamtx.Handler
		want       []string // in the failure
	}{
		{"counter in a closure", func() streamtx.Handler {
			n := 0
			return streamtx.Stateful("count", func(ctx context.Context, msg *streamtx.Message, s *Count, tx *txn.Tx) error {
				n++
				s.N = n
				return nil
			})
		}, []string{`- state:count = {"Failed":0,"N":5}`, `+ state:count = {"Failed":0,"N":`}},
		{"map in a handler struct", func() streamtx.Handler {
			return &dedupe{seen: map[string]bool{}}
		}, []string{"- stream receipts #"}},
		{"plain XADD instead of tx.Publish", func() streamtx.Handler {
			return streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
				tt := streamtxtest.FromContext(ctx)
				return tt.Client().XAdd(ctx, &redis.XAddArgs{
					Stream: tt.Key("receipts"), Values: map[string]any{"order_id": msg.Values["order_id"]},
				}).Err()
			})
		}, []string{"+ stream receipts #6: order_id=o-"}},
		{"state changed after tx.Publish failed", func() streamtx.Handler {
			return streamtx.Stateful("count", func(ctx context.Context, msg *streamtx.Message, s *Count, tx *txn.Tx) error {
				s.N++
				if err := tx.Publish("receipts", map[string]any{"order": struct{}{}}); err != nil {
					s.Failed++ // and carry on
				}
				return nil
			})
		}, []string{"returned nil after tx.Publish failed", "unsupported type struct {}", "run without faults"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			msg := failures(t, func(tb testing.TB) {
				streamtxtest.CheckReplaySafe(tb, tc.newHandler, orders, streamtxtest.ReplayOptions{Seed: 100})
			})
			require.NotEmpty(t, msg, "CheckReplaySafe passed")
			t.Logf("it failed with:\n%s", msg)
			assert.Contains(t, msg, "not replay-safe")
			for _, w := range tc.want {
				assert.Contains(t, msg, w)
			}
			if !strings.Contains(msg, "run without faults") {
				assert.Regexp(t, `seed \d+`, msg)
				assert.Contains(t, msg, "faults injected:")
				assert.Regexp(t, `re-run this seed alone: STREAMTX_REPLAY_SEED=\d+ go test -run '\^TestCheckReplaySafeCatches\$/\^`, msg)
			}
		})
	}
}

// STREAMTX_REPLAY_SEED runs the one seed a failure printed, and the
// failure is the same.
func TestReplaySeedReRuns(t *testing.T) {
	counter := func() streamtx.Handler {
		n := 0
		return streamtx.Stateful("count", func(ctx context.Context, msg *streamtx.Message, s *Count, tx *txn.Tx) error {
			n++
			s.N = n
			return nil
		})
	}
	first := failures(t, func(tb testing.TB) {
		streamtxtest.CheckReplaySafe(tb, counter, orders, streamtxtest.ReplayOptions{Seed: 500})
	})
	require.NotEmpty(t, first)
	var seed uint64
	_, err := fmt.Sscanf(first[strings.Index(first, "(seed ")+len("(seed "):], "%d", &seed)
	require.NoError(t, err)
	t.Setenv(streamtxtest.ReplaySeedEnv, strconv.FormatUint(seed, 10))
	again := failures(t, func(tb testing.TB) {
		streamtxtest.CheckReplaySafe(tb, counter, orders, streamtxtest.ReplayOptions{Seed: 999999})
	})
	require.Contains(t, again, fmt.Sprintf("(seed %d)", seed))
}
