//go:build linux

package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/faultproxy"
	"github.com/streamtx/streamtx/internal/keys"
	stxrdb "github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/internal/redistest"
)

// The topic profile (TestChaosTopic) is the partitioned workload of issue
// 11: a topic of topicPartitions partitions, topicKeys keys, every entry
// carrying its per-key sequence number; three workers of one group consume
// it with a Keyed handler (last seq and count per key, one output entry per
// source entry), under LeaseTTL 1s and Heartbeat 150ms so that partitions
// change hands all through the run, while TestChaos's faults hit them: kill,
// zombie (SIGSTOP past LeaseTTL, then SIGCONT), dup (two processes under
// one name), cut, drop (lost commit replies), redis-restart and a lagging
// snapshot. Afterwards: no duplicate, no loss, no inversion (an entry
// applied before an earlier entry of its key, as the handler saw it or as
// the output shows it), no dead letter, and each key's state is its count.
//
// The short run (800 entries, 10s of faults) is part of go test ./...; the
// long run:
//
//	go test ./internal/chaos -run 'TestChaosTopic$' -chaos.n 20000 -chaos.seconds 300 -timeout 30m
//
// -chaos.seed, -chaos.faults, -chaos.keep and -chaos.laggard work as for
// TestChaos. It ends with one line:
//
//	chaos topic summary: result=PASS seed=… entries=800 partitions=8 keys=24 workers=3 faults=… kill=… zombie=… dup=… cut=… drop=… redis-restart=… snapshot=1 assigned=… fenced=… refused=… stale-after-rollback=… duplicates=0 losses=0 inversions=0 dead-letters=0 violations=0 elapsed=…
//
// where assigned counts partition acquisitions, fenced the observer's
// EventFenced and refused the scripts a lease's fence refused (evidence
// that zombies did try to write), and stale-after-rollback the handler
// runs on a cache the snapshot restore left ahead of Redis, which must not
// commit (see rollback).
const (
	topicName       = "ct-orders"
	topicOut        = "ct-out"
	topicGroup      = "gt"
	topicPartitions = 8
	topicKeys       = 24
	topicN          = 800 // entries, unless -chaos.n is given
	topicSeconds    = 10  // the fault window, unless -chaos.seconds is given
	topicLeaseTTL   = time.Second
	topicHeartbeat  = 150 * time.Millisecond
)

