package streamtxtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/txn"
)

// Fault is a failure the Tester injects after a handler call for an entry
// succeeded, before the entry is committed. Each one runs the engine's own
// recovery; none may change what a replay-safe handler leaves in Redis.
type Fault int

// The faults. How each is made:
const (
	// Redeliver: the Tester's wrapper around the handler returns an error
	// after the handler succeeded, so the transaction is dropped and the
	// same consumer handles the entry again after Backoff, on a new
	// delivery.
	Redeliver Fault = iota + 1
	// Crash: the consumer "dies" after the handler succeeded: every command
	// its Redis client sends from then on fails without reaching Redis (the
	// commit of the batch in hand included), and its Run is stopped. Drain
	// starts a new consumer under the same name, which finds the entry
	// among its pending ones and handles it again.
	Crash
	// LostReply: the commit script runs in Redis, and its reply is replaced
	// by a network timeout on the way back. The consumer sends the same
	// commit again, which Redis refuses as not owned, and the consumer
	// finds that the first one applied.
	LostReply
	// Conflict: just before the commit is sent, "another writer" commits
	// every state record the commit writes, with the value it has (version
	// + 1, a new token). The commit is refused for a version conflict and
	// the handlers run again on the reloaded state. A commit that writes no
	// existing record cannot conflict: the fault is then not injected.
	//
	// Streams only: a partition of a topic has no other writer while its
	// lease is held, and its holder's commits check the partition's commit
	// record rather than each state record's version. On a topic, Inject
	// refuses Conflict and random faults leave it out.
	Conflict
	// Claim: just before the commit is sent, another consumer claims the
	// entry (XCLAIM, a new delivery) for a consumer called
	// "<Consumer>-claimer-<n>". The commit is refused for it (not owned), and
	// Drain runs the other consumer, which handles it again.
	//
	// Streams only: a partition of a topic is read by the one instance that
	// holds its lease, under one consumer name, and never claimed from
	// another (what takes its place is a Crash: the next owner takes the
	// partition's pending entries back). On a topic, Inject refuses Claim
	// and random faults leave it out.
	Claim
)

var faultNames = map[Fault]string{
	Redeliver: "Redeliver", Crash: "Crash", LostReply: "LostReply", Conflict: "Conflict", Claim: "Claim",
}

func (f Fault) String() string {
	if s, ok := faultNames[f]; ok {
		return s
	}
	return "Fault(" + strconv.Itoa(int(f)) + ")"
}

// AllFaults returns every Fault.
func AllFaults() []Fault { return []Fault{Redeliver, Crash, LostReply, Conflict, Claim} }

// topicFaults returns the faults that make sense on a topic.
func topicFaults() []Fault { return []Fault{Redeliver, Crash, LostReply} }

// notOnTopics says why f makes no sense on a topic, or "".
func notOnTopics(f Fault) string {
	switch f {
	case Claim:
		return "a partition is read under its lease by one consumer and never claimed by another; " +
			"Crash is what hands its pending entries to a new owner"
	case Conflict:
		return "a partition has no other writer while its lease is held, and its commits check the partition's commit record, not each state record's version"
	}
	return ""
}

// Faults injects faults at random, from a seed: after each handler call
// that succeeded, with probability Rate, one of Kinds.
//
// Redeliver, Crash and Claim each cost the entry a delivery, so they are
// injected at random only while the entry has at least two deliveries left
// before Config.MaxDeliveries: an entry is never dead-lettered for injected
// faults alone. No entry gets more than MaxPerEntry faults.
//
// A Crash stops every partition consumer of a topic's consumer at once:
// the entries other partitions had in hand are delivered again too.
type Faults struct {
	Seed        uint64
	Rate        float64 // 0..1; 0 injects none
	Kinds       []Fault // default AllFaults(); on a topic, without Claim and Conflict
	MaxPerEntry int     // default 2
}

// Injection is a fault the Tester injected.
type Injection struct {
	Fault      Fault
	EntryID    string
	Partition  int    // the entry's partition on a topic, -1 on a stream
	Consumer   string // the consumer it was injected into
	Deliveries int64  // the entry's delivery count when its handler ran
}

func (i Injection) String() string {
	if i.Partition >= 0 {
		return fmt.Sprintf("%s at %s in partition %d (consumer %s, delivery %d)", i.Fault, i.EntryID, i.Partition, i.Consumer, i.Deliveries)
	}
	return fmt.Sprintf("%s at %s (consumer %s, delivery %d)", i.Fault, i.EntryID, i.Consumer, i.Deliveries)
}

