package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/msgp"
	"github.com/streamtx/streamtx/internal/record"
)

// check verifies, after a run, that every entry was acknowledged, that one
// entry was published per entry (none for raw-ack), and that the counters
// of the stateful scenarios add up to n. The source is the stream src, or
// the partitions of topic when it is not nil. It returns "ok" or what is
// wrong.
func (b *bench) check(ctx context.Context, scenario, src string, topic *streamtx.Topic, out string, n int) string {
	var problems []string
	srcs := []string{src}
	if topic != nil {
		srcs = topicStreams(topic)
	}
	var pending int64
	for _, s := range srcs {
		p, err := b.rdb.XPending(ctx, s, group).Result()
		if err != nil {
			return "ERROR: XPENDING " + s + ": " + err.Error()
		}
		pending += p.Count
	}
	if pending != 0 {
		problems = append(problems, fmt.Sprintf("%d still pending", pending))
	}
	if out != "" {
		want := int64(n)
		if scenario == rawACK {
			want = 0
		}
		published, err := b.rdb.XLen(ctx, out).Result()
		if err != nil {
			return "ERROR: XLEN: " + err.Error()
		}
		if published != want {
			problems = append(problems, fmt.Sprintf("%d published, want %d", published, want))
		}
	}
	var names []string
	var err error
	switch scenario {
	case stxStateful:
		var space keys.Space
		if space, err = keys.NewSpace(src, group); err == nil {
			names = []string{space.State(stateName)}
		}
	case stxKeyed, stxTopicKeyed:
		names, err = keyedStateNames(src, topic)
	}
	if err != nil {
		return "ERROR: " + err.Error()
	}
	if names != nil {
		sum, err := b.stateSum(ctx, names)
		if err != nil {
			return "ERROR: reading state: " + err.Error()
		}
		if sum != int64(n) {
			problems = append(problems, fmt.Sprintf("counters add up to %d, want %d", sum, n))
		}
	}
	if len(problems) > 0 {
		return "FAIL: " + strings.Join(problems, "; ")
	}
	return "ok"
}

// stateSum adds up the committed counters in the records names (a missing
// record counts 0).
func (b *bench) stateSum(ctx context.Context, names []string) (int64, error) {
	recs, err := record.LoadMany(ctx, b.rdb, names)
	if err != nil {
		return 0, err
	}
	var sum int64
	for i, rec := range recs {
		v, err := msgp.Decode[counter](rec.Data)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", names[i], err)
		}
		sum += v.N
	}
	return sum, nil
}
