// Command bench measures streamtx against hand-written Redis Streams loops,
// in one process against one Redis, on pre-loaded entries.
//
//	go run ./bench -redis 127.0.0.1:6379     # full matrix, 3 repeats (minutes)
//	go run ./bench -quick                    # small version (CI smoke test)
//	go run ./bench -flat 1000000             # memory flatness on a long stream
//	go run ./bench -rebalance                # topic rebalance timings (worker processes)
//
// For every repeat it runs every combination of scenario, batch size and
// consumer count once, in order, so that drift (other load, Redis memory,
// CPU frequency) affects all of them alike. It prints a Markdown table of
// entries/s (median of the repeats) and of each scenario's ratio to raw-alo
// (raw-alo-topic for the topic scenarios, see topic.go) at the same batch
// size and consumer count, with allocations, bytes and CPU per entry; then
// the commit latency at batch 1 under light load; then the peak RSS and the
// machine. See bench/README.md.
//
// Every run works under its own key prefix, "bench:<pid>:<run>:", and
// deletes its keys (and the "stx:{bench:<pid>:<run>:…" keys streamtx derives)
// afterwards. It never flushes the database; it refuses a Redis that is not
// on a loopback address.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

type options struct {
	redis           string
	n               int
	repeats         int
	quick           bool
	jsonPath        string
	scenarios       []string
	batches         []int
	consumers       []int
	latencyN        int
	latencyInterval time.Duration
	flat            int
	flatBatch       int
	flatWindow      int
	cpuProfile      string
	memProfile      string
	runTimeout      time.Duration
	// Topic scenarios.
	partitions int
	rawTopic   string
	topicCold  bool
	leaseTTL   time.Duration
	// -rebalance mode.
	rebalance         bool
	leaseTTLs         []time.Duration
	rebalanceWorkers  int
	rebalanceRepeats  int
	rebalanceInterval time.Duration
	worker            string
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags() (options, error) {
	var o options
	defaultAddr := os.Getenv("REDIS_ADDR")
	if defaultAddr == "" {
		defaultAddr = "127.0.0.1:6379"
	}
	flag.StringVar(&o.redis, "redis", defaultAddr, "Redis address, loopback only (default: $REDIS_ADDR, else 127.0.0.1:6379)")
	flag.IntVar(&o.n, "n", 100000, "entries per run (-quick: 5000)")
	flag.IntVar(&o.repeats, "repeats", 3, "repeats of the whole matrix; the median is shown (-quick: 1)")
	flag.BoolVar(&o.quick, "quick", false, "small version: 5000 entries, 1 repeat, batch 1 and 100, short latency phase")
	flag.StringVar(&o.jsonPath, "json", "", "also write the results as JSON to this file (- for stdout)")
	scenarios := flag.String("scenarios", strings.Join(allScenarios, ","), "scenarios to run")
	batches := flag.String("batches", "1,10,100", "batch sizes (-quick: 1,100)")
	consumers := flag.String("consumers", "1,4", "consumer counts")
	flag.IntVar(&o.latencyN, "latency-n", 2000, "entries per scenario in the latency phase; 0 skips it (-quick: 300)")
	flag.DurationVar(&o.latencyInterval, "latency-interval", 1500*time.Microsecond, "pause between two entries in the latency phase")
	flag.IntVar(&o.flat, "flat", 0, "run only the memory-flatness mode: stream this many entries through a Stateful+publish consumer")
	flag.IntVar(&o.flatBatch, "flat-batch", 100, "batch size in -flat mode")
	flag.IntVar(&o.flatWindow, "flat-window", 50000, "most entries in the source stream at once in -flat mode")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the measured runs to this file (samples carry scenario/batch/consumers labels)")
	flag.StringVar(&o.memProfile, "memprofile", "", "write an allocation profile to this file at the end")
	flag.DurationVar(&o.runTimeout, "run-timeout", 10*time.Minute, "give up on one run after this long")
	flag.IntVar(&o.partitions, "partitions", 8, "partitions of the topic scenarios and of -rebalance")
	flag.StringVar(&o.rawTopic, "raw-topic", rawSplit, "how raw-alo-topic's consumers share the partitions: "+strings.Join(rawTopicModes, ", "))
	flag.BoolVar(&o.topicCold, "topic-cold", false, "topic scenarios: start the consumers with the entries there, timing their join and first rebalance too")
	flag.DurationVar(&o.leaseTTL, "lease-ttl", 0, "Config.LeaseTTL of the topic scenarios; 0: streamtx's default (-quick: 2s)")
	flag.BoolVar(&o.rebalance, "rebalance", false, "run only the rebalance mode: worker processes on a topic, SIGKILL one, start one")
	leaseTTLs := flag.String("lease-ttls", "10s,2s", "-rebalance: the LeaseTTLs to measure")
	flag.IntVar(&o.rebalanceWorkers, "rebalance-workers", 3, "-rebalance: worker processes before the kill")
	flag.IntVar(&o.rebalanceRepeats, "rebalance-repeats", 3, "-rebalance: trials per LeaseTTL")
	flag.DurationVar(&o.rebalanceInterval, "rebalance-interval", 2*time.Millisecond, "-rebalance: pause between two entries of the producer")
	flag.StringVar(&o.worker, "worker", "", "internal: run as a -rebalance worker with this JSON spec")
	flag.Parse()
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		if !set["n"] {
			o.n = 5000
		}
		if !set["repeats"] {
			o.repeats = 1
		}
		if !set["batches"] {
			*batches = "1,100"
		}
		if !set["latency-n"] {
			o.latencyN = 300
		}
		if !set["run-timeout"] {
			o.runTimeout = time.Minute
		}
		if !set["lease-ttl"] {
			o.leaseTTL = 2 * time.Second
		}
	}
	for _, f := range strings.Split(*leaseTTLs, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil || d < 100*time.Millisecond {
			return o, fmt.Errorf("-lease-ttls: %q is not a duration of at least 100ms", f)
		}
		o.leaseTTLs = append(o.leaseTTLs, d)
	}
	for _, s := range strings.Split(*scenarios, ",") {
		s = strings.TrimSpace(s)
		if _, ok := scenarioDesc[s]; !ok {
			return o, fmt.Errorf("-scenarios: unknown %q (have %s)", s, strings.Join(allScenarios, ", "))
		}
		o.scenarios = append(o.scenarios, s)
	}
	var err error
	if o.batches, err = intList("batches", *batches, 1, 1000); err != nil {
		return o, err
	}
	if o.consumers, err = intList("consumers", *consumers, 1, 64); err != nil {
		return o, err
	}
	switch {
	case o.n < 1:
		return o, errors.New("-n must be at least 1")
	case o.repeats < 1:
		return o, errors.New("-repeats must be at least 1")
	case o.latencyN < 0:
		return o, errors.New("-latency-n must not be negative")
	case o.latencyInterval <= 0:
		return o, errors.New("-latency-interval must be positive")
	case o.flat < 0:
		return o, errors.New("-flat must not be negative")
	case o.flatBatch < 1 || o.flatBatch > 1000:
		return o, errors.New("-flat-batch must be within 1..1000")
	case o.flatWindow < 2*o.flatBatch:
		return o, errors.New("-flat-window must be at least twice -flat-batch")
	case o.runTimeout <= 0:
		return o, errors.New("-run-timeout must be positive")
	case o.partitions < 1 || o.partitions > 1024:
		return o, errors.New("-partitions must be within 1..1024")
	case !slices.Contains(rawTopicModes, o.rawTopic):
		return o, fmt.Errorf("-raw-topic: %q is not one of %s", o.rawTopic, strings.Join(rawTopicModes, ", "))
	case o.leaseTTL != 0 && o.leaseTTL < 100*time.Millisecond:
		return o, errors.New("-lease-ttl must be 0 (the default) or at least 100ms")
	case o.rebalanceWorkers < 2:
		return o, errors.New("-rebalance-workers must be at least 2 (one is killed)")
	case o.rebalanceRepeats < 1:
		return o, errors.New("-rebalance-repeats must be at least 1")
	case o.rebalanceInterval <= 0:
		return o, errors.New("-rebalance-interval must be positive")
	}
	return o, nil
}

