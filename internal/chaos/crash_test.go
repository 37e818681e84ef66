//go:build linux

package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/redistest"
)

// defaultMaxDeliveries is streamtx's default Config.MaxDeliveries, which
// the process tests below leave in place (they pass 0).
const defaultMaxDeliveries = 5

// procRun is a deterministic process test: one group "g" with the counter
// handler publishing to outStream, n preloaded entries, worker processes
// talking to a dedicated redis-server directly (no fault proxy). The test
// drives it by events: a worker's holdLine, its exit, Redis state.
type procRun struct {
	t   *testing.T
	rdb *redis.Client
	src *source
	cl  *cluster
	r   *role
}

func startProcRun(t *testing.T, n int, claimIdle time.Duration) *procRun {
	t.Helper()
	srv := redistest.StartServer(t)
	rdb := srv.Client(t)
	dir := runDir(t)
	src := preload(t, rdb, n)
	r := &role{group: "g", handler: handlerCounter, out: outStream, pace: filepath.Join(dir, "pace-g")}
	if err := os.WriteFile(r.pace, []byte("0"), 0o644); err != nil {
		t.Fatalf("chaos: %v", err)
	}
	cl := newCluster(t, dir, []string{
		envAddr + "=" + srv.Addr(),
		envStream + "=" + srcStream,
		envBlock + "=" + block.String(),
		envClaimIdle + "=" + claimIdle.String(),
		envClaimInterval + "=" + (claimIdle / 4).String(),
		envCommitTimeout + "=" + commitTimeout.String(),
		envMaxDeliveries + "=0", // the default
	})
	return &procRun{t: t, rdb: rdb, src: src, cl: cl, r: r}
}

// slot adds a consumer name with the given batch size (go-redis retries
// off).
func (pr *procRun) slot(name string, batch int) *slot {
	s := &slot{name: name, role: pr.r, batch: batch, retries: -1}
	pr.cl.slots = append(pr.cl.slots, s)
	return s
}

// pending returns the entries pending for consumer in group g.
func (pr *procRun) pending(consumer string) []redis.XPendingExt {
	pr.t.Helper()
	ps, err := pr.rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{
		Stream: srcStream, Group: "g", Start: "-", End: "+", Count: 10000, Consumer: consumer,
	}).Result()
	if err != nil {
		pr.t.Fatalf("chaos: XPENDING: %v", err)
	}
	return ps
}

// deadLetters returns the group's dead letters.
func (pr *procRun) deadLetters() []redis.XMessage {
	pr.t.Helper()
	sp, err := keys.NewSpace(srcStream, "g")
	if err != nil {
		pr.t.Fatalf("chaos: %v", err)
	}
	dlq, err := readStream(context.Background(), pr.rdb, sp.DeadLetters())
	if err != nil {
		pr.t.Fatalf("chaos: read dead letters: %v", err)
	}
	return dlq
}

// drained reports whether group g has delivered the last entry and holds
// nothing.
func (pr *procRun) drained() (bool, string) {
	return groupStatus(context.Background(), pr.rdb, srcStream, pr.src.ids[len(pr.src.ids)-1], "g")
}

// finish stops every worker (SIGTERM), checks the invariants with guilty
// as the entries that must be dead-lettered, and logs the summary line.
func (pr *procRun) finish(name string, began time.Time, guilty map[string]bool, extra string) {
	t := pr.t
	t.Helper()
	for _, p := range pr.cl.terminateAll(30 * time.Second) {
		t.Errorf("chaos: HANG: worker %s (pid %d) did not exit within 30s of SIGTERM; goroutine dump in %s", p.id, p.pid, p.logPath)
	}
	for _, msg := range pr.cl.problems() {
		t.Errorf("chaos: %s", msg)
	}
	for _, msg := range pr.cl.logFindings() {
		t.Errorf("chaos: %s", msg)
	}
	v := checkGroupDead(context.Background(), pr.rdb, pr.src, "g", outStream, false, guilty)
	for _, msg := range v.violations {
		t.Errorf("chaos: VIOLATION group g: %s", msg)
	}
	ok, status := pr.drained()
	if !ok {
		t.Errorf("chaos: entries remain pending or undelivered after the workers stopped: %s", status)
	}
	result := "PASS"
	if t.Failed() {
		result = "FAIL"
	}
	t.Logf("%s summary: result=%s entries=%d %s published=%d duplicates=%d losses=%d dead-letters=%d violations=%d elapsed=%.1fs",
		name, result, len(pr.src.ids), extra, v.published, v.duplicates+v.phantoms, v.losses, v.deadLetters, v.nviolations, time.Since(began).Seconds())
}

