package streamtxtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/state"
)

// Options configures a Tester. The zero value of every field means its
// default.
type Options struct {
	// Stream is the source stream, as the handler knows it. Default
	// "stream" (unless Topic is set). On a shared Redis (REDIS_ADDR) it is
	// stored under the test's key prefix (see Tester.Key).
	Stream string
	// Topic, instead of Stream, is a partitioned topic to consume: the
	// Tester creates it (streamtx.CreateTopic) with Partitions partitions,
	// and runs a consumer of the topic (Config.Topic), which owns every
	// partition under a lease and runs a partition consumer for each. Send
	// entries with Tester.SendKeyed. On a shared Redis the topic's name is
	// under the test's key prefix. Default "": a stream.
	Topic string
	// Partitions is the topic's partition count (with Topic only). Default
	// 4.
	Partitions int
	// Topics are the other topics the handler publishes to by key
	// (tx.PublishKeyed): topic name -> partition count (0: 4). New creates
	// each one with streamtx.CreateTopic — on a shared Redis under the
	// test's key prefix, with tx.PublishKeyed's reads of it redirected
	// there (see "Publishing to other topics" in the package docs). Read
	// what was published to one with PublishedKeyed. Default none: a
	// tx.PublishKeyed to a topic that does not exist dead-letters its
	// entry, as in production.
	Topics map[string]int
	// Group is the consumer group. Default "test".
	Group string
	// Consumer is the name of the consumer that Drain runs. Default
	// "test-1".
	Consumer string
	// Config is what a real consumer takes. Stream, Group and Consumer in
	// it are ignored (the fields above set them). The Tester changes these
	// defaults, and only when the field is left zero:
	//
	//   - Block: 10ms (it bounds how long stopping a consumer takes);
	//   - Backoff: 1ms, so that retries are immediate (what your Backoff
	//     returns is waited for in real time);
	//   - Clock: the Tester's clock (Now, Advance);
	//   - on a topic, LeaseTTL 300ms and Heartbeat 50ms (see "Topics" in
	//     the package docs).
	//
	// DeadLetterStream, when set, is stored under the test's key prefix,
	// as Stream is.
	//
	// Config.Observer is still called: the Tester observes too, for Drain's
	// report.
	Config streamtx.Config
	// DrainTimeout bounds one Drain, in real time. Default 10s.
	DrainTimeout time.Duration
}

func (o *Options) setDefaults() {
	if o.Stream == "" && o.Topic == "" {
		o.Stream = "stream"
	}
	if o.Topic != "" {
		if o.Partitions == 0 {
			o.Partitions = 4
		}
		if o.Config.LeaseTTL == 0 {
			o.Config.LeaseTTL = 300 * time.Millisecond
		}
		if o.Config.Heartbeat == 0 {
			o.Config.Heartbeat = 50 * time.Millisecond
		}
	}
	if o.Group == "" {
		o.Group = "test"
	}
	if o.Consumer == "" {
		o.Consumer = "test-1"
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 10 * time.Second
	}
	if o.Config.Block == 0 {
		o.Config.Block = 10 * time.Millisecond
	}
	if o.Config.Backoff == nil {
		o.Config.Backoff = func(*streamtx.Message, error) time.Duration { return time.Millisecond }
	}
}

// Tester runs a handler in a real streamtx consumer, of a stream or of a
// partitioned topic, on an embedded miniredis or, when REDIS_ADDR is set, on
// that Redis under a key prefix of its own. A Tester belongs to one test:
// its methods fail that test (with t.Fatalf) instead of returning errors,
// and must be called from the test's goroutine. Everything it starts is
// stopped, and on a shared Redis every key it made is deleted, when the test
// ends.
type Tester struct {
	t      testing.TB
	opts   Options
	h      streamtx.Handler // the user's, wrapped for faults
	mr     *miniredis.Miniredis
	addr   string
	admin  *redis.Client // for the Tester's own reads and writes: no faults
	prefix string        // "" on miniredis
	stream string        // the source stream as stored; "" on a topic
	topic  *streamtx.Topic
	srcs   []source // the stream, or the topic's partitions in order
	label  string   // what the Tester runs for, in failure messages
	sent   string   // on a topic, the last entry ID SendKeyed assigned

	mu        sync.Mutex
	now       time.Time
	errs      []string // the last errors the consumers reported
	insts     map[string]*instance
	faults    faultState
	claimers  int // consumers made for the Claim fault
	closeOnce sync.Once
}

