package main

// -rebalance: how long a topic's partitions go unconsumed when a consumer
// process dies, and how long a new consumer takes to get its share.
//
// Each trial creates a topic of -partitions partitions, starts a producer
// (Producer.PublishKeyed over the 1,000 keys, one entry every
// -rebalance-interval) and -rebalance-workers worker processes — this
// binary again, with -worker — each running one streamtx consumer of the
// topic (Keyed counter, one publish per entry naming the worker and the
// partition, BatchSize 100, LeaseTTL under test, every other field its
// default). Then:
//
//  1. start: the workers are started a random part of a heartbeat apart;
//     from the last one's start until the leases are balanced among them;
//  2. kill: one second and a random part of a heartbeat later, the first
//     worker is SIGKILLed (its leases are not released, its connections
//     drop); from the kill until its partitions' leases
//     are held by the others (acquired), until each of those partitions
//     has an entry committed by another worker (consumed again: the time in
//     the ID of the first such published entry), and until the leases are
//     balanced among the survivors;
//  3. join: after a random part of a heartbeat, a new worker process is
//     started; from its start until its
//     first heartbeat is in the membership, until the leases are balanced
//     with it (no two workers' partition counts differ by more than one),
//     and until it commits its first entry.
//
// Leases are read every 5 ms (see leaseOwners). At the end the producer
// stops, the workers drain what is left and stop (SIGTERM), and the trial
// checks exactly-once as the throughput runs do: nothing pending, one
// published entry per produced entry, counters adding up to the entries.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/txn"
)

// workerSpec is what a -rebalance worker process is told (-worker, JSON).
type workerSpec struct {
	Redis    string        `json:"redis"`
	Topic    string        `json:"topic"`
	Group    string        `json:"group"`
	Consumer string        `json:"consumer"`
	Out      string        `json:"out"`
	LeaseTTL time.Duration `json:"lease_ttl"`
	Batch    int           `json:"batch"`
}

// workerReport is what a worker prints on stdout, as JSON, once its Run
// has returned (a killed worker prints nothing).
type workerReport struct {
	Consumer  string `json:"consumer"`
	Entries   int64  `json:"entries"` // committed
	Conflicts int64  `json:"conflicts"`
	Fenced    int64  `json:"fenced"`
	Assigned  int64  `json:"assigned"`
	Revoked   int64  `json:"revoked"`
	Errors    int64  `json:"errors"`
	FirstErr  string `json:"first_error,omitempty"`
	RunErr    string `json:"run_error,omitempty"`
}

// runWorker is the main of a worker process. It stops on SIGTERM, SIGINT,
// or when its standard input closes (the parent died).
func runWorker(specJSON string) error {
	var w workerSpec
	if err := json.Unmarshal([]byte(specJSON), &w); err != nil {
		return fmt.Errorf("-worker: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	rdb := redis.NewClient(&redis.Options{Addr: w.Redis})
	defer rdb.Close()

	rep := workerReport{Consumer: w.Consumer}
	var entries, conflicts, fenced, assigned, revoked, nerr atomic.Int64
	var mu sync.Mutex
	obs := streamtx.ObserverFunc(func(e streamtx.Event) {
		switch e.Kind {
		case streamtx.EventCommit:
			entries.Add(int64(len(e.IDs)))
		case streamtx.EventConflict:
			conflicts.Add(1)
		case streamtx.EventFenced:
			fenced.Add(1)
		case streamtx.EventAssigned:
			assigned.Add(1)
		case streamtx.EventRevoked:
			revoked.Add(1)
		case streamtx.EventError, streamtx.EventRetry, streamtx.EventDeadLetter:
			nerr.Add(1)
			mu.Lock()
			if rep.FirstErr == "" && e.Err != nil {
				rep.FirstErr = e.Kind.String() + ": " + e.Err.Error()
			}
			mu.Unlock()
		}
	})
	h := streamtx.Keyed(stateName, nil, func(_ context.Context, msg *streamtx.Message, c *counter, tx *txn.Tx) error {
		c.N++
		return tx.Publish(w.Out, map[string]any{"p": msg.Partition, "c": w.Consumer, "k": msg.Key, "v": c.N})
	})
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
		Topic:     w.Topic,
		Group:     w.Group,
		Consumer:  w.Consumer,
		BatchSize: w.Batch,
		LeaseTTL:  w.LeaseTTL,
		Observer:  obs,
	}, h)
	if err != nil {
		return err
	}
	if err := c.Run(ctx); err != nil {
		rep.RunErr = err.Error()
	}
	mu.Lock()
	defer mu.Unlock()
	rep.Entries, rep.Conflicts, rep.Fenced = entries.Load(), conflicts.Load(), fenced.Load()
	rep.Assigned, rep.Revoked, rep.Errors = assigned.Load(), revoked.Load(), nerr.Load()
	return json.NewEncoder(os.Stdout).Encode(rep)
}

