package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

// latencyRec records, under light load, how long each commit took and how
// long each entry took from its XADD to its commit.
type latencyRec struct {
	mu     sync.Mutex
	sent   map[string]int64 // entry ID -> XADD time (Unix ns), until committed
	commit []time.Duration  // one per commit round trip
	e2e    []time.Duration  // one per entry
}

func newLatencyRec(n int) *latencyRec {
	return &latencyRec{
		sent:   make(map[string]int64),
		commit: make([]time.Duration, 0, n),
		e2e:    make([]time.Duration, 0, n),
	}
}

// read notes the XADD time carried in an entry's "t" field.
func (l *latencyRec) read(id string, t any) {
	s, _ := t.(string)
	ns, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return
	}
	l.mu.Lock()
	l.sent[id] = ns
	l.mu.Unlock()
}

// committed records one commit of ids that took d.
func (l *latencyRec) committed(ids []string, d time.Duration) {
	now := time.Now().UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.commit = append(l.commit, d)
	for _, id := range ids {
		if t, ok := l.sent[id]; ok {
			l.e2e = append(l.e2e, time.Duration(now-t))
			delete(l.sent, id)
		}
	}
}

// wrap makes h note the XADD time of every entry it handles.
func (l *latencyRec) wrap(h streamtx.Handler) streamtx.Handler {
	return streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		l.read(msg.ID, msg.Values["t"])
		return h.Handle(ctx, msg, tx)
	})
}

// latencyResult is the latency of one scenario at batch 1 under light load.
type latencyResult struct {
	Scenario   string        `json:"scenario"`
	Entries    int           `json:"entries"`
	IntervalNS time.Duration `json:"interval_ns"`
	Commits    int           `json:"commits"`
	CommitP50  time.Duration `json:"commit_p50_ns"`
	CommitP99  time.Duration `json:"commit_p99_ns"`
	CommitMax  time.Duration `json:"commit_max_ns"`
	E2EP50     time.Duration `json:"e2e_p50_ns"`
	E2EP99     time.Duration `json:"e2e_p99_ns"`
	E2EMax     time.Duration `json:"e2e_max_ns"`
	Conflicts  int64         `json:"conflicts"`
	Errors     int64         `json:"errors"`
}

// percentile returns the p-quantile (nearest rank) of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// runLatency runs scenario with one consumer at batch 1 while a producer
// appends one entry every interval, n entries in all.
func (b *bench) runLatency(ctx context.Context, scenario string, n int, interval time.Duration) (latencyResult, error) {
	prefix := b.newPrefix()
	src, out := prefix+"src", prefix+"out"
	defer b.cleanup(prefix, src, out)
	if err := b.rdb.XGroupCreateMkStream(ctx, src, group, "$").Err(); err != nil {
		return latencyResult{}, err
	}
	r := &trial{
		rdb: b.rdb, src: src, out: out, batch: 1, consumers: 1,
		track: newTracker(n), events: &eventCounts{}, lat: newLatencyRec(n),
	}
	launch, err := r.prepare(scenario)
	if err != nil {
		return latencyResult{}, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wait := launch(rctx)

	produced := make(chan error, 1)
	go func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := range n {
			select {
			case <-rctx.Done():
				produced <- rctx.Err()
				return
			case <-tick.C:
			}
			vals := append(entryValues(i), "t", strconv.FormatInt(time.Now().UnixNano(), 10))
			if err := b.rdb.XAdd(rctx, &redis.XAddArgs{Stream: src, Values: vals}).Err(); err != nil {
				produced <- err
				return
			}
		}
		produced <- nil
	}()

	timeout := time.NewTimer(time.Duration(n)*interval + b.opt.runTimeout)
	defer timeout.Stop()
	var runErr error
	select {
	case <-r.track.done:
	case <-ctx.Done():
		runErr = ctx.Err()
	case <-timeout.C:
		runErr = fmt.Errorf("%s: timed out with %d of %d entries committed", scenario, r.track.count.Load(), n)
	}
	cancel()
	if err := wait(); err != nil && runErr == nil {
		runErr = err
	}
	if err := <-produced; err != nil && runErr == nil && ctx.Err() == nil && !r.track.finished() {
		runErr = err
	}
	if runErr != nil {
		return latencyResult{}, runErr
	}

	l := r.lat
	slices.Sort(l.commit)
	slices.Sort(l.e2e)
	return latencyResult{
		Scenario:   scenario,
		Entries:    n,
		IntervalNS: interval,
		Commits:    len(l.commit),
		CommitP50:  percentile(l.commit, 0.50),
		CommitP99:  percentile(l.commit, 0.99),
		CommitMax:  percentile(l.commit, 1),
		E2EP50:     percentile(l.e2e, 0.50),
		E2EP99:     percentile(l.e2e, 0.99),
		E2EMax:     percentile(l.e2e, 1),
		Conflicts:  r.events.conflicts.Load(),
		Errors:     r.events.errors.Load(),
	}, nil
}