const keepErrors = 20

// source is a stream the consumer reads: the Tester's stream, or one
// partition of its topic.
type source struct {
	p      int    // the partition, -1 for a stream
	stream string // as stored
	space  keys.Space
	dlq    string
}

// what names the source in messages.
func (s *source) what() string {
	if s.p < 0 {
		return fmt.Sprintf("stream %q", s.stream)
	}
	return fmt.Sprintf("partition %d (%q)", s.p, s.stream)
}

// source returns the source whose stream is stream, or nil.
func (tt *Tester) source(stream string) *source {
	for i := range tt.srcs {
		if tt.srcs[i].stream == stream {
			return &tt.srcs[i]
		}
	}
	return nil
}

// New returns a Tester that runs h as opts say. Nothing runs until Drain.
// It fails the test when the configuration is refused (the error of
// streamtx.NewConsumer) or Redis cannot be reached.
func New(t testing.TB, h streamtx.Handler, opts Options) *Tester {
	t.Helper()
	tt := newTester(t, h, opts)
	t.Cleanup(tt.Close)
	return tt
}

func newTester(t testing.TB, h streamtx.Handler, opts Options) *Tester {
	t.Helper()
	if h == nil {
		t.Fatalf("streamtxtest: nil handler")
	}
	switch {
	case opts.Stream != "" && opts.Topic != "":
		t.Fatalf("streamtxtest: Options.Stream %q and Options.Topic %q: a Tester consumes a stream or a topic, not both", opts.Stream, opts.Topic)
	case opts.Topic == "" && opts.Partitions != 0:
		t.Fatalf("streamtxtest: Options.Partitions %d without Options.Topic", opts.Partitions)
	}
	opts.setDefaults()
	tt := &Tester{t: t, opts: opts, insts: make(map[string]*instance)}
	tt.h = &faultHandler{tt: tt, inner: h}
	tt.now = time.Now().Truncate(time.Millisecond)
	if addr := os.Getenv("REDIS_ADDR"); addr != "" {
		tt.addr = addr
		b := make([]byte, 6)
		rand.Read(b)
		tt.prefix = "stxtest-" + hex.EncodeToString(b) + ":"
	} else {
		mr := miniredis.NewMiniRedis()
		if err := mr.Start(); err != nil {
			t.Fatalf("streamtxtest: start miniredis: %v", err)
		}
		mr.SetTime(tt.now)
		tt.mr, tt.addr = mr, mr.Addr()
	}
	tt.admin = redis.NewClient(&redis.Options{Addr: tt.addr})
	if err := tt.admin.Ping(context.Background()).Err(); err != nil {
		tt.Close()
		t.Fatalf("streamtxtest: Redis at %s (REDIS_ADDR): %v", tt.addr, err)
	}
	if opts.Topic != "" {
		top, err := streamtx.CreateTopic(context.Background(), tt.admin, tt.Key(opts.Topic), streamtx.TopicConfig{Partitions: opts.Partitions})
		if err != nil {
			tt.Close()
			t.Fatalf("streamtxtest: topic %q: %v", opts.Topic, err)
		}
		tt.topic = top
		for p := range top.Partitions() {
			sp, err := keys.NewSpace(top.Stream(p), opts.Group)
			if err != nil {
				tt.Close()
				t.Fatalf("streamtxtest: topic %q: %v", opts.Topic, err)
			}
			dlq := sp.DeadLetters()
			if opts.Config.DeadLetterStream != "" {
				dlq = tt.Key(opts.Config.DeadLetterStream)
			}
			tt.srcs = append(tt.srcs, source{p: p, stream: top.Stream(p), space: sp, dlq: dlq})
		}
	} else {
		tt.stream = tt.Key(opts.Stream)
		sp, err := keys.NewSpace(tt.stream, opts.Group)
		if err != nil {
			tt.Close()
			t.Fatalf("streamtxtest: stream %q: %v", opts.Stream, err)
		}
		tt.srcs = []source{{p: -1, stream: tt.stream, space: sp}}
	}
	if err := tt.createTopics(); err != nil {
		tt.Close()
		t.Fatalf("streamtxtest: %v", err)
	}
	// Validate the configuration now, where the test sets it up.
	c, err := streamtx.NewConsumer(tt.admin, tt.config(opts.Consumer), tt.h)
	if err != nil {
		tt.Close()
		t.Fatalf("streamtxtest: %v", err)
	}
	if tt.topic == nil {
		tt.srcs[0].dlq = c.DeadLetterStream()
	}
	return tt
}

