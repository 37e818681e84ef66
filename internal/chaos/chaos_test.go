//go:build linux

// Package chaos is streamtx's fault harness: consumers run as separate
// processes (this test binary re-executed as TestChaosWorker) against a
// dedicated redis-server, through a fault proxy, while the harness kills,
// pauses, duplicates and cuts them off, restarts Redis and rolls it back to
// a lagging snapshot. Afterwards every source entry's effects must appear
// exactly once, the state must equal the fold of all entries, and nothing
// may stay pending.
//
// A short run (about 400 entries, every fault kind at least once) is part
// of go test ./...; a long run:
//
//	go test ./internal/chaos -run 'TestChaos$' -chaos.n 20000 -chaos.seconds 300 -timeout 30m
//
// Every run logs its seed first; -chaos.seed replays its fault schedule
// (the schedule, not the exact interleaving of processes). -chaos.faults
// selects fault kinds; -chaos.keep keeps the worker logs (and, on failure,
// the server's AOF), which are kept anyway when the run fails. The run ends
// with one line in a stable format:
//
//	chaos summary: result=PASS seed=… entries=400 groups=2 workers=6 faults=19 kill=… zombie=… dup=… cut=… drop=… redis-restart=… snapshot=1 duplicates=0 losses=0 dead-letters=0 violations=0 elapsed=12.0s
//
// where drop counts commit replies actually lost and violations counts
// every failed invariant (including counters and state that do not add
// up). TestRollbackSameVersionOtherHistory replays, deterministically and
// in-process, the lost update the snapshot fault finds.
//
// TestChaosDense is the dense profile, the case of the issue "Healthy
// entries are dead-lettered when processes die around them": one group of
// three workers with batches of 100 and a counter handler that works 5ms
// per entry and never fails, ClaimIdle 2s, MaxDeliveries 5 (the default),
// and a SIGKILL (restart under the same name) or a SIGSTOP past ClaimIdle
// every 1-2s, half the time of the process holding the entries delivered
// most often, now and then a second process under a running name; faults
// go on until every entry is settled. Every entry is healthy, so every
// dead letter is a violation. Its short form (6000 entries, under a minute
// with -race on 2 cores) is part of go test ./...; the long run:
//
//	go test ./internal/chaos -run 'TestChaosDense$' -chaos.n 20000 -chaos.seconds 300 -timeout 30m
//
// (-chaos.seconds caps the fault phase; -chaos.seed replays a schedule;
// -chaos.faults does not apply.) It ends with one line:
//
//	chaos dense summary: result=PASS seed=… entries=6000 workers=3 batch=100 handler=5ms claim-idle=2s faults=24 kill=… zombie=… dup=… processes=… max-deliveries=… duplicates=0 losses=0 dead-letters=0 violations=0 elapsed=38.4s
//
// where max-deliveries is the highest delivery count an entry was committed
// or dead-lettered with. TestKillBatchHolderRepeatedly and
// TestHandlerExitsOnOneEntry replay its two sides deterministically: a
// batch whose process is killed MaxDeliveries+1 times (no dead letter), and
// a handler that kills its process on one entry (that entry dead-lettered,
// alone).
//
// TestChaosTopic is the partitioned profile: a topic of 8 partitions and 24
// keys, each entry carrying its per-key sequence number, consumed by three
// workers of one group with a Keyed handler (last seq and count per key),
// LeaseTTL 1s and Heartbeat 150ms so that partitions change hands all
// through the run, under TestChaos's faults (a zombie is a worker stopped
// past LeaseTTL). Besides duplicates, losses and dead letters it counts
// inversions: an entry applied before an earlier entry of its key, in the
// output stream or as a handler saw it. Its short form (800 entries) is part
// of go test ./...; the long run:
//
//	go test ./internal/chaos -run 'TestChaosTopic$' -chaos.n 20000 -chaos.seconds 300 -timeout 30m
//
// It ends with a "chaos topic summary:" line (see topic_test.go).
// TestTopicZombieIsFenced replays its zombie deterministically: a worker
// stopped between handling a batch and committing it, its partitions taken
// over and drained by another, then resumed — its commit is refused by the
// lease's fence and nothing is written twice.
package chaos

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/faultproxy"
	"github.com/streamtx/streamtx/internal/redistest"
)

var (
	seedFlag    = flag.Uint64("chaos.seed", 0, "seed of the fault schedule (0: a random seed, logged)")
	nFlag       = flag.Int("chaos.n", 400, "number of source entries")
	secondsFlag = flag.Float64("chaos.seconds", 10, "length of the fault phase in seconds")
	keepFlag    = flag.Bool("chaos.keep", false, "keep the worker logs even when the run passes")
	faultsFlag  = flag.String("chaos.faults", "all", "comma-separated fault kinds to inject (kill,zombie,dup,cut,drop,redis-restart,snapshot), or all")
	laggardFlag = flag.Bool("chaos.laggard", true, "after the snapshot restore, hold each group's last committer until its state version is back (see restoreSnapshot)")
)

