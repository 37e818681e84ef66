package clustertest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
)

// waitDrained polls until the group has been delivered every entry of
// stream and has nothing pending.
func waitDrained(t *testing.T, rdb redis.UniversalClient, stream string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(waitTimeout)
	var why string
	for {
		groups, err := rdb.XInfoGroups(ctx, stream).Result()
		last, err2 := rdb.XRevRangeN(ctx, stream, "+", "-", 1).Result()
		switch {
		case err != nil || err2 != nil:
			why = fmt.Sprintf("XINFO GROUPS: %v, XREVRANGE: %v", err, err2)
		case len(groups) != 1 || len(last) != 1:
			why = fmt.Sprintf("%d groups, %d entries", len(groups), len(last))
		case groups[0].Pending != 0 || groups[0].LastDeliveredID != last[0].ID:
			why = fmt.Sprintf("%d pending, last delivered %s of %s", groups[0].Pending, groups[0].LastDeliveredID, last[0].ID)
		default:
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not drained after %v: %s", stream, waitTimeout, why)
		}
		time.Sleep(10 * time.Millisecond) // polling for the consumers to finish
	}
}

// checkExactlyOnce checks the counter's invariants — out holds counters
// exactly 1..N, each source ID once, the state is N, last applied at the
// entry that published N, nothing pending, no dead letters — and reports
// every violation at once, with examples, rather than the first.
func checkExactlyOnce(t *testing.T, rdb redis.UniversalClient, src, out string, srcIDs []string) {
	t.Helper()
	ctx := context.Background()
	n := len(srcIDs)
	got, err := rdb.XRange(ctx, out, "-", "+").Result()
	require.NoError(t, err)
	counters := make(map[int][]string, n) // counter -> sources that published it
	sources := make(map[string][]int, n)  // source -> counters it published
	for _, m := range got {
		k, err := strconv.Atoi(fmt.Sprint(m.Values["n"]))
		require.NoError(t, err, "%s: entry %s", out, m.ID)
		s := fmt.Sprint(m.Values["src"])
		counters[k] = append(counters[k], s)
		sources[s] = append(sources[s], k)
	}
	const examples = 10
	var problems []string
	report := func(what string, items []string) {
		if len(items) == 0 {
			return
		}
		shown := items[:min(len(items), examples)]
		problems = append(problems, fmt.Sprintf("%d %s, e.g. %s", len(items), what, strings.Join(shown, "; ")))
	}
	var twice, missing []string
	for i := 1; i <= n; i++ {
		switch by := counters[i]; {
		case len(by) == 0:
			missing = append(missing, strconv.Itoa(i))
		case len(by) > 1:
			twice = append(twice, fmt.Sprintf("%d by %v", i, by))
		}
	}
	var beyond []string
	for k, by := range counters {
		if k < 1 || k > n {
			beyond = append(beyond, fmt.Sprintf("%d by %v", k, by))
		}
	}
	report("counters published more than once", twice)
	report("counters missing", missing)
	report("counters outside 1..N", beyond)
	twice, missing = nil, nil
	known := make(map[string]bool, n)
	for _, id := range srcIDs {
		known[id] = true
		switch ks := sources[id]; {
		case len(ks) == 0:
			missing = append(missing, id)
		case len(ks) > 1:
			twice = append(twice, fmt.Sprintf("%s as %v", id, ks))
		}
	}
	var unknown []string
	for s := range sources {
		if !known[s] {
			unknown = append(unknown, s)
		}
	}
	report("sources published more than once", twice)
	report("sources missing", missing)
	report("unknown sources", unknown)
	if len(got) != n {
		problems = append(problems, fmt.Sprintf("%d entries in %s, want %d", len(got), out, n))
	}

	snap, err := streamtx.ReadState[counter](ctx, rdb, src, group, "counter")
	require.NoError(t, err)
	if snap.Value.N != n {
		problems = append(problems, fmt.Sprintf("state N = %d, want %d", snap.Value.N, n))
	}
	if by := counters[n]; len(by) != 1 || by[0] != snap.LastID {
		problems = append(problems, fmt.Sprintf("state last applied at %s; counter %d published by %v", snap.LastID, n, by))
	}
	if len(problems) > 0 {
		t.Fatalf("%s -> %s: exactly-once violated:\n  %s", src, out, strings.Join(problems, "\n  "))
	}

	p, err := rdb.XPending(ctx, src, group).Result()
	require.NoError(t, err)
	require.Zero(t, p.Count, "%s: pending", src)
	sp, err := keys.NewSpace(src, group)
	require.NoError(t, err)
	dead, err := rdb.XLen(ctx, sp.DeadLetters()).Result()
	require.NoError(t, err)
	require.Zero(t, dead, "%s: dead letters", src)
}