// config returns the consumer configuration of the consumer called name.
func (tt *Tester) config(name string) streamtx.Config {
	cfg := tt.opts.Config
	cfg.Stream, cfg.Group, cfg.Consumer = tt.stream, tt.opts.Group, name
	if tt.topic != nil {
		cfg.Topic = tt.topic.Name()
	}
	if cfg.DeadLetterStream != "" {
		cfg.DeadLetterStream = tt.Key(cfg.DeadLetterStream)
	}
	if cfg.Clock == nil {
		cfg.Clock = tt.Now
	}
	cfg.Observer = observer{tt: tt, next: cfg.Observer}
	return cfg
}

// Close stops what the Tester started and, on a shared Redis, deletes its
// keys. New registers it with t.Cleanup: a test need not call it. Calling
// it again does nothing.
func (tt *Tester) Close() {
	tt.closeOnce.Do(func() {
		tt.stopAll()
		if tt.admin != nil && tt.prefix != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			for _, pattern := range []string{globEscape(tt.prefix) + "*", "stx:{" + globEscape(tt.prefix) + "*"} {
				iter := tt.admin.Scan(ctx, 0, pattern, 500).Iterator()
				var batch []string
				for iter.Next(ctx) {
					batch = append(batch, iter.Val())
				}
				if len(batch) > 0 {
					tt.admin.Unlink(ctx, batch...)
				}
			}
			cancel()
		}
		if tt.admin != nil {
			tt.admin.Close()
		}
		if tt.mr != nil {
			tt.mr.Close()
		}
	})
}

func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Key returns the name under which the key called name is stored: name
// itself on miniredis, name under the test's prefix on a shared Redis. The
// Tester applies it to the source stream, to every stream the handler
// publishes to with tx.Publish and to the topics of Options.Topics; use it
// for keys a handler writes by other means (see FromContext), and for a
// topic the test opens or publishes to itself:
// streamtx.OpenTopic(ctx, tt.Client(), tt.Key("shipments")).
func (tt *Tester) Key(name string) string {
	if tt.prefix == "" || strings.HasPrefix(name, tt.prefix) {
		return name
	}
	return tt.prefix + name
}

// Client returns a client of the Tester's Redis. Commands sent through it
// are not subject to injected faults.
func (tt *Tester) Client() redis.UniversalClient { return tt.admin }

// Stream returns the source stream as stored (see Key), or "" on a topic
// (see Topic).
func (tt *Tester) Stream() string { return tt.stream }

// Topic returns the source topic (its name as stored, its partitions'
// streams, PartitionOf), or nil when the Tester consumes a stream.
func (tt *Tester) Topic() *streamtx.Topic { return tt.topic }

// Group returns the consumer group.
func (tt *Tester) Group() string { return tt.opts.Group }

// Miniredis returns the embedded miniredis, or nil on a real Redis
// (REDIS_ADDR).
func (tt *Tester) Miniredis() *miniredis.Miniredis { return tt.mr }

// Now returns the Tester's clock: the consumers' Config.Clock (the time in
// dead letters) unless the configuration sets one. It starts at the real
// time and moves only with Advance.
func (tt *Tester) Now() time.Time {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	return tt.now
}

// Advance moves the Tester's clock forward by d, without waiting. On
// miniredis it moves Redis's clock too (miniredis.SetTime and FastForward):
// the idle time of pending entries (Config.ClaimIdle), the time of new
// entry IDs and of TIME (Config.Retention.MaxAge) and key TTLs. On a real
// Redis it moves only the Tester's clock: Redis's own is real.
//
// On a topic, leases and membership are timed by Redis's clock too. Nothing
// holds a lease between two Drains, so Advance by more than LeaseTTL is
// harmless; and on miniredis, where the clock moves only with Advance, a
// lease never expires during a Drain, however slow the machine.
func (tt *Tester) Advance(d time.Duration) {
	tt.t.Helper()
	if d < 0 {
		tt.t.Fatalf("streamtxtest: Advance(%s): negative", d)
	}
	tt.mu.Lock()
	tt.now = tt.now.Add(d)
	now := tt.now
	tt.mu.Unlock()
	if tt.mr != nil {
		tt.mr.SetTime(now)
		tt.mr.FastForward(d)
	}
}

