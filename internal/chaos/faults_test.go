//go:build linux

package chaos

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/faultproxy"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/internal/redistest"
)

// Fault kinds, as named in logs and in the summary line.
const (
	faultKill     = "kill"          // SIGKILL a worker, restart it under the same name
	faultZombie   = "zombie"        // SIGSTOP a worker past ClaimIdle, then SIGCONT
	faultDup      = "dup"           // a second process under a live name
	faultCut      = "cut"           // cut every client connection at the proxy
	faultDrop     = "drop"          // lose the replies of commit EVALSHAs
	faultRestart  = "redis-restart" // stop or kill redis-server, start it again
	faultSnapshot = "snapshot"      // restore an older consistent snapshot of all keys
)

// faultKinds lists every kind; each selected kind (-chaos.faults) is
// injected at least once per run.
var faultKinds = []string{faultKill, faultZombie, faultDup, faultCut, faultDrop, faultRestart, faultSnapshot}

// extraKinds are the kinds drawn at random between the mandatory ones. The
// lagging snapshot happens once per run.
var extraKinds = []string{faultKill, faultZombie, faultDup, faultCut, faultCut, faultDrop, faultDrop, faultRestart}

// snapshotScript returns {key, DUMP, key, DUMP, …} of every key, in one
// atomic step: a consistent image of the whole keyspace, as a lagging
// replica would hold.
var snapshotScript = redis.NewScript(`
local out = {}
for _, k in ipairs(redis.call('KEYS', '*')) do
  out[#out + 1] = k
  out[#out + 1] = redis.call('DUMP', k)
end
return out`)

// restoreScript makes the keyspace equal to a snapshot (ARGV: key, dump,
// …) in one atomic step: keys created since are deleted, the others
// restored. It returns how many keys it deleted.
var restoreScript = redis.NewScript(`
local keep = {}
for i = 1, #ARGV, 2 do keep[ARGV[i]] = true end
local deleted = 0
for _, k in ipairs(redis.call('KEYS', '*')) do
  if not keep[k] then
    redis.call('DEL', k)
    deleted = deleted + 1
  end
end
for i = 1, #ARGV, 2 do
  redis.call('RESTORE', ARGV[i], 0, ARGV[i + 1], 'REPLACE')
end
return deleted`)

// commitSHA is the SHA1 of the commit script: the only command whose bytes
// carry it is the commit's EVALSHA.
func commitSHA() string {
	src, err := os.ReadFile("../../lua/commit.lua") // the sources are not API
	if err != nil {
		panic(err) // a test binary run outside its package directory
	}
	sum := sha1.Sum(src)
	return hex.EncodeToString(sum[:])
}

// injector injects faults from one seeded PRNG. It runs on the test
// goroutine.
type injector struct {
	t         *testing.T
	rnd       *rand.Rand
	cl        *cluster
	srv       *redistest.Server
	proxy     *faultproxy.Proxy
	rdb       *redis.Client // direct to the server, not through the proxy
	stream    string
	out       []string      // output streams, to report what a restore rolled back
	claimIdle time.Duration // how long others take to take a stopped worker's work over (ClaimIdle, or a topic's LeaseTTL)
	kinds     []string      // the kinds to inject, each at least once
	start     time.Time
	window    time.Duration
	counts    map[string]int

	// Workload hooks; nil: those of a plain stream.
	holding    func(s *slot) int64                 // what s's name holds: pendingOf, or a topic's partitions
	committers func(ctx context.Context) []laggard // lastCommitters
	commitHash string                              // the SHA1 a drop looks for: commitSHA()
	onRestore  func()                              // called when the snapshot is restored, every worker paused

	snap      []any // the pending snapshot: key, dump, …
	snapAt    time.Time
	snapTaken bool
	restored  bool
	restoreAt time.Time
}

func (in *injector) logf(format string, args ...any) {
	in.t.Helper()
	in.t.Logf("chaos: t+%6.3fs "+format, append([]any{time.Since(in.start).Seconds()}, args...)...)
}

// between returns a duration uniformly drawn from [lo, hi).
func (in *injector) between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(in.rnd.Int64N(int64(hi-lo)))
}

