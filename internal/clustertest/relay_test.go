package clustertest

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/redistest"
)

// Environment of a relay process: TestClusterRelayProcess is a relay when
// envRelayAddrs is set, and a no-op that passes otherwise.
const (
	envRelayAddrs     = "STREAMTX_CLUSTERTEST_RELAY_ADDRS" // cluster node addresses, comma-separated
	envRelayStream    = "STREAMTX_CLUSTERTEST_RELAY_STREAM"
	envRelayName      = "STREAMTX_CLUSTERTEST_RELAY_NAME"
	envRelayBatch     = "STREAMTX_CLUSTERTEST_RELAY_BATCH"
	envRelayHangAfter = "STREAMTX_CLUSTERTEST_RELAY_HANG_AFTER" // forwards before hanging; 0: never
	// envSeed replays a run of a randomised test.
	envSeed = "STREAMTX_SEED"
)

// What a relay process writes on its stdout, one line each.
const (
	lineReady   = "relay-ready"
	lineCommit  = "relay-commit"  // relay-commit <number of outbox entries>
	lineForward = "relay-forward" // relay-forward <forward.lua code> <forward record key>
	lineHung    = "relay-hung"    // relay-hung <forward record key>
)

// relayClaimIdle is every relay's ClaimIdle: how long a killed relay's
// entries wait before a relay under another name claims them.
const relayClaimIdle = time.Second