// Send appends an entry with values to the source stream and returns its
// ID. Values take what go-redis's XADD takes (strings, numbers, []byte…).
// Nothing handles it until Drain. On a topic it fails the test: use
// SendKeyed.
func (tt *Tester) Send(values map[string]any) string {
	tt.t.Helper()
	if tt.topic != nil {
		tt.t.Fatalf("streamtxtest: Send on topic %q: an entry of a topic needs a key: use SendKeyed(key, values)", tt.opts.Topic)
	}
	if len(values) == 0 {
		tt.t.Fatalf("streamtxtest: Send with no values")
	}
	id, err := tt.admin.XAdd(context.Background(), &redis.XAddArgs{Stream: tt.stream, Values: values}).Result()
	if err != nil {
		tt.t.Fatalf("streamtxtest: send to %q: %v", tt.opts.Stream, err)
	}
	return id
}

// SendKeyed appends an entry with values and key to the source topic — to
// the partition of key (Topic.PartitionOf), with key in the field
// "stx.key", as Producer.PublishKeyed does — and returns its ID. Nothing
// handles it until Drain. On a stream it fails the test: set Options.Topic.
//
// The IDs SendKeyed returns are unique across the topic's partitions, and
// ascend in the order of the calls (Redis's own IDs are unique per stream
// only), so that an ID alone names an entry: for Inject, say.
func (tt *Tester) SendKeyed(key string, values map[string]any) string {
	tt.t.Helper()
	switch {
	case tt.topic == nil:
		tt.t.Fatalf("streamtxtest: SendKeyed(%q) on the stream %q: keyed entries go to a topic: set Options.Topic (and Partitions) instead of Stream", key, tt.opts.Stream)
	case key == "":
		tt.t.Fatalf("streamtxtest: SendKeyed with an empty key")
	case len(values) == 0:
		tt.t.Fatalf("streamtxtest: SendKeyed(%q) with no values", key)
	}
	if _, ok := values[keyField]; ok {
		tt.t.Fatalf("streamtxtest: SendKeyed(%q): the field %q is reserved for the key", key, keyField)
	}
	withKey := make(map[string]any, len(values)+1)
	for k, v := range values {
		withKey[k] = v
	}
	withKey[keyField] = key
	stream := tt.topic.Stream(tt.topic.PartitionOf(key))
	ctx := context.Background()
	id, err := tt.nextID(ctx, stream)
	if err == nil {
		id, err = tt.admin.XAdd(ctx, &redis.XAddArgs{Stream: stream, ID: id, Values: withKey}).Result()
	}
	if err != nil {
		tt.t.Fatalf("streamtxtest: send to topic %q (key %q): %v", tt.opts.Topic, key, err)
	}
	tt.sent = id
	return id
}

// keyField is the field of an entry of a topic that holds its key.
const keyField = "stx.key"

// nextID returns the ID of the next entry SendKeyed appends to stream: the
// Redis time in ms, or later — after the last ID SendKeyed assigned in any
// partition and after the top of stream (which a handler may have published
// to). Nothing runs between Drains: no other entry can come in between.
func (tt *Tester) nextID(ctx context.Context, stream string) (string, error) {
	now, err := tt.admin.Time(ctx).Result()
	if err != nil {
		return "", err
	}
	id := [2]uint64{uint64(now.UnixMilli()), 0}
	top, err := tt.admin.XRevRangeN(ctx, stream, "+", "-", 1).Result()
	if err != nil {
		return "", err
	}
	for _, after := range []string{tt.sent, topID(top)} {
		if a, ok := parseID(after); ok && !less(a, id) {
			id = [2]uint64{a[0], a[1] + 1}
		}
	}
	return fmt.Sprintf("%d-%d", id[0], id[1]), nil
}

