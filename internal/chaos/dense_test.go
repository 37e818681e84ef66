//go:build linux

package chaos

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/redistest"
)

// The dense profile (TestChaosDense) is the case of the issue "Healthy
// entries are dead-lettered when processes die around them": one group of
// three workers, batches of 100, a counter handler that works 5ms per entry
// and never fails, ClaimIdle 2s, MaxDeliveries at its default (5); a kill
// or a pause past ClaimIdle every 1-2s, and now and then a second process
// under a running name. Nothing else: no cut connections, no lost replies,
// no Redis restarts. Every entry is healthy, so any dead letter is a
// violation.
const (
	denseWorkers      = 3
	denseBatch        = 100
	denseHandlerDelay = 5 * time.Millisecond
	denseClaimIdle    = 2 * time.Second
	denseCommitTO     = 5 * time.Second
	denseMinGap       = time.Second // between two faults
	denseMaxGap       = 2 * time.Second
	denseN            = 6000 // entries, unless -chaos.n is given
	denseSeconds      = 60   // the longest fault phase, unless -chaos.seconds is given
)

// Fault weights of the dense profile, out of 20.
var denseKinds = []struct {
	kind   string
	weight int
}{{faultKill, 9}, {faultZombie, 9}, {faultDup, 2}}

// TestChaosDense runs the dense profile. Faults go on until every entry is
// settled (committed or dead-lettered) or -chaos.seconds have passed. The
// short form (6000 entries) takes well under a minute, -race included; the
// long form is in the package comment.
func TestChaosDense(t *testing.T) {
	seed, n, seconds, window := runParams(t, denseN, denseSeconds)
	t.Logf("chaos dense: seed=%d entries=%d window=%v (replay: go test ./internal/chaos -run 'TestChaosDense$' -chaos.seed=%d -chaos.n=%d -chaos.seconds=%g)",
		seed, n, window, seed, n, seconds)
	rnd := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	began := time.Now()
	ctx := context.Background()

	srv := redistest.StartServer(t)
	rdb := srv.Client(t)
	dir := runDir(t)
	src := preload(t, rdb, n)
	r := &role{group: "g", handler: handlerCounter, out: outStream, pace: filepath.Join(dir, "pace-g")}
	if err := os.WriteFile(r.pace, []byte("0"), 0o644); err != nil { // no pacing
		t.Fatalf("chaos: %v", err)
	}
	cl := newCluster(t, dir, []string{
		envAddr + "=" + srv.Addr(),
		envStream + "=" + srcStream,
		envBlock + "=" + block.String(),
		envClaimIdle + "=" + denseClaimIdle.String(),
		envClaimInterval + "=" + (denseClaimIdle / 2).String(), // the default
		envCommitTimeout + "=" + denseCommitTO.String(),
		envMaxDeliveries + "=0", // the default
		envHandlerDelay + "=" + denseHandlerDelay.String(),
	})
	for i := range denseWorkers {
		s := &slot{
			name:    fmt.Sprintf("g-c%d", i),
			role:    r,
			batch:   denseBatch,
			retries: []int{-1, 3}[rnd.IntN(2)],
		}
		cl.slots = append(cl.slots, s)
		t.Logf("chaos dense: worker %s: batch %d, handler %v per entry, go-redis MaxRetries %d", s.name, s.batch, denseHandlerDelay, s.retries)
		cl.start(s)
	}
	for _, p := range cl.live() {
		if err := cl.waitReady(p, 60*time.Second); err != nil {
			t.Fatalf("chaos: %v", err)
		}
	}

	lastID := src.ids[len(src.ids)-1]
	in := &denseInjector{
		injector: injector{
			t: t, rnd: rnd, cl: cl, rdb: rdb, stream: srcStream,
			claimIdle: denseClaimIdle, counts: make(map[string]int),
		},
		settled: func() bool {
			ok, _ := groupStatus(ctx, rdb, srcStream, lastID, "g")
			return ok
		},
	}
	in.run(window)
	in.logf("faults stopped; draining")

	drainTimeout := 60*time.Second + time.Duration(n)*5*time.Millisecond
	drainAndStop(ctx, t, rdb, cl, in.logf, srcStream, lastID, drainTimeout, "g")

	v := checkGroup(ctx, rdb, src, "g", outStream, false)
	for _, msg := range v.violations {
		t.Errorf("chaos: VIOLATION group g: %s", msg)
	}
	if ok, status := groupStatus(ctx, rdb, srcStream, lastID, "g"); !ok {
		t.Errorf("chaos: pending entries remain after the workers stopped: %s", status)
	}
	maxD := highestDelivery(ctx, t, rdb)
	total := 0
	var faults string
	for _, k := range denseKinds {
		faults += fmt.Sprintf(" %s=%d", k.kind, in.counts[k.kind])
		total += in.counts[k.kind]
	}
	result := "PASS"
	if t.Failed() {
		result = "FAIL"
	}
	t.Logf("chaos dense summary: result=%s seed=%d entries=%d workers=%d batch=%d handler=%v claim-idle=%v faults=%d%s processes=%d max-deliveries=%d duplicates=%d losses=%d dead-letters=%d violations=%d elapsed=%.1fs",
		result, seed, n, denseWorkers, denseBatch, denseHandlerDelay, denseClaimIdle, total, faults, len(cl.all), maxD,
		v.duplicates+v.phantoms, v.losses, v.deadLetters, v.nviolations, time.Since(began).Seconds())
}

