package main

// The topic scenarios: a partitioned topic of -partitions streams, read by
// a hand-written loop (raw-alo-topic) or by streamtx consumers of the topic
// (stx-topic-keyed).
//
// A consumer of a topic first joins the group's membership and takes its
// partitions' leases: with several consumers that takes a heartbeat or two
// (Config.Heartbeat, LeaseTTL/3 by default). Unless -topic-cold is set, a
// run measures the steady state: the entries are loaded into staging
// streams, the consumers start on the empty partitions and the run waits
// until the leases are balanced among them, and then one MULTI/EXEC renames
// the staging streams onto the partitions, so that every entry appears at
// once, and the clock starts. The raw loops go through the same steps. The
// time to join and to rebalance is measured by -rebalance instead.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/partition"
)

// The ways raw-alo-topic splits the partitions among its N consumers
// (-raw-topic).
const (
	// rawSplit: consumer i reads the partitions p with p mod N = i, all in
	// one XREADGROUP (COUNT b per stream), and acknowledges them in one
	// pipeline. Each partition has one reader, as under streamtx's leases,
	// so each key's entries are handled in order. The default.
	rawSplit = "split"
	// rawShared: every consumer reads every partition in one XREADGROUP.
	// Entries of one key may be handled by two consumers at once: no order.
	rawShared = "shared"
	// rawPerPartition: as split, but one goroutine (one XREADGROUP loop)
	// per partition, as streamtx runs one partition consumer per partition.
	rawPerPartition = "per-partition"
)

var rawTopicModes = []string{rawSplit, rawShared, rawPerPartition}

// rawTopicLoop is one XREADGROUP loop of raw-alo-topic.
type rawTopicLoop struct {
	consumer string
	streams  []string
}

// rawTopicLoops returns the loops of raw-alo-topic for r.rawTopic.
func (r *trial) rawTopicLoops() []rawTopicLoop {
	P := r.topic.Partitions()
	var loops []rawTopicLoop
	for i := range r.consumers {
		name := consumerName(i)
		switch r.rawTopic {
		case rawShared:
			l := rawTopicLoop{consumer: name}
			for p := range P {
				l.streams = append(l.streams, r.topic.Stream(p))
			}
			loops = append(loops, l)
		case rawPerPartition:
			for p := i; p < P; p += r.consumers {
				loops = append(loops, rawTopicLoop{consumer: name, streams: []string{r.topic.Stream(p)}})
			}
		default:
			l := rawTopicLoop{consumer: name}
			for p := i; p < P; p += r.consumers {
				l.streams = append(l.streams, r.topic.Stream(p))
			}
			loops = append(loops, l) // (no streams when N > P: it waits)
		}
	}
	return loops
}

// newTopic creates the topic of a run and loads entries 0 … n-1 into it:
// cold, straight into the partition streams; warm, into staging streams,
// one per partition, which it returns (see moveIn), with the partition
// streams created empty. Every stream gets the group, from "0".
func (b *bench) newTopic(ctx context.Context, prefix string, n int, warm bool) (*streamtx.Topic, []string, error) {
	t, err := streamtx.CreateTopic(ctx, b.rdb, prefix+"topic", streamtx.TopicConfig{Partitions: b.opt.partitions})
	if err != nil {
		return nil, nil, err
	}
	P := t.Partitions()
	targets := make([]string, P)
	var stage []string
	for p := range P {
		targets[p] = t.Stream(p)
		if warm {
			stage = append(stage, prefix+"stage."+strconv.Itoa(p))
			targets[p] = stage[p]
		}
	}
	if err := preloadTopic(ctx, b.rdb, t, targets, n); err != nil {
		return nil, nil, err
	}
	for p := range P {
		if err := b.rdb.XGroupCreateMkStream(ctx, targets[p], group, "0").Err(); err != nil {
			return nil, nil, err
		}
		if warm {
			if err := b.rdb.XGroupCreateMkStream(ctx, t.Stream(p), group, "0").Err(); err != nil {
				return nil, nil, err
			}
		}
	}
	return t, stage, nil
}

// topicValues are the fields of entry i on a topic: those of entryValues,
// with the entity key as the entry's key in "stx.key", as
// Producer.PublishKeyed writes it.
func topicValues(i int) []any {
	return append(entryValues(i), partition.KeyField, keyName(i))
}

// preloadTopic appends entries 0 … n-1 to targets[p], p the partition of
// each entry's key, with pipelined XADDs.
func preloadTopic(ctx context.Context, rdb *redis.Client, t *streamtx.Topic, targets []string, n int) error {
	for i := 0; i < n; i += preloadChunk {
		pipe := rdb.Pipeline()
		for j := i; j < min(i+preloadChunk, n); j++ {
			p := t.PartitionOf(keyName(j))
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: targets[p], Values: topicValues(j)})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("preload %s: %w", t.Name(), err)
		}
	}
	return nil
}