func topID(ms []redis.XMessage) string {
	if len(ms) == 0 {
		return ""
	}
	return ms[0].ID
}

func parseID(s string) ([2]uint64, bool) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return [2]uint64{}, false
	}
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	return [2]uint64{a, b}, err1 == nil && err2 == nil
}

func less(a, b [2]uint64) bool { return a[0] < b[0] || a[0] == b[0] && a[1] < b[1] }

// Published returns the entries of stream (as the handler names it in
// tx.Publish), oldest first. Message.Stream is the name as given. It fails
// the test when stream has no entries and names a topic: read a topic with
// PublishedKeyed.
func (tt *Tester) Published(stream string) []streamtx.Message {
	tt.t.Helper()
	ctx := context.Background()
	ms, err := tt.admin.XRange(ctx, tt.Key(stream), "-", "+").Result()
	if err != nil {
		tt.t.Fatalf("streamtxtest: read %q: %v", stream, err)
	}
	if len(ms) == 0 && tt.isTopic(ctx, stream) {
		tt.t.Fatalf("streamtxtest: Published(%q): %q is a topic: read what was published to it with PublishedKeyed(%q)", stream, stream, stream)
	}
	out := make([]streamtx.Message, len(ms))
	for i, m := range ms {
		vals := make(map[string]string, len(m.Values))
		for k, v := range m.Values {
			s, _ := v.(string)
			vals[k] = s
		}
		out[i] = streamtx.Message{Stream: stream, ID: m.ID, Values: vals, Key: vals["stx.key"], Partition: -1}
	}
	return out
}

// DeadLetters returns the group's dead letters, oldest first, each with the
// error that sent it there (DeadLetter.Error). On a topic it returns those
// of every partition, partition by partition (DeadLetter.Stream is the
// partition's stream).
func (tt *Tester) DeadLetters() []streamtx.DeadLetter {
	tt.t.Helper()
	var all []streamtx.DeadLetter
	seen := make(map[string]bool)
	for _, src := range tt.srcs {
		if seen[src.dlq] {
			continue // Config.DeadLetterStream: one for every partition
		}
		seen[src.dlq] = true
		for start := "-"; ; {
			page, next, err := streamtx.ListDeadLetters(context.Background(), tt.admin, src.dlq, start, 1000)
			if err != nil {
				tt.t.Fatalf("streamtxtest: %v", err)
			}
			all = append(all, page...)
			if next == "" {
				break
			}
			start = next
		}
	}
	return all
}

// DeadLetterStream returns the group's dead-letter stream as stored. On a
// topic it returns Config.DeadLetterStream when set (every partition's),
// else "": each partition has its own, Topic().DeadLetterStream(Group(), p).
func (tt *Tester) DeadLetterStream() string {
	if tt.topic != nil && tt.opts.Config.DeadLetterStream == "" {
		return ""
	}
	return tt.srcs[0].dlq
}

// State returns the committed value of the state name (Stateful, or a
// txn.State read with Get): the zero value before the first commit. Give
// the state's codec when it is not msgpack (state.JSON…).
//
// On a topic it fails the test: each partition has a value of its own
// (read one with PartitionState), and a Keyed state is read with
// KeyedState.
func State[S any](tt *Tester, name string, codec ...state.Codec[S]) S {
	tt.t.Helper()
	if tt.topic != nil {
		tt.t.Fatalf("streamtxtest: State(%q) on topic %q: on a topic a state that is not keyed has one value per partition: "+
			"read one with PartitionState(tt, %q, p), or a Keyed state with KeyedState(tt, %q, key)", name, tt.opts.Topic, name, name)
	}
	snap, err := streamtx.ReadState[S](context.Background(), tt.admin, tt.stream, tt.opts.Group, name, codec...)
	if err != nil {
		tt.t.Fatalf("streamtxtest: %v", err)
	}
	return snap.Value
}

