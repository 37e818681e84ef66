package streamtxtest_test

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/streamtxtest"
	"github.com/streamtx/streamtx/txn"
)

// events records what the consumers report.
type events struct {
	mu  sync.Mutex
	all []streamtx.Event
}

func (e *events) Observe(ev streamtx.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

func (e *events) kinds() map[streamtx.EventKind]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := map[streamtx.EventKind]int{}
	for _, ev := range e.all {
		n[ev.Kind]++
	}
	return n
}

func (e *events) consumers(kind streamtx.EventKind) map[string]bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := map[string]bool{}
	for _, ev := range e.all {
		if ev.Kind == kind {
			n[ev.Consumer] = true
		}
	}
	return n
}

// Each fault, injected at a chosen entry, runs the engine's own recovery
// (seen in the events it reports) and leaves exactly-once results.
func TestEachFaultAtAChosenEntry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		fault streamtxtest.Fault
		check func(t *testing.T, ev *events)
	}{
		{streamtxtest.Redeliver, func(t *testing.T, ev *events) {
			assert.Equal(t, 1, ev.kinds()[streamtx.EventRetry], "a retry after the injected error")
		}},
		{streamtxtest.Crash, func(t *testing.T, ev *events) {
			// The crashed consumer's commit never reached Redis; its
			// successor under the same name committed the entry.
			assert.GreaterOrEqual(t, ev.kinds()[streamtx.EventError], 1, "the crashed consumer's failed commit")
		}},
		{streamtxtest.LostReply, func(t *testing.T, ev *events) {
			assert.Zero(t, ev.kinds()[streamtx.EventFenced], "a retried commit that had applied is reported committed")
			assert.Zero(t, ev.kinds()[streamtx.EventError])
		}},
		{streamtxtest.Conflict, func(t *testing.T, ev *events) {
			assert.Equal(t, 1, ev.kinds()[streamtx.EventConflict])
		}},
		{streamtxtest.Claim, func(t *testing.T, ev *events) {
			assert.Equal(t, 1, ev.kinds()[streamtx.EventFenced], "the first consumer's commit is refused")
			assert.True(t, ev.consumers(streamtx.EventCommit)["test-1-claimer-1"], "the claimer commits it")
		}},
	} {
		t.Run(tc.fault.String(), func(t *testing.T) {
			t.Parallel()
			ev := &events{}
			tt := streamtxtest.New(t, totals(), streamtxtest.Options{Config: streamtx.Config{Observer: ev}})
			tt.Send(map[string]any{"order_id": "o-1", "amount": 1})
			tt.Drain() // a first commit: the state record exists (for Conflict)
			id := tt.Send(map[string]any{"order_id": "o-2", "amount": 2})
			tt.Inject(id, tc.fault)
			tt.Drain()
			// (A retried or claimed entry is handled after the entries
			// behind it: send the next one after it is done.)
			tt.Send(map[string]any{"order_id": "o-3", "amount": 3})
			tt.Drain()

			inj := tt.Injected()
			require.Len(t, inj, 1)
			assert.Equal(t, tc.fault, inj[0].Fault)
			assert.Equal(t, id, inj[0].EntryID)
			assert.Equal(t, "test-1", inj[0].Consumer)
			assert.Equal(t, -1, inj[0].Partition, "a stream has no partitions")
			assert.Equal(t, Totals{Orders: 3, Amount: 6}, streamtxtest.State[Totals](tt, "totals"))
			var totals []string
			for _, m := range tt.Published("receipts") {
				totals = append(totals, m.Values["order_id"]+"="+m.Values["total"])
			}
			assert.Equal(t, []string{"o-1=1", "o-2=3", "o-3=6"}, totals)
			assert.Empty(t, tt.DeadLetters())
			tc.check(t, ev)
		})
	}
}

// With random faults, a replay-safe handler still applies every entry once.
func TestRandomFaultsKeepExactlyOnce(t *testing.T) {
	t.Parallel()
	tt := streamtxtest.New(t, totals(), streamtxtest.Options{Config: streamtx.Config{BatchSize: 4}})
	tt.Faults(streamtxtest.Faults{Seed: 7, Rate: 0.6})
	want := 0
	for i := 1; i <= 40; i++ {
		tt.Send(map[string]any{"order_id": "o-" + strconv.Itoa(i), "amount": i})
		want += i
	}
	tt.Drain()
	require.Equal(t, Totals{Orders: 40, Amount: want}, streamtxtest.State[Totals](tt, "totals"))
	seen := map[string]int{}
	for _, m := range tt.Published("receipts") {
		seen[m.Values["order_id"]]++
	}
	require.Len(t, seen, 40)
	for id, n := range seen {
		require.Equal(t, 1, n, id)
	}
	kinds := map[streamtxtest.Fault]int{}
	for _, in := range tt.Injected() {
		kinds[in.Fault]++
	}
	t.Logf("injected: %v", kinds)
	require.Len(t, kinds, 5, "every kind of fault was injected")
}

// A fault at an entry whose handler fails does nothing: faults follow
// successful calls only.
func TestNoFaultAfterAFailedCall(t *testing.T) {
	t.Parallel()
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		return streamtx.Permanent(assert.AnError)
	})
	tt := streamtxtest.New(t, h, streamtxtest.Options{})
	tt.Faults(streamtxtest.Faults{Seed: 1, Rate: 1})
	tt.Send(map[string]any{"a": 1})
	tt.Drain()
	require.Len(t, tt.DeadLetters(), 1)
	require.Empty(t, tt.Injected())
}
