package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

// readBlock is how long one XREADGROUP waits, in the raw loops and as
// Config.Block, so that consumers notice the end of a run quickly.
const readBlock = 10 * time.Millisecond

// Scenario names.
const (
	rawALO       = "raw-alo"
	rawACK       = "raw-ack"
	stxStateless = "stx-stateless"
	stxStateful  = "stx-stateful"
	stxKeyed     = "stx-keyed"
	// On a partitioned topic (see topic.go).
	rawALOTopic   = "raw-alo-topic"
	stxTopicKeyed = "stx-topic-keyed"
)

var allScenarios = []string{rawALO, rawACK, stxStateless, stxStateful, stxKeyed, rawALOTopic, stxTopicKeyed}

var scenarioDesc = map[string]string{
	rawALO:       "at-least-once loop: XREADGROUP COUNT b, then one pipeline of b XADDs + XACK (the baseline)",
	rawACK:       "XREADGROUP COUNT b + XACK, nothing published (the ceiling)",
	stxStateless: "streamtx, HandlerFunc, 1 publish per entry",
	stxStateful:  "streamtx, Stateful counter (one record shared by the group), 1 publish per entry",
	stxKeyed:     "streamtx, Keyed counter over 1,000 keys, 1 publish per entry",
	rawALOTopic: "raw-alo over the topic's P partition streams, each partition read by one consumer: with -raw-topic split (the default), " +
		"consumer i reads the partitions p with p mod N = i in one XREADGROUP (COUNT b per stream) and acks them in one pipeline (the topic baseline)",
	stxTopicKeyed: "streamtx on a topic of P partitions (Config.Topic), Keyed(name, nil, fn) counter over 1,000 keys, 1 publish per entry",
}

// isRaw reports whether the scenario is a hand-written loop, not streamtx.
func isRaw(name string) bool { return name == rawALO || name == rawACK || name == rawALOTopic }

// isTopic reports whether the scenario consumes a partitioned topic.
func isTopic(name string) bool { return name == rawALOTopic || name == stxTopicKeyed }

// baseline returns the scenario a scenario's throughput is divided by: the
// raw at-least-once loop over the same streams.
func baseline(name string) string {
	if isTopic(name) {
		return rawALOTopic
	}
	return rawALO
}

// counter is the state of the Stateful and Keyed scenarios.
type counter struct {
	N int64
}

// stateName is the state name of the Stateful and Keyed scenarios.
const stateName = "count"

// tracker counts acknowledged entries and notes when the last one is.
type tracker struct {
	target int64
	count  atomic.Int64
	once   sync.Once
	done   chan struct{}
	end    time.Time // set before done is closed
}

func newTracker(target int) *tracker {
	return &tracker{target: int64(target), done: make(chan struct{})}
}

func (t *tracker) add(k int) {
	if t.count.Add(int64(k)) >= t.target {
		t.once.Do(func() {
			t.end = time.Now()
			close(t.done)
		})
	}
}

func (t *tracker) finished() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// eventCounts counts the streamtx events of a run other than commits.
type eventCounts struct {
	conflicts, fenced, retries, errors atomic.Int64
	assigned, revoked                  atomic.Int64 // topics: partitions acquired and given up
	mu                                 sync.Mutex
	firstErr                           error
}

func (c *eventCounts) error(err error) {
	c.errors.Add(1)
	c.mu.Lock()
	if c.firstErr == nil {
		c.firstErr = err
	}
	c.mu.Unlock()
}

// trial is one run of one scenario: its keys and its consumers' parameters.
type trial struct {
	scenario  string // set by prepare
	rdb       *redis.Client
	src, out  string
	batch     int
	consumers int
	track     *tracker
	events    *eventCounts
	// Topic scenarios: the topic (src is then unused), how raw-alo-topic
	// splits it (-raw-topic), and Config.LeaseTTL (0: the default).
	topic    *streamtx.Topic
	rawTopic string
	leaseTTL time.Duration
	lat      *latencyRec // non-nil in the latency phase
	// onCommit, when set, is called after every streamtx commit.
	onCommit func(streamtx.Event)
}

// prepare builds the consumers of scenario on r and returns the function
// that launches them; launching returns a function that waits for them to
// return once ctx is cancelled, with their errors. Building comes first so
// that the caller times only consuming.
func (r *trial) prepare(scenario string) (func(ctx context.Context) (wait func() error), error) {
	r.scenario = scenario
	switch scenario {
	case rawALO, rawACK:
		publish := scenario == rawALO
		return func(ctx context.Context) func() error {
			return goAll(r.consumers, func(i int) error { return r.rawLoop(ctx, consumerName(i), []string{r.src}, publish) })
		}, nil
	case rawALOTopic:
		loops := r.rawTopicLoops()
		return func(ctx context.Context) func() error {
			return goAll(len(loops), func(i int) error { return r.rawLoop(ctx, loops[i].consumer, loops[i].streams, true) })
		}, nil
	}
	h, err := r.handler(scenario)
	if err != nil {
		return nil, err
	}
	if r.lat != nil {
		h = r.lat.wrap(h)
	}
	obs := streamtx.ObserverFunc(r.observe)
	cs := make([]*streamtx.Consumer, r.consumers)
	for i := range cs {
		cfg := streamtx.Config{
			Stream:    r.src,
			Group:     group,
			Consumer:  consumerName(i),
			BatchSize: r.batch,
			Block:     readBlock,
			Observer:  obs,
		}
		if r.topic != nil {
			cfg.Stream, cfg.Topic, cfg.LeaseTTL = "", r.topic.Name(), r.leaseTTL
		}
		cs[i], err = streamtx.NewConsumer(r.rdb, cfg, h)
		if err != nil {
			return nil, err
		}
	}
	return func(ctx context.Context) func() error {
		return goAll(len(cs), func(i int) error { return cs[i].Run(ctx) })
	}, nil
}