// PartitionState returns the committed value of the state name (Stateful,
// or a txn.State read with Get) in partition p of the topic, as State does
// on a stream: on a topic, each partition's consumer keeps a value of its
// own. It fails the test on a stream (use State) and for a p out of range.
func PartitionState[S any](tt *Tester, name string, p int, codec ...state.Codec[S]) S {
	tt.t.Helper()
	switch {
	case tt.topic == nil:
		tt.t.Fatalf("streamtxtest: PartitionState(%q, %d) on the stream %q: a stream has no partitions: use State", name, p, tt.opts.Stream)
	case p < 0 || p >= tt.topic.Partitions():
		tt.t.Fatalf("streamtxtest: PartitionState(%q, %d): topic %q has partitions 0 to %d", name, p, tt.opts.Topic, tt.topic.Partitions()-1)
	}
	snap, err := streamtx.ReadState[S](context.Background(), tt.admin, tt.topic.Stream(p), tt.opts.Group, name, codec...)
	if err != nil {
		tt.t.Fatalf("streamtxtest: %v", err)
	}
	return snap.Value
}

// KeyedState returns the committed value of the keyed state name for key
// (Keyed, or a txn.State read with GetKey), as State does. On a topic it
// reads in the key's partition (Topic.PartitionOf).
func KeyedState[S any](tt *Tester, name, key string, codec ...state.Codec[S]) S {
	tt.t.Helper()
	from := tt.stream
	if tt.topic != nil {
		from = tt.topic.Name()
	}
	snap, err := streamtx.ReadKeyedState[S](context.Background(), tt.admin, from, tt.opts.Group, name, key, codec...)
	if err != nil {
		tt.t.Fatalf("streamtxtest: %v", err)
	}
	return snap.Value
}

// Drain runs the consumer until every entry sent so far is committed or
// dead-lettered (the group has read them all and none is pending), then
// stops it. Each consumer name that holds pending entries gets a consumer
// of its own meanwhile (one that replaces a crashed one, or the one an entry
// was claimed for; see Fault), so that the pending entries of a consumer
// that is gone are recovered by name rather than after ClaimIdle.
//
// On a topic, Drain runs one consumer of the topic, which owns every
// partition, and waits until every partition is drained. A consumer that
// crashed (Fault Crash) is replaced by a new instance under the same name,
// after the Tester has expired the crashed one's leases and membership, as
// LeaseTTL would.
//
// It fails the test, with the entries still pending (partition by
// partition on a topic) and the last errors the consumers reported, when
// that takes longer than Options.DrainTimeout, or when a consumer's Run
// returns an error.
func (tt *Tester) Drain() {
	tt.t.Helper()
	defer tt.stopAll()
	deadline := time.Now().Add(tt.opts.DrainTimeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := tt.supervise(); err != nil {
			tt.stopAll()
			tt.t.Fatalf("streamtxtest%s: %v", tt.label, err)
		}
		done, err := tt.drained()
		if done {
			return
		}
		if time.Now().After(deadline) {
			report := tt.report() // before the consumers stop and release what they hold
			tt.stopAll()
			tt.t.Fatalf("streamtxtest%s: Drain: not done after %s%s\n%s", tt.label, tt.opts.DrainTimeout, errSuffix(err), report)
		}
		<-tick.C
	}
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}

// drained reports whether the group has read every entry and has none
// pending, in every source.
func (tt *Tester) drained() (bool, error) {
	for i := range tt.srcs {
		if ok, err := tt.srcDrained(&tt.srcs[i]); !ok {
			return false, err
		}
	}
	return true, nil
}

func (tt *Tester) srcDrained(src *source) (bool, error) {
	ctx := context.Background()
	groups, err := tt.admin.XInfoGroups(ctx, src.stream).Result()
	if err != nil {
		if src.p >= 0 {
			err = fmt.Errorf("partition %d: %w", src.p, err)
		}
		return false, err
	}
	last, err := tt.admin.XRevRangeN(ctx, src.stream, "+", "-", 1).Result()
	if err != nil {
		return false, err
	}
	for _, g := range groups {
		if g.Name == tt.opts.Group {
			return g.Pending == 0 && (len(last) == 0 || g.LastDeliveredID == last[0].ID), nil
		}
	}
	return false, fmt.Errorf("%s: no group %q yet", src.what(), tt.opts.Group)
}