// worker is a running worker process.
type worker struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.Closer
	out    strings.Builder // its stdout, complete once exited is closed
	exited chan struct{}
	err    error // what Wait returned, once exited is closed
}

// startWorker starts a worker process running spec.
func startWorker(spec workerSpec) (*worker, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	w := &worker{name: spec.Consumer, exited: make(chan struct{})}
	w.cmd = exec.Command(exe, "-worker", string(b))
	w.cmd.Stderr = os.Stderr
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if w.stdin, err = w.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := w.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		_, _ = io.Copy(&w.out, stdout)
		w.err = w.cmd.Wait()
		close(w.exited)
	}()
	return w, nil
}

// stop sends SIGTERM and waits for the worker to exit, killing it after
// timeout. It returns its report.
func (w *worker) stop(timeout time.Duration) (workerReport, error) {
	var rep workerReport
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.exited:
	case <-time.After(timeout):
		_ = w.cmd.Process.Kill()
		<-w.exited
		return rep, fmt.Errorf("worker %s did not stop within %v after SIGTERM", w.name, timeout)
	}
	_ = w.stdin.Close()
	if w.err != nil {
		return rep, fmt.Errorf("worker %s: %w", w.name, w.err)
	}
	if err := json.Unmarshal([]byte(w.out.String()), &rep); err != nil {
		return rep, fmt.Errorf("worker %s: report %q: %w", w.name, w.out.String(), err)
	}
	if rep.RunErr != "" {
		return rep, fmt.Errorf("worker %s: Run: %s", w.name, rep.RunErr)
	}
	return rep, nil
}

// kill SIGKILLs the worker and waits for it to be gone.
func (w *worker) kill() {
	_ = w.cmd.Process.Kill()
	<-w.exited
	_ = w.stdin.Close()
}

// rebalanceRun is one trial of -rebalance. Durations are from the event
// that starts the phase (starting the workers, the kill, starting the new
// worker).
type rebalanceRun struct {
	LeaseTTL  time.Duration `json:"lease_ttl_ns"`
	Heartbeat time.Duration `json:"heartbeat_ns"`
	Repeat    int           `json:"repeat"`
	Workers   int           `json:"workers"`

	StartBalanced time.Duration `json:"start_balanced_ns"`

	KillOwned    int           `json:"kill_owned"`     // partitions the killed worker held
	KillExpiry   time.Duration `json:"kill_expiry_ns"` // its leases' and heartbeat's latest expiry
	KillAcquired time.Duration `json:"kill_acquired_ns"`
	KillConsumed time.Duration `json:"kill_consumed_ns"`
	KillBalanced time.Duration `json:"kill_balanced_ns"`

	JoinBeat     time.Duration `json:"join_beat_ns"`
	JoinBalanced time.Duration `json:"join_balanced_ns"`
	JoinFirst    time.Duration `json:"join_first_commit_ns"`

	Produced  int64  `json:"produced"`
	Conflicts int64  `json:"conflicts"` // of the workers that stopped normally
	Fenced    int64  `json:"fenced"`
	Errors    int64  `json:"errors"`
	Check     string `json:"check"`
}