// moveIn renames the staging streams onto the topic's partitions in one
// MULTI/EXEC, groups included: every entry appears at once.
func moveIn(ctx context.Context, rdb *redis.Client, t *streamtx.Topic, stage []string) error {
	_, err := rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		for p, s := range stage {
			pipe.Rename(ctx, s, t.Stream(p))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("move the entries onto %s: %w", t.Name(), err)
	}
	return nil
}

// leaseOwners returns the consumer name (Config.Consumer) of each
// partition's live lease owner, "" when the lease is free or expired, by
// Redis's clock. A lease is a hash: owner "<consumer>/<hex>", epoch, until
// (ms).
func leaseOwners(ctx context.Context, rdb *redis.Client, t *streamtx.Topic, grp string) ([]string, error) {
	pipe := rdb.Pipeline()
	now := pipe.Time(ctx)
	cmds := make([]*redis.SliceCmd, t.Partitions())
	for p := range cmds {
		space, err := keys.NewSpace(t.Stream(p), grp)
		if err != nil {
			return nil, err
		}
		cmds[p] = pipe.HMGet(ctx, space.Lease(), "owner", "until")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	nowMS := now.Val().UnixMilli()
	owners := make([]string, len(cmds))
	for p, cmd := range cmds {
		v := cmd.Val()
		if len(v) != 2 {
			continue
		}
		owner, _ := v[0].(string)
		s, _ := v[1].(string)
		until, _ := strconv.ParseInt(s, 10, 64)
		if owner != "" && until > nowMS {
			owners[p] = instanceConsumer(owner)
		}
	}
	return owners, nil
}

// instanceConsumer returns the consumer name of an instance ID
// "<consumer>/<hex>".
func instanceConsumer(id string) string {
	if i := strings.LastIndexByte(id, '/'); i >= 0 {
		return id[:i]
	}
	return id
}

// balanced reports whether every partition has a live owner among names
// and the numbers of partitions the names own differ by at most one.
func balanced(owners, names []string) bool {
	count := make(map[string]int, len(names))
	for _, n := range names {
		count[n] = 0
	}
	for _, o := range owners {
		if _, ok := count[o]; !ok {
			return false // free, or held by someone else
		}
		count[o]++
	}
	lo, hi := len(owners), 0
	for _, c := range count {
		lo, hi = min(lo, c), max(hi, c)
	}
	return hi-lo <= 1
}

// ownedBy returns the partitions name owns.
func ownedBy(owners []string, name string) []int {
	var ps []int
	for p, o := range owners {
		if o == name {
			ps = append(ps, p)
		}
	}
	return ps
}

// waitBalanced polls the leases every 5 ms until they are balanced among
// names, and returns the owners then.
func waitBalanced(ctx context.Context, rdb *redis.Client, t *streamtx.Topic, grp string, names []string, timeout time.Duration) ([]string, error) {
	deadline := time.Now().Add(timeout)
	var owners []string
	for {
		var err error
		owners, err = leaseOwners(ctx, rdb, t, grp)
		if err != nil {
			return nil, err
		}
		if balanced(owners, names) {
			return owners, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("partitions not balanced among %v after %v: owners %q", names, timeout, owners)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitReady waits, for a warm run, until the consumers of r can consume:
// for streamtx, until the leases are balanced among them.
func (r *trial) waitReady(ctx context.Context, timeout time.Duration) error {
	if isRaw(r.scenario) {
		return nil
	}
	names := make([]string, r.consumers)
	for i := range names {
		names[i] = consumerName(i)
	}
	_, err := waitBalanced(ctx, r.rdb, r.topic, group, names, timeout)
	return err
}

// topicStreams returns the partition streams of t.
func topicStreams(t *streamtx.Topic) []string {
	s := make([]string, t.Partitions())
	for p := range s {
		s[p] = t.Stream(p)
	}
	return s
}

// keyedStateNames returns the records of the Keyed counter of the 1,000
// keys: on a stream, in src's key space; on a topic, each in the space of
// its key's partition.
func keyedStateNames(src string, t *streamtx.Topic) ([]string, error) {
	names := make([]string, 0, numKeys)
	for i := range numKeys {
		stream := src
		if t != nil {
			stream = t.Stream(t.PartitionOf(keyName(i)))
		}
		space, err := keys.NewSpace(stream, group)
		if err != nil {
			return nil, err
		}
		names = append(names, space.KeyedState(stateName, keyName(i)))
	}
	return names, nil
}