// supervise keeps a consumer running for the Tester's consumer name and,
// on a stream, for every name that holds pending entries. (On a topic every
// partition consumer reads under one name, whoever owns the partition.)
func (tt *Tester) supervise() error {
	if tt.topic != nil {
		return tt.ensureRunning(tt.opts.Consumer)
	}
	names := []string{tt.opts.Consumer}
	if p, err := tt.admin.XPending(context.Background(), tt.stream, tt.opts.Group).Result(); err == nil {
		for name, n := range p.Consumers {
			if n > 0 && name != tt.opts.Consumer {
				names = append(names, name)
			}
		}
	}
	sort.Strings(names[1:])
	for _, name := range names {
		if err := tt.ensureRunning(name); err != nil {
			return err
		}
	}
	return nil
}

// report describes what is pending and the last errors, for a Drain that
// did not finish.
func (tt *Tester) report() string {
	var b strings.Builder
	for i := range tt.srcs {
		tt.reportSource(&b, &tt.srcs[i])
	}
	tt.mu.Lock()
	errs := append([]string(nil), tt.errs...)
	tt.mu.Unlock()
	if len(errs) == 0 {
		b.WriteString("errors reported: none")
	} else {
		b.WriteString("last errors reported:")
		for _, e := range errs {
			b.WriteString("\n  " + e)
		}
	}
	return b.String()
}

// reportSource describes what is pending in src (and, on a topic, who
// holds its lease).
func (tt *Tester) reportSource(b *strings.Builder, src *source) {
	ctx := context.Background()
	head, indent := "pending entries", "  "
	if src.p >= 0 {
		head = "partition " + strconv.Itoa(src.p)
		if l, err := tt.admin.HGetAll(ctx, src.space.Lease()).Result(); err == nil && l["owner"] != "" {
			head += fmt.Sprintf(" (lease: %s, epoch %s)", l["owner"], l["epoch"])
		}
		head += ", pending entries"
		indent = "    "
		if ok, err := tt.srcDrained(src); ok && err == nil {
			fmt.Fprintf(b, "partition %d: drained\n", src.p)
			return
		}
	}
	rows, err := tt.admin.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: src.stream, Group: tt.opts.Group, Start: "-", End: "+", Count: 50}).Result()
	switch {
	case err != nil:
		fmt.Fprintf(b, "%s: %v\n", head, err)
	case len(rows) == 0:
		fmt.Fprintf(b, "%s: none (the group has not read every entry)\n", head)
	default:
		fmt.Fprintf(b, "%s:\n", head)
		for _, r := range rows {
			vals := ""
			if ms, err := tt.admin.XRangeN(ctx, src.stream, r.ID, r.ID, 1).Result(); err == nil && len(ms) == 1 {
				vals = " " + fields(ms[0].Values)
			}
			fmt.Fprintf(b, "%s%s consumer=%s deliveries=%d idle=%s%s\n", indent, r.ID, r.Consumer, r.RetryCount, r.Idle, vals)
		}
	}
}

// LastErrors returns the last errors the consumers reported (handler
// failures, dead letters, Redis errors), oldest first, at most 20.
func (tt *Tester) LastErrors() []string {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	return append([]string(nil), tt.errs...)
}

// observer records errors for Drain's report and passes every event on.
type observer struct {
	tt   *Tester
	next streamtx.Observer
}

func (o observer) Observe(e streamtx.Event) {
	if e.Err != nil {
		s := fmt.Sprintf("%s %s %v: %v", e.Consumer, e.Kind, e.IDs, e.Err)
		if e.Partition >= 0 {
			s = fmt.Sprintf("%s partition %d %s %v: %v", e.Consumer, e.Partition, e.Kind, e.IDs, e.Err)
		}
		o.tt.mu.Lock()
		o.tt.errs = append(o.tt.errs, s)
		if len(o.tt.errs) > keepErrors {
			o.tt.errs = o.tt.errs[len(o.tt.errs)-keepErrors:]
		}
		o.tt.mu.Unlock()
	}
	if o.next != nil {
		o.next.Observe(e)
	}
}