// run injects faults for window and until every kind has been injected at
// least once (and the snapshot restored). The mandatory faults are spread
// at random times over the first 80% of the window; between them, random
// faults follow each other after random gaps.
func (in *injector) run(window time.Duration) {
	in.start, in.window = time.Now(), window
	end := in.start.Add(window)
	mandatory := slices.Clone(in.kinds)
	var extras []string
	for _, k := range extraKinds {
		if slices.Contains(in.kinds, k) {
			extras = append(extras, k)
		}
	}
	in.rnd.Shuffle(len(mandatory), func(i, j int) { mandatory[i], mandatory[j] = mandatory[j], mandatory[i] })
	// A drop counts only once a commit reply is lost, so it needs commits
	// after it: schedule it first. (Later faults can be delayed past the
	// window by slow ones before them, and land when the work is done.)
	if i := slices.Index(mandatory, faultDrop); i > 0 {
		mandatory = append(append([]string{faultDrop}, mandatory[:i]...), mandatory[i+1:]...)
	}
	due := make([]time.Time, len(mandatory))
	for i := range due {
		due[i] = in.start.Add(time.Duration(float64(window) * (0.05 + 0.75*in.rnd.Float64())))
	}
	slices.SortFunc(due, func(a, b time.Time) int { return a.Compare(b) })
	gap := func() time.Duration { return in.between(100*time.Millisecond, 1200*time.Millisecond) }
	nextExtra := in.start.Add(gap())

	for {
		now := time.Now()
		restorePending := in.snapTaken && !in.restored
		if restorePending && !now.Before(in.restoreAt) {
			in.restoreSnapshot()
			continue
		}
		done := len(mandatory) == 0 && !restorePending
		if done && !now.Before(end) {
			return
		}
		if len(mandatory) > 0 && !now.Before(due[0]) {
			k := mandatory[0]
			mandatory, due = mandatory[1:], due[1:]
			in.inject(k)
			continue
		}
		if now.Before(end) && !now.Before(nextExtra) && len(extras) > 0 {
			in.inject(extras[in.rnd.IntN(len(extras))])
			nextExtra = time.Now().Add(gap())
			continue
		}
		// Sleep until the next scheduled fault: this is the schedule, not a
		// wait for a condition.
		var next []time.Time
		if now.Before(end) {
			next = append(next, end)
			if len(extras) > 0 {
				next = append(next, nextExtra)
			}
		}
		if len(mandatory) > 0 {
			next = append(next, due[0])
		}
		if restorePending {
			next = append(next, in.restoreAt)
		}
		time.Sleep(time.Until(slices.MinFunc(next, time.Time.Compare)))
	}
}

func (in *injector) inject(kind string) {
	in.t.Helper()
	switch kind {
	case faultKill:
		in.kill()
	case faultZombie:
		in.zombie()
	case faultDup:
		in.dup()
	case faultCut:
		in.cut()
	case faultDrop:
		in.drop()
	case faultRestart:
		in.restartRedis()
	case faultSnapshot:
		in.takeSnapshot()
	default:
		in.t.Fatalf("chaos: unknown fault %q", kind)
	}
	in.counts[kind]++
}

// pickSlot returns a random slot with a live process, preferring those
// that hold pending entries when busy is set.
func (in *injector) pickSlot(busy bool) *slot {
	var live, withPending []*slot
	for _, s := range in.cl.slots {
		if len(s.procs) == 0 {
			continue
		}
		live = append(live, s)
		if busy && in.holds(s) > 0 {
			withPending = append(withPending, s)
		}
	}
	if len(withPending) > 0 {
		return withPending[in.rnd.IntN(len(withPending))]
	}
	if len(live) == 0 {
		in.t.Fatalf("chaos: no live worker")
	}
	return live[in.rnd.IntN(len(live))]
}

// holds returns what s's name holds (see pendingOf), or -1 when Redis does
// not answer.
func (in *injector) holds(s *slot) int64 {
	if in.holding != nil {
		return in.holding(s)
	}
	return in.pendingOf(s)
}

// pendingOf returns the number of entries pending for s's name, or -1 when
// Redis does not answer.
func (in *injector) pendingOf(s *slot) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cs, err := in.rdb.XInfoConsumers(ctx, in.stream, s.role.group).Result()
	if err != nil {
		return -1
	}
	for _, c := range cs {
		if c.Name == s.name {
			return c.Pending
		}
	}
	return 0
}

func (in *injector) kill() {
	s := in.pickSlot(in.rnd.IntN(2) == 0)
	p := s.procs[0]
	in.cl.kill(s, p)
	down := in.between(0, in.claimIdle)
	time.Sleep(down)
	np := in.cl.start(s)
	in.logf("kill: SIGKILL %s (pid %d), restarted %v later as %s (pid %d)", p.id, p.pid, down.Round(time.Millisecond), np.id, np.pid)
}

