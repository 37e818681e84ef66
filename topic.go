package streamtx

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/partition"
	"github.com/streamtx/streamtx/txn"
)

// ErrTopicNotFound is returned by OpenTopic and Producer.PublishKeyed, and
// wrapped by tx.PublishKeyed's error, for a topic that CreateTopic never
// created.
var ErrTopicNotFound = partition.ErrNotFound

// TopicConfig configures a topic at creation. Both fields are fixed for the
// topic's lifetime.
type TopicConfig struct {
	// Partitions is the number of partitions, from 1 to 1024. Required: it
	// cannot change later (keys would move to other partitions), so there is
	// no default.
	Partitions int

	// Colocate, when set, is a co-location name: topics with one Colocate
	// name and the same Partitions put their partition p in one cluster hash
	// slot, so a handler reading partition p of one topic can publish by
	// the same key to another and commit atomically on a Redis Cluster. A
	// topic without Colocate is co-located under its own name: a topic with
	// Colocate "orders" shares slots with the topic "orders". Default "":
	// none. No braces.
	Colocate string
}

// Topic is a partitioned topic: P ordinary streams, and a stable
// partitioner that sends every entry of one key to one of them (see
// PartitionOf). A Topic is immutable and safe for concurrent use.
//
// A Consumer with Config.Topic consumes a topic: its group's consumers share
// the partitions, each owned by one of them at a time under a fenced lease,
// and the entries of each key are applied in order (see the package docs).
//
// # Names
//
// Partition p of topic T is the stream "T:{T.p<p>}" (partition 3 of "orders"
// is "orders:{orders.p3}"), or "T:{C.p<p>}" with the Colocate name C. The
// hash tag gives each partition its own cluster slot, so partitions spread
// over the cluster's masters. The topic's metadata record is the string key
// "stx:{T}:topic", holding {"v":1,"partitions":P} (and "colocate" when set).
type Topic struct{ m *partition.Meta }

// CreateTopic creates the topic name with cfg.Partitions partitions, or opens
// it when it exists with the same configuration: it is idempotent, and
// concurrent calls agree (the metadata record is written with SET NX). It
// writes only the metadata record; a partition stream appears with its first
// entry.
//
// A topic name is at most 200 bytes of UTF-8, holds no brace, and does not
// start with "stx:".
//
// Errors:
//   - a *ConfigError (matching ErrConfig) for an invalid name, Partitions or
//     Colocate, and for a topic that exists with another Partitions (Field
//     "Partitions") or Colocate (Field "Colocate"): a topic's partition count
//     never changes;
//   - an error wrapping ErrWrongType when the metadata key holds another
//     type, or saying that the metadata record is corrupt;
//   - otherwise the Redis or network error; retrying is safe.
func CreateTopic(ctx context.Context, rdb redis.UniversalClient, name string, cfg TopicConfig) (*Topic, error) {
	if rdb == nil {
		return nil, configErr("client", "nil Redis client")
	}
	m, err := partition.New(name, cfg.Partitions, cfg.Colocate)
	if err != nil {
		var fe *partition.FieldError
		if errors.As(err, &fe) {
			return nil, &ConfigError{Field: fe.Field, Reason: fe.Reason}
		}
		return nil, err
	}
	key := partition.MetaKey(name)
	old, err := rdb.SetArgs(ctx, key, m.Encode(), redis.SetArgs{Mode: "NX", Get: true}).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return &Topic{m}, nil // created
	case redis.HasErrorPrefix(err, "WRONGTYPE"):
		return nil, fmt.Errorf("streamtx: create topic %q: %q: %w", name, key, ErrWrongType)
	case err != nil:
		return nil, fmt.Errorf("streamtx: create topic %q: %w", name, err)
	}
	have, err := partition.Parse(name, []byte(old))
	if err != nil {
		return nil, fmt.Errorf("streamtx: create topic %q: %w", name, err)
	}
	switch {
	case have.Partitions() != cfg.Partitions:
		return nil, configErr("Partitions", "topic %q exists with %d partitions, not %d: a topic's partition count is fixed at creation",
			name, have.Partitions(), cfg.Partitions)
	case have.Colocate() != cfg.Colocate:
		return nil, configErr("Colocate", "topic %q exists with co-location name %q, not %q", name, have.Colocate(), cfg.Colocate)
	}
	return &Topic{have}, nil
}

// OpenTopic reads the metadata record of the topic name.
//
// Errors: one wrapping ErrTopicNotFound when the topic was never created; a
// *ConfigError for an invalid name or a nil client; one wrapping
// ErrWrongType when the metadata key holds another type; one saying that
// the metadata record is corrupt; otherwise the Redis or network error.
func OpenTopic(ctx context.Context, rdb redis.UniversalClient, name string) (*Topic, error) {
	if rdb == nil {
		return nil, configErr("client", "nil Redis client")
	}
	if err := partition.CheckName(name); err != nil {
		return nil, configErr("name", "%v", err)
	}
	key := partition.MetaKey(name)
	b, err := rdb.Get(ctx, key).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, fmt.Errorf("streamtx: open topic %q: %w (no %q)", name, ErrTopicNotFound, key)
	case redis.HasErrorPrefix(err, "WRONGTYPE"):
		return nil, fmt.Errorf("streamtx: open topic %q: %q: %w", name, key, ErrWrongType)
	case err != nil:
		return nil, fmt.Errorf("streamtx: open topic %q: %w", name, err)
	}
	m, err := partition.Parse(name, b)
	if err != nil {
		return nil, fmt.Errorf("streamtx: open topic %q: %w", name, err)
	}
	return &Topic{m}, nil
}