// fields formats entry values as "k=v k=v", keys sorted.
func fields[V any](values map[string]V) string {
	ks := make([]string, 0, len(values))
	for k := range values {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	for i, k := range ks {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%v", k, values[k])
	}
	return b.String()
}

// instance is one consumer process: a streamtx.Consumer with a Redis client
// of its own, through which faults reach it.
type instance struct {
	tt      *Tester
	name    string
	client  *redis.Client
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	crashed bool // under tt.mu

	armed map[string]Fault // entry ID -> a fault for its next commit; under tt.mu
}

type instanceKey struct{}

// FromContext returns the Tester whose consumer runs the handler called
// with ctx, or nil outside one. A handler under test can reach the test's
// Redis through it (Client, Key) — for instance to show what a write made
// outside the transaction does under faults.
func FromContext(ctx context.Context) *Tester {
	if in, ok := ctx.Value(instanceKey{}).(*instance); ok {
		return in.tt
	}
	return nil
}

// ensureRunning starts a consumer called name unless one runs. A crashed
// one is replaced once its Run has returned.
func (tt *Tester) ensureRunning(name string) error {
	tt.mu.Lock()
	in := tt.insts[name]
	tt.mu.Unlock()
	if in != nil {
		select {
		case <-in.done:
			tt.mu.Lock()
			crashed := in.crashed
			tt.mu.Unlock()
			in.client.Close()
			if !crashed {
				return fmt.Errorf("consumer %s: Run returned: %v", name, in.err)
			}
			if tt.topic != nil {
				if err := tt.expire(name); err != nil {
					return err
				}
			}
		default:
			return nil
		}
	}
	in = &instance{tt: tt, name: name, done: make(chan struct{}), armed: make(map[string]Fault)}
	in.client = redis.NewClient(&redis.Options{Addr: tt.addr})
	in.client.AddHook(hook{in: in})
	c, err := streamtx.NewConsumer(in.client, tt.config(name), tt.h)
	if err != nil {
		in.client.Close()
		return err
	}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), instanceKey{}, in))
	in.cancel = cancel
	tt.mu.Lock()
	tt.insts[name] = in
	tt.mu.Unlock()
	go func() {
		defer close(in.done)
		in.err = c.Run(ctx)
	}()
	return nil
}

// expire ends the membership and the leases of the instances of the
// consumer called name, on a topic: what LeaseTTL does to an instance that
// died, without waiting for it (or, on miniredis, without moving the
// clock). It is called once the crashed instance's Run has returned, and
// before its replacement starts: every instance of name is then dead.
func (tt *Tester) expire(name string) error {
	ctx := context.Background()
	ks := []string{keys.Members(tt.topic.Name(), tt.opts.Group)}
	for _, src := range tt.srcs {
		ks = append(ks, src.space.Lease())
	}
	if err := redis.NewScript(expireSrc).Run(ctx, tt.admin, ks, name+"/").Err(); err != nil {
		return fmt.Errorf("expire the leases of the crashed consumer %s: %w", name, err)
	}
	return nil
}

// expireSrc removes the members of KEYS[1] whose instance ID starts with
// ARGV[1] and ends the leases KEYS[2..] they hold (see lua/members.lua and
// lua/lease.lua in the module: "until" 0 is expired; the epoch stays).
const expireSrc = `local n = #ARGV[1]
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, n) == ARGV[1] then redis.call('ZREM', KEYS[1], m) end
end
for i = 2, #KEYS do
  local owner = redis.call('HGET', KEYS[i], 'owner')
  if owner and string.sub(owner, 1, n) == ARGV[1] then redis.call('HSET', KEYS[i], 'until', '0') end
end
return 0`

// stopAll stops every consumer and waits for them.
func (tt *Tester) stopAll() {
	tt.mu.Lock()
	insts := make([]*instance, 0, len(tt.insts))
	for _, in := range tt.insts {
		insts = append(insts, in)
	}
	tt.insts = make(map[string]*instance)
	tt.mu.Unlock()
	for _, in := range insts {
		in.cancel()
	}
	var errs []error
	for _, in := range insts {
		select {
		case <-in.done:
		case <-time.After(time.Minute):
			errs = append(errs, fmt.Errorf("consumer %s: Run did not return a minute after its context was cancelled", in.name))
			continue
		}
		in.client.Close()
		tt.mu.Lock()
		crashed := in.crashed
		tt.mu.Unlock()
		if in.err != nil && !crashed {
			errs = append(errs, fmt.Errorf("consumer %s: Run returned: %w", in.name, in.err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		tt.t.Errorf("streamtxtest%s: %v", tt.label, err)
	}
}