// Cross-slot publishes on a real cluster: four consumers of {rs-src} share a
// counter and publish (src, n) to {rs-far}, on another master, through the
// outbox (CrossSlotRelay). Relays come and go while they forward: in this
// process, cancelled after k commits; in a child process (the test binary
// run again), killed with SIGKILL after k commits; and in a child process
// killed while hung right after a forward script returned and before its
// outbox entry was acknowledged — the window the forward records exist for.
// Every publish arrives exactly once (counters 1..N, each source entry once)
// and the relays' group has nothing pending at the end.
func TestClusterRelayCrossSlotExactlyOnce(t *testing.T) {
	t.Parallel()
	const n = 1000
	rng, seed := newRand(t)
	c := redistest.StartCluster(t, 3, 0)
	rdb := c.Client(t)
	rec := newRecorder(t)

	src, far := "{rs-src}", "{rs-far}"
	require.NotEqual(t, keys.Slot(src), keys.Slot(far))
	require.NotEqual(t, c.MasterFor(src), c.MasterFor(far), "source and target must live on different masters")
	outbox, err := streamtx.OutboxStream(src, group)
	require.NoError(t, err)
	require.Equal(t, keys.Slot(src), keys.Slot(outbox), "the outbox is in the source's slot")

	ids := addEntries(t, rdb, src, 1, n)
	var stops []func()
	for i := range consumersPer {
		cfg := consumerConfig(t, src, "c"+strconv.Itoa(i), rec)
		cfg.BatchSize = 10 * (i + 1)
		cfg.CrossSlot = streamtx.CrossSlotRelay
		cons, err := streamtx.NewConsumer(rdb, cfg, countTo(far))
		require.NoError(t, err)
		stops = append(stops, run(t, cons))
	}

	// Rounds of relays: each kind once, in random order, then random kinds.
	kinds := []string{"cancel", "kill", "hang"}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for range 3 {
		kinds = append(kinds, []string{"cancel", "kill", "hang"}[rng.IntN(3)])
	}
	fwd := &forwardCounts{}
	relayRec := newRecorder(t) // in-process relays: no outbox entry reported committed twice
	var procs []*relayProc
	hungWindows := 0
	for round, kind := range kinds {
		name := []string{"relay-a", "relay-b"}[rng.IntN(2)]
		batch := 1 + rng.IntN(20)
		switch kind {
		case "cancel":
			k := 1 + rng.IntN(5)
			ctx, cancel := context.WithCancel(context.Background())
			var commits atomic.Int64
			obs := streamtx.ObserverFunc(func(e streamtx.Event) {
				relayRec.Observe(e)
				if e.Kind == streamtx.EventCommit && commits.Add(1) == int64(k) {
					cancel() // Run drains: the entry in hand is finished and committed
				}
			})
			r, err := streamtx.NewRelay(relayClient(t, c, fwd), relayConfig(t, src, name, batch, obs))
			require.NoError(t, err)
			err = runUntilCancelled(ctx, t, r)
			cancel()
			require.NoError(t, err, "round %d: relay Run", round)
			t.Logf("round %d: %s in process, batch %d: cancelled after %d commits", round, name, batch, k)
		case "kill":
			k := 1 + rng.IntN(5)
			delay := time.Duration(rng.IntN(3000)) * time.Microsecond
			p := startRelayProc(t, c, src, name, batch, 0)
			procs = append(procs, p)
			p.waitLines(t, lineCommit, k)
			time.Sleep(delay) // a random moment after the k-th commit: maybe mid-forward, maybe mid-commit
			p.kill()
			acked := 0
			for _, l := range p.linesOf(lineCommit) {
				m, _ := strconv.Atoi(strings.Fields(l)[1])
				acked += m
			}
			t.Logf("round %d: %s (pid %d), batch %d: SIGKILL %v after commit %d; it had seen %d forward replies and %d acknowledgements",
				round, name, p.pid, batch, delay, k, len(p.linesOf(lineForward)), acked)
		case "hang":
			k := 1 + rng.IntN(30)
			p := startRelayProc(t, c, src, name, batch, k)
			procs = append(procs, p)
			hung := p.waitLines(t, lineHung, 1)[0]
			p.kill()
			// The outbox entry was appended to its target and its forward
			// record written, but it was never acknowledged.
			record := strings.Fields(hung)[1]
			id := record[strings.LastIndex(record, ":")+1:]
			exists, err := rdb.Exists(context.Background(), record).Result()
			require.NoError(t, err)
			require.EqualValues(t, 1, exists, "round %d: forward record %s", round, record)
			pend, err := rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{
				Stream: outbox, Group: streamtx.RelayGroup, Start: id, End: id, Count: 1,
			}).Result()
			require.NoError(t, err)
			require.Len(t, pend, 1, "round %d: outbox entry %s is still pending after the kill", round, id)
			assert.Equal(t, name, pend[0].Consumer)
			hungWindows++
			t.Logf("round %d: %s (pid %d), batch %d: SIGKILL while hung after forward %d (outbox entry %s forwarded, not acknowledged)",
				round, name, p.pid, batch, k, id)
		}
	}
	require.Positive(t, hungWindows)

	// The consumers finish; a last relay forwards what is left, claiming
	// what a killed relay under the other name left pending.
	waitDrained(t, rdb, src)
	final, err := streamtx.NewRelay(relayClient(t, c, fwd), relayConfig(t, src, "relay-a", 10, relayRec))
	require.NoError(t, err)
	stopFinal := run(t, final)
	waitDrained(t, rdb, outbox)
	stopFinal()
	for _, stop := range stops {
		stop()
	}

	pend, err := rdb.XPending(context.Background(), outbox, streamtx.RelayGroup).Result()
	require.NoError(t, err)
	assert.Zero(t, pend.Count, "the relay group has nothing pending")
	dead, err := rdb.XLen(context.Background(), final.DeadLetterStream()).Result()
	require.NoError(t, err)
	assert.Zero(t, dead, "relay dead letters")
	checkExactlyOnce(t, rdb, src, far, ids)

	// Every hung relay's entry was forwarded again by a later relay, which
	// found its forward record and appended nothing.
	for _, p := range procs {
		for _, l := range p.linesOf(lineForward) {
			fwd.add(strings.Fields(l)[1])
		}
	}
	t.Logf("forward scripts: %d appended, %d found forwarded before; seed %d; consumers: %s; in-process relays: %s",
		fwd.get("0"), fwd.get("1"), seed, rec.summary(), relayRec.summary())
	assert.GreaterOrEqual(t, fwd.get("1"), hungWindows, "each hung relay's entry is found forwarded")
	// A killed relay may have run a forward script whose reply it never saw.
	assert.LessOrEqual(t, fwd.get("0"), n, "at most one append per publish")
	rec.checkNoCrossSlot(t)
	checkNoCrossSlotAtServers(t, rdb)
}