// TestKillBatchHolderRepeatedly kills a worker while its handler is in the
// middle of a 100-entry batch, MaxDeliveries+1 times in a row (each time
// on another entry of the batch, as a crash unrelated to the entries
// would), restarting it under the same name, which takes its pending
// entries back at once. Then a worker runs undisturbed. The handler never
// fails, so no entry is guilty of anything: none may be dead-lettered, and
// each must be applied exactly once (state 100, one output per entry).
//
// The design: "A healthy entry is never dead-lettered because the process
// was killed, restarted or paused around it."
func TestKillBatchHolderRepeatedly(t *testing.T) {
	const n = 100
	began := time.Now()
	pr := startProcRun(t, n, time.Minute) // nobody claims: only the restarts re-deliver
	s := pr.slot("g-c0", n)
	kills := defaultMaxDeliveries + 1
	holdAt := []int{37, 12, 80, 55, 3, 91} // the entry each incarnation blocks on
	killed := 0
	for k := 1; k <= kills; k++ {
		s.env = []string{envHoldAt + "=" + strconv.Itoa(holdAt[(k-1)%len(holdAt)])}
		p := pr.cl.start(s)
		if err := pr.waitHeld(p, 60*time.Second); err != nil {
			t.Errorf("chaos: kill %d of %d: %v", k, kills, err)
			break
		}
		ps := pr.pending(s.name)
		counts := make(map[int64]int)
		for _, e := range ps {
			counts[e.RetryCount]++
		}
		pr.cl.kill(s, p)
		killed++
		t.Logf("chaos: kill %d: SIGKILL %s (pid %d) with its handler on entry #%d; %d entries pending for it, by delivery count %v",
			k, p.id, p.pid, holdAt[(k-1)%len(holdAt)], len(ps), counts)
		if k == 1 {
			require.Len(t, ps, n, "the first worker holds the whole batch")
		}
		for _, e := range ps {
			if k <= defaultMaxDeliveries {
				require.EqualValues(t, k, e.RetryCount, "entry %s: each restart re-delivers the batch once", e.ID)
			} else {
				// Suspects now: how they are re-delivered is the consumer's
				// business, but never fewer times than the kills.
				require.GreaterOrEqual(t, e.RetryCount, int64(k), "entry %s", e.ID)
			}
		}
	}

	// A worker runs to the end, undisturbed.
	s.env = nil
	p := pr.cl.start(s)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, status := pr.drained()
		if ok {
			break
		}
		if p.exited() || time.Now().After(deadline) {
			t.Errorf("chaos: not drained (worker %s exited: %v, err %v): %s", p.id, p.exited(), p.exitErr, status)
			break
		}
		time.Sleep(20 * time.Millisecond) // polling for the commits
	}
	pr.finish("kill-batch-holder", began, nil, fmt.Sprintf("kills=%d", killed))
}

// waitHeld waits for p's handler to block on its envHoldAt-th entry. It
// fails early when p settles every pending entry of the group without
// handling that many (the entries were dead-lettered instead, say).
func (pr *procRun) waitHeld(p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := pr.cl.waitHeld(p, 50*time.Millisecond); err == nil {
			return nil
		} else if p.exited() || time.Now().After(deadline) {
			return err
		}
		if ok, status := pr.drained(); ok {
			select {
			case <-p.held: // it came just before the poll
				return nil
			default:
			}
			dlq := pr.deadLetters()
			why := ""
			if len(dlq) > 0 {
				why = fmt.Sprintf("; first stx.error: %v", dlq[0].Values["stx.error"])
			}
			return fmt.Errorf("worker %s settled every entry without handling the one to block on (%s; %d dead letters%s)", p.id, status, len(dlq), why)
		}
	}
}

// crashText is what the dead letter of an entry whose handler killed the
// process must say.
var crashText = regexp.MustCompile(`(?i)crash|killed the process`)

// TestHandlerExitsOnOneEntry runs a handler that kills its process
// (os.Exit) whenever it handles entry #37 of 100, and restarts the worker
// under the same name each time it dies (at most maxRestarts times). That
// entry, and only that one, must end in the dead-letter stream, saying it
// crashed the process; the 99 others are applied exactly once, and nothing
// stays pending.
//
// The design: "Only the guilty entry is dead-lettered."
func TestHandlerExitsOnOneEntry(t *testing.T) {
	const (
		n           = 100
		guiltyI     = 37
		maxRestarts = 40
	)
	began := time.Now()
	pr := startProcRun(t, n, time.Minute)
	s := pr.slot("g-c0", n)
	s.env = []string{envExitOn + "=" + strconv.Itoa(guiltyI)}
	s.exits = exitCode
	guiltyID := pr.src.ids[guiltyI-1]

	p := pr.cl.start(s)
	exits, restarts := 0, 0
	deadline := time.Now().Add(3 * time.Minute)
	for {
		ok, status := pr.drained()
		if ok {
			break
		}
		if p.exited() {
			if !p.exitedAsTold() {
				t.Fatalf("chaos: worker %s exited with %v, not with the handler's code %d (log %s)", p.id, p.exitErr, exitCode, p.logPath)
			}
			exits++
			s.procs = slices.DeleteFunc(s.procs, func(q *proc) bool { return q == p })
			if restarts == maxRestarts {
				t.Errorf("chaos: the worker died %d times on entry #%d and is not restarted any more: %s", exits, guiltyI, status)
				break
			}
			restarts++
			p = pr.cl.start(s)
			continue
		}
		if time.Now().After(deadline) {
			t.Errorf("chaos: not drained after %d exits: %s", exits, status)
			break
		}
		time.Sleep(20 * time.Millisecond) // polling for the commits and for the exit
	}

	var theirs []string
	for _, m := range pr.deadLetters() {
		if id, _ := m.Values["stx.id"].(string); id == guiltyID {
			msg, _ := m.Values["stx.error"].(string)
			t.Logf("chaos: dead letter of entry #%d (%s): deliveries %v, error %q", guiltyI, guiltyID, m.Values["stx.deliveries"], msg)
			assert.Regexp(t, crashText, msg, "the dead letter of the entry whose handler exits says it crashed the process")
			theirs = append(theirs, msg)
		}
	}
	assert.Len(t, theirs, 1, "entry #%d is dead-lettered once", guiltyI)
	pr.finish("handler-exits", began, map[string]bool{guiltyID: true}, fmt.Sprintf("guilty=%s exits=%d restarts=%d", guiltyID, exits, restarts))
}