type faultState struct {
	cfg      Faults
	rng      *rand.Rand
	chosen   map[string][]Fault // entry ID -> faults to inject, in order
	perEntry map[string]int     // entryKey -> faults injected
	injected []Injection
	ignored  []string // handler calls that returned nil after tx.Publish failed
}

// Faults injects faults at random from now on, as f says, replacing earlier
// random faults. Faults chosen with Inject come first.
func (tt *Tester) Faults(f Faults) {
	tt.t.Helper()
	if f.Rate < 0 || f.Rate > 1 {
		tt.t.Fatalf("streamtxtest: Faults.Rate %v is outside 0..1", f.Rate)
	}
	for _, k := range f.Kinds {
		if _, ok := faultNames[k]; !ok {
			tt.t.Fatalf("streamtxtest: Faults.Kinds: unknown %v", k)
		}
		if why := notOnTopics(k); why != "" && tt.topic != nil {
			tt.t.Fatalf("streamtxtest: Faults.Kinds: %v on topic %q: %s (see %v)", k, tt.opts.Topic, why, k)
		}
	}
	if len(f.Kinds) == 0 {
		f.Kinds = AllFaults()
		if tt.topic != nil {
			f.Kinds = topicFaults()
		}
	}
	if f.MaxPerEntry == 0 {
		f.MaxPerEntry = 2
	}
	tt.mu.Lock()
	defer tt.mu.Unlock()
	tt.faults.cfg = f
	tt.faults.rng = rand.New(rand.NewPCG(f.Seed, f.Seed^0x5eed5eed5eed5eed))
}

// Inject injects faults, in order, the next times a handler call for the
// entry id succeeds: one fault per call. Chosen faults are injected whatever
// the entry's delivery count (so they can make it pass MaxDeliveries). On a
// topic, id is an ID SendKeyed returned, and Claim and Conflict are refused.
func (tt *Tester) Inject(id string, faults ...Fault) {
	tt.t.Helper()
	for _, k := range faults {
		if _, ok := faultNames[k]; !ok {
			tt.t.Fatalf("streamtxtest: Inject: unknown %v", k)
		}
		if why := notOnTopics(k); why != "" && tt.topic != nil {
			tt.t.Fatalf("streamtxtest: Inject(%s, %v) on topic %q: %s (see %v)", id, k, tt.opts.Topic, why, k)
		}
	}
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if tt.faults.chosen == nil {
		tt.faults.chosen = make(map[string][]Fault)
	}
	tt.faults.chosen[id] = append(tt.faults.chosen[id], faults...)
}

// Injected returns the faults injected so far, in order. A fault at the
// commit (LostReply, Conflict, Claim) is listed once it was applied to a
// commit.
func (tt *Tester) Injected() []Injection {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	return append([]Injection(nil), tt.faults.injected...)
}

// pick decides the fault after a successful handler call for m in in.
func (tt *Tester) pick(in *instance, m *streamtx.Message) Fault {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	fs := &tt.faults
	if q := fs.chosen[m.ID]; len(q) > 0 {
		fs.chosen[m.ID] = q[1:]
		return q[0]
	}
	if fs.rng == nil || fs.cfg.Rate == 0 || fs.perEntry[entryKey(m.Stream, m.ID)] >= fs.cfg.MaxPerEntry {
		return 0
	}
	if fs.rng.Float64() >= fs.cfg.Rate {
		return 0
	}
	f := fs.cfg.Kinds[fs.rng.IntN(len(fs.cfg.Kinds))]
	max := tt.opts.Config.MaxDeliveries
	if max == 0 {
		max = 5
	}
	if (f == Redeliver || f == Crash || f == Claim) && m.Deliveries >= max-1 {
		return 0
	}
	if fs.perEntry == nil {
		fs.perEntry = make(map[string]int)
	}
	fs.perEntry[entryKey(m.Stream, m.ID)]++
	return f
}

// entryKey names an entry of stream: IDs are unique per stream only (on a
// topic a handler may publish to the source topic).
func entryKey(stream, id string) string { return stream + " " + id }

func (tt *Tester) injected(f Fault, id string, partition int, consumer string, deliveries int64) {
	tt.mu.Lock()
	tt.faults.injected = append(tt.faults.injected, Injection{Fault: f, EntryID: id, Partition: partition, Consumer: consumer, Deliveries: deliveries})
	tt.mu.Unlock()
}

// ErrInjected is the error a handler call "fails" with under the Redeliver
// fault.
var ErrInjected = errors.New("streamtxtest: injected fault (Redeliver)")

// errCrashed is what every command of a crashed consumer's client returns.
var errCrashed = errors.New("streamtxtest: the consumer crashed (injected fault)")