func TestChaosTopic(t *testing.T) {
	seed, n, seconds, window := runParams(t, topicN, topicSeconds)
	t.Logf("chaos topic: seed=%d entries=%d window=%v (replay: go test ./internal/chaos -run 'TestChaosTopic$' -chaos.seed=%d -chaos.n=%d -chaos.seconds=%g -chaos.faults=%s -chaos.laggard=%v)",
		seed, n, window, seed, n, seconds, *faultsFlag, *laggardFlag)
	kinds := chosenFaults(t)
	rnd := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	began := time.Now()
	ctx := context.Background()

	srv := redistest.StartServer(t, "--appendonly", "yes", "--appendfsync", "always")
	proxy := faultproxy.New(t, srv.Addr())
	rdb := srv.Client(t)
	dir := runDir(t)
	src := preloadTopic(t, rdb, topicPartitions, topicKeys, n)

	r := &role{group: topicGroup, handler: handlerTopic, out: topicOut, pace: filepath.Join(dir, "pace-"+topicGroup)}
	pace := newPacer([]*role{r}, n, window)
	pace.write()
	cl := newCluster(t, dir, topicEnv(proxy.Addr(), claimIdle, maxDeliveries))
	for i := range workersPerGroup {
		s := &slot{
			name:    fmt.Sprintf("%s-c%d", r.group, i),
			role:    r,
			batch:   1 + rnd.IntN(maxBatch),
			retries: []int{-1, 3}[rnd.IntN(2)],
		}
		cl.slots = append(cl.slots, s)
		t.Logf("chaos topic: worker %s: batch %d, go-redis MaxRetries %d", s.name, s.batch, s.retries)
		cl.start(s)
	}
	for _, p := range cl.live() {
		if err := cl.waitReady(p, 60*time.Second); err != nil {
			t.Fatalf("chaos: %v", err)
		}
	}

	pctx, stopPace := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pace.run(pctx, rdb, dir)
	}()
	in := &injector{
		t: t, rnd: rnd, cl: cl, srv: srv, proxy: proxy, rdb: rdb,
		out: []string{topicOut}, claimIdle: topicLeaseTTL, counts: make(map[string]int), kinds: kinds,
		holding: func(s *slot) int64 {
			n, err := src.partitionsOf(ctx, rdb, s.name)
			if err != nil {
				return -1
			}
			return int64(n)
		},
		committers: func(ctx context.Context) []laggard { return src.lastCommitters(ctx, t, rdb, cl) },
		commitHash: fencedCommitSHA(t),
	}
	var rb rollback
	in.onRestore = func() { rb.mark(cl) }
	in.run(window)
	stopPace()
	wg.Wait()
	pace.full()
	cl.resumeAll()
	in.logf("faults stopped; draining")

	drainTimeout := 60*time.Second + time.Duration(n)*5*time.Millisecond
	drainAndStopWhen(t, cl, in.logf, func() (bool, string) { return src.status(ctx, rdb) }, drainTimeout, func() {
		for p := range topicPartitions {
			owner, _ := rdb.HGetAll(ctx, src.lease(p)).Result()
			t.Logf("chaos: lease of partition %d: %v", p, owner)
		}
	})

	counts := in.counts
	counts[faultDrop] = proxy.Fired()
	for _, k := range kinds {
		if counts[k] == 0 {
			t.Errorf("chaos: fault %q was never injected", k)
		}
	}
	seen, excused := rb.split(cl.lines(orderPrefix))
	for _, l := range excused {
		t.Logf("chaos: after the rollback, a handler ran on a cache ahead of Redis (its commit must be refused): %s", l)
	}
	v := checkTopic(ctx, rdb, src, topicGroup, topicOut, seen)
	for _, msg := range v.violations {
		t.Errorf("chaos: VIOLATION topic %s group %s: %s", topicName, topicGroup, msg)
	}
	if ok, status := src.status(ctx, rdb); !ok {
		t.Errorf("chaos: entries remain pending or undelivered after the workers stopped: %s", status)
	}

	rep := reportRun(t, "chaos topic", cl, counts, rdb, dir)
	t.Logf("chaos topic summary: result=%s seed=%d entries=%d partitions=%d keys=%d workers=%d faults=%d %s assigned=%d fenced=%d refused=%d stale-after-rollback=%d duplicates=%d losses=%d inversions=%d dead-letters=%d violations=%d elapsed=%.1fs",
		rep.result, seed, n, topicPartitions, topicKeys, workersPerGroup, rep.total, rep.faults,
		rep.events["assigned"], rep.events["fenced"], rep.events["refused"], len(excused),
		v.duplicates+v.phantoms, v.losses, v.inversions, v.deadLetters, v.nviolations, time.Since(began).Seconds())
}

// topicEnv is the environment of every worker of a topic run.
func topicEnv(addr string, claimIdle time.Duration, maxDeliveries int) []string {
	return []string{
		envAddr + "=" + addr,
		envTopic + "=" + topicName,
		envBlock + "=" + block.String(),
		envClaimIdle + "=" + claimIdle.String(),
		envClaimInterval + "=" + (claimIdle / 4).String(),
		envCommitTimeout + "=" + commitTimeout.String(),
		envMaxDeliveries + "=" + strconv.Itoa(maxDeliveries),
		envLeaseTTL + "=" + topicLeaseTTL.String(),
		envHeartbeat + "=" + topicHeartbeat.String(),
	}
}

// fencedCommitSHA is the SHA1 of the commit script a partition consumer
// runs (behind its lease's fence): what a drop fault looks for on a topic.
func fencedCommitSHA(t *testing.T) string {
	s, err := stxrdb.NewScripts(os.DirFS("../../lua"))
	if err != nil {
		t.Fatalf("chaos: %v", err)
	}
	return s.Fenced().Commit.Hash()
}

