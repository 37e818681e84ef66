//go:build linux

package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/redistest"
)

// TestTopicZombieIsFenced replays the zombie of a partitioned topic step by
// step. Worker A, alone in the group, owns every partition; its handler
// handles and publishes entry #holdI and then blocks, and the test stops A
// (SIGSTOP) right there: the batch is handled, its commit not sent. Worker B
// joins, takes every partition over once A's leases expire (each lease's
// epoch grows), recovers what A left pending and handles everything. Then
// A goes on (SIGCONT): its commit, under the old epoch, must be refused by
// the fence, A must stop consuming the partitions it lost (an EventRevoked
// for each), and nothing may be written twice: the outputs and the states
// stay as B left them, each entry applied once, in its key's order.
//
// The design: "a paused or dead owner loses its lease when it expires",
// "an instance that lost its lease while paused writes nothing when it
// resumes".
func TestTopicZombieIsFenced(t *testing.T) {
	const (
		partitions = 4
		nkeys      = 8
		n          = 160
		holdI      = 60 // the entry A's handler blocks on, after handling it
		batch      = 10
		wait       = 60 * time.Second // the longest wait for any event
	)
	began := time.Now()
	ctx := context.Background()
	srv := redistest.StartServer(t)
	rdb := srv.Client(t)
	dir := runDir(t)
	src := preloadTopic(t, rdb, partitions, nkeys, n)
	holdName := src.ids[holdI-1]
	holdP := src.part[holdName]
	holdID := strings.TrimPrefix(holdName, strconv.Itoa(holdP)+"/")

	r := &role{group: topicGroup, handler: handlerTopic, out: topicOut, pace: filepath.Join(dir, "pace")}
	require.NoError(t, os.WriteFile(r.pace, []byte("0"), 0o644)) // no pacing
	cl := newCluster(t, dir, topicEnv(srv.Addr(), 2*time.Second, 0))
	release := filepath.Join(dir, "release")
	a := &slot{name: "a", role: r, batch: batch, retries: -1,
		env: []string{envHoldI + "=" + strconv.Itoa(holdI), envRelease + "=" + release}}
	b := &slot{name: "b", role: r, batch: batch, retries: -1}
	cl.slots = append(cl.slots, a, b)

	// A handles up to entry #holdI and is stopped there.
	pa := cl.start(a)
	require.NoError(t, cl.waitReady(pa, wait))
	require.NoError(t, cl.waitHeld(pa, wait))
	cl.pause(pa)
	owners, epochs, err := src.owners(ctx, rdb)
	require.NoError(t, err)
	for p, o := range owners {
		require.True(t, strings.HasPrefix(o, "a/"), "A, alone in the group, holds partition %d: owner %q", p, o)
	}
	outBefore, err := readTopicOutputs(ctx, rdb, topicOut)
	require.NoError(t, err)
	for _, o := range outBefore {
		require.NotEqual(t, holdName, o.name(), "entry #%d is handled, not committed, while A is stopped", holdI)
	}
	t.Logf("chaos: A (%s, pid %d) stopped with its handler past entry #%d (%s, partition %d); leases %v epochs %v; %d outputs committed",
		pa.id, pa.pid, holdI, holdID, holdP, owners, epochs, len(outBefore))
	// The handler returns as soon as A runs again.
	require.NoError(t, os.WriteFile(release, nil, 0o644))

	// B takes every partition over, under a higher epoch, and drains them.
	pb := cl.start(b)
	require.NoError(t, cl.waitReady(pb, wait))
	var bEpochs []int64
	waitFor(t, wait, "B holds every partition under a higher epoch", func() (bool, string) {
		owners, es, err := src.owners(ctx, rdb)
		if err != nil {
			return false, err.Error()
		}
		for p, o := range owners {
			if !strings.HasPrefix(o, "b/") || es[p] <= epochs[p] {
				return false, fmt.Sprintf("owners %v epochs %v", owners, es)
			}
		}
		bEpochs = es
		return true, ""
	})
	waitFor(t, wait, "B drains every partition", func() (bool, string) { return src.status(ctx, rdb) })
	outDrained, err := readTopicOutputs(ctx, rdb, topicOut)
	require.NoError(t, err)
	var holdOut []topicOutput
	for _, o := range outDrained {
		if o.name() == holdName {
			holdOut = append(holdOut, o)
		}
	}
	require.Len(t, holdOut, 1, "entry #%d is committed once: %v", holdI, holdOut)
	require.Equal(t, "b", holdOut[0].by, "entry #%d is committed by B", holdI)
	statesDrained := topicStates(ctx, t, rdb, src)
	t.Logf("chaos: B (%s, pid %d) holds every partition (epochs %v -> %v) and drained them: %d outputs",
		pb.id, pb.pid, epochs, bEpochs, len(outDrained))

	// A goes on: its commit is refused, it stops consuming what it lost.
	cl.resume(pa)
	var refused, fenced, revoked []string
	waitFor(t, wait, "A's commit is refused and A revokes every partition it lost", func() (bool, string) {
		refused = matching(pa.lines(refusedPrefix), "script=commit")
		fenced = matching(pa.lines(eventPrefix+"fenced "), fmt.Sprintf(" p=%d ", holdP))
		revoked = pa.lines(eventPrefix + "revoked ")
		gone := make(map[int]bool)
		for _, l := range revoked {
			if p, ok := field(l, "p"); ok && !strings.Contains(l, `err=""`) {
				gone[p] = true
			}
		}
		return len(refused) > 0 && len(fenced) > 0 && len(gone) == partitions,
			fmt.Sprintf("refused commits %d, fenced events of partition %d %d, partitions revoked with an error %v", len(refused), holdP, len(fenced), gone)
	})
	// (The refused commit is that of entry #holdI's batch, unless the
	// commit before it, sent as A was stopped, reached Redis only after B
	// took over: then that one is refused, and the batch is not sent.)
	if len(matching(fenced, holdID)) == 0 {
		t.Logf("chaos: the commit refused in partition %d is not that of entry #%d's batch", holdP, holdI)
	}
	t.Logf("chaos: A after SIGCONT: %s; %s; %s", strings.Join(refused, " | "), strings.Join(fenced, " | "), strings.Join(revoked, " | "))
	// A partition A acquires again (A and B share them now) is a new
	// acquisition, past B's epoch.
	for _, l := range pa.lines(eventPrefix + "assigned ") {
		p, _ := field(l, "p")
		e, _ := field(l, "epoch")
		if int64(e) > epochs[p] {
			assert.Greater(t, int64(e), bEpochs[p], "A acquired partition %d again, past B's epoch: %s", p, l)
		}
	}

	// Nothing was written after B drained the partitions.
	for _, p := range cl.terminateAll(30 * time.Second) {
		t.Errorf("chaos: HANG: worker %s (pid %d) did not exit within 30s of SIGTERM; goroutine dump in %s", p.id, p.pid, p.logPath)
	}
	for _, msg := range cl.problems() {
		t.Errorf("chaos: %s", msg)
	}
	for _, msg := range cl.logFindings() {
		t.Errorf("chaos: %s", msg)
	}
	outEnd, err := readTopicOutputs(ctx, rdb, topicOut)
	require.NoError(t, err)
	assert.Equal(t, outDrained, outEnd, "outputs written after B drained the partitions")
	assert.Equal(t, statesDrained, topicStates(ctx, t, rdb, src), "states written after B drained the partitions")
	v := checkTopic(ctx, rdb, src, topicGroup, topicOut, cl.lines(orderPrefix))
	for _, msg := range v.violations {
		t.Errorf("chaos: VIOLATION: %s", msg)
	}
	result := "PASS"
	if t.Failed() {
		result = "FAIL"
	}
	t.Logf("topic-zombie summary: result=%s entries=%d partitions=%d held=%s epochs=%v->%v refused-commits=%d published=%d duplicates=%d losses=%d inversions=%d dead-letters=%d violations=%d elapsed=%.1fs",
		result, n, partitions, holdName, epochs, bEpochs, len(refused), v.published, v.duplicates+v.phantoms, v.losses, v.inversions, v.deadLetters, v.nviolations, time.Since(began).Seconds())
}

// topicStates returns every key's committed state.
func topicStates(ctx context.Context, t *testing.T, rdb *redis.Client, src *topicSource) map[string]streamtx.Snapshot[seqState] {
	t.Helper()
	out := make(map[string]streamtx.Snapshot[seqState], len(src.keys))
	for _, k := range src.keys {
		s, err := streamtx.ReadKeyedState[seqState](ctx, rdb, src.topic.Name(), topicGroup, topicStateName, k)
		require.NoError(t, err)
		out[k] = s
	}
	return out
}

// waitFor polls cond until it holds, failing the test with what cond last
// said after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, status := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("chaos: %s: not after %v: %s", what, timeout, status)
		}
		time.Sleep(20 * time.Millisecond) // polling Redis and the worker logs for the event
	}
}

// matching returns the lines that contain s.
func matching(lines []string, s string) []string {
	var out []string
	for _, l := range lines {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// field returns the integer value of " name=" in an event line.
func field(line, name string) (int, bool) {
	_, rest, ok := strings.Cut(line, " "+name+"=")
	if !ok {
		return 0, false
	}
	v, _, _ := strings.Cut(rest, " ")
	n, err := strconv.Atoi(v)
	return n, err == nil
}