// faultHandler wraps the handler under test: it injects the faults picked
// after each successful call. Unwrap keeps the handler visible to
// NewConsumer (state type, key function).
type faultHandler struct {
	tt    *Tester
	inner streamtx.Handler
}

func (w *faultHandler) Unwrap() streamtx.Handler { return w.inner }

func (w *faultHandler) Handle(ctx context.Context, m *streamtx.Message, tx *txn.Tx) error {
	err := w.inner.Handle(ctx, m, tx)
	if err == nil && tx.Err() != nil {
		w.tt.mu.Lock()
		w.tt.faults.ignored = append(w.tt.faults.ignored,
			fmt.Sprintf("entry %s: the handler returned nil after tx.Publish failed (%v)", m.ID, tx.Err()))
		w.tt.mu.Unlock()
	}
	if err != nil || tx.Err() != nil {
		return err
	}
	in, _ := ctx.Value(instanceKey{}).(*instance)
	if in == nil {
		return nil
	}
	switch f := w.tt.pick(in, m); f {
	case Redeliver:
		w.tt.injected(f, m.ID, m.Partition, in.name, m.Deliveries)
		return ErrInjected
	case Crash:
		w.tt.injected(f, m.ID, m.Partition, in.name, m.Deliveries)
		w.tt.mu.Lock()
		in.crashed = true
		w.tt.mu.Unlock()
		in.cancel()
	case LostReply, Conflict, Claim:
		w.tt.mu.Lock()
		in.armed[entryKey(m.Stream, m.ID)] = f
		w.tt.mu.Unlock()
	}
	return nil
}

// hook is the Redis client hook of one consumer: it makes a crashed
// consumer's commands fail, applies the faults armed for a commit, and on a
// shared Redis stores published streams under the test's prefix and reads
// the topics the handler publishes to by key there (see
// Tester.redirectTopicRead).
type hook struct{ in *instance }

func (h hook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h hook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.crashed() {
			for _, c := range cmds {
				c.SetErr(errCrashed)
			}
			return errCrashed
		}
		return next(ctx, cmds)
	}
}

func (h hook) crashed() bool {
	h.in.tt.mu.Lock()
	defer h.in.tt.mu.Unlock()
	return h.in.crashed
}

func (h hook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.crashed() {
			cmd.SetErr(errCrashed)
			return errCrashed
		}
		if name := h.in.tt.redirectTopicRead(cmd); name != "" {
			err := next(ctx, cmd)
			h.in.tt.fixTopicReply(name, cmd)
			return err
		}
		cm, ok := h.in.tt.parseCommit(cmd.Args())
		if !ok {
			return next(ctx, cmd)
		}
		tt := h.in.tt
		for i, target := range cm.targets {
			cmd.Args()[cm.targetAt+i] = tt.Key(target)
		}
		var fault Fault
		var id string
		tt.mu.Lock()
		for _, e := range cm.ids {
			if f, ok := h.in.armed[entryKey(cm.src.stream, e)]; ok {
				delete(h.in.armed, entryKey(cm.src.stream, e))
				if fault == 0 {
					fault, id = f, e
				}
			}
		}
		tt.mu.Unlock()
		switch fault {
		case Conflict:
			if tt.bumpStates(ctx, cm.states) {
				tt.injected(fault, id, cm.src.p, h.in.name, cm.deliveries[id])
			}
		case Claim:
			// A consumer that is not running, so that Drain starts it and
			// it finds the entry among its own.
			tt.mu.Lock()
			tt.claimers++
			other := tt.opts.Consumer + "-claimer-" + strconv.Itoa(tt.claimers)
			tt.mu.Unlock()
			// XCLAIM (without JUSTID) counts a delivery, as a claim by a
			// consumer does.
			err := tt.admin.XClaim(context.WithoutCancel(ctx), &redis.XClaimArgs{
				Stream: tt.stream, Group: tt.opts.Group, Consumer: other, MinIdle: 0, Messages: []string{id},
			}).Err()
			if err == nil {
				tt.injected(fault, id, cm.src.p, h.in.name, cm.deliveries[id])
			}
		}
		err := next(ctx, cmd)
		if fault == LostReply && err == nil {
			tt.injected(fault, id, cm.src.p, h.in.name, cm.deliveries[id])
			cmd.SetErr(errLostReply)
			return errLostReply
		}
		return err
	}
}

// lostReply is a network timeout: what a reply that never came looks like.
type lostReply struct{}

func (lostReply) Error() string   { return "streamtxtest: i/o timeout (injected fault: LostReply)" }
func (lostReply) Timeout() bool   { return true }
func (lostReply) Temporary() bool { return true }

var errLostReply error = lostReply{}