// topicSource is the preloaded topic. An entry is named by its partition
// and ID ("<p>/<id>", see srcName): partitions are streams of their own, and
// two of them can hold the same ID.
type topicSource struct {
	topic  *streamtx.Topic
	ids    []string          // every entry's name, in publish order
	key    map[string]string // entry name -> key
	seq    map[string]int    // entry name -> its sequence number in its key
	part   map[string]int    // entry name -> partition
	count  map[string]int    // key -> number of entries
	keys   []string          // sorted
	last   []string          // partition -> ID of its last entry ("" when none)
	leases []string          // partition -> lease key of topicGroup
}

// preloadTopic creates the topic topicName with partitions partitions and
// publishes n entries {i, k, seq} by key, k going round nkeys keys, seq
// counting each key's entries from 1.
func preloadTopic(t *testing.T, rdb *redis.Client, partitions, nkeys, n int) *topicSource {
	t.Helper()
	ctx := context.Background()
	top, err := streamtx.CreateTopic(ctx, rdb, topicName, streamtx.TopicConfig{Partitions: partitions})
	if err != nil {
		t.Fatalf("chaos: %v", err)
	}
	prod, err := streamtx.NewProducer(rdb, streamtx.ProducerConfig{})
	if err != nil {
		t.Fatalf("chaos: %v", err)
	}
	src := &topicSource{
		topic: top,
		key:   make(map[string]string, n), seq: make(map[string]int, n), part: make(map[string]int, n),
		count: make(map[string]int), last: make([]string, partitions),
	}
	for p := range partitions {
		sp, err := keys.NewSpace(top.Stream(p), topicGroup)
		if err != nil {
			t.Fatalf("chaos: %v", err)
		}
		src.leases = append(src.leases, sp.Lease())
	}
	for k := range nkeys {
		src.keys = append(src.keys, fmt.Sprintf("k%02d", k))
	}
	for i := 1; i <= n; i++ {
		k := src.keys[i%nkeys]
		src.count[k]++
		id, err := prod.PublishKeyed(ctx, topicName, k, map[string]any{"i": i, "k": k, "seq": src.count[k]})
		if err != nil {
			t.Fatalf("chaos: preload: %v", err)
		}
		p := top.PartitionOf(k)
		name := srcName(p, id)
		src.ids = append(src.ids, name)
		src.key[name], src.seq[name], src.part[name] = k, src.count[k], p
		src.last[p] = id
	}
	return src
}

// srcName names the entry id of partition p.
func srcName(p int, id string) string { return strconv.Itoa(p) + "/" + id }

// lease returns the lease key of partition p.
func (src *topicSource) lease(p int) string { return src.leases[p] }

// owners returns each partition's lease: owner (instance ID, "" when
// free) and epoch.
func (src *topicSource) owners(ctx context.Context, rdb *redis.Client) ([]string, []int64, error) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(src.leases))
	for p, k := range src.leases {
		cmds[p] = pipe.HMGet(ctx, k, "owner", "epoch")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, nil, err
	}
	owners := make([]string, len(cmds))
	epochs := make([]int64, len(cmds))
	for p, c := range cmds {
		v := c.Val()
		owners[p], _ = v[0].(string)
		e, _ := v[1].(string)
		epochs[p], _ = strconv.ParseInt(e, 10, 64)
	}
	return owners, epochs, nil
}

// partitionsOf returns how many partitions' leases an instance of the
// consumer name holds (expired or not: until another takes them).
func (src *topicSource) partitionsOf(ctx context.Context, rdb *redis.Client, name string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	owners, _, err := src.owners(ctx, rdb)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, o := range owners {
		if strings.HasPrefix(o, name+"/") {
			n++
		}
	}
	return n, nil
}

// status is the drain condition: every partition's group has delivered
// the partition's last entry and holds nothing pending.
func (src *topicSource) status(ctx context.Context, rdb *redis.Client) (bool, string) {
	var b strings.Builder
	drained := true
	for p, last := range src.last {
		if last == "" {
			continue // no entry: the partition's stream does not exist
		}
		ok, s := groupStatus(ctx, rdb, src.topic.Stream(p), last, topicGroup)
		fmt.Fprintf(&b, "p%d %s; ", p, s)
		drained = drained && ok
	}
	return drained, strings.TrimSuffix(b.String(), "; ")
}