// Timings of every worker. ClaimIdle must exceed the slowest batch: at most
// maxBatch entries of handlerDelay each.
const (
	workersPerGroup = 3
	maxBatch        = 8
	block           = 20 * time.Millisecond
	claimIdle       = 400 * time.Millisecond
	claimInterval   = 100 * time.Millisecond
	commitTimeout   = 5 * time.Second
	maxDeliveries   = 100
	maxReadDelay    = 2 * time.Second // the slowest pace
	numKeys         = 7
)

const (
	srcStream = "src"
	outStream = "out"
	outKeyed  = "outk"
)

func TestChaos(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = rand.Uint64()
	}
	n := *nFlag
	window := time.Duration(*secondsFlag * float64(time.Second))
	t.Logf("chaos: seed=%d entries=%d window=%v (replay: go test ./internal/chaos -run 'TestChaos$' -chaos.seed=%d -chaos.n=%d -chaos.seconds=%g -chaos.faults=%s -chaos.laggard=%v)",
		seed, n, window, seed, n, *secondsFlag, *faultsFlag, *laggardFlag)
	if n < 1 {
		t.Fatalf("chaos: -chaos.n must be positive")
	}
	kinds := chosenFaults(t)
	rnd := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	began := time.Now()
	ctx := context.Background()

	srv := redistest.StartServer(t, "--appendonly", "yes", "--appendfsync", "always")
	proxy := faultproxy.New(t, srv.Addr())
	rdb := srv.Client(t)
	dir := runDir(t)

	src := preload(t, rdb, n)

	roles := []*role{
		{group: "g", handler: handlerCounter, out: outStream, pace: filepath.Join(dir, "pace-g")},
		{group: "gk", handler: handlerKeyed, out: outKeyed, pace: filepath.Join(dir, "pace-gk")},
	}
	pace := newPacer(roles, n, window)
	pace.write()
	cl := newCluster(t, dir, []string{
		envAddr + "=" + proxy.Addr(),
		envStream + "=" + srcStream,
		envBlock + "=" + block.String(),
		envClaimIdle + "=" + claimIdle.String(),
		envClaimInterval + "=" + claimInterval.String(),
		envCommitTimeout + "=" + commitTimeout.String(),
		envMaxDeliveries + "=" + strconv.Itoa(maxDeliveries),
	})
	for _, r := range roles {
		for i := range workersPerGroup {
			s := &slot{
				name:    fmt.Sprintf("%s-c%d", r.group, i),
				role:    r,
				batch:   1 + rnd.IntN(maxBatch),
				retries: []int{-1, 3}[rnd.IntN(2)], // go-redis's own retries off or on
			}
			cl.slots = append(cl.slots, s)
			t.Logf("chaos: worker %s: group %s, handler %s, batch %d, go-redis MaxRetries %d",
				s.name, r.group, r.handler, s.batch, s.retries)
			cl.start(s)
		}
	}
	for _, p := range cl.live() {
		if err := cl.waitReady(p, 60*time.Second); err != nil {
			t.Fatalf("chaos: %v", err)
		}
	}

	// Fault phase, with the handlers paced so that work lasts as long.
	pctx, stopPace := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pace.run(pctx, rdb, dir)
	}()
	in := &injector{
		t: t, rnd: rnd, cl: cl, srv: srv, proxy: proxy, rdb: rdb,
		stream: srcStream, out: []string{outStream, outKeyed},
		claimIdle: claimIdle, counts: make(map[string]int), kinds: kinds,
	}
	in.run(window)
	stopPace()
	wg.Wait()
	pace.full()
	cl.resumeAll()
	in.logf("faults stopped; draining")

	// Drain: both groups have delivered the last entry and hold nothing.
	lastID := src.ids[len(src.ids)-1]
	drainTimeout := 60*time.Second + time.Duration(n)*5*time.Millisecond
	drainAndStop(ctx, t, rdb, cl, in.logf, srcStream, lastID, drainTimeout, "g", "gk")

	// Invariants.
	counts := in.counts
	counts[faultDrop] = proxy.Fired() // replies actually lost
	for _, k := range kinds {
		if counts[k] == 0 {
			t.Errorf("chaos: fault %q was never injected", k)
		}
	}
	verdicts := []*verdict{
		checkGroup(ctx, rdb, src, "g", outStream, false),
		checkGroup(ctx, rdb, src, "gk", outKeyed, true),
	}
	var dups, losses, dead, violations int
	for _, v := range verdicts {
		dups += v.duplicates + v.phantoms
		losses += v.losses
		dead += v.deadLetters
		violations += v.nviolations
		for _, msg := range v.violations {
			t.Errorf("chaos: VIOLATION group %s: %s", v.group, msg)
		}
	}
	ok, status := groupStatus(ctx, rdb, srcStream, lastID, "g", "gk")
	if !ok {
		t.Errorf("chaos: pending entries remain after the workers stopped: %s", status)
	}

	r := reportRun(t, "chaos", cl, counts, rdb, dir)
	t.Logf("chaos summary: result=%s seed=%d entries=%d groups=2 workers=%d faults=%d %s duplicates=%d losses=%d dead-letters=%d violations=%d elapsed=%.1fs",
		r.result, seed, n, workersPerGroup*len(roles), r.total, r.faults, dups, losses, dead, violations, time.Since(began).Seconds())
}