// highestDelivery returns the highest delivery count any entry was handled
// or dead-lettered with.
func highestDelivery(ctx context.Context, t *testing.T, rdb *redis.Client) int {
	most := 0
	pubs, err := readPublished(ctx, rdb, outStream)
	if err != nil {
		t.Errorf("chaos: %v", err)
	}
	for _, p := range pubs {
		if d, _ := strconv.Atoi(p.d); d > most {
			most = d
		}
	}
	sp, err := keys.NewSpace(srcStream, "g")
	if err != nil {
		t.Fatalf("chaos: %v", err)
	}
	dlq, err := readStream(ctx, rdb, sp.DeadLetters())
	if err != nil {
		t.Errorf("chaos: %v", err)
	}
	for _, m := range dlq {
		s, _ := m.Values["stx.deliveries"].(string)
		if d, _ := strconv.Atoi(s); d > most {
			most = d
		}
	}
	return most
}

// denseInjector injects the dense profile's faults. Unlike injector.run,
// no fault blocks the schedule: the end of a pause, the restart after a
// kill and the end of a duplicate are timed events, so faults follow each
// other every 1-2s while earlier ones are still under way. It runs on the
// test goroutine.
type denseInjector struct {
	injector
	settled func() bool // every entry committed or dead-lettered

	resumes  []timed // paused processes and when to resume them
	restarts []timed // slots killed and when to start them again
	dups     []timed // duplicate processes and when to end the duplication
}

// timed is a pending end of a fault.
type timed struct {
	at  time.Time // for a duplicate: zero until it is ready
	s   *slot
	p   *proc         // the paused process, or the duplicate
	old *proc         // the process the duplicate runs beside
	d   time.Duration // how long the duplicate runs once ready
}

// run injects faults until the entries are settled or window has passed,
// then ends the faults still under way.
func (in *denseInjector) run(window time.Duration) {
	in.start = time.Now()
	end := in.start.Add(window)
	next := in.start.Add(in.between(denseMinGap, denseMaxGap))
	nextCheck := in.start
	for {
		now := time.Now()
		in.endDue(now, false)
		if !now.Before(nextCheck) {
			if in.settled() {
				in.logf("every entry is settled")
				break
			}
			nextCheck = now.Add(250 * time.Millisecond)
		}
		if !now.Before(end) {
			in.logf("fault window of %v is over", window)
			break
		}
		if !now.Before(next) {
			in.inject()
			next = time.Now().Add(in.between(denseMinGap, denseMaxGap))
		}
		time.Sleep(20 * time.Millisecond) // the scheduler's tick
	}
	in.endDue(time.Now(), true)
}