// lastCommitters is injector.lastCommitters on the topic: the worker that
// published the last output entry, and the state record of its key.
func (src *topicSource) lastCommitters(ctx context.Context, t *testing.T, rdb *redis.Client, cl *cluster) []laggard {
	last, err := rdb.XRevRangeN(ctx, topicOut, "+", "-", 1).Result()
	if err != nil || len(last) == 0 {
		return nil
	}
	by, _ := last[0].Values["by"].(string)
	k, _ := last[0].Values["k"].(string)
	sp, err := keys.NewSpace(src.topic.Stream(src.topic.PartitionOf(k)), topicGroup)
	if err != nil {
		t.Fatalf("chaos: %v", err)
	}
	key := sp.KeyedState(topicStateName, k)
	rec, err := record.Load(ctx, rdb, key)
	if err != nil || rec.Version == 0 {
		return nil
	}
	for _, s := range cl.slots {
		if s.name == by && len(s.procs) > 0 {
			return []laggard{{s: s, key: key, version: rec.Version}}
		}
	}
	return nil
}

// topicOutput is one entry of the topic handler's output stream.
type topicOutput struct {
	id, src, k, by, d string
	seq, n, p         int
}

// name is the name of o's source entry (see srcName).
func (o topicOutput) name() string { return srcName(o.p, o.src) }

func (o topicOutput) String() string {
	return fmt.Sprintf("%s{src=%s k=%s seq=%d n=%d p=%d by=%s d=%s}", o.id, o.src, o.k, o.seq, o.n, o.p, o.by, o.d)
}

func readTopicOutputs(ctx context.Context, rdb redis.Cmdable, stream string) ([]topicOutput, error) {
	msgs, err := readStream(ctx, rdb, stream)
	if err != nil {
		return nil, err
	}
	out := make([]topicOutput, len(msgs))
	for i, m := range msgs {
		str := func(f string) string { s, _ := m.Values[f].(string); return s }
		num := func(f string) int {
			n, err := strconv.Atoi(str(f))
			if err != nil {
				return -1
			}
			return n
		}
		out[i] = topicOutput{id: m.ID, src: str("src"), k: str("k"), by: str("by"), d: str("d"), seq: num("seq"), n: num("n"), p: num("p")}
	}
	return out, nil
}

