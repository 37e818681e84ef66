package streamtxtest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/partition"
)

// createTopics creates the topics of Options.Topics, in name order.
func (tt *Tester) createTopics() error {
	names := make([]string, 0, len(tt.opts.Topics))
	for name := range tt.opts.Topics {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		n := tt.opts.Topics[name]
		if n == 0 {
			n = 4
		}
		if _, err := streamtx.CreateTopic(context.Background(), tt.admin, tt.Key(name), streamtx.TopicConfig{Partitions: n}); err != nil {
			return fmt.Errorf("Options.Topics: topic %q: %w", name, err)
		}
	}
	return nil
}

// PublishedKeyed returns the entries of the topic called topic (as the
// handler names it in tx.PublishKeyed), partition by partition from
// partition 0, each partition's oldest first: every key's entries are in
// one partition, in the order they were committed. Message.Partition is the
// entry's partition, Message.Key its key (Values holds it too, under
// "stx.key", as a consumer of the topic sees it) and Message.Stream the
// partition's stream as stored.
//
// The topic is one of Options.Topics, the source topic (Options.Topic), or
// one the test created with streamtx.CreateTopic(ctx, tt.Client(),
// tt.Key(name), cfg); for any other it fails the test. Read a plain stream
// with Published.
func (tt *Tester) PublishedKeyed(topic string) []streamtx.Message {
	tt.t.Helper()
	ctx := context.Background()
	top, err := streamtx.OpenTopic(ctx, tt.admin, tt.Key(topic))
	if errors.Is(err, streamtx.ErrTopicNotFound) {
		tt.t.Fatalf("streamtxtest: PublishedKeyed(%q): no such topic: declare the topics the handler publishes to in Options.Topics", topic)
	}
	if err != nil {
		tt.t.Fatalf("streamtxtest: PublishedKeyed(%q): %v", topic, err)
	}
	var out []streamtx.Message
	for p := range top.Partitions() {
		ms, err := tt.admin.XRange(ctx, top.Stream(p), "-", "+").Result()
		if err != nil {
			tt.t.Fatalf("streamtxtest: PublishedKeyed(%q): read partition %d (%q): %v", topic, p, top.Stream(p), err)
		}
		for _, m := range ms {
			vals := make(map[string]string, len(m.Values))
			for k, v := range m.Values {
				s, _ := v.(string)
				vals[k] = s
			}
			out = append(out, streamtx.Message{Stream: top.Stream(p), ID: m.ID, Values: vals, Key: vals[keyField], Partition: p})
		}
	}
	return out
}

// isTopic reports whether the topic called name (as the handler names it)
// exists.
func (tt *Tester) isTopic(ctx context.Context, name string) bool {
	n, err := tt.admin.Exists(ctx, partition.MetaKey(tt.Key(name))).Result()
	return err == nil && n == 1
}

// redirectTopicRead, on a shared Redis, points a consumer's read of the
// metadata record of a topic T the handler names in tx.PublishKeyed
// ("GET stx:{T}:topic", see streamtx.OpenTopic) at the record of the topic
// as stored, under the test's prefix. It returns the name T, or "" for any
// other command. The topic's partition streams are then named by
// fixTopicReply.
func (tt *Tester) redirectTopicRead(cmd redis.Cmder) string {
	if tt.prefix == "" {
		return ""
	}
	args := cmd.Args()
	if len(args) != 2 {
		return ""
	}
	if c, _ := args[0].(string); !strings.EqualFold(c, "get") {
		return ""
	}
	key, _ := toString(args[1])
	name, ok1 := strings.CutPrefix(key, "stx:{")
	name, ok2 := strings.CutSuffix(name, "}:topic")
	if !ok1 || !ok2 || strings.ContainsAny(name, "{}") || tt.Key(name) == name {
		return "" // not a metadata record, or one the Tester named (its source topic)
	}
	args[1] = partition.MetaKey(tt.Key(name))
	return name
}

// fixTopicReply rewrites the metadata record that a read redirected by
// redirectTopicRead returned, so that the consumer routes the handler's
// keyed publishes to the partitions of the topic as stored. Partition p of
// the stored topic K (K = Key(name)) is the stream "K:{C.p<p>}", where C is
// its co-location name, or K when it has none; the consumer names partition
// p of the topic name "name:{C.p<p>}" when the record says C, and the
// Tester's hook puts the commit's publish targets under the prefix (Key):
// "K:{C.p<p>}". So the record is given to the consumer with its co-location
// name, or K when it has none. A record that does not parse is left as it
// is, for the consumer to report.
func (tt *Tester) fixTopicReply(name string, cmd redis.Cmder) {
	sc, ok := cmd.(*redis.StringCmd)
	if !ok || sc.Err() != nil {
		return
	}
	stored, err := partition.Parse(tt.Key(name), []byte(sc.Val()))
	if err != nil {
		return
	}
	colocate := stored.Colocate()
	if colocate == "" {
		colocate = stored.Name()
	}
	m, err := partition.New(name, stored.Partitions(), colocate)
	if err != nil {
		return
	}
	sc.SetVal(m.Encode())
}