// newRand returns a generator seeded from STREAMTX_SEED, or from the clock,
// and logs the seed.
func newRand(t *testing.T) (*rand.Rand, uint64) {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(envSeed); s != "" {
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, envSeed)
	}
	t.Logf("seed %d (%s=%d replays this run)", seed, envSeed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), seed
}

// relayConfig returns the config of a test relay of (src, group).
func relayConfig(t *testing.T, src, name string, batch int, obs streamtx.Observer) streamtx.RelayConfig {
	return streamtx.RelayConfig{
		Stream:    src,
		Group:     group,
		Consumer:  name,
		BatchSize: batch,
		Block:     20 * time.Millisecond,
		ClaimIdle: relayClaimIdle,
		Logger:    slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
		Observer:  obs,
	}
}

// relayClient returns a cluster client whose forward script replies are
// counted in fwd.
func relayClient(t *testing.T, c *redistest.Cluster, fwd *forwardCounts) *redis.ClusterClient {
	rdb := c.Client(t)
	rdb.AddHook(forwardHook{func(code int64, _ string) { fwd.add(strconv.FormatInt(code, 10)) }})
	return rdb
}

// runUntilCancelled runs cons until ctx is cancelled (by its observer) and
// returns what Run returned.
func runUntilCancelled(ctx context.Context, t *testing.T, cons *streamtx.Consumer) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- cons.Run(ctx) }()
	select {
	case err := <-errc:
		return err
	case <-time.After(waitTimeout):
		t.Fatalf("relay not cancelled after %v", waitTimeout)
		return nil
	}
}

// forwardCounts counts forward script replies by code.
type forwardCounts struct {
	mu     sync.Mutex
	byCode map[string]int
}

func (f *forwardCounts) add(code string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byCode == nil {
		f.byCode = make(map[string]int)
	}
	f.byCode[code]++
}

func (f *forwardCounts) get(code string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.byCode[code]
}

// forwardSHA is the SHA1 of forward.lua, as EVALSHA names it.
var forwardSHA = func() string {
	sum := sha1.Sum([]byte(forwardSrc))
	return hex.EncodeToString(sum[:])
}()

// forwardSrc is forward.lua's source, read from lua/ (it is not API).
var forwardSrc = func() string {
	b, err := os.ReadFile("../../lua/forward.lua")
	if err != nil {
		panic(err) // a test binary run outside its package directory
	}
	return string(b)
}()

// forwardHook calls done after every forward script that returned a reply,
// with its code and the forward record key (KEYS[2]), before the relay's
// handler sees the reply.
type forwardHook struct {
	done func(code int64, record string)
}

func (forwardHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (forwardHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h forwardHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err != nil {
			return err
		}
		args := cmd.Args()
		if len(args) < 5 {
			return nil
		}
		name := strings.ToLower(fmt.Sprint(args[0]))
		if !(name == "evalsha" && args[1] == forwardSHA) && !(name == "eval" && args[1] == forwardSrc) {
			return nil
		}
		c, ok := cmd.(*redis.Cmd)
		if !ok {
			return nil
		}
		reply, _ := c.Val().([]any)
		if len(reply) == 0 {
			return nil
		}
		code, _ := reply[0].(int64)
		h.done(code, fmt.Sprint(args[4]))
		return nil
	}
}