// endDue ends the faults whose time has come, or all of them.
func (in *denseInjector) endDue(now time.Time, all bool) {
	due := func(e timed) bool { return all || !now.Before(e.at) }
	for _, e := range in.resumes {
		if due(e) && !e.p.exited() && slices.Contains(e.s.procs, e.p) {
			in.cl.resume(e.p)
			in.logf("zombie: SIGCONT %s (pid %d)", e.p.id, e.p.pid)
		}
	}
	in.resumes = slices.DeleteFunc(in.resumes, due)
	for _, e := range in.restarts {
		if due(e) {
			np := in.cl.start(e.s)
			in.logf("kill: restarted %s as %s (pid %d)", e.s.name, np.id, np.pid)
		}
	}
	in.restarts = slices.DeleteFunc(in.restarts, due)
	var later []timed
	for _, e := range in.dups {
		if !slices.Contains(e.s.procs, e.p) || !slices.Contains(e.s.procs, e.old) {
			continue // a kill ended the duplication already
		}
		if e.at.IsZero() && !all {
			select {
			case <-e.p.ready:
				e.at = now.Add(e.d)
			case <-e.p.done:
			default:
			}
			later = append(later, e)
			continue
		}
		if !due(e) {
			later = append(later, e)
			continue
		}
		victim := e.old
		if in.rnd.IntN(2) == 0 {
			victim = e.p
		}
		if victim.stopped {
			in.cl.resume(victim)
		}
		in.cl.kill(e.s, victim)
		in.logf("dup: SIGKILL %s (pid %d), ending the duplication of %q", victim.id, victim.pid, e.s.name)
	}
	in.dups = later
}

// inject starts one fault, drawn by weight.
func (in *denseInjector) inject() {
	total := 0
	for _, k := range denseKinds {
		total += k.weight
	}
	w := in.rnd.IntN(total)
	kind := denseKinds[0].kind
	for _, k := range denseKinds {
		if w < k.weight {
			kind = k.kind
			break
		}
		w -= k.weight
	}
	var ok bool
	switch kind {
	case faultKill:
		ok = in.denseKill()
	case faultZombie:
		ok = in.denseZombie()
	case faultDup:
		ok = in.denseDup()
	}
	if ok {
		in.counts[kind]++
	}
}

// victim picks a process that is neither paused nor killed: half the time
// one whose name holds the entries delivered most often (the batch a
// process keeps dying around, as in the issue), else one whose name holds
// entries, else any. It returns nil when every process is paused or
// killed.
func (in *denseInjector) victim() (*slot, *proc) {
	most := in.deliveriesByConsumer()
	var all, busy, worst []int
	var ss []*slot
	var ps []*proc
	top := int64(0)
	for _, s := range in.cl.slots {
		for _, p := range s.procs {
			if !p.stopped && !p.exited() {
				ss, ps = append(ss, s), append(ps, p)
				top = max(top, most[s.name])
			}
		}
	}
	for i, s := range ss {
		all = append(all, i)
		if most[s.name] > 0 {
			busy = append(busy, i)
		}
		if most[s.name] == top && top > 0 {
			worst = append(worst, i)
		}
	}
	pick := all
	switch {
	case len(worst) > 0 && in.rnd.IntN(2) == 0:
		pick = worst
	case len(busy) > 0:
		pick = busy
	}
	if len(pick) == 0 {
		return nil, nil
	}
	i := pick[in.rnd.IntN(len(pick))]
	return ss[i], ps[i]
}