// runReport is what reportRun found: the result word, the faults injected
// by kind ("kill=3 zombie=1 …") and in all, and the events the worker logs
// counted.
type runReport struct {
	result string
	faults string
	total  int
	events map[string]int
}

// reportRun logs the events of cl's worker logs, keeps the append-only
// files of a failed run, and returns what a run's summary line needs.
func reportRun(t *testing.T, what string, cl *cluster, counts map[string]int, rdb *redis.Client, dir string) runReport {
	t.Helper()
	r := runReport{result: "PASS", events: cl.events()}
	var faults []string
	for _, k := range faultKinds {
		faults = append(faults, fmt.Sprintf("%s=%d", k, counts[k]))
		r.total += counts[k]
	}
	r.faults = strings.Join(faults, " ")
	var evs []string
	for k, c := range r.events {
		evs = append(evs, fmt.Sprintf("%s=%d", k, c))
	}
	sort.Strings(evs)
	t.Logf("%s: events (all worker logs): %s; worker processes started: %d", what, strings.Join(evs, " "), len(cl.all))
	if t.Failed() {
		r.result = "FAIL"
		keepAOF(t, rdb, dir)
	}
	return r
}

// keepAOF copies the server's append-only files, the full history of every
// write of the run, next to the worker logs.
func keepAOF(t *testing.T, rdb *redis.Client, dir string) {
	cfg, err := rdb.ConfigGet(context.Background(), "dir").Result()
	if err != nil {
		t.Logf("chaos: cannot keep the AOF: %v", err)
		return
	}
	src := filepath.Join(cfg["dir"], "appendonlydir")
	if err := os.CopyFS(filepath.Join(dir, "appendonlydir"), os.DirFS(src)); err != nil {
		t.Logf("chaos: cannot keep the AOF: %v", err)
	}
}