// commitCall is what the hook reads of a commit.lua call (see the script's
// header).
type commitCall struct {
	src        *source
	ids        []string
	deliveries map[string]int64
	states     []string
	targets    []string
	targetAt   int // index in the command's args of the first target
}

// parseCommit recognises a commit of this Tester's group by its first two
// keys (a source stream and its group's offsets hash) and reads it. The
// publish targets are counted from the publish groups in ARGV, not taken as
// the rest of KEYS: a partition consumer's commit runs wrapped (see
// internal/rdb.Scripts.Fenced), with keys of the wrapper after them.
func (tt *Tester) parseCommit(args []any) (commitCall, bool) {
	var cm commitCall
	if len(args) < 5 {
		return cm, false
	}
	name, _ := args[0].(string)
	if !strings.EqualFold(name, "evalsha") && !strings.EqualFold(name, "eval") {
		return cm, false
	}
	nkeys, ok := toInt(args[2])
	if !ok || nkeys < 2 || len(args) < 3+int(nkeys)+9 {
		return cm, false
	}
	stream, _ := toString(args[3])
	cm.src = tt.source(stream)
	if cm.src == nil {
		return cm, false
	}
	if s, _ := toString(args[4]); s != cm.src.space.Offsets() {
		return cm, false
	}
	argv := args[3+nkeys:]
	ne, ok1 := toInt(argv[2])
	ns, ok2 := toInt(argv[3])
	nc, ok3 := toInt(argv[4])
	ng, ok4 := toInt(argv[5])
	if !ok1 || !ok2 || !ok3 || !ok4 || ne < 1 || ns < 0 || nc < 0 || ng < 0 || 2+ns > nkeys || int64(len(argv)) < 9+ne+2*nc+3*ns {
		return cm, false
	}
	// The publish groups: run r, target t (1-based), field count n, then
	// r publishes of n field/value pairs.
	nt := int64(0)
	for g, i := int64(0), 9+ne+2*nc+3*ns; g < ng; g++ {
		if int64(len(argv)) < i+3 {
			return cm, false
		}
		r, ok1 := toInt(argv[i])
		t, ok2 := toInt(argv[i+1])
		n, ok3 := toInt(argv[i+2])
		if !ok1 || !ok2 || !ok3 || r < 0 || n < 0 || t < 1 || 2+ns+t > nkeys {
			return cm, false
		}
		nt = max(nt, t)
		i += 3 + 2*r*n
	}
	for i := int64(0); i < ne; i++ {
		id, _ := toString(argv[9+i])
		cm.ids = append(cm.ids, id)
	}
	cm.deliveries = make(map[string]int64, ne)
	k := 0
	for r := int64(0); r < nc; r++ {
		count, _ := toInt(argv[9+ne+2*r])
		run, _ := toInt(argv[9+ne+2*r+1])
		for ; run > 0 && k < len(cm.ids); run-- {
			cm.deliveries[cm.ids[k]] = count
			k++
		}
	}
	for i := int64(0); i < ns; i++ {
		s, _ := toString(args[3+2+i])
		cm.states = append(cm.states, s)
	}
	cm.targetAt = int(3 + 2 + ns)
	for i := 3 + 2 + ns; i < 3+2+ns+nt; i++ {
		s, _ := toString(args[i])
		cm.targets = append(cm.targets, s)
	}
	return cm, true
}

func toInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int64:
		return x, true
	case *int64:
		return *x, true
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		return n, err == nil
	}
	return 0, false
}

func toString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case *string:
		return *x, true
	case []byte:
		return string(x), true
	}
	return "", false
}

// bumpStates commits, as another writer would, every existing record of
// keys with its own value: version + 1 and a new token. It reports whether
// it changed one.
func (tt *Tester) bumpStates(ctx context.Context, keys []string) bool {
	ctx = context.WithoutCancel(ctx)
	bumped := false
	for _, k := range keys {
		old, err := tt.admin.Get(ctx, k).Result()
		if err != nil {
			continue
		}
		rec, err := record.Parse(k, old)
		if err != nil || rec.Version == 0 {
			continue
		}
		// Compare and set: other consumers of the test (a claimer, a
		// replacement) may commit meanwhile, and overwriting their commit
		// with the older value would lose it — the injector's fault, not
		// the handler's.
		bump := string(record.Format(rec.Version+1, rdb.NewToken(), rec.LastID, rec.Data))
		if n, err := redis.NewScript(casSrc).Run(ctx, tt.admin, []string{k}, old, bump).Int(); err == nil && n == 1 {
			bumped = true
		}
	}
	return bumped
}

// casSrc sets KEYS[1] to ARGV[2] if it still holds ARGV[1].
const casSrc = `if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0`