// deliveriesByConsumer returns, for each consumer name, the highest
// delivery count among the entries pending for it (absent: none pending,
// or Redis did not answer).
func (in *denseInjector) deliveriesByConsumer() map[string]int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ps, err := in.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: in.stream, Group: "g", Start: "-", End: "+", Count: 100000,
	}).Result()
	most := make(map[string]int64)
	if err != nil {
		return most
	}
	for _, e := range ps {
		most[e.Consumer] = max(most[e.Consumer], e.RetryCount)
	}
	return most
}

// denseKill SIGKILLs a running process (see victim); its name is started again within ClaimIdle/2 unless a duplicate still
// runs under it.
func (in *denseInjector) denseKill() bool {
	s, p := in.victim()
	if p == nil {
		return false
	}
	held := in.pendingOf(s)
	in.cl.kill(s, p)
	if len(s.procs) > 0 {
		in.logf("kill: SIGKILL %s (pid %d), %d pending for %q; its duplicate runs on", p.id, p.pid, held, s.name)
		return true
	}
	down := in.between(0, in.claimIdle/2)
	in.restarts = append(in.restarts, timed{at: time.Now().Add(down), s: s})
	in.logf("kill: SIGKILL %s (pid %d), %d pending for %q; restart in %v", p.id, p.pid, held, s.name, down.Round(time.Millisecond))
	return true
}

// denseZombie SIGSTOPs a running process (see victim) for 1.25-2 times
// ClaimIdle, keeping at least one process running.
func (in *denseInjector) denseZombie() bool {
	if len(in.cl.live())-len(in.resumes) <= 1 {
		return false
	}
	s, p := in.victim()
	if p == nil {
		return false
	}
	held := in.pendingOf(s)
	in.cl.pause(p)
	stop := in.between(in.claimIdle*5/4, 2*in.claimIdle)
	in.resumes = append(in.resumes, timed{at: time.Now().Add(stop), s: s, p: p})
	in.logf("zombie: SIGSTOP %s (pid %d), %d pending for %q, for %v", p.id, p.pid, held, s.name, stop.Round(time.Millisecond))
	return true
}

// denseDup starts a second process under the name of a running one (half
// the time the one holding the entries delivered most often); one of
// the two is killed 0.3-1.5s after the new one is ready. One duplication
// at a time.
func (in *denseInjector) denseDup() bool {
	if len(in.dups) > 0 {
		return false
	}
	var cands []*slot
	for _, s := range in.cl.slots {
		if len(s.procs) == 1 && !s.procs[0].stopped {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		return false
	}
	s := cands[in.rnd.IntN(len(cands))]
	if in.rnd.IntN(2) == 0 {
		// The name holding the entries delivered most often: its pending
		// entries are delivered again to the duplicate at once.
		most := in.deliveriesByConsumer()
		for _, c := range cands {
			if most[c.name] > most[s.name] {
				s = c
			}
		}
	}
	old := s.procs[0]
	np := in.cl.start(s)
	both := in.between(300*time.Millisecond, 1500*time.Millisecond)
	in.dups = append(in.dups, timed{s: s, p: np, old: old, d: both})
	in.logf("dup: %s (pid %d) started beside %s (pid %d) as %q, for %v once ready", np.id, np.pid, old.id, old.pid, s.name, both.Round(time.Millisecond))
	return true
}

// runParams returns a run's seed (-chaos.seed, or drawn), entry count and
// fault window: -chaos.n and -chaos.seconds when given on the command line,
// else n and seconds, the run's short form.
func runParams(t *testing.T, n, seconds int) (seed uint64, entries int, secs float64, window time.Duration) {
	t.Helper()
	seed = *seedFlag
	if seed == 0 {
		seed = rand.Uint64()
	}
	entries, secs = n, float64(seconds)
	flag.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "chaos.n":
			entries = *nFlag
		case "chaos.seconds":
			secs = *secondsFlag
		}
	})
	if entries < 1 {
		t.Fatalf("chaos: -chaos.n must be positive")
	}
	return seed, entries, secs, time.Duration(secs * float64(time.Second))
}