// checkTopic checks the invariants of a topic run: every source entry
// published exactly once and never dead-lettered; per key, the outputs in
// stream order carry seq 1, 2, … and count n 1, 2, …, in the key's
// partition; each key's state is {its count, its count}, last applied by
// its last entry. Each line of seen (a handler given an entry out of its
// key's order, see orderPrefix) is an inversion too.
func checkTopic(ctx context.Context, rdb *redis.Client, src *topicSource, group, out string, seen []string) *verdict {
	v := &verdict{group: group}
	pubs, err := readTopicOutputs(ctx, rdb, out)
	if err != nil {
		v.violate("read %s: %v", out, err)
		return v
	}
	v.published = len(pubs)

	// Dead letters: every one is a violation (the handler never fails).
	for p := range src.topic.Partitions() {
		dlq, err := readStream(ctx, rdb, src.topic.DeadLetterStream(group, p))
		if err != nil {
			v.violate("read dead letters of partition %d: %v", p, err)
			continue
		}
		for _, m := range dlq {
			v.deadLetters++
			v.violate("dead letter %s of partition %d for source %v: %v", m.ID, p, m.Values["stx.id"], m.Values["stx.error"])
		}
	}

	// Exactly once, and each output true to its source.
	bySrc := make(map[string][]topicOutput, len(pubs))
	for _, o := range pubs {
		bySrc[o.name()] = append(bySrc[o.name()], o)
	}
	for _, id := range src.ids {
		switch got := len(bySrc[id]); {
		case got == 0:
			v.losses++
			v.violate("lost: source %s (k=%s seq=%d) has no output", id, src.key[id], src.seq[id])
		case got > 1:
			v.duplicates += got - 1
			v.violate("duplicate: source %s appears %d times: %v", id, got, bySrc[id])
		}
	}
	for s, os := range bySrc {
		if _, ok := src.key[s]; !ok {
			v.phantoms += len(os)
			v.violate("phantom: output %v has no source entry", os)
		}
	}
	for _, o := range pubs {
		if k, ok := src.key[o.name()]; ok && (o.k != k || o.seq != src.seq[o.name()]) {
			v.violate("output %v does not match its source (k=%s seq=%d)", o, k, src.seq[o.name()])
		}
		if o.k != "" && o.p != src.topic.PartitionOf(o.k) {
			v.violate("output %v: key %s is in partition %d", o, o.k, src.topic.PartitionOf(o.k))
		}
	}

	// Order per key, and the state.
	perKey := make(map[string][]topicOutput)
	for _, o := range pubs {
		perKey[o.k] = append(perKey[o.k], o)
	}
	for _, k := range src.keys {
		seq := perKey[k]
		top, reported := 0, false
		for j, o := range seq {
			if o.seq < top {
				v.inversions++
				v.violate("inversion: key %s: output %v comes after the output of seq %d", k, o, top)
			}
			top = max(top, o.seq)
			if !reported && (o.seq != j+1 || o.n != j+1) {
				reported = true
				prev := "none"
				if j > 0 {
					prev = seq[j-1].String()
				}
				v.violate("key %s: output #%d is %v, want seq=%d n=%d (previous %s)", k, j+1, o, j+1, j+1, prev)
			}
		}
		if len(seq) != src.count[k] {
			v.violate("key %s: %d outputs, want %d", k, len(seq), src.count[k])
		}
		snap, err := streamtx.ReadKeyedState[seqState](ctx, rdb, src.topic.Name(), group, topicStateName, k)
		want := seqState{Seq: src.count[k], N: src.count[k]}
		switch {
		case err != nil:
			v.violate("state[k=%s]: %v", k, err)
		case snap.Value != want:
			v.violate("state[k=%s]: %+v (version %d, last %s), want %+v", k, snap.Value, snap.Version, snap.LastID, want)
		case len(seq) > 0 && snap.LastID != seq[len(seq)-1].src:
			v.violate("state[k=%s]: last entry %s, but the last output %v came from another", k, snap.LastID, seq[len(seq)-1])
		}
	}
	for k := range perKey {
		if _, ok := src.count[k]; !ok {
			v.violate("output key %q is no source key", k)
		}
	}
	v.accounted = len(src.ids) - v.losses

	// What the handlers saw.
	for _, line := range seen {
		v.inversions++
		v.violate("a handler was given an entry out of its key's order: %s", line)
	}
	return v
}

// rollback remembers when the snapshot was restored and which workers were
// running then. Those workers' caches are ahead of Redis afterwards: a
// partition's owner keeps its state in memory while it holds the lease,
// and learns of the rollback when its next commit is refused (a version
// conflict). Until then its handlers see entries their cached state has
// applied already — replays that never commit (the output checks would
// catch one that did). Any other handler that sees an entry out of its
// key's order is given one by the consumer.
type rollback struct {
	at   time.Time
	live map[string]bool // IDs of the processes running at the restore
}

// mark records the restore, with every worker paused.
func (rb *rollback) mark(cl *cluster) {
	rb.at = time.Now()
	rb.live = make(map[string]bool)
	for _, p := range cl.live() {
		rb.live[p.id] = true
	}
}

// split splits the orderPrefix lines of cl.lines into those no rollback
// explains and those of a worker running at the restore, said after it.
func (rb *rollback) split(lines []string) (seen, excused []string) {
	for _, l := range lines {
		id, _, _ := strings.Cut(l, ": ")
		at, ok := field(l, "at")
		if rb.live[id] && ok && int64(at) > rb.at.UnixMicro() {
			excused = append(excused, l)
			continue
		}
		seen = append(seen, l)
	}
	return seen, excused
}