// TestClusterRelayProcess is the body of a relay process started by
// TestClusterRelayCrossSlotExactlyOnce. Run normally (without
// STREAMTX_CLUSTERTEST_RELAY_ADDRS) it does nothing and passes. As a relay
// it forwards the outbox of its stream and group until it is killed,
// writing a line on stdout when it is ready, after every commit and after
// every forward script; with a hang-after count it hangs after that many
// forward scripts returned, before the relay acknowledges the entry.
func TestClusterRelayProcess(t *testing.T) {
	addrs := os.Getenv(envRelayAddrs)
	if addrs == "" {
		return // not a relay process
	}
	batch, err := strconv.Atoi(os.Getenv(envRelayBatch))
	require.NoError(t, err)
	hangAfter, err := strconv.Atoi(os.Getenv(envRelayHangAfter))
	require.NoError(t, err)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var outMu sync.Mutex // one line per write
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(addrs, ",")})
	defer rdb.Close()
	var forwards atomic.Int64
	rdb.AddHook(forwardHook{func(code int64, record string) {
		say("%s %d %s", lineForward, code, record)
		if forwards.Add(1) == int64(hangAfter) {
			say("%s %s", lineHung, record)
			<-ctx.Done() // until killed
		}
	}})
	obs := streamtx.ObserverFunc(func(e streamtx.Event) {
		if e.Kind == streamtx.EventCommit {
			say("%s %d", lineCommit, len(e.IDs))
		}
	})
	cfg := relayConfig(t, os.Getenv(envRelayStream), os.Getenv(envRelayName), batch, obs)
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r, err := streamtx.NewRelay(rdb, cfg)
	require.NoError(t, err)
	go func() {
		select {
		case <-r.Ready():
			say("%s", lineReady)
		case <-ctx.Done():
		}
	}()
	require.NoError(t, r.Run(ctx))
}

// relayProc is a relay process: the test binary running
// TestClusterRelayProcess.
type relayProc struct {
	pid     int
	cmd     *exec.Cmd
	logPath string        // its stderr
	done    chan struct{} // closed once it exited and was reaped

	mu     sync.Mutex
	lines  []string      // its stdout so far
	notify chan struct{} // signalled when a line arrives
}

// startRelayProc starts a relay process for src's outbox under name and
// waits until it is ready; it is killed when the test ends.
func startRelayProc(t *testing.T, c *redistest.Cluster, src, name string, batch, hangAfter int) *relayProc {
	t.Helper()
	p := &relayProc{
		logPath: filepath.Join(t.TempDir(), name+".log"),
		done:    make(chan struct{}),
		notify:  make(chan struct{}, 1),
	}
	logf, err := os.Create(p.logPath)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^TestClusterRelayProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		envRelayAddrs+"="+strings.Join(c.Addrs(), ","),
		envRelayStream+"="+src,
		envRelayName+"="+name,
		envRelayBatch+"="+strconv.Itoa(batch),
		envRelayHangAfter+"="+strconv.Itoa(hangAfter),
	)
	cmd.Stderr = logf
	cmd.SysProcAttr = childProcAttr()
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("starting a relay process: %v", err)
	}
	p.cmd, p.pid = cmd, cmd.Process.Pid
	go p.read(stdout, logf)
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			t.Logf("relay %s (pid %d) stderr:\n%s", name, p.pid, b)
		}
	})
	p.waitLines(t, lineReady, 1)
	return p
}

// read collects the process's stdout lines until it closes, then reaps the
// process.
func (p *relayProc) read(stdout io.Reader, logf *os.File) {
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		p.mu.Lock()
		p.lines = append(p.lines, sc.Text())
		p.mu.Unlock()
		select {
		case p.notify <- struct{}{}:
		default:
		}
	}
	io.Copy(io.Discard, stdout)
	p.cmd.Wait()
	logf.Close()
	close(p.done)
}

// linesOf returns the lines so far that start with prefix.
func (p *relayProc) linesOf(prefix string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range p.lines {
		if l == prefix || strings.HasPrefix(l, prefix+" ") {
			out = append(out, l)
		}
	}
	return out
}

// waitLines waits until the process wrote k lines starting with prefix and
// returns them; it fails the test if the process exits first or after
// waitTimeout.
func (p *relayProc) waitLines(t *testing.T, prefix string, k int) []string {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		if got := p.linesOf(prefix); len(got) >= k {
			return got[:k]
		}
		select {
		case <-p.notify:
		case <-p.done:
			if got := p.linesOf(prefix); len(got) >= k {
				return got[:k]
			}
			t.Fatalf("relay process %d exited before %d %q lines: %v", p.pid, k, prefix, p.cmd.ProcessState)
		case <-timeout:
			t.Fatalf("relay process %d: fewer than %d %q lines after %v", p.pid, k, prefix, waitTimeout)
		}
	}
}

// kill kills the process with SIGKILL and waits until it is reaped. It does
// nothing once the process has exited.
func (p *relayProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.done
}