// runDir returns a directory for worker logs and pace files. It is removed
// when the test passes (unless -chaos.keep) and kept, with its path logged,
// when it fails.
func runDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "streamtx-chaos-")
	if err != nil {
		t.Fatalf("chaos: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() || *keepFlag {
			t.Logf("chaos: worker logs kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// preload appends n entries {i, k} to the source stream.
func preload(t *testing.T, rdb *redis.Client, n int) *source {
	ctx := context.Background()
	src := &source{stream: srcStream, key: make(map[string]string, n), count: make(map[string]int)}
	for start := 1; start <= n; start += 1000 {
		pipe := rdb.Pipeline()
		var cmds []*redis.StringCmd
		var ks []string
		for i := start; i < start+1000 && i <= n; i++ {
			k := strconv.Itoa(i % numKeys)
			ks = append(ks, k)
			cmds = append(cmds, pipe.XAdd(ctx, &redis.XAddArgs{Stream: srcStream, Values: []any{"i", i, "k", k}}))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("chaos: preload: %v", err)
		}
		for j, c := range cmds {
			src.ids = append(src.ids, c.Val())
			src.key[c.Val()] = ks[j]
			src.count[ks[j]]++
		}
	}
	return src
}

// pacer sets the workers' delay before each read of new entries, per group,
// so that the output grows along the fault window, reaching about 90% of
// the entries at its end: faults then always meet work in progress, on any
// machine and under -race.
type pacer struct {
	roles  []*role
	n      int
	window time.Duration
	delay  []time.Duration
}

func newPacer(roles []*role, n int, window time.Duration) *pacer {
	p := &pacer{roles: roles, n: n, window: window, delay: make([]time.Duration, len(roles))}
	// A first guess: workersPerGroup workers reading batches of
	// maxBatch/2 on average must read 0.9n entries in window.
	guess := time.Duration(float64(window) * workersPerGroup * maxBatch / 2 / (0.9 * float64(n)))
	for i := range p.delay {
		p.delay[i] = min(guess, maxReadDelay)
	}
	return p
}

// run adjusts the delays every 200ms until ctx is done: a group ahead of
// the target line by more than a few batches stops reading new entries
// (maxReadDelay) at once; a group behind speeds up gradually. Every second
// it appends the progress to pace.log in the run directory.
func (p *pacer) run(ctx context.Context, rdb *redis.Client, dir string) {
	log, err := os.Create(filepath.Join(dir, "pace.log"))
	if err == nil {
		defer log.Close()
	}
	start := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	slack := float64(workersPerGroup * maxBatch)
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		target := 0.9 * float64(p.n) * min(1, float64(time.Since(start))/float64(p.window))
		lens := make([]int64, len(p.roles))
		for i, r := range p.roles {
			l, err := rdb.XLen(ctx, r.out).Result()
			if err != nil {
				continue // Redis is restarting
			}
			lens[i] = l
			d := p.delay[i]
			switch {
			case float64(l) > target+slack:
				d = maxReadDelay
			case float64(l) > target:
				d = min(maxReadDelay, max(d*3/2, time.Millisecond))
			default:
				d = d * 2 / 3
				if d < time.Millisecond {
					d = 0
				}
			}
			p.delay[i] = d
		}
		p.write()
		if log != nil && i%5 == 0 {
			fmt.Fprintf(log, "t+%.1fs target=%.0f out=%v delay=%v\n", time.Since(start).Seconds(), target, lens, p.delay)
		}
	}
}

// full removes the delays, for the drain.
func (p *pacer) full() {
	clear(p.delay)
	p.write()
}

func (p *pacer) write() {
	for i, r := range p.roles {
		tmp := r.pace + ".tmp"
		if err := os.WriteFile(tmp, []byte(strconv.FormatInt(p.delay[i].Microseconds(), 10)), 0o644); err == nil {
			os.Rename(tmp, r.pace)
		}
	}
}

// drainAndStop waits up to drainTimeout for groups to have read and
// acknowledged everything of stream up to lastID (dumping the workers'
// goroutines when they do not), then stops every worker with SIGTERM and
// reports what the workers logged as problems.
func drainAndStop(ctx context.Context, t *testing.T, rdb *redis.Client, cl *cluster, logf func(string, ...any),
	stream, lastID string, drainTimeout time.Duration, groups ...string) {
	t.Helper()
	status := func() (bool, string) { return groupStatus(ctx, rdb, stream, lastID, groups...) }
	hang := func() {
		for _, g := range groups {
			cs, err := rdb.XInfoConsumers(ctx, stream, g).Result()
			t.Logf("chaos: consumers of %s: %+v %v", g, cs, err)
		}
	}
	drainAndStopWhen(t, cl, logf, status, drainTimeout, hang)
}

// drainAndStopWhen is drainAndStop for any workload: drained says whether
// everything is read and acknowledged (and how things stand), hang logs
// what may explain a drain that did not come.
func drainAndStopWhen(t *testing.T, cl *cluster, logf func(string, ...any),
	drained func() (bool, string), drainTimeout time.Duration, hang func()) {
	t.Helper()
	deadline := time.Now().Add(drainTimeout)
	for {
		ok, status := drained()
		if ok {
			logf("drained: %s", status)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("chaos: HANG: not drained %v after the faults stopped: %s", drainTimeout, status)
			hang()
			for _, p := range cl.dumpAll() {
				t.Logf("chaos: goroutines of worker %s (pid %d) dumped in %s", p.id, p.pid, p.logPath)
			}
			break
		}
		time.Sleep(100 * time.Millisecond) // polling for the drain
	}
	for _, p := range cl.terminateAll(30 * time.Second) {
		t.Errorf("chaos: HANG: worker %s (pid %d) did not exit within 30s of SIGTERM; goroutine dump in %s", p.id, p.pid, p.logPath)
	}
	for _, msg := range cl.problems() {
		t.Errorf("chaos: %s", msg)
	}
	for _, msg := range cl.logFindings() {
		t.Errorf("chaos: %s", msg)
	}
}

// chosenFaults returns the fault kinds -chaos.faults names (all by default).
func chosenFaults(t *testing.T) []string {
	t.Helper()
	if *faultsFlag == "all" {
		return faultKinds
	}
	kinds := strings.Split(*faultsFlag, ",")
	for _, k := range kinds {
		if !slices.Contains(faultKinds, k) {
			t.Fatalf("chaos: -chaos.faults: unknown kind %q (kinds: %s)", k, strings.Join(faultKinds, ","))
		}
	}
	return kinds
}