func (in *injector) zombie() {
	s := in.pickSlot(true)
	p := s.procs[0]
	in.cl.pause(p)
	at := time.Now()
	before := in.holds(s)
	minStop := in.between(in.claimIdle+in.claimIdle/2, 3*in.claimIdle)
	deadline := at.Add(3*in.claimIdle + 5*time.Second)
	left := before
	for {
		time.Sleep(50 * time.Millisecond) // polling the pending list
		left = in.holds(s)
		if el := time.Since(at); el >= minStop && (left == 0 || time.Now().After(deadline)) {
			break
		}
	}
	in.cl.resume(p)
	in.logf("zombie: SIGSTOP %s (pid %d) for %v: %d held (pending entries, or a topic's partitions) when stopped, %d still its own at SIGCONT",
		p.id, p.pid, time.Since(at).Round(time.Millisecond), before, left)
}

func (in *injector) dup() {
	s := in.pickSlot(false)
	old := s.procs[0]
	np := in.cl.start(s)
	if err := in.cl.waitReady(np, 60*time.Second); err != nil {
		in.t.Errorf("chaos: duplicate: %v", err)
	}
	both := in.between(300*time.Millisecond, 1500*time.Millisecond)
	time.Sleep(both)
	victim := old
	if in.rnd.IntN(2) == 0 {
		victim = np
	}
	in.cl.kill(s, victim)
	in.logf("dup: %s (pid %d) ran beside %s (pid %d) as %q for %v after ready; SIGKILL %s",
		np.id, np.pid, old.id, old.pid, s.name, both.Round(time.Millisecond), victim.id)
}

func (in *injector) cut() {
	n := 1 + in.rnd.IntN(3)
	conns := in.proxy.Conns()
	for i := range n {
		if i > 0 {
			time.Sleep(in.between(0, 30*time.Millisecond))
		}
		in.proxy.CutAll()
	}
	in.logf("cut: CutAll x%d (%d connections open before)", n, conns)
	in.counts[faultCut] += n - 1
}

func (in *injector) drop() {
	n := 1 + in.rnd.IntN(3)
	before := in.proxy.Fired()
	hash := in.commitHash
	if hash == "" {
		hash = commitSHA()
	}
	in.proxy.DropReply(hash, n)
	deadline := time.Now().Add(5 * time.Second)
	for in.proxy.Fired() < before+n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling for the replies to be lost
	}
	in.logf("drop: armed %d lost commit replies, %d lost within 5s", n, in.proxy.Fired()-before)
}

func (in *injector) restartRedis() {
	mode := "SIGTERM"
	if in.rnd.IntN(2) == 0 {
		mode = "SIGKILL"
		in.srv.Kill()
	} else {
		in.srv.Stop()
	}
	down := in.between(0, 500*time.Millisecond)
	time.Sleep(down)
	in.srv.Restart(in.t)
	in.logf("redis-restart: %s, down %v, restarted (pid %d)", mode, down.Round(time.Millisecond), in.srv.Pid())
}

// takeSnapshot records an image of every key, with the workers paused so
// that none is in the middle of anything the harness could see.
func (in *injector) takeSnapshot() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in.cl.pauseAll()
	res, err := snapshotScript.Run(ctx, in.rdb, nil).Slice()
	in.cl.resumeAll()
	if err != nil {
		in.t.Fatalf("chaos: snapshot: %v", err)
	}
	in.snap, in.snapAt, in.snapTaken = res, time.Now(), true
	// The replica lags by 5-25% of the fault window.
	in.restoreAt = time.Now().Add(max(500*time.Millisecond, in.between(in.window/20, in.window/4)))
	in.logf("snapshot: image of %d keys taken (out lengths %v); restore due in %v",
		len(res)/2, in.outLens(), time.Until(in.restoreAt).Round(time.Millisecond))
}