// runRebalance runs -rebalance-repeats trials per LeaseTTL, interleaved.
func (b *bench) runRebalance(ctx context.Context) ([]rebalanceRun, error) {
	var runs []rebalanceRun
	var errs []error
	for repeat := 1; repeat <= b.opt.rebalanceRepeats; repeat++ {
		for _, ttl := range b.opt.leaseTTLs {
			r, err := b.rebalanceTrial(ctx, ttl, repeat)
			if err != nil {
				r.Check = "ERROR: " + err.Error()
				errs = append(errs, fmt.Errorf("LeaseTTL %v repeat %d: %w", ttl, repeat, err))
			}
			fmt.Fprintf(os.Stderr, "rebalance LeaseTTL %v repeat %d: start %v; kill: acquired %v, consumed %v, balanced %v; join: beat %v, balanced %v, first commit %v; %s\n",
				ttl, repeat, ms(r.StartBalanced), ms(r.KillAcquired), ms(r.KillConsumed), ms(r.KillBalanced),
				ms(r.JoinBeat), ms(r.JoinBalanced), ms(r.JoinFirst), r.Check)
			runs = append(runs, r)
			if ctx.Err() != nil {
				return runs, ctx.Err()
			}
		}
	}
	return runs, errors.Join(errs...)
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// rebalanceTrial is one trial (see the top of this file).
func (b *bench) rebalanceTrial(ctx context.Context, ttl time.Duration, repeat int) (res rebalanceRun, err error) {
	res = rebalanceRun{LeaseTTL: ttl, Heartbeat: ttl / 3, Repeat: repeat, Workers: b.opt.rebalanceWorkers}
	prefix := b.newPrefix()
	out := prefix + "out"
	b.cleanup(prefix, out)
	defer b.cleanup(prefix, out)
	t, err := streamtx.CreateTopic(ctx, b.rdb, prefix+"topic", streamtx.TopicConfig{Partitions: b.opt.partitions})
	if err != nil {
		return res, err
	}
	phase := 3*ttl + 30*time.Second // bound on each phase

	// The producer.
	prod, err := streamtx.NewProducer(b.rdb, streamtx.ProducerConfig{})
	if err != nil {
		return res, err
	}
	pctx, stopProducer := context.WithCancel(ctx)
	defer stopProducer()
	var produced atomic.Int64
	prodErr := make(chan error, 1)
	go func() {
		tick := time.NewTicker(b.opt.rebalanceInterval)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-pctx.Done():
				prodErr <- nil
				return
			case <-tick.C:
			}
			_, err := prod.PublishKeyed(pctx, t.Name(), keyName(i), map[string]any{"k": keyName(i), "v": i})
			if err != nil {
				if pctx.Err() != nil {
					prodErr <- nil
				} else {
					prodErr <- err
				}
				return
			}
			produced.Add(1)
		}
	}()

	// The workers; whatever happens, none is left running.
	live := map[string]*worker{}
	defer func() {
		for _, w := range live {
			w.kill()
		}
	}()
	spawn := func(name string) error {
		w, err := startWorker(workerSpec{
			Redis: b.opt.redis, Topic: t.Name(), Group: group, Consumer: name,
			Out: out, LeaseTTL: ttl, Batch: 100,
		})
		if err != nil {
			return err
		}
		live[name] = w
		return nil
	}
	names := func() []string {
		var ns []string
		for n := range live {
			ns = append(ns, n)
		}
		slices.Sort(ns)
		return ns
	}

	// 1. start, each worker a random part of a heartbeat after the last,
	// so that their heartbeats are not in step (as with processes started
	// at different times): in step, a worker would look at the killed
	// one's leases just as they expire, and find them live or expired by
	// a hair.
	var t0 time.Time
	for i := range b.opt.rebalanceWorkers {
		if i > 0 {
			sleepCtx(ctx, rand.N(res.Heartbeat))
		}
		t0 = time.Now()
		if err := spawn("w" + strconv.Itoa(i)); err != nil {
			return res, err
		}
	}
	owners, err := waitBalanced(ctx, b.rdb, t, group, names(), phase)
	if err != nil {
		return res, fmt.Errorf("start: %w", err)
	}
	res.StartBalanced = time.Since(t0)
	// Let every worker consume for a while, so that the victim dies with
	// entries in hand; then kill it at a random point of its heartbeat
	// period.
	sleepCtx(ctx, time.Second+rand.N(res.Heartbeat))

	// 2. kill.
	victim := "w0"
	if owners, err = leaseOwners(ctx, b.rdb, t, group); err != nil {
		return res, err
	}
	parts := ownedBy(owners, victim)
	res.KillOwned = len(parts)
	expiry, err := b.expiries(ctx, t, victim, parts)
	if err != nil {
		return res, err
	}
	tKill := time.Now()
	live[victim].kill()
	delete(live, victim)
	res.KillExpiry = time.UnixMilli(expiry).Sub(tKill)
	survivors := names()
	acquired := map[int]bool{}
	deadline := time.Now().Add(phase)
	for res.KillBalanced == 0 {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("kill: not rebalanced after %v: owners %q", phase, owners)
		}
		sleepCtx(ctx, 5*time.Millisecond)
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		if owners, err = leaseOwners(ctx, b.rdb, t, group); err != nil {
			return res, err
		}
		now := time.Since(tKill)
		for _, p := range parts {
			if !acquired[p] && owners[p] != "" && owners[p] != victim {
				acquired[p] = true
				if len(acquired) == len(parts) {
					res.KillAcquired = now
				}
			}
		}
		if len(acquired) == len(parts) && balanced(owners, survivors) {
			res.KillBalanced = now
		}
	}
	first, err := b.firstCommits(ctx, out, tKill, phase, func(p int, c string) bool { return slices.Contains(parts, p) && c != victim }, len(parts))
	if err != nil {
		return res, fmt.Errorf("kill: %w", err)
	}
	res.KillConsumed = first

	// 3. join, at a random point of the others' heartbeat period.
	sleepCtx(ctx, rand.N(res.Heartbeat))
	joiner := "w" + strconv.Itoa(b.opt.rebalanceWorkers)
	tJoin := time.Now()
	if err := spawn(joiner); err != nil {
		return res, err
	}
	all := names()
	membersKey := keys.Members(t.Name(), group)
	deadline = time.Now().Add(phase)
	for res.JoinBalanced == 0 {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("join: not rebalanced after %v: owners %q", phase, owners)
		}
		sleepCtx(ctx, 5*time.Millisecond)
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		now := time.Since(tJoin)
		if res.JoinBeat == 0 {
			ms, err := b.rdb.ZRange(ctx, membersKey, 0, -1).Result()
			if err != nil {
				return res, err
			}
			if slices.ContainsFunc(ms, func(m string) bool { return instanceConsumer(m) == joiner }) {
				res.JoinBeat = now
			}
		}
		if owners, err = leaseOwners(ctx, b.rdb, t, group); err != nil {
			return res, err
		}
		if balanced(owners, all) {
			res.JoinBalanced = now
		}
	}
	if res.JoinFirst, err = b.firstCommits(ctx, out, tJoin, phase, func(_ int, c string) bool { return c == joiner }, 1); err != nil {
		return res, fmt.Errorf("join: %w", err)
	}

	// Drain and stop.
	stopProducer()
	if err := <-prodErr; err != nil {
		return res, fmt.Errorf("producer: %w", err)
	}
	res.Produced = produced.Load()
	deadline = time.Now().Add(phase)
	for {
		n, err := b.rdb.XLen(ctx, out).Result()
		if err != nil {
			return res, err
		}
		if n >= res.Produced || time.Now().After(deadline) {
			break
		}
		sleepCtx(ctx, 10*time.Millisecond)
	}
	var errs []error
	for _, name := range names() {
		rep, err := live[name].stop(phase)
		delete(live, name)
		errs = append(errs, err)
		res.Conflicts += rep.Conflicts
		res.Fenced += rep.Fenced
		res.Errors += rep.Errors
		if rep.FirstErr != "" {
			errs = append(errs, fmt.Errorf("worker %s: %s", name, rep.FirstErr))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	res.Check = b.check(ctx, stxTopicKeyed, "", t, out, int(res.Produced))
	return res, nil
}

// expiries returns the latest expiry (Redis's clock, ms) of the leases of
// parts and of name's heartbeat in the membership.
func (b *bench) expiries(ctx context.Context, t *streamtx.Topic, name string, parts []int) (int64, error) {
	var latest int64
	for _, p := range parts {
		space, err := keys.NewSpace(t.Stream(p), group)
		if err != nil {
			return 0, err
		}
		s, err := b.rdb.HGet(ctx, space.Lease(), "until").Result()
		if err != nil {
			return 0, err
		}
		until, _ := strconv.ParseInt(s, 10, 64)
		latest = max(latest, until)
	}
	ms, err := b.rdb.ZRangeWithScores(ctx, keys.Members(t.Name(), group), 0, -1).Result()
	if err != nil {
		return 0, err
	}
	for _, m := range ms {
		if id, _ := m.Member.(string); instanceConsumer(id) == name {
			latest = max(latest, int64(m.Score))
		}
	}
	return latest, nil
}

// firstCommits scans the output stream from since (by the time in the
// entry IDs) until, for want distinct partitions, an entry with fields p
// and c that match is found, and returns the latest of those first times
// minus since. It waits for such entries up to timeout.
func (b *bench) firstCommits(ctx context.Context, out string, since time.Time, timeout time.Duration, match func(p int, c string) bool, want int) (time.Duration, error) {
	if want == 0 {
		return 0, nil
	}
	first := map[int]int64{} // partition -> ms
	cursor := strconv.FormatInt(since.UnixMilli(), 10)
	deadline := time.Now().Add(timeout)
	for len(first) < want {
		msgs, err := b.rdb.XRangeN(ctx, out, cursor, "+", 1000).Result()
		if err != nil {
			return 0, err
		}
		for _, m := range msgs {
			cursor = "(" + m.ID
			p, _ := strconv.Atoi(fmt.Sprint(m.Values["p"]))
			c := fmt.Sprint(m.Values["c"])
			if _, seen := first[p]; !seen && match(p, c) {
				msPart, _, _ := strings.Cut(m.ID, "-")
				first[p], _ = strconv.ParseInt(msPart, 10, 64)
			}
		}
		if len(first) >= want {
			break
		}
		if len(msgs) == 0 {
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("%d of %d partitions had their first matching commit within %v", len(first), want, timeout)
			}
			sleepCtx(ctx, 10*time.Millisecond)
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
		}
	}
	var latest int64
	for _, t := range first {
		latest = max(latest, t)
	}
	return time.UnixMilli(latest).Sub(since), nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// printRebalance prints the -rebalance trials and their medians.
func printRebalance(w io.Writer, rep *report) {
	fmt.Fprintf(w, "## streamtx rebalance timings\n\n")
	if len(rep.Rebalance) > 0 {
		r0 := rep.Rebalance[0]
		fmt.Fprintf(w, "%d partitions, %d worker processes (one streamtx consumer each: Keyed counter + 1 publish, BatchSize 100, other Config fields default), "+
			"a producer publishing keyed entries all along. Kill: SIGKILL of a worker, from the kill. Join: a new worker process, from its start (exec included). "+
			"Expiry: the latest expiry of the killed worker's leases and heartbeat (by Redis's clock); after expiry: acquired minus expiry. Times are medians of the trials; leases polled every 5 ms.\n\n",
			rep.Machine.Partitions, r0.Workers)
	}
	fmt.Fprintln(w, "| LeaseTTL | Heartbeat | trials | start: balanced | kill: expiry | kill: acquired | (after expiry) | kill: consumed again | kill: balanced | join: heartbeat | join: balanced | join: first commit | conflicts | fenced | check |")
	fmt.Fprintln(w, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
	var ttls []time.Duration
	for _, r := range rep.Rebalance {
		if !slices.Contains(ttls, r.LeaseTTL) {
			ttls = append(ttls, r.LeaseTTL)
		}
	}
	for _, ttl := range ttls {
		var rs []rebalanceRun
		for _, r := range rep.Rebalance {
			if r.LeaseTTL == ttl {
				rs = append(rs, r)
			}
		}
		col := func(f func(rebalanceRun) time.Duration) string {
			xs := make([]float64, len(rs))
			for i, r := range rs {
				xs[i] = float64(f(r))
			}
			return fmt.Sprintf("%.2f s", median(xs)/1e9)
		}
		var conflicts, fenced int64
		check := "ok"
		for _, r := range rs {
			conflicts += r.Conflicts
			fenced += r.Fenced
			if r.Check != "ok" && check == "ok" {
				check = fmt.Sprintf("repeat %d: %s", r.Repeat, r.Check)
			}
		}
		fmt.Fprintf(w, "| %v | %v | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %s |\n",
			ttl, (ttl / 3).Round(time.Millisecond), len(rs),
			col(func(r rebalanceRun) time.Duration { return r.StartBalanced }),
			col(func(r rebalanceRun) time.Duration { return r.KillExpiry }),
			col(func(r rebalanceRun) time.Duration { return r.KillAcquired }),
			col(func(r rebalanceRun) time.Duration { return r.KillAcquired - r.KillExpiry }),
			col(func(r rebalanceRun) time.Duration { return r.KillConsumed }),
			col(func(r rebalanceRun) time.Duration { return r.KillBalanced }),
			col(func(r rebalanceRun) time.Duration { return r.JoinBeat }),
			col(func(r rebalanceRun) time.Duration { return r.JoinBalanced }),
			col(func(r rebalanceRun) time.Duration { return r.JoinFirst }),
			conflicts, fenced, check)
	}
	fmt.Fprintf(w, "\nEvery trial:\n\n")
	fmt.Fprintln(w, "| LeaseTTL | repeat | start: balanced | killed owned | kill: expiry | kill: acquired | (after expiry) | kill: consumed again | kill: balanced | join: heartbeat | join: balanced | join: first commit | entries | check |")
	fmt.Fprintln(w, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
	for _, r := range rep.Rebalance {
		fmt.Fprintf(w, "| %v | %d | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n",
			r.LeaseTTL, r.Repeat, ms(r.StartBalanced), r.KillOwned, ms(r.KillExpiry), ms(r.KillAcquired), ms(r.KillAcquired-r.KillExpiry), ms(r.KillConsumed),
			ms(r.KillBalanced), ms(r.JoinBeat), ms(r.JoinBalanced), ms(r.JoinFirst), r.Produced, r.Check)
	}
	printMachine(w, rep)
}