// Partitions returns the topic's partition count.
func (t *Topic) Partitions() int { return t.m.Partitions() }

// PartitionOf returns the partition of key, in [0, Partitions()). It is
// Kafka's default partitioner for keyed records — the 32-bit MurmurHash2 of
// the key's bytes (seed 0x9747b28c), sign bit cleared, modulo Partitions() —
// so a key lands in the partition Kafka's producers would pick, and the
// function never changes between versions or processes.
func (t *Topic) PartitionOf(key string) int { return t.m.PartitionOf(key) }

// Stream returns the stream of partition p (see Names), or "" when p is not
// in [0, Partitions()).
func (t *Topic) Stream(p int) string { return t.m.Stream(p) }

// Name returns the topic's name.
func (t *Topic) Name() string { return t.m.Name() }

// DeadLetterStream returns the default dead-letter stream of group's
// consumers for partition p (in p's slot): where they move the entries of p
// that failed for good, unless Config.DeadLetterStream names another.
func (t *Topic) DeadLetterStream(group string, p int) string {
	space, err := keys.NewSpace(t.m.Stream(p), group)
	if err != nil {
		return "" // (a topic's streams always have a hash tag)
	}
	return space.DeadLetters()
}

// PublishKeyed appends values to the partition of topic that key goes to
// (Topic.PartitionOf), with key in the reserved field "stx.key", and returns
// the entry's ID. Values are formatted as Publish formats them.
//
// The first publish to a topic reads its metadata record; the Producer then
// remembers the topic for its lifetime (a topic's partitions never change).
//
// With WithIdempotencyKey, the key is scoped to the partition stream: a
// retry with the same idempotency key and the same key appends nothing and
// returns the first entry's ID.
//
// Errors are Publish's, plus one wrapping ErrTopicNotFound for a topic that
// does not exist (nothing is sent), and one wrapping txn.ErrBadPublish for an
// empty key or values that hold "stx.key".
func (p *Producer) PublishKeyed(ctx context.Context, topic, key string, values map[string]any, opts ...PublishOption) (string, error) {
	t, err := p.topics.open(ctx, p.rdb, topic)
	if err != nil {
		return "", fmt.Errorf("streamtx: publish: %w", err)
	}
	stream, withKey, err := t.m.Route(key, values)
	if err != nil {
		return "", fmt.Errorf("streamtx: publish: %w: to topic %q: %w", txn.ErrBadPublish, topic, err)
	}
	var o publishOptions
	for _, opt := range opts {
		opt(&o)
	}
	return p.publish(ctx, stream, withKey, o)
}

// topicCache remembers opened topics, for publishes by key. Its zero value
// is ready; it is safe for concurrent use.
type topicCache struct {
	m sync.Map // name -> *Topic
	n atomic.Int64
}

// maxCachedTopics bounds a topicCache: past it, topics are opened again on
// every use rather than growing the cache.
const maxCachedTopics = 4096

// topicOpenTimeout bounds the read of a topic's metadata record by
// tx.PublishKeyed, which has no context of its own.
const topicOpenTimeout = 5 * time.Second

func (c *topicCache) open(ctx context.Context, rdb redis.UniversalClient, name string) (*Topic, error) {
	if v, ok := c.m.Load(name); ok {
		return v.(*Topic), nil
	}
	t, err := OpenTopic(ctx, rdb, name)
	if err != nil {
		return nil, err
	}
	if c.n.Add(1) <= maxCachedTopics {
		c.m.Store(name, t)
	}
	return t, nil
}

// resolver returns the function a consumer's transactions resolve topics
// with (txnengine.Env.Topic): from the cache, else by reading the metadata
// record, bounded by topicOpenTimeout. A missing topic or an invalid name is
// a bad publish (the entry fails permanently); other errors fail the handler
// call, which is retried.
func (c *topicCache) resolver(rdb redis.UniversalClient) func(string) (*partition.Meta, error) {
	return func(name string) (*partition.Meta, error) {
		if v, ok := c.m.Load(name); ok {
			return v.(*Topic).m, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), topicOpenTimeout)
		defer cancel()
		t, err := c.open(ctx, rdb, name)
		switch {
		case errors.Is(err, ErrTopicNotFound), errors.Is(err, ErrConfig):
			return nil, fmt.Errorf("%w: %w", txn.ErrBadPublish, err) // never publishable
		case err != nil:
			return nil, err // Redis unreachable, say: the handler call is retried
		}
		return t.m, nil
	}
}