// restoreSnapshot rolls the whole keyspace back to the snapshot, as a
// failover to a lagging replica would, with the workers paused; half the
// time it also cuts their connections, as a failover does.
//
// In each group, the worker that made the last commit before the rollback
// plays a client that was partitioned during the failover: it stays paused
// until the others have brought the group's state record back to the
// version it had before the rollback, then runs alone for a moment.
func (in *injector) restoreSnapshot() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := in.outLens()
	in.cl.pauseAll()
	var lags []laggard
	if *laggardFlag {
		if in.committers != nil {
			lags = in.committers(ctx)
		} else {
			lags = in.lastCommitters(ctx)
		}
	}
	deleted, err := restoreScript.Run(ctx, in.rdb, nil, in.snap...).Int()
	if in.onRestore != nil {
		in.onRestore()
	}
	cut := in.rnd.IntN(2) == 0
	if cut {
		in.proxy.CutAll()
	}
	held := make(map[*proc]bool)
	for _, l := range lags {
		for _, p := range l.s.procs {
			held[p] = true
		}
	}
	for _, p := range in.cl.live() {
		if !held[p] {
			in.cl.resume(p)
		}
	}
	if err != nil {
		in.cl.resumeAll()
		in.t.Fatalf("chaos: restore snapshot: %v", err)
	}
	in.restored, in.snap = true, nil
	in.logf("snapshot: restored image taken %v ago (%d keys deleted, cut=%v): out lengths %v -> %v",
		time.Since(in.snapAt).Round(time.Millisecond), deleted, cut, before, in.outLens())
	for _, l := range lags {
		in.releaseLaggard(l)
	}
	in.cl.resumeAll()
}

// laggard is the last committer of a group before a rollback.
type laggard struct {
	s       *slot
	key     string // the state record it committed last
	version int64  // that record's version before the rollback
}

// lastCommitters finds, per group, the worker that published the last
// output entry, and the version of the state record it wrote.
func (in *injector) lastCommitters(ctx context.Context) []laggard {
	var lags []laggard
	seen := make(map[*role]bool)
	for _, s := range in.cl.slots {
		r := s.role
		if seen[r] {
			continue
		}
		seen[r] = true
		last, err := in.rdb.XRevRangeN(ctx, r.out, "+", "-", 1).Result()
		if err != nil || len(last) == 0 {
			continue
		}
		by, _ := last[0].Values["by"].(string)
		k, _ := last[0].Values["k"].(string)
		sp, err := keys.NewSpace(in.stream, r.group)
		if err != nil {
			in.t.Fatalf("chaos: %v", err)
		}
		key := sp.State(stateName)
		if r.handler == handlerKeyed {
			key = sp.KeyedState(stateName, k)
		}
		rec, err := record.Load(ctx, in.rdb, key)
		if err != nil || rec.Version == 0 {
			continue
		}
		v := rec.Version
		for _, t := range in.cl.slots {
			if t.name == by && t.role == r && len(t.procs) > 0 {
				lags = append(lags, laggard{s: t, key: key, version: v})
			}
		}
	}
	return lags
}

// releaseLaggard waits (polling) until l's state record is back at the
// version it had before the rollback, then pauses the other workers of its
// group and resumes l alone until the record changes (or 3s), then resumes
// everyone. If the record passes that version first, or within 5s, it just
// resumes l.
func (in *injector) releaseLaggard(l laggard) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	deadline := start.Add(5 * time.Second)
	var others []*proc
	for _, s := range in.cl.slots {
		if s.role == l.s.role && s != l.s {
			others = append(others, s.procs...)
		}
	}
	for {
		rec, err := record.Load(ctx, in.rdb, l.key)
		v := rec.Version
		if err == nil && v == l.version {
			for _, p := range others {
				in.cl.pause(p)
			}
			for _, p := range l.s.procs {
				in.cl.resume(p)
			}
			alone := time.Now()
			after := v
			for time.Since(alone) < 3*time.Second {
				time.Sleep(2 * time.Millisecond) // polling for the laggard's commit
				if rec, err = record.Load(ctx, in.rdb, l.key); err == nil && rec.Version != v {
					break
				}
			}
			for _, p := range others {
				in.cl.resume(p)
			}
			in.logf("snapshot: laggard %s paused %v until %s was back at version %d, then ran alone %v: version now %d",
				l.s.name, alone.Sub(start).Round(time.Millisecond), l.key, l.version,
				time.Since(alone).Round(time.Millisecond), after)
			return
		}
		if (err == nil && v > l.version) || time.Now().After(deadline) {
			for _, p := range l.s.procs {
				in.cl.resume(p)
			}
			in.logf("snapshot: laggard %s resumed after %v; %s at version %d (before the rollback %d, err %v)",
				l.s.name, time.Since(start).Round(time.Millisecond), l.key, v, l.version, err)
			return
		}
		time.Sleep(time.Millisecond) // polling for the version
	}
}

func (in *injector) outLens() []int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	lens := make([]int64, len(in.out))
	for i, k := range in.out {
		lens[i], _ = in.rdb.XLen(ctx, k).Result()
	}
	return lens
}