func intList(name, s string, lo, hi int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < lo || v > hi {
			return nil, fmt.Errorf("-%s: %q is not a number within %d..%d", name, f, lo, hi)
		}
		out = append(out, v)
	}
	return out, nil
}

// bench holds what every run shares.
type bench struct {
	opt  options
	rdb  *redis.Client
	pid  int
	runs int // runs started so far; names each run's key prefix
	// peakReset is whether VmHWM can be reset before a run, so that a run's
	// own peak RSS can be read.
	peakReset bool
}

// newPrefix returns the key prefix of a new run.
func (b *bench) newPrefix() string {
	b.runs++
	return fmt.Sprintf("bench:%d:%d:", b.pid, b.runs)
}

// cleanup deletes the keys of the run with the given prefix, reporting a
// failure on stderr.
func (b *bench) cleanup(prefix string, streams ...string) {
	if err := deleteRun(context.Background(), b.rdb, prefix, streams...); err != nil {
		fmt.Fprintf(os.Stderr, "bench: cleanup of %s*: %v\n", prefix, err)
	}
}

func run() error {
	opt, err := parseFlags()
	if err != nil {
		return err
	}
	if opt.worker != "" {
		return runWorker(opt.worker)
	}
	if err := checkLoopback(opt.redis); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rdb := redis.NewClient(&redis.Options{Addr: opt.redis})
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err = rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		return fmt.Errorf("Redis at %s: %w", opt.redis, err)
	}
	b := &bench{opt: opt, rdb: rdb, pid: os.Getpid(), peakReset: resetPeakRSS()}
	// Whatever happens, leave no key of this process behind.
	defer b.cleanup(fmt.Sprintf("bench:%d:", b.pid))

	rep := &report{Machine: machine(ctx, rdb, opt)}
	if opt.cpuProfile != "" {
		f, err := os.Create(opt.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	if opt.rebalance {
		start := time.Now()
		rep.Rebalance, err = b.runRebalance(ctx)
		rep.PeakRSSMiB = mib(procStatusKiB("VmHWM"))
		rep.Machine.Elapsed = time.Since(start).Round(time.Second).String()
		rep.Machine.LoadEnd = loadAvg()
		printRebalance(os.Stdout, rep)
		return errors.Join(err, writeJSON(opt.jsonPath, rep))
	}
	if opt.flat > 0 {
		rep.FlatBatch, rep.FlatWindow = opt.flatBatch, opt.flatWindow
		rep.Flat, err = b.runFlat(ctx)
		rep.FlatCheck = "ok"
		if err != nil {
			rep.FlatCheck = "ERROR: " + err.Error()
		}
		rep.PeakRSSMiB = mib(procStatusKiB("VmHWM"))
		rep.Machine.LoadEnd = loadAvg()
		if rep.Flat != nil {
			printFlat(os.Stdout, rep)
		}
		return errors.Join(err, writeJSON(opt.jsonPath, rep), writeMemProfile(opt.memProfile))
	}

	start := time.Now()
	total := opt.repeats * len(opt.batches) * len(opt.consumers) * len(opt.scenarios)
	done := 0
	for repeat := 1; repeat <= opt.repeats; repeat++ {
		for _, batch := range opt.batches {
			for _, consumers := range opt.consumers {
				for _, sc := range opt.scenarios {
					res := b.runOne(ctx, sc, batch, consumers, repeat)
					done++
					rep.Runs = append(rep.Runs, res)
					fmt.Fprintf(os.Stderr, "[%d/%d %s] repeat %d %-13s batch %-3d consumers %d: %9.0f entries/s  conflicts %-5d %s\n",
						done, total, time.Since(start).Round(time.Second), repeat, sc, batch, consumers,
						res.EntriesPerSec, res.Conflicts, res.Check)
					if ctx.Err() != nil {
						return ctx.Err()
					}
				}
			}
		}
	}
	rep.Rows = summarize(rep.Runs, opt)

	// A run that failed its checks (or its latency phase) fails the command,
	// after the report: CI runs -quick as a smoke test of correctness, with
	// no thresholds on speed.
	var failures []error
	for _, r := range rep.Rows {
		if r.Check != "ok" {
			failures = append(failures, fmt.Errorf("%s batch %d consumers %d: %s", r.Scenario, r.Batch, r.Consumers, r.Check))
		}
	}
	if opt.latencyN > 0 {
		for _, sc := range opt.scenarios {
			if sc == rawACK || isTopic(sc) || ctx.Err() != nil {
				continue
			}
			l, err := b.runLatency(ctx, sc, opt.latencyN, opt.latencyInterval)
			if err != nil {
				failures = append(failures, fmt.Errorf("latency %s: %w", sc, err))
				continue
			}
			fmt.Fprintf(os.Stderr, "latency %-13s commit p50 %v p99 %v, end-to-end p50 %v p99 %v\n",
				sc, l.CommitP50, l.CommitP99, l.E2EP50, l.E2EP99)
			rep.Latency = append(rep.Latency, l)
		}
	}
	rep.PeakRSSMiB = mib(procStatusKiB("VmHWM"))
	rep.Machine.Elapsed = time.Since(start).Round(time.Second).String()
	rep.Machine.LoadEnd = loadAvg()
	printReport(os.Stdout, rep)
	failures = append(failures, writeJSON(opt.jsonPath, rep), writeMemProfile(opt.memProfile))
	return errors.Join(failures...)
}

func writeMemProfile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

func writeJSON(path string, rep *report) error {
	if path == "" {
		return nil
	}
	out := os.Stdout
	if path != "-" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		out = f
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// runOne runs scenario once on n fresh entries and measures it.
func (b *bench) runOne(ctx context.Context, scenario string, batch, consumers, repeat int) runResult {
	n := b.opt.n
	res := runResult{Scenario: scenario, Batch: batch, Consumers: consumers, Repeat: repeat, Entries: n}
	prefix := b.newPrefix()
	src, out := prefix+"src", prefix+"out"
	// A crashed earlier process with the same pid may have left keys.
	b.cleanup(prefix, src, out)
	defer b.cleanup(prefix, src, out)

	fail := func(err error) runResult {
		res.Check = "ERROR: " + err.Error()
		return res
	}
	r := &trial{
		rdb: b.rdb, src: src, out: out, batch: batch, consumers: consumers,
		track: newTracker(n), events: &eventCounts{},
		rawTopic: b.opt.rawTopic, leaseTTL: b.opt.leaseTTL,
	}
	// warm: the consumers start first, the entries appear once they are
	// ready (see topic.go).
	warm := isTopic(scenario) && !b.opt.topicCold
	var stage []string
	if isTopic(scenario) {
		var err error
		if r.topic, stage, err = b.newTopic(ctx, prefix, n, warm); err != nil {
			return fail(err)
		}
	} else {
		if err := preload(ctx, b.rdb, src, 0, n); err != nil {
			return fail(err)
		}
		if err := b.rdb.XGroupCreate(ctx, src, group, "0").Err(); err != nil {
			return fail(err)
		}
	}
	launch, err := r.prepare(scenario)
	if err != nil {
		return fail(err)
	}

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wait func() error
	labels := pprof.Labels("scenario", scenario, "batch", strconv.Itoa(batch), "consumers", strconv.Itoa(consumers))
	launchAll := func() { pprof.Do(rctx, labels, func(lctx context.Context) { wait = launch(lctx) }) }
	if warm {
		launchAll()
		if err := r.waitReady(ctx, b.opt.runTimeout); err != nil {
			cancel()
			return fail(errors.Join(err, wait()))
		}
	}

	runtime.GC()
	peakOK := b.peakReset && resetPeakRSS()
	redis0, redisErr := redisCPU(ctx, b.rdb)
	cpu0 := processCPU()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)

	timeout := time.NewTimer(b.opt.runTimeout)
	defer timeout.Stop()
	began := time.Now()
	var runErr error
	if warm {
		runErr = moveIn(ctx, b.rdb, r.topic, stage)
	} else {
		launchAll()
	}
	end := time.Time{}
	if runErr == nil {
		select {
		case <-r.track.done:
			end = r.track.end
		case <-ctx.Done():
			runErr = ctx.Err()
		case <-timeout.C:
			res.TimedOut = true
			runErr = fmt.Errorf("timed out after %v", b.opt.runTimeout)
		}
	}
	if end.IsZero() {
		end = time.Now()
	}
	runtime.ReadMemStats(&ms1)
	cpu1 := processCPU()
	redis1, err := redisCPU(ctx, b.rdb)
	redisErr = errors.Join(redisErr, err)
	cancel()
	if err := wait(); err != nil {
		runErr = errors.Join(runErr, err)
	}

	acked := r.track.count.Load()
	elapsed := end.Sub(began)
	res.Seconds = elapsed.Seconds()
	res.EntriesPerSec = float64(min(acked, int64(n))) / elapsed.Seconds()
	res.AllocsPerEntry = float64(ms1.Mallocs-ms0.Mallocs) / float64(n)
	res.BytesPerEntry = float64(ms1.TotalAlloc-ms0.TotalAlloc) / float64(n)
	res.GoCPUPerEntryUS = float64((cpu1 - cpu0).Microseconds()) / float64(n)
	if redisErr == nil {
		res.RedisCPUPerEntryUS = float64((redis1 - redis0).Microseconds()) / float64(n)
	}
	if peakOK {
		res.PeakRSSMiB = mib(procStatusKiB("VmHWM"))
	}
	res.Conflicts = r.events.conflicts.Load()
	res.Fenced = r.events.fenced.Load()
	res.Retries = r.events.retries.Load()
	res.Errors = r.events.errors.Load()
	res.Assigned = r.events.assigned.Load()
	res.Revoked = r.events.revoked.Load()
	switch {
	case runErr != nil:
		res.Check = "ERROR: " + runErr.Error()
	case r.events.firstErr != nil:
		res.Check = "ERROR: " + r.events.firstErr.Error()
	default:
		res.Check = b.check(ctx, scenario, src, r.topic, out, n)
	}
	return res
}