func consumerName(i int) string { return "c" + strconv.Itoa(i) }

// goAll runs f(0) … f(n-1) in goroutines and returns a function that waits
// for them all and returns the first error.
func goAll(n int, f func(i int) error) (wait func() error) {
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- f(i) }()
	}
	return func() error {
		var all []error
		for range n {
			all = append(all, <-errs)
		}
		return errors.Join(all...)
	}
}

// handler returns the streamtx handler of scenario. Every handler publishes
// one entry of three fields per entry, like the raw-alo loop.
func (r *trial) handler(scenario string) (streamtx.Handler, error) {
	out := r.out
	count := func(_ context.Context, msg *streamtx.Message, c *counter, tx *txn.Tx) error {
		c.N++
		return tx.Publish(out, map[string]any{"src": msg.ID, "k": msg.Values["k"], "v": c.N})
	}
	switch scenario {
	case stxStateless:
		return streamtx.HandlerFunc(func(_ context.Context, msg *streamtx.Message, tx *txn.Tx) error {
			return tx.Publish(out, map[string]any{"src": msg.ID, "k": msg.Values["k"], "v": msg.Values["v"]})
		}), nil
	case stxStateful:
		return streamtx.Stateful(stateName, count), nil
	case stxKeyed:
		return streamtx.Keyed(stateName, func(m *streamtx.Message) string { return m.Values["k"] }, count), nil
	case stxTopicKeyed:
		return streamtx.Keyed(stateName, nil, count), nil // keyed by the entry's key (stx.key)
	}
	return nil, fmt.Errorf("unknown scenario %q", scenario)
}

// observe is the Observer of every streamtx consumer of the run. It is
// called from the consumers' goroutines.
func (r *trial) observe(e streamtx.Event) {
	switch e.Kind {
	case streamtx.EventCommit:
		if r.lat != nil {
			r.lat.committed(e.IDs, e.Duration)
		}
		r.track.add(len(e.IDs))
		if r.onCommit != nil {
			r.onCommit(e)
		}
	case streamtx.EventConflict:
		r.events.conflicts.Add(1)
	case streamtx.EventAssigned:
		r.events.assigned.Add(1)
	case streamtx.EventRevoked:
		r.events.revoked.Add(1)
	case streamtx.EventFenced:
		r.events.fenced.Add(1)
	case streamtx.EventRetry, streamtx.EventDeadLetter:
		r.events.retries.Add(1)
		r.events.error(e.Err)
	case streamtx.EventError:
		r.events.error(e.Err)
	}
}

// rawLoop is a hand-written consumer of streams: XREADGROUP COUNT batch
// over all of them in one call (COUNT is per stream), then, in one
// pipeline, one XADD per entry (when publish) and an XACK per stream. It
// returns when the run has acknowledged every entry or ctx is cancelled. A
// consumer with no streams (more consumers than partitions) waits for that.
func (r *trial) rawLoop(ctx context.Context, consumer string, streams []string, publish bool) error {
	if len(streams) == 0 {
		select {
		case <-ctx.Done():
		case <-r.track.done:
		}
		return nil
	}
	args := &redis.XReadGroupArgs{
		Group:    group,
		Consumer: consumer,
		Count:    int64(r.batch),
		Block:    readBlock,
	}
	args.Streams = append(args.Streams, streams...)
	for range streams {
		args.Streams = append(args.Streams, ">")
	}
	for ctx.Err() == nil && !r.track.finished() {
		res, err := r.rdb.XReadGroup(ctx, args).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%s: XREADGROUP: %w", consumer, err)
		}
		n := 0
		for _, s := range res {
			n += len(s.Messages)
		}
		if n == 0 {
			continue
		}
		ids := make([]string, 0, n)
		for _, s := range res {
			for _, m := range s.Messages {
				ids = append(ids, m.ID)
				if r.lat != nil {
					r.lat.read(m.ID, m.Values["t"])
				}
			}
		}
		start := time.Now()
		if publish || len(res) > 1 {
			pipe := r.rdb.Pipeline()
			first := 0
			for _, s := range res {
				if publish {
					for _, m := range s.Messages {
						pipe.XAdd(ctx, &redis.XAddArgs{
							Stream: r.out,
							Values: []any{"src", m.ID, "k", m.Values["k"], "v", m.Values["v"]},
						})
					}
				}
				if len(s.Messages) > 0 {
					pipe.XAck(ctx, s.Stream, group, ids[first:first+len(s.Messages)]...)
				}
				first += len(s.Messages)
			}
			_, err = pipe.Exec(ctx)
		} else {
			err = r.rdb.XAck(ctx, res[0].Stream, group, ids...).Err()
		}
		if err != nil {
			return fmt.Errorf("%s: publish/ack: %w", consumer, err)
		}
		if r.lat != nil {
			r.lat.committed(ids, time.Since(start))
		}
		r.track.add(n)
	}
	return nil
}
